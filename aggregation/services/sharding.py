"""Aggregating a large model in parameter shards, in parallel on several workers (a Celery chord over shards).

Only strategies that treat every tensor on its own can be split by tensor name and give the very same bytes:
FedAvg/FedProx (a weighted mean per tensor), the adaptive server optimisers (an element-wise step with
per-tensor state), the coordinate-wise median and trimmed mean. Krum compares whole updates, and central DP
clips whole updates and draws one noise vector, so they always run in one piece. A model smaller than
`AGGREGATION_SHARD_BYTES` runs in one piece too: a chord's messages cost more than it saves.

Each shard task computes its tensors from the stored update files and writes them to the model store; the
chord's callback joins the shards and commits through `aggregate._commit`, exactly as an unsharded run.
"""

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from django.conf import settings
from django.utils import timezone

from consortium.federated import codec

ELEMENTWISE = frozenset({"fedavg", "fedprox", "fedadam", "fedyogi", "fedadagrad", "median", "trimmed_mean"})


class Subset(Mapping[str, torch.Tensor]):
    """Some tensors of a mapping, by name; passes `release` through so lazy files still stream."""

    def __init__(self, tensors: Mapping[str, torch.Tensor], names: Sequence[str]):
        self.tensors, self.names = tensors, list(names)

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self.names:
            raise KeyError(name)
        return self.tensors[name]

    def __iter__(self):
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)

    def release(self, name: str, start: int = 0, stop: int | None = None) -> None:
        release = getattr(self.tensors, "release", None)
        if release is not None:
            release(name, start, stop)


def shardable(strategy: str, strategy_settings: Mapping[str, Any]) -> bool:
    return strategy in ELEMENTWISE and not float(strategy_settings.get("dp_noise_multiplier") or 0.0) > 0


def shards(spec: Mapping[str, Sequence], *, shard_bytes: int | None = None) -> list[list[str]]:
    """Tensor names in groups of about `shard_bytes` (setting AGGREGATION_SHARD_BYTES), largest tensors dealt
    first to the lightest group; one group (no sharding) for a model below it or of one tensor."""
    shard_bytes = shard_bytes or settings.AGGREGATION_SHARD_BYTES
    sizes = {name: _numel(shape) * 4 for name, (shape, _dtype) in spec.items()}
    total = sum(sizes.values())
    count = min(len(sizes), max(1, -(-total // shard_bytes)), settings.AGGREGATION_MAX_SHARDS)
    groups: list[list[str]] = [[] for _ in range(count)]
    loads = [0] * count
    for name in sorted(sizes, key=lambda n: (-sizes[n], n)):
        lightest = loads.index(min(loads))
        groups[lightest].append(name)
        loads[lightest] += sizes[name]
    order = list(spec)
    return [sorted(group, key=order.index) for group in groups if group]


def _numel(shape: Sequence[int]) -> int:
    count = 1
    for size in shape:
        count *= int(size)
    return count


def aggregate_shard(strategy: str, current: Mapping[str, torch.Tensor], pairs: list, state: Mapping[str, torch.Tensor],
                    strategy_settings: Mapping[str, Any], names: Sequence[str]) -> Any:
    """The strategy on the tensors `names` only and their server state (`m/<name>`, `v/<name>`, and the shared
    `step`): the same bytes as those tensors of an unsharded run, for an element-wise strategy."""
    from aggregation import strategies

    own_state = {key: value for key, value in state.items() if "/" not in key or key.split("/", 1)[1] in names}
    return strategies.aggregate(strategy, Subset(current, names), [(Subset(t, names), w) for t, w in pairs],
                                own_state, strategy_settings)


def heartbeat(round_id: int) -> None:
    """A shard started or finished: the scheduler must not take the round for lost (see `recovery`)."""
    from aggregation.models import Round  # here: the rest of this module runs without Django set up (bench/)

    Round.objects.filter(pk=round_id).update(aggregation_dispatched_at=timezone.now())


def join(parts: Sequence[Mapping[str, torch.Tensor]], order: Sequence[str]) -> dict[str, torch.Tensor]:
    joined: dict[str, torch.Tensor] = {}
    for part in parts:
        joined.update(part)
    return {name: joined[name] for name in order if name in joined}


def read_part(relative: str) -> dict[str, torch.Tensor]:
    from aggregation.storage import absolute

    return codec.read_file(absolute(relative)) if relative else {}
