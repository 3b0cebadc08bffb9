"""`run_study_demo` on someone's own data: a folder of site CSVs (the site code from each file name), a held-out
test split (a file, or a stratified share of each site's rows taken before training), and plain refusals of
what cannot run. The federation itself runs in tests/integration/test_federation.py."""

from pathlib import Path

import numpy as np
import pytest
from django.core.management import CommandError, call_command

from aggregation.demo import own_federation, site_files
from sites.agent.data import DataError, Dataset, load_csv
from sites.agent.demo_data import demo_dataset, write_csv

LABEL = "malignant"


def breast_cancer_sites(folder: Path, names: tuple[str, ...] = ("site_north.csv", "South.csv", "site_east-2.csv"),
                        seed: int = 0) -> dict[str, Dataset]:
    """scikit-learn's breast cancer rows dealt to one CSV per file name, labelled `malignant` (1 - target)."""
    data = demo_dataset()
    data = Dataset(features=data.features, x=data.x, y=1 - data.y)
    rows = np.random.default_rng(seed).permutation(len(data))
    parts = {name: data.subset(np.sort(chunk)) for name, chunk in zip(names, np.array_split(rows, len(names)),
                                                                          strict=True)}
    for name, part in parts.items():
        write_csv(part, folder / name, LABEL)
    return parts


def test_it_names_each_site_after_its_file(tmp_path):
    breast_cancer_sites(tmp_path)
    (tmp_path / "notes.txt").write_text("not a site")
    assert site_files(tmp_path) == {"north": tmp_path / "site_north.csv", "south": tmp_path / "South.csv",
                                    "east-2": tmp_path / "site_east-2.csv"}
    assert set(site_files(tmp_path, exclude=tmp_path / "South.csv")) == {"north", "east-2"}


def test_it_holds_out_a_stratified_share_of_each_sites_rows_before_training(tmp_path):
    parts = breast_cancer_sites(tmp_path / "in")
    data = own_federation(tmp_path / "in", label=LABEL, out=tmp_path / "run", seed=3, holdout=0.25)
    assert set(data.files) == {"north", "south", "east-2"} and data.label == LABEL and data.num_features == 30
    total = sum(len(part) for part in parts.values())
    assert sum(len(rows) for rows in data.train.values()) + len(data.test) == total
    assert len(data.test) == pytest.approx(0.25 * total, abs=3)
    for code, name in (("north", "site_north.csv"), ("south", "South.csv")):
        written = load_csv(data.files[code], LABEL)  # what the site's agent reads: its training rows only
        assert data.files[code].parent == tmp_path / "run" and len(written) == len(data.train[code])
        kept = {row.tobytes() for row in written.x}
        assert not any(row.tobytes() in kept for row in data.test.x), "a held-out row is in a site's training file"
        share = written.positives / len(written)
        assert share == pytest.approx(parts[name].positives / len(parts[name]), abs=0.03), "stratified"
    again = own_federation(tmp_path / "in", label=LABEL, out=tmp_path / "again", seed=3, holdout=0.25)
    assert np.array_equal(again.test.x, data.test.x), "the same seed holds out the same rows"


def test_it_takes_a_test_csv_as_the_held_out_split_and_no_site(tmp_path):
    breast_cancer_sites(tmp_path, names=("site_a.csv", "site_b.csv", "test.csv"))
    data = own_federation(tmp_path, label=LABEL, out=tmp_path / "run", seed=0, test_csv=tmp_path / "test.csv")
    assert set(data.files) == {"a", "b"} and data.files["a"] == tmp_path / "site_a.csv"
    assert len(data.test) == len(load_csv(tmp_path / "test.csv", LABEL))


@pytest.mark.parametrize(("make", "says"), [
    (lambda d: (d / "site_a b.csv").write_text("x,malignant\n1,0\n"), "may hold only letters, digits"),
    (lambda d: [(d / name).write_text("x,malignant\n1,0\n2,1\n") for name in ("site_a.csv", "A.csv")],
     "are both site 'a'"),
    (lambda d: [(d / "a.csv").write_text("x,malignant\n1,0\n2,1\n"), (d / "b.csv").write_text("y,malignant\n1,0\n")],
     "other feature columns"),
    (lambda d: (d / "a.csv").write_text("x,target\n1,0\n2,1\n"), "has no label column 'malignant'"),
    (lambda d: None, "holds no site CSV"),
], ids=["bad-name", "same-code", "other-features", "no-label", "empty"])
def test_it_refuses_a_folder_it_cannot_federate_and_says_why(tmp_path, make, says):
    folder = tmp_path / "in"
    folder.mkdir()
    make(folder)
    with pytest.raises(DataError, match=says):
        own_federation(folder, label=LABEL, out=tmp_path / "run", seed=0)


def test_it_refuses_held_out_rows_of_one_class(tmp_path):
    (tmp_path / "a.csv").write_text("x,malignant\n1,0\n2,1\n3,1\n")
    (tmp_path / "t.csv").write_text("x,malignant\n1,1\n2,1\n")
    with pytest.raises(DataError, match="one class only"):
        own_federation(tmp_path, label=LABEL, out=tmp_path / "run", seed=0, test_csv=tmp_path / "t.csv")


@pytest.mark.parametrize(("args", "says"), [
    (["--test-csv", "test.csv"], "go with --data-dir"),
    (["--holdout-fraction", "0.3"], "go with --data-dir"),
    (["--data-dir", "{folder}", "--label", LABEL, "--quorum", "4"], "--quorum 4 is more than the 3 sites"),
    (["--data-dir", "{folder}", "--label", LABEL, "--holdout-fraction", "1.5"], "between 0 and 1"),
    (["--data-dir", "{folder}"], "has no label column 'target'"),
    (["--strategy", "fedsgd"], "invalid choice: 'fedsgd'"),
    (["--rounds", "0"], "at least 1"),
], ids=["test-csv-alone", "holdout-alone", "quorum", "holdout-range", "label", "strategy", "rounds"])
def test_the_command_refuses_what_cannot_run_before_starting_anything(tmp_path, settings, args, says):
    settings.DATA_DIR = tmp_path / "data"
    breast_cancer_sites(tmp_path / "in")
    with pytest.raises(CommandError, match=says):
        call_command("run_study_demo", *[arg.format(folder=tmp_path / "in") for arg in args])
    assert not (tmp_path / "data" / "demo" / "logs").exists(), "no process was started"
