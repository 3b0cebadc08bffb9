"""Local training and evaluation with the study's protocol. Pure torch and scikit-learn; imports no Django.

The optimizer is plain SGD without momentum. That is what FedAvg (McMahan et al., 2017) and FedProx
(Li et al., 2020) assume: an optimizer with no state of its own, so nothing local is silently lost when
the next round starts from the new global model, and the proximal term's effect is the one in the paper.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from consortium.federated.metric_keys import (
    BASE,
    SCORE_HISTOGRAM,
    TRAIN_LOSS,
    TRAINING_SECONDS,
    VAL_ACCURACY,
    VAL_AUC,
    VAL_EXAMPLES,
    VAL_LOSS,
)
from consortium.federated.metrics import score_histogram
from consortium.federated.zoo import build_model, initial_state

from .data import DataError, Dataset

State = dict[str, torch.Tensor]
SMALL_MODEL_PARAMETERS = 100_000


@dataclass(frozen=True)
class Protocol:
    """The part of a study's protocol that local training needs (the `protocol` object of a round)."""

    model_kind: str
    num_features: int
    hidden_units: int = 16
    local_epochs: int = 1
    batch_size: int = 32
    learning_rate: float = 0.05
    proximal_mu: float = 0.0
    label_column: str = "target"
    feature_names: Sequence[str] = ()  # declared by the protocol: the order the model takes them in
    secure_aggregation: bool = False  # masked inputs only; no statistics round, so each site standardizes itself
    dp_noise_multiplier: float = 0.0  # with secure aggregation: the site adds its share of the noise (distributed DP)
    dp_clip_norm: float = 1.0
    quorum: int = 1

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Protocol:
        known = cls.__dataclass_fields__
        return cls(**{key: value for key, value in data.items() if key in known and value is not None})

    def initial_state(self, seed: int = 0) -> State:
        return initial_state(self.model_kind, self.num_features, self.hidden_units, seed=seed)


@dataclass
class LocalUpdate:
    """The outcome of one round of local training: weights to send, their weight in the average, metrics."""

    state: State
    num_examples: int
    metrics: dict[str, Any] = field(default_factory=dict)


@contextmanager
def _threads_for(model: nn.Module) -> Iterator[None]:
    """Run small models on one thread: for a tabular model of a few thousand weights, torch's hand-off to its
    intra-op thread pool costs more than the arithmetic (about 10x slower on two cores, far worse on a busy
    machine). Larger models keep torch's own setting."""
    previous = torch.get_num_threads()
    small = sum(p.numel() for p in model.parameters()) < SMALL_MODEL_PARAMETERS
    if small and previous != 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if small and previous != 1:
            torch.set_num_threads(previous)


def model_from_state(protocol: Protocol, state: Mapping[str, torch.Tensor]) -> nn.Module:
    model = build_model(protocol.model_kind, protocol.num_features, protocol.hidden_units)
    model.load_state_dict(dict(state), strict=True)
    return model


def _tensors(dataset: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.as_tensor(dataset.x, dtype=torch.float32), torch.as_tensor(dataset.y, dtype=torch.float32)


def evaluate(protocol: Protocol, state: Mapping[str, torch.Tensor], dataset: Dataset, *,
             histogram: bool = False) -> dict[str, Any]:
    """Loss (BCE), accuracy at 0.5 and ROC AUC on `dataset`. AUC is None when only one label is present.

    With `histogram`, also `score_histogram`: per-class counts of the scores in fixed bins, from which the
    coordinator computes the AUC over every site's validation rows without pooling them (a site with one
    class has no AUC of its own, but its counts still count)."""
    if len(dataset) == 0:
        return {VAL_LOSS: None, VAL_ACCURACY: None, VAL_AUC: None, VAL_EXAMPLES: 0}
    model = model_from_state(protocol, state).eval()
    x, y = _tensors(dataset)
    with torch.no_grad(), _threads_for(model):
        logits = model(x)
        loss = nn.functional.binary_cross_entropy_with_logits(logits, y).item()
    scores = torch.sigmoid(logits).numpy()
    accuracy = float(((scores >= 0.5) == (dataset.y >= 0.5)).mean())
    auc = float(roc_auc_score(dataset.y, scores)) if 0 < dataset.positives < len(dataset) else None
    metrics = {VAL_LOSS: loss, VAL_ACCURACY: accuracy, VAL_AUC: auc, VAL_EXAMPLES: len(dataset)}
    if histogram:
        metrics[SCORE_HISTOGRAM] = score_histogram(scores, dataset.y)
    return metrics


def train(protocol: Protocol, state: Mapping[str, torch.Tensor], dataset: Dataset, *, seed: int,
          epochs: int | None = None) -> tuple[State, float, float]:
    """Mini-batch SGD on BCE-with-logits from `state`, plus FedProx's (mu/2)·||w − w_global||² when mu > 0.

    Returns the new weights (float32, contiguous), the mean training loss of the last epoch and the seconds
    the epochs took (model set-up excluded: torch's first optimizer pulls in a slow one-off import).
    Deterministic for a given seed: the batch order comes from a private generator.
    """
    if len(dataset) == 0:
        raise ValueError("There are no training rows.")
    model = model_from_state(protocol, state).train()
    anchor = {name: tensor.detach().clone() for name, tensor in model.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=protocol.learning_rate)
    generator = torch.Generator().manual_seed(seed)
    x, y = _tensors(dataset)
    last_loss = math.nan
    started = time.perf_counter()
    with _threads_for(model):
        for _ in range(protocol.local_epochs if epochs is None else epochs):
            order = torch.randperm(len(dataset), generator=generator)
            last_loss = _epoch(model, optimizer, protocol, anchor, x[order], y[order])
    return _detached(model), last_loss, time.perf_counter() - started


def _epoch(model: nn.Module, optimizer: torch.optim.Optimizer, protocol: Protocol,
           anchor: Mapping[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> float:
    """One pass over shuffled rows in mini-batches; returns the mean data loss (without the proximal term)."""
    total = 0.0
    for start in range(0, x.shape[0], protocol.batch_size):
        batch_x, batch_y = x[start:start + protocol.batch_size], y[start:start + protocol.batch_size]
        optimizer.zero_grad()
        loss = nn.functional.binary_cross_entropy_with_logits(model(batch_x), batch_y)
        total += loss.item() * batch_y.numel()
        if protocol.proximal_mu > 0:
            loss = loss + _proximal(model, anchor, protocol.proximal_mu)
        loss.backward()
        optimizer.step()
    return total / x.shape[0]


def _proximal(model: nn.Module, anchor: Mapping[str, torch.Tensor], mu: float) -> torch.Tensor:
    """FedProx's proximal term: it pulls local weights towards the global model the round started from."""
    squared = sum(((param - anchor[name]) ** 2).sum() for name, param in model.named_parameters())
    return (mu / 2) * squared


def _detached(model: nn.Module) -> State:
    return {name: tensor.detach().to(torch.float32).contiguous().clone() for name, tensor in model.state_dict().items()}


def local_update(protocol: Protocol, global_state: Mapping[str, torch.Tensor], train_set: Dataset,
                 val_set: Dataset, *, seed: int) -> LocalUpdate:
    """One round at this site: evaluate the global model, train from it, evaluate the result, time the training."""
    base = evaluate(protocol, global_state, val_set, histogram=True)
    state, train_loss, seconds = train(protocol, global_state, train_set, seed=seed)
    metrics = {TRAIN_LOSS: train_loss, **evaluate(protocol, state, val_set), TRAINING_SECONDS: seconds, BASE: base}
    return LocalUpdate(state=state, num_examples=len(train_set), metrics=metrics)


def weight_distance(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> float:
    """Euclidean distance between two sets of weights with the same names."""
    return math.sqrt(sum(float(((a[name].double() - b[name].double()) ** 2).sum()) for name in a))


def check_features(protocol: Protocol, dataset: Dataset) -> None:
    """The study's model takes `num_features` inputs; a data file with a different count cannot train it."""
    if len(dataset.features) != protocol.num_features:
        raise DataError(f"The study's model takes {protocol.num_features} features; this data file has "
                        f"{len(dataset.features)} besides the label.")

