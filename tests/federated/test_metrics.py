"""The federated ROC AUC (`consortium.federated.metrics`): from the sites' per-class score histograms, the AUC of
the pooled validation rows up to binning, without pooling a row; and the checks on a histogram a site sends."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score

from consortium.federated.metrics import (
    SCORE_BINS,
    auc_from_histogram,
    auc_missing_reason,
    binning_error_bound,
    histogram_problem,
    score_histogram,
    summed,
)
from sites.agent.data import split, standardization_of, standardize
from sites.agent.demo_data import DEMO_PROTOCOL, make_partitions, train_local
from sites.agent.training import Protocol, model_from_state


def sites_scores(sites: list[tuple[np.ndarray, np.ndarray]]) -> tuple[float | None, float, float]:
    """(federated AUC from the summed histograms, sklearn's AUC of the pooled rows, the binning error bound)."""
    total = summed(score_histogram(scores, labels) for scores, labels in sites)
    pooled_scores = np.concatenate([scores for scores, _ in sites])
    pooled_labels = np.concatenate([labels for _, labels in sites])
    return auc_from_histogram(total), roc_auc_score(pooled_labels, pooled_scores), binning_error_bound(total)


site = st.integers(min_value=1, max_value=40).flatmap(lambda n: st.tuples(
    st.lists(st.floats(min_value=0, max_value=1), min_size=n, max_size=n),
    st.lists(st.sampled_from([0.0, 1.0]), min_size=n, max_size=n)))


@settings(max_examples=200, deadline=None)
@given(st.lists(site, min_size=1, max_size=5))
def test_it_equals_sklearns_auc_of_the_pooled_rows_up_to_the_binning_error(sites):
    sites = [(np.array(scores), np.array(labels)) for scores, labels in sites]
    if len(set(np.concatenate([labels for _, labels in sites]))) < 2:
        assert auc_from_histogram(summed(score_histogram(s, labels) for s, labels in sites)) is None
        return
    federated, pooled, bound = sites_scores(sites)
    assert abs(federated - pooled) <= bound + 1e-12


def test_it_is_exact_when_no_positive_shares_a_bin_with_a_negative():
    rng = np.random.default_rng(0)
    bins = rng.permutation(SCORE_BINS)
    positives = (bins[:40] + rng.uniform(0.1, 0.9, 40)) / SCORE_BINS
    negatives = (bins[40:] + rng.uniform(0.1, 0.9, 60)) / SCORE_BINS
    sites = [(positives[:10], np.ones(10)), (np.concatenate([positives[10:], negatives]), np.r_[np.ones(30),
                                                                                                 np.zeros(60)])]
    federated, pooled, bound = sites_scores(sites)
    assert bound == 0 and federated == pytest.approx(pooled, abs=1e-12)


def test_it_counts_a_positive_and_a_negative_in_one_bin_as_half_a_win_like_a_tie():
    # Equal scores are a tie for sklearn as well: both give one half.
    sites = [(np.array([0.5]), np.array([1.0])), (np.array([0.5]), np.array([0.0]))]
    federated, pooled, _ = sites_scores(sites)
    assert federated == pooled == 0.5


def test_it_stays_defined_when_three_of_four_sites_hold_one_class_on_a_trained_model():
    """The label-skewed federation of issue #8: three sites with one class each have no AUC of their own; the
    federated AUC of the four validation splits together equals the pooled one up to binning."""
    parts, _ = make_partitions(["a", "b", "c", "d"], seed=0)
    pool = parts["a"]
    rows = [pool.subset(np.flatnonzero(pool.y == 1)[:40]), pool.subset(np.flatnonzero(pool.y == 0)[:25]),
            pool.subset(np.flatnonzero(pool.y == 1)[40:70]), parts["b"]]
    stats = standardization_of(parts["b"])
    state = train_local(split(parts["b"], 0.2, seed=0)[0], DEMO_PROTOCOL, 5, standardization=stats)
    model = model_from_state(Protocol.from_json(DEMO_PROTOCOL), state).eval()
    sites = []
    for data in rows:
        x = standardize(data, stats).x
        with torch.no_grad():
            scores = torch.sigmoid(model(torch.as_tensor(x, dtype=torch.float32))).numpy()
        sites.append((scores, data.y))
    assert [auc_from_histogram(score_histogram(s, lab)) is None for s, lab in sites] == [True, True, True, False]
    federated, pooled, bound = sites_scores(sites)
    assert federated is not None and abs(federated - pooled) <= bound and bound < 0.05


def test_it_puts_a_score_of_one_in_the_last_bin_and_zero_in_the_first():
    histogram = score_histogram([0.0, 1.0, 0.999, 0.5], [1, 0, 0, 1])
    assert histogram["positives"][0] == 1 and histogram["positives"][50] == 1
    assert histogram["negatives"][SCORE_BINS - 1] == 2 and sum(histogram["negatives"]) == 2


def test_it_says_why_a_site_has_no_auc():
    one_class = score_histogram([0.2, 0.7], [1, 1])
    assert auc_missing_reason(one_class) == "only one class in the validation split"
    assert auc_missing_reason(None) == "the site reported no AUC and no score histogram"


GOOD = score_histogram([0.1, 0.2, 0.9], [0, 0, 1])


@pytest.mark.parametrize(("histogram", "val_examples", "says"), [
    ([1, 2], 3, "exactly positives and negatives"),
    ({"positives": GOOD["positives"]}, 3, "exactly positives and negatives"),
    ({**GOOD, "extra": []}, 3, "exactly positives and negatives"),
    ({**GOOD, "positives": GOOD["positives"][:-1]}, 3, "a list of 100 counts"),
    ({**GOOD, "positives": "1" * SCORE_BINS}, 3, "a list of 100 counts"),
    ({**GOOD, "negatives": [-1] + GOOD["negatives"][1:]}, 3, "non-negative integers"),
    ({**GOOD, "negatives": [0.5] + GOOD["negatives"][1:]}, 3, "non-negative integers"),
    ({**GOOD, "negatives": [True] + GOOD["negatives"][1:]}, 3, "non-negative integers"),
    (GOOD, 4, "counts 3 rows; val_examples says 4"),
    (GOOD, None, "val_examples must be a non-negative integer"),
    (GOOD, 2.5, "val_examples must be a non-negative integer"),
], ids=["not-an-object", "missing-key", "extra-key", "short", "text", "negative", "fraction", "boolean",
        "count-mismatch", "no-rows", "fractional-rows"])
def test_it_refuses_a_malformed_histogram_with_the_reason(histogram, val_examples, says):
    assert says in histogram_problem(histogram, val_examples)


def test_it_accepts_a_well_formed_histogram():
    assert histogram_problem(GOOD, 3) is None
