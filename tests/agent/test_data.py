"""The site's CSV: errors a hospital can act on, a split that never changes, statistics and standardization."""

import numpy as np
import pytest

from sites.agent.data import DataError, Dataset, load_csv, load_table, local_statistics, split, standardize


def write(tmp_path, text: str):
    path = tmp_path / "site.csv"
    path.write_text(text)
    return path


def dataset(n: int = 50) -> Dataset:
    rng = np.random.default_rng(1)
    return Dataset(features=["a", "b"], x=rng.normal(size=(n, 2)), y=(np.arange(n) % 5 == 0).astype(np.float32))


def test_it_reads_features_in_file_order_without_the_label(tmp_path):
    data = load_csv(write(tmp_path, "b,target,a\n1,0,2.5\n3,1,4\n"))
    assert data.features == ["b", "a"]
    assert data.x.tolist() == [[1.0, 2.5], [3.0, 4.0]] and data.y.tolist() == [0.0, 1.0]


def test_it_names_a_missing_label_column_and_the_columns_it_found(tmp_path):
    with pytest.raises(DataError, match="no label column 'outcome'.*columns are: a, target.*--label"):
        load_csv(write(tmp_path, "a,target\n1,0\n"), label="outcome")


def test_it_points_at_the_line_and_column_of_a_non_numeric_cell(tmp_path):
    with pytest.raises(DataError, match="Line 3 .*column 'a': 'n/a' is not a number"):
        load_table(write(tmp_path, "a,target\n1,0\nn/a,1\n"))


def test_it_refuses_infinite_values_ragged_rows_and_empty_files(tmp_path):
    with pytest.raises(DataError, match="not a finite number"):
        load_table(write(tmp_path, "a,target\ninf,0\n"))
    with pytest.raises(DataError, match="Line 2 .* has 3 cells; the header has 2"):
        load_table(write(tmp_path, "a,target\n1,0,7\n"))
    with pytest.raises(DataError, match="is empty"):
        load_table(write(tmp_path, ""))
    with pytest.raises(DataError, match="does not exist"):
        load_table(tmp_path / "missing.csv")


def test_it_refuses_a_label_that_is_not_binary(tmp_path):
    with pytest.raises(DataError, match="must hold 0 or 1; row 3 .* holds 2"):
        load_csv(write(tmp_path, "a,target\n1,0\n2,2\n"))


def test_it_splits_the_same_way_for_the_same_seed_and_differently_for_another():
    first, second, other = split(dataset(), 0.2, seed=7), split(dataset(), 0.2, seed=7), split(dataset(), 0.2, seed=8)
    assert np.array_equal(first[1].x, second[1].x) and np.array_equal(first[0].x, second[0].x)
    assert not np.array_equal(first[1].x, other[1].x)


def test_it_keeps_each_labels_share_in_the_validation_split_and_loses_no_row():
    train, val = split(dataset(50), 0.2, seed=0)
    assert (len(train), len(val)) == (40, 10)
    assert (train.positives, val.positives) == (8, 2)  # 20% positive in both parts
    together = np.concatenate([train.x, val.x])
    assert sorted(map(tuple, together)) == sorted(map(tuple, dataset(50).x))


def test_it_sums_counts_and_squares_over_the_training_rows():
    train = Dataset(features=["a", "b"], x=np.array([[1.0, -2.0], [3.0, 4.0]]), y=np.array([0, 1], dtype=np.float32))
    assert local_statistics(train) == {"features": ["a", "b"], "count": 2, "sum": [4.0, 2.0], "sum_sq": [10.0, 20.0]}


def test_it_standardizes_with_the_coordinators_mean_and_std_matched_by_name():
    data = Dataset(features=["a", "b"], x=np.array([[10.0, 1.0], [14.0, 3.0]]), y=np.array([0, 1], dtype=np.float32))
    sent_in_another_order = {"features": ["b", "a"], "mean": [2.0, 12.0], "std": [1.0, 2.0]}
    assert standardize(data, sent_in_another_order).x.tolist() == [[-1.0, -1.0], [1.0, 1.0]]


def test_it_only_centres_a_feature_with_zero_spread():
    data = Dataset(features=["a"], x=np.array([[5.0], [5.0]]), y=np.array([0, 1], dtype=np.float32))
    assert standardize(data, {"features": ["a"], "mean": [5.0], "std": [0.0]}).x.tolist() == [[0.0], [0.0]]


def test_it_refuses_to_standardize_when_feature_names_differ():
    data = Dataset(features=["a", "b"], x=np.zeros((2, 2)), y=np.array([0, 1], dtype=np.float32))
    with pytest.raises(DataError, match="expects c which the file lacks.*has b which the study does not use"):
        standardize(data, {"features": ["a", "c"], "mean": [0, 0], "std": [1, 1]})
