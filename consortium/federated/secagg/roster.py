"""The round's public setup: its parameters, who took part, and the SecAgg+ neighbour graph.

Everyone derives the same facts from the same public inputs (the context and the list of public keys),
so no site has to trust the coordinator's word for its neighbours, threshold or quantisation levels.
"""

import base64
import hashlib
from dataclasses import dataclass, field
from functools import cached_property

from consortium.federated.secagg import masks
from consortium.federated.secagg.errors import SecAggError
from consortium.federated.secagg.messages import Keys

MIN_SITES = 3
ENCODINGS = frozenset({"quantized", "integers"})


@dataclass(frozen=True)
class RoundConfig:
    """Parameters fixed before the round; `context` must be unique per round (it binds every key and seed).

    `degree` is SecAgg+'s number of neighbours per site (Bell et al. 2020): None masks with every other
    site (SecAgg, Bonawitz et al. 2017). `threshold` is how many of a site's neighbours must answer to
    recover its secrets; by default a strict majority, the least that keeps a coordinator that lies about
    who dropped out from collecting both kinds of share for one site."""

    context: bytes
    vector_length: int
    clip: float = 1.0
    max_weight: int = 1_000_000
    degree: int | None = None
    threshold: int | None = None
    min_sites: int = MIN_SITES
    # "quantized": a model change, clipped and weighted (training rounds); "integers": values already encoded as
    # exact fixed-point limbs (`integers.py`, the statistics round), summed as they are, each site counting 1.
    encoding: str = "quantized"

    def __post_init__(self) -> None:
        if not self.context:
            raise SecAggError("A round needs a non-empty context.")
        if self.vector_length < 1:
            raise SecAggError("The vector length must be positive.")
        if not self.clip > 0:
            raise SecAggError("The clipping range must be positive.")
        if self.degree is not None and (self.degree < 2 or self.degree % 2):
            raise SecAggError("The SecAgg+ degree must be an even number of at least 2.")
        if self.min_sites < MIN_SITES:
            raise SecAggError(f"Secure aggregation needs at least {MIN_SITES} sites.")
        if self.encoding not in ENCODINGS:
            raise SecAggError(f"The encoding must be one of {sorted(ENCODINGS)}, not {self.encoding!r}.")

    def to_wire(self) -> dict:
        return {"context": base64.b64encode(self.context).decode(), "vector_length": self.vector_length,
                "clip": self.clip, "max_weight": self.max_weight, "degree": self.degree,
                "threshold": self.threshold, "min_sites": self.min_sites, "encoding": self.encoding}

    @classmethod
    def from_wire(cls, payload: dict) -> "RoundConfig":
        try:
            return cls(context=base64.b64decode(str(payload["context"]), validate=True),
                       vector_length=int(payload["vector_length"]), clip=float(payload["clip"]),
                       max_weight=int(payload["max_weight"]),
                       degree=None if payload.get("degree") is None else int(payload["degree"]),
                       threshold=None if payload.get("threshold") is None else int(payload["threshold"]),
                       min_sites=int(payload.get("min_sites", MIN_SITES)),
                       encoding=str(payload.get("encoding", "quantized")))
        except (KeyError, TypeError, ValueError) as error:
            raise SecAggError(f"The round's secure-aggregation settings are malformed ({error}).") from error


@dataclass(frozen=True)
class Roster:
    """The sites that sent keys (in a canonical order) and what follows from them."""

    config: RoundConfig
    keys: tuple[Keys, ...]
    _by_site: dict[str, Keys] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_site", {k.site: k for k in self.keys})
        if len(self._by_site) != len(self.keys):
            raise SecAggError("A site sent its keys twice.")
        if len(self.keys) < self.config.min_sites:
            raise SecAggError(f"Only {len(self.keys)} sites sent keys; the round needs {self.config.min_sites}.")
        masks.check_ring(sites=len(self.keys), max_weight=self.config.max_weight)
        minimum = self.degree // 2 + 1
        if self.config.threshold is not None and not minimum <= self.config.threshold <= self.degree:
            raise SecAggError(f"The threshold must lie between {minimum} (a strict majority of {self.degree} "
                              f"neighbours) and {self.degree}, not {self.config.threshold}.")

    @classmethod
    def from_keys(cls, config: RoundConfig, keys: list[Keys]) -> "Roster":
        return cls(config, tuple(sorted(keys, key=lambda k: k.site)))

    @property
    def sites(self) -> list[str]:
        return [k.site for k in self.keys]

    def __contains__(self, site: str) -> bool:
        return site in self._by_site

    def key(self, site: str) -> Keys:
        try:
            return self._by_site[site]
        except KeyError:
            raise SecAggError(f"Site {site} is not in this round's roster.") from None

    def x(self, site: str) -> int:
        """The site's Shamir point and its place in the mask sign convention (1-based)."""
        return self._positions[site] + 1

    @cached_property
    def _positions(self) -> dict[str, int]:
        return {site: i for i, site in enumerate(self.sites)}

    @property
    def degree(self) -> int:
        n = len(self.keys)
        return n - 1 if self.config.degree is None else min(self.config.degree, n - 1)

    @property
    def threshold(self) -> int:
        return self.config.threshold or self.degree // 2 + 1

    @property
    def levels(self) -> int:
        return masks.levels(len(self.keys))

    @cached_property
    def _graph(self) -> dict[str, frozenset[str]]:
        sites = self.sites
        if self.degree >= len(sites) - 1:
            return {s: frozenset(sites) - {s} for s in sites}
        # A Harary-style ring over a public pseudo-random order: each site's neighbours are the
        # degree/2 nearest on either side, so the graph is symmetric and every site has `degree` of them.
        ring = sorted(sites, key=lambda s: hashlib.sha256(self.config.context + b"\x00" + s.encode()).digest())
        half, n = self.degree // 2, len(ring)
        return {s: frozenset(ring[(i + d) % n] for d in range(-half, half + 1) if d) for i, s in enumerate(ring)}

    def neighbours(self, site: str) -> frozenset[str]:
        self.key(site)
        return self._graph[site]

    def sign(self, site: str, peer: str) -> int:
        """+1 or -1: the pair's mask is added by one of them and subtracted by the other."""
        return 1 if self.x(site) < self.x(peer) else -1
