"""The site's own data: read the CSV, split it, summarise it for the statistics round and standardize it.

Rows never leave this module in any form other than counts, sums and sums of squares (statistics round)
or the weights trained on them (training rounds). Imports no Django.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_LABEL = "target"
# Cells read as missing (NaN; empty, or R and pandas' "NA"): counted in the registration, refused for training.
MISSING_CELLS = {"", "na"}


class DataError(ValueError):
    """The data file or its use cannot go ahead; the message says why in plain words."""


@dataclass(frozen=True)
class Table:
    """Every column of the CSV as float64, in file order (label included)."""

    columns: list[str]
    values: np.ndarray  # shape (rows, columns)
    source: str = "the data file"

    def dataset(self, label: str, order: Sequence[str] = ()) -> Dataset:
        """Features are every column except `label`, in file order, or in `order` (the protocol's declared
        features) when they are the same names; the label must be 0 or 1 and no cell may be missing."""
        if label not in self.columns:
            raise DataError(f"{self.source} has no label column {label!r}; its columns are: "
                            f"{', '.join(self.columns)}. Pass --label with the right column name.")
        self._refuse_missing()
        index = self.columns.index(label)
        labels = self.values[:, index]
        bad = np.flatnonzero((labels != 0) & (labels != 1))
        if bad.size:
            raise DataError(f"The label column {label!r} must hold 0 or 1; row {int(bad[0]) + 2} of {self.source} "
                            f"holds {labels[bad[0]]:g}.")
        features = [name for i, name in enumerate(self.columns) if i != index]
        if not features:
            raise DataError(f"{self.source} has no feature columns besides the label {label!r}.")
        x = np.delete(self.values, index, axis=1)
        if order and sorted(order) == sorted(features) and list(order) != features:
            # The model's inputs are positional: every site feeds them in the protocol's order.
            position = {name: i for i, name in enumerate(features)}
            x, features = x[:, [position[name] for name in order]], list(order)
        return Dataset(features=features, x=x, y=labels.astype(np.float32))

    def _refuse_missing(self) -> None:
        rows, columns = np.nonzero(np.isnan(self.values))
        if rows.size:
            name = self.columns[int(columns[0])]
            count = int(np.isnan(self.values[:, columns[0]]).sum())
            raise DataError(f"Column {name!r} of {self.source} has {count} missing value(s) (first on line "
                            f"{int(rows[0]) + 2}); the model trains on complete rows only: fill in or drop them.")

    def summary(self, label: str) -> dict[str, Any]:
        """What the agent registers for a study (`consortium.federated.dataset_schema`): row count, each
        feature's name, type and missing values, and the label's balance. Counts only, never rows."""
        present = label in self.columns
        labels = self.values[:, self.columns.index(label)] if present else np.zeros(0)
        positives, negatives = int((labels == 1).sum()), int((labels == 0).sum())
        features = [{"name": name, "type": _feature_type(self.values[:, i]), "missing": int(np.isnan(
            self.values[:, i]).sum())} for i, name in enumerate(self.columns) if name != label]
        return {"rows": int(self.values.shape[0]), "label_column": label, "features": features,
                "label": {"present": present, "positives": positives, "negatives": negatives,
                          "other": int(labels.size - positives - negatives)}}


def _feature_type(column: np.ndarray) -> str:
    """binary (only 0 and 1), integer (whole numbers) or float; missing cells are ignored."""
    known = column[~np.isnan(column)]
    if known.size and np.isin(known, (0.0, 1.0)).all():
        return "binary"
    return "integer" if known.size and (known == np.round(known)).all() else "float"


@dataclass(frozen=True)
class Dataset:
    """Features (float64, rows x features) and a 0/1 label per row."""

    features: list[str]
    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def subset(self, rows: np.ndarray) -> Dataset:
        return Dataset(features=list(self.features), x=self.x[rows], y=self.y[rows])

    @property
    def positives(self) -> int:
        return int(self.y.sum())


def load_table(path: str | Path) -> Table:
    """Read a CSV with a header row; every cell must be a finite number or empty ("NA"): missing."""
    path = Path(path)
    source = str(path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.reader(handle))
    except FileNotFoundError as exc:
        raise DataError(f"The data file {source} does not exist.") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"The data file {source} cannot be read: {exc}.") from exc
    rows = [row for row in rows if any(cell.strip() for cell in row)]
    if not rows:
        raise DataError(f"The data file {source} is empty; it needs a header row and data rows.")
    columns = [name.strip() for name in rows[0]]
    _check_header(columns, source)
    if len(rows) == 1:
        raise DataError(f"The data file {source} has a header but no data rows.")
    values = np.array([_parse_row(row, columns, line, source) for line, row in enumerate(rows[1:], start=2)])
    return Table(columns=columns, values=values, source=source)


def _check_header(columns: list[str], source: str) -> None:
    if any(not name for name in columns):
        raise DataError(f"The header row of {source} has an empty column name.")
    duplicates = sorted({name for name in columns if columns.count(name) > 1})
    if duplicates:
        raise DataError(f"The header row of {source} repeats column names: {', '.join(duplicates)}.")


def _parse_row(row: list[str], columns: list[str], line: int, source: str) -> list[float]:
    if len(row) != len(columns):
        raise DataError(f"Line {line} of {source} has {len(row)} cells; the header has {len(columns)} columns.")
    parsed = []
    for name, cell in zip(columns, row, strict=True):
        if cell.strip().lower() in MISSING_CELLS:
            parsed.append(math.nan)
            continue
        try:
            value = float(cell)
        except ValueError:
            raise DataError(f"Line {line} of {source}, column {name!r}: {cell.strip()!r} is not a number.") from None
        if not math.isfinite(value):
            raise DataError(f"Line {line} of {source}, column {name!r}: {cell.strip()!r} is not a finite number.")
        parsed.append(value)
    return parsed


def load_csv(path: str | Path, label: str = DEFAULT_LABEL) -> Dataset:
    """Load a CSV as features and labels in one step."""
    return load_table(path).dataset(label)


def split(dataset: Dataset, val_fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """A deterministic, stratified train/validation split: each label keeps its share in both parts."""
    if not 0 <= val_fraction < 1:
        raise DataError(f"The validation fraction must be at least 0 and below 1; got {val_fraction}.")
    rng = np.random.default_rng(seed)
    train_rows, val_rows = [], []
    for label in (0.0, 1.0):
        rows = np.flatnonzero(dataset.y == label)
        rows = rows[rng.permutation(rows.size)]
        n_val = int(round(rows.size * val_fraction))
        if val_fraction > 0 and rows.size >= 2:
            n_val = min(max(n_val, 1), rows.size - 1)  # both parts keep this label when they can
        val_rows.append(rows[:n_val])
        train_rows.append(rows[n_val:])
    return dataset.subset(np.sort(np.concatenate(train_rows))), dataset.subset(np.sort(np.concatenate(val_rows)))


def local_statistics(train: Dataset) -> dict[str, Any]:
    """What the statistics round sends: count, and per feature the sum and sum of squares over training rows."""
    return {
        "features": list(train.features),
        "count": len(train),
        "sum": [float(v) for v in train.x.sum(axis=0)],
        "sum_sq": [float(v) for v in np.square(train.x).sum(axis=0)],
    }


def own_standardization(train: Dataset) -> dict[str, Any]:
    """This site's own mean and SD of each feature over its training rows: what a site standardizes with when the
    study has no statistics round to pool them (a secure study: that round would send sums in the clear)."""
    mean = train.x.mean(axis=0)
    std = train.x.std(axis=0)
    return {"features": list(train.features), "mean": [float(v) for v in mean],
            "std": [float(v) if v > 1e-12 else 1.0 for v in std]}


def standardize(dataset: Dataset, standardization: Mapping[str, Sequence[Any]]) -> Dataset:
    """(x - mean) / std with the global statistics the coordinator sent, matched to our columns by name.

    Refuses when the feature names differ: a silent reorder or a dropped column would train a model on
    the wrong inputs. A feature with zero spread is only centred.
    """
    names = [str(name) for name in standardization["features"]]
    mean, std = standardization["mean"], standardization["std"]
    if len(mean) != len(names) or len(std) != len(names):
        raise DataError("The coordinator's standardization has a different number of names, means and deviations.")
    if sorted(names) != sorted(dataset.features) or len(set(names)) != len(names):
        missing = sorted(set(names) - set(dataset.features))
        extra = sorted(set(dataset.features) - set(names))
        raise DataError(f"The study's features do not match this data file: the study expects "
                        f"{', '.join(missing) or 'no other columns'} which the file lacks, and the file has "
                        f"{', '.join(extra) or 'no other columns'} which the study does not use.")
    position = {name: i for i, name in enumerate(names)}
    order = [position[name] for name in dataset.features]
    mean_v = np.asarray(mean, dtype=np.float64)[order]
    std_v = np.asarray(std, dtype=np.float64)[order]
    std_v = np.where(std_v > 0, std_v, 1.0)
    return Dataset(features=list(dataset.features), x=(dataset.x - mean_v) / std_v, y=dataset.y)


def standardization_of(dataset: Dataset) -> dict[str, Any]:
    """Mean and (population) standard deviation of a data set, in the coordinator's format."""
    return {
        "features": list(dataset.features),
        "mean": [float(v) for v in dataset.x.mean(axis=0)],
        "std": [float(v) for v in dataset.x.std(axis=0)],
    }


def pooled(datasets: Sequence[Dataset]) -> Dataset:
    """Concatenate data sets with the same features (used to train a central reference model)."""
    if not datasets:
        raise DataError("There is nothing to pool.")
    features = datasets[0].features
    if any(d.features != features for d in datasets):
        raise DataError("Data sets with different features cannot be pooled.")
    return Dataset(features=list(features), x=np.concatenate([d.x for d in datasets]),
                   y=np.concatenate([d.y for d in datasets]))
