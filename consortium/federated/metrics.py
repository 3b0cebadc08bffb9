"""Metrics of one model over every site's validation split, computed without pooling a single row.

Each site reports, besides its own loss, accuracy and ROC AUC, how the model's scores (predicted
probabilities) of its validation rows fall into `SCORE_BINS` fixed bins over [0, 1], counted separately
for positive and negative rows. The coordinator sums those histograms and computes the ROC AUC over the
union of the sites' validation splits from the sums: the Mann-Whitney statistic, with a positive and a
negative in the same bin counted as half a win, exactly as a tie is. That equals the AUC of the pooled
scores up to the ties the binning creates (`binning_error_bound`), and it stays defined when some sites
hold one class only, where each of those sites' own AUC is not.

Pure Python and numpy; imports no Django (the site agent uses it too).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

SCORE_BINS = 100
HISTOGRAM_KEYS = ("positives", "negatives")
ONE_CLASS = "only one class in the validation split"
NOT_REPORTED = "the site reported no AUC and no score histogram"

Histogram = dict[str, list[int]]


def score_histogram(scores: Sequence[float] | np.ndarray, labels: Sequence[float] | np.ndarray,
                    bins: int = SCORE_BINS) -> Histogram:
    """Counts of positive and of negative rows per score bin: bin i holds scores in [i/bins, (i+1)/bins),
    the last bin also 1.0."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    positive = np.asarray(labels, dtype=np.float64).reshape(-1) >= 0.5
    if scores.shape != positive.shape:
        raise ValueError(f"{scores.size} scores for {positive.size} labels.")
    if not np.all(np.isfinite(scores)):
        raise ValueError("Scores must be finite.")
    index = np.clip(np.floor(scores * bins), 0, bins - 1).astype(np.int64)
    return {"positives": np.bincount(index[positive], minlength=bins).tolist(),
            "negatives": np.bincount(index[~positive], minlength=bins).tolist()}


def summed(histograms: Iterable[Mapping[str, Sequence[int]]], bins: int = SCORE_BINS) -> Histogram:
    """The histogram of the union of the sites' validation rows."""
    total = {key: [0] * bins for key in HISTOGRAM_KEYS}
    for histogram in histograms:
        for key in HISTOGRAM_KEYS:
            total[key] = [a + b for a, b in zip(total[key], histogram[key], strict=True)]
    return total


def subtracted(total: Mapping[str, Sequence[int]], histogram: Mapping[str, Sequence[int]]) -> Histogram:
    """`total` without one of the histograms summed into it."""
    return {key: [a - b for a, b in zip(total[key], histogram[key], strict=True)] for key in HISTOGRAM_KEYS}


def auc_from_histogram(histogram: Mapping[str, Sequence[int]]) -> float | None:
    """ROC AUC from per-bin class counts: P(score of a positive > score of a negative), a shared bin
    counting one half. None when either class is absent (the AUC is then undefined)."""
    positives, negatives = histogram["positives"], histogram["negatives"]
    n_pos, n_neg = sum(positives), sum(negatives)
    if n_pos == 0 or n_neg == 0:
        return None
    wins, below = 0.0, 0
    for pos, neg in zip(positives, negatives, strict=True):
        wins += pos * (below + neg / 2)
        below += neg
    return wins / (n_pos * n_neg)


def binning_error_bound(histogram: Mapping[str, Sequence[int]]) -> float:
    """How far `auc_from_histogram` can be from the AUC of the exact scores: half the share of
    (positive, negative) pairs that share a bin (each such pair counts 1/2 instead of 0 or 1)."""
    positives, negatives = histogram["positives"], histogram["negatives"]
    pairs = sum(positives) * sum(negatives)
    return 0.5 * sum(p * n for p, n in zip(positives, negatives, strict=True)) / pairs if pairs else 0.0


def auc_missing_reason(histogram: Mapping[str, Sequence[int]] | None) -> str:
    """Why a site's AUC is undefined, in words for people (never its class counts)."""
    if histogram is None:
        return NOT_REPORTED
    return ONE_CLASS if min(sum(histogram["positives"]), sum(histogram["negatives"])) == 0 else NOT_REPORTED


def histogram_problem(histogram: Any, val_examples: Any, bins: int = SCORE_BINS) -> str | None:
    """What is wrong with a histogram a site sent (untrusted input), or None: exactly the two keys, each a
    list of `bins` non-negative integers, together counting the site's `val_examples` validation rows."""
    if not isinstance(histogram, Mapping) or set(histogram) != set(HISTOGRAM_KEYS):
        return f"score_histogram must be an object with exactly {' and '.join(HISTOGRAM_KEYS)}."
    for key in HISTOGRAM_KEYS:
        counts = histogram[key]
        if not isinstance(counts, list) or len(counts) != bins:
            return f"score_histogram.{key} must be a list of {bins} counts."
        if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts):
            return f"score_histogram.{key} must hold non-negative integers."
    if not _is_count(val_examples):
        return "val_examples must be a non-negative integer when a score histogram is sent."
    counted = sum(histogram["positives"]) + sum(histogram["negatives"])
    if counted != val_examples:
        return f"score_histogram counts {counted} rows; val_examples says {val_examples}."
    return None


def _is_count(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, float):
        return math.isfinite(value) and value.is_integer() and value >= 0
    return isinstance(value, int) and value >= 0
