"""The site's own policy, which the agent enforces whatever the coordinator asks. Imports no Django.

A TOML file the site admin controls (`--policy FILE`); every key is optional and an absent key allows
anything. Example:

    studies = [3, 7]                  # study ids this agent may work for
    protocol_sha256 = ["9f2c..."]     # protocols the site reviewed and accepted (the hash on the study page)
    require_secure_aggregation = true # only rounds whose updates the coordinator cannot read one by one
    min_dp_noise_multiplier = 0.8     # only rounds with at least this much differential-privacy noise
    max_rounds_per_day = 24           # at most this many rounds in any 24 hours (counted in the local record)

A round outside the policy is declined: the agent does no work on it, says why in plain words, and tells the
coordinator that (and why) it declined.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from consortium.federated.protocol import protocol_hash

KEYS = {"studies", "protocol_sha256", "require_secure_aggregation", "min_dp_noise_multiplier",
        "max_rounds_per_day"}


class PolicyError(ValueError):
    """The policy file cannot be read or says something the agent does not understand."""


@dataclass(frozen=True)
class Policy:
    studies: frozenset[int] | None = None
    protocol_sha256: frozenset[str] | None = None
    require_secure_aggregation: bool = False
    min_dp_noise_multiplier: float = 0.0
    max_rounds_per_day: int | None = None

    @classmethod
    def load(cls, path: str) -> Policy:
        try:
            with open(path, "rb") as handle:
                data = tomllib.load(handle)
        except OSError as exc:
            raise PolicyError(f"Cannot read the policy file {path}: {exc.strerror or exc}.") from exc
        except tomllib.TOMLDecodeError as exc:
            raise PolicyError(f"The policy file {path} is not valid TOML: {exc}.") from exc
        return cls.from_mapping(data, source=path)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, source: str = "the policy") -> Policy:
        unknown = sorted(set(data) - KEYS)
        if unknown:
            # A misspelt key would otherwise silently allow what the admin meant to forbid.
            raise PolicyError(f"{source}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(KEYS))}.")
        studies = data.get("studies")
        hashes = data.get("protocol_sha256")
        noise = data.get("min_dp_noise_multiplier", 0.0)
        rate = data.get("max_rounds_per_day")
        secure = data.get("require_secure_aggregation", False)
        if studies is not None and not (isinstance(studies, list) and all(type(s) is int for s in studies)):
            raise PolicyError(f"{source}: studies must be a list of study ids (whole numbers).")
        if hashes is not None and not (isinstance(hashes, list) and all(_is_sha256(h) for h in hashes)):
            raise PolicyError(f"{source}: protocol_sha256 must be a list of 64-hex-digit SHA-256 hashes.")
        if not isinstance(noise, int | float) or isinstance(noise, bool) or noise < 0:
            raise PolicyError(f"{source}: min_dp_noise_multiplier must be a number >= 0.")
        if rate is not None and (type(rate) is not int or rate < 1):
            raise PolicyError(f"{source}: max_rounds_per_day must be a whole number >= 1.")
        if not isinstance(secure, bool):
            raise PolicyError(f"{source}: require_secure_aggregation must be true or false.")
        return cls(studies=frozenset(studies) if studies is not None else None,
                   protocol_sha256=frozenset(h.lower() for h in hashes) if hashes is not None else None,
                   require_secure_aggregation=secure, min_dp_noise_multiplier=float(noise),
                   max_rounds_per_day=rate)

    def refusal(self, round_: Mapping[str, Any], rounds_in_last_day: Callable[[], int]) -> str | None:
        """Why this round is outside the policy (None when it is inside). The announced protocol hash is
        recomputed here from the protocol itself: the agent trusts neither."""
        study, protocol = round_["study_id"], round_.get("protocol") or {}
        if self.studies is not None and study not in self.studies:
            return f"study {study} is not in this site's policy (allowed: {_ids(self.studies)})"
        actual = protocol_hash(protocol)
        announced = str(round_.get("protocol_sha256") or "")
        if announced and announced != actual:
            return (f"the protocol sent does not match its announced hash ({announced[:12]}... announced, "
                    f"{actual[:12]}... computed)")
        if self.protocol_sha256 is not None and actual not in self.protocol_sha256:
            return f"protocol {actual[:12]}... is not one this site accepted in its policy"
        if self.require_secure_aggregation and not protocol.get("secure_aggregation", False):
            return "the policy requires secure aggregation and this study's protocol does not use it"
        noise = float(protocol.get("dp_noise_multiplier") or 0.0)
        if noise < self.min_dp_noise_multiplier:
            return (f"the policy requires differential-privacy noise of at least {self.min_dp_noise_multiplier:g} "
                    f"and this study's protocol has {noise:g}")
        if self.max_rounds_per_day is not None and rounds_in_last_day() >= self.max_rounds_per_day:
            return f"the policy allows at most {self.max_rounds_per_day} rounds a day and that many were done"
        return None


def _is_sha256(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdefABCDEF" for c in value)


def _ids(ids: frozenset[int]) -> str:
    return ", ".join(str(i) for i in sorted(ids)) or "none"
