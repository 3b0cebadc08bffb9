"""The demo's data: scikit-learn's breast cancer Wisconsin set (569 rows, 30 features; ships with scikit-learn,
nothing is downloaded), split into a held-out test set and non-IID site partitions. Imports no Django.

- `test.csv`: a stratified 20% that no site trains on, for comparing federated, single-site and central models.
- `site_<code>.csv`: the other 80%, split so sites differ in size (about 53/27/13/7% for four sites: 245, 119,
  61 and 30 rows) and in label balance (positive rates from about 20% to 85%), as hospitals with different
  case mixes do. The data set is easy (any site alone reaches a test AUC near 0.97), so the sizes are skewed
  enough that pooling visibly helps the small sites.

The label column is `target` (scikit-learn's coding: 1 = benign, 0 = malignant).

`train_local` and `evaluate` train and score reference models with the agent's own training code, so a
federated model can be compared with a model trained on one site's data only and with a central one.
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.datasets import load_breast_cancer
from sklearn.model_selection import train_test_split

from consortium.federated.metric_keys import VAL_ACCURACY, VAL_AUC, VAL_EXAMPLES, VAL_LOSS

from .data import DataError, Dataset, pooled, split, standardize
from .training import Protocol, State, train
from .training import evaluate as evaluate_on

LABEL = "target"
TEST_FILE = "test.csv"
TEST_FRACTION = 0.2
DEMO_PROTOCOL = {"model_kind": "logistic_regression", "num_features": 30, "hidden_units": 16, "local_epochs": 1,
                 "batch_size": 32, "learning_rate": 0.05, "proximal_mu": 0.0, "label_column": LABEL}


def demo_dataset() -> Dataset:
    """All 569 rows of the breast cancer Wisconsin data, features named as scikit-learn names them."""
    bunch = load_breast_cancer()
    return Dataset(features=[str(name) for name in bunch.feature_names], x=np.asarray(bunch.data, dtype=np.float64),
                   y=np.asarray(bunch.target, dtype=np.float32))


def feature_names() -> list[str]:
    """The 30 feature columns of the demo's site CSVs, in their order (what the demo study declares)."""
    return list(demo_dataset().features)


def split_test(dataset: Dataset, seed: int, test_fraction: float = TEST_FRACTION) -> tuple[Dataset, Dataset]:
    """(pool for the sites, held-out test set), stratified by label and fixed by `seed`."""
    pool_rows, test_rows = train_test_split(np.arange(len(dataset)), test_size=test_fraction, random_state=seed,
                                            stratify=dataset.y)
    return dataset.subset(np.sort(pool_rows)), dataset.subset(np.sort(test_rows))


def site_shapes(n_sites: int) -> tuple[np.ndarray, np.ndarray]:
    """Target size shares (geometric, halving per site) and target positive rates (0.85 … 0.20, interleaved so
    the second largest site is the least positive one)."""
    sizes = 0.5 ** np.arange(n_sites)
    rates = np.linspace(0.85, 0.20, n_sites)
    order = [i // 2 if i % 2 == 0 else n_sites - 1 - i // 2 for i in range(n_sites)]
    return sizes / sizes.sum(), rates[order]


def partition_rows(labels: np.ndarray, n_sites: int, seed: int) -> list[np.ndarray]:
    """Disjoint row indices per site covering every row: each label's rows are dealt out in proportion to
    size share × (rate or 1 − rate), rounded by largest remainder so the counts add up exactly."""
    if n_sites < 1:
        raise ValueError("The demo needs at least one site.")
    sizes, rates = site_shapes(n_sites)
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in range(n_sites)]
    for label, weights in ((1.0, sizes * rates), (0.0, sizes * (1 - rates))):
        rows = np.flatnonzero(labels == label)
        rows = rows[rng.permutation(rows.size)]
        counts = _largest_remainder(weights / weights.sum(), rows.size)
        for site, chunk in enumerate(np.split(rows, np.cumsum(counts)[:-1])):
            parts[site].append(chunk)
    return [np.sort(np.concatenate(chunks)) for chunks in parts]


def _largest_remainder(shares: np.ndarray, total: int) -> np.ndarray:
    exact = shares * total
    counts = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - counts))[: total - counts.sum()]:
        counts[i] += 1
    return counts


def make_partitions(site_codes: Sequence[str], seed: int = 0) -> tuple[dict[str, Dataset], Dataset]:
    """({site code: its partition}, held-out test set), in memory."""
    pool, test = split_test(demo_dataset(), seed)
    parts = partition_rows(pool.y, len(site_codes), seed)
    return {code: pool.subset(rows) for code, rows in zip(site_codes, parts, strict=True)}, test


def write_csv(dataset: Dataset, path: Path, label: str = LABEL) -> Path:
    """Header of feature names plus the label column; values written exactly (repr) so reading them back is
    lossless."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow([*dataset.features, label])
        for features, label in zip(dataset.x, dataset.y, strict=True):
            writer.writerow([repr(float(v)) for v in features] + [int(label)])
    return path


def write_partitions(directory: str | Path, site_codes: Sequence[str], seed: int = 0) -> dict[str, Path]:
    """Write `site_<code>.csv` for every site and `test.csv` into `directory`; returns {code: CSV path}."""
    for code in site_codes:
        if not re.fullmatch(r"[A-Za-z0-9_-]+", code):
            raise ValueError(f"Site code {code!r} may only hold letters, digits, '-' and '_'.")
    if len(set(site_codes)) != len(site_codes):
        raise ValueError("Site codes must be distinct.")
    directory = Path(directory)
    sites, test = make_partitions(site_codes, seed)
    write_csv(test, directory / TEST_FILE)
    return {code: write_csv(data, directory / f"site_{code}.csv") for code, data in sites.items()}


def hold_out(sites: Mapping[str, Dataset], fraction: float, seed: int) -> tuple[dict[str, Dataset], Dataset]:
    """({site: the rows it keeps to train on}, the held-out test rows of every site together): a stratified
    `fraction` of each site's rows, fixed by `seed`, taken before any training so no site ever sees them."""
    if not 0 < fraction < 1:
        raise DataError(f"The held-out fraction must lie between 0 and 1; got {fraction}.")
    parts = {code: split(rows, fraction, seed) for code, rows in sites.items()}
    empty = sorted(code for code, (train_part, _) in parts.items() if len(train_part) == 0)
    if empty:
        raise DataError(f"No rows would be left to train on at {', '.join(empty)}; hold out a smaller fraction.")
    return {code: train_part for code, (train_part, _) in parts.items()}, pooled([test for _, test in parts.values()])


def train_local(rows: Dataset, protocol: Mapping[str, Any] | Protocol, epochs: int, *, seed: int = 0,
                standardization: Mapping[str, Any] | None = None) -> State:
    """A model trained on `rows` alone, from the protocol's initial weights, with the agent's training code
    (`epochs` passes of mini-batch SGD). `standardization` ({"features", "mean", "std"}) is applied first."""
    protocol = protocol if isinstance(protocol, Protocol) else Protocol.from_json(protocol)
    rows = standardize(rows, standardization) if standardization else rows
    state, _, _ = train(protocol, protocol.initial_state(seed), rows, seed=seed, epochs=epochs)
    return state


def evaluate(state: Mapping[str, torch.Tensor], rows: Dataset, protocol: Mapping[str, Any] | Protocol | None = None,
             *, standardization: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """{"loss", "accuracy", "auc", "examples"} of `state` on `rows` (standardized first when given).
    Without `protocol` the model's kind and sizes are read from the tensor names and shapes."""
    protocol = protocol_of(state) if protocol is None else protocol
    protocol = protocol if isinstance(protocol, Protocol) else Protocol.from_json(protocol)
    rows = standardize(rows, standardization) if standardization else rows
    metrics = evaluate_on(protocol, state, rows)
    return {"loss": metrics[VAL_LOSS], "accuracy": metrics[VAL_ACCURACY], "auc": metrics[VAL_AUC],
            "examples": metrics[VAL_EXAMPLES]}


def protocol_of(state: Mapping[str, torch.Tensor]) -> Protocol:
    """The zoo model that `state` belongs to, from its tensor names and shapes."""
    if "linear.weight" in state:
        return Protocol(model_kind="logistic_regression", num_features=int(state["linear.weight"].shape[1]))
    if "hidden.weight" in state:
        hidden = state["hidden.weight"]
        return Protocol(model_kind="mlp", num_features=int(hidden.shape[1]), hidden_units=int(hidden.shape[0]))
    raise ValueError(f"Not a model from consortium.federated.zoo: tensors {sorted(state)}.")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sites.agent.demo_data",
                                description="Write the demo's non-IID site partitions and held-out test set.")
    p.add_argument("outdir", help="folder for site_<code>.csv and test.csv")
    p.add_argument("--sites", default="amc,charite,clinic,hus", help="comma-separated site codes")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    codes = [code.strip() for code in args.sites.split(",") if code.strip()]
    try:
        paths = write_partitions(args.outdir, codes, args.seed)
    except ValueError as exc:
        p.error(str(exc))
    sites, test = make_partitions(codes, args.seed)
    for code, path in paths.items():
        data = sites[code]
        print(f"{path}: {len(data)} rows, {data.positives / len(data):.0%} positive")
    print(f"{Path(args.outdir) / TEST_FILE}: {len(test)} rows held out (no site trains on them)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
