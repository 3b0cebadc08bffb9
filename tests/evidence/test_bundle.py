"""Export bundles written from a log verify offline, whatever their range, filter, format or packaging."""

import json
import zipfile

import pytest

from consortium.evidence import bundle as fmt
from consortium.evidence import signing
from consortium.evidence.canonical import EXPORT_FIELDS, LEAF_FIELDS
from consortium.evidence.errors import EvidenceError
from consortium.evidence.memory import MemoryLog
from tests.evidence.support import read_lines, synthetic_log, verify, write


@pytest.fixture(scope="module")
def key():
    return signing.generate_private_key()


@pytest.fixture(scope="module")
def log():
    return synthetic_log(75)


@pytest.mark.parametrize("events_format", ["jsonl", "csv"])
@pytest.mark.parametrize(("first", "last"), [(1, None), (1, 75), (20, 50), (2, 2), (1, 0), (76, 75), (75, 75),
                                             (33, 74)])
@pytest.mark.parametrize(("filters", "wanted"), [
    ({}, lambda e: True),
    ({"study_id": 2}, lambda e: e["study_id"] == 2),
    ({"action": {"prefix": "studies."}, "outcome": "ok"},
     lambda e: e["action"].startswith("studies.") and e["outcome"] == "ok"),
    ({"site_id": 99}, lambda e: False),
])
def test_it_verifies_every_range_filter_and_format(tmp_path, key, log, events_format, first, last, filters, wanted):
    bundle = write(tmp_path, log, key, first_seq=first, last_seq=last, filters=filters, events_format=events_format)
    lines = verify(bundle, key)
    assert lines[0] == f"manifest: signature valid, key {signing.fingerprint(key)}"
    assert any(line.startswith("merkle: the root over 75 leaves") for line in lines)
    in_range = log.rows[first - 1:(75 if last is None else last)]
    included = sum(1 for e in in_range if wanted(e))
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["counts"] == {"included": included, "skipped": len(in_range) - included}
    assert manifest["range"] == {"first_seq": first, "last_seq": 75 if last is None else last}


def test_it_writes_the_included_events_whole_and_only_the_leaf_of_skipped_ones(tmp_path, key, log):
    bundle = write(tmp_path, log, key, first_seq=10, last_seq=29, filters={"study_id": 3})
    included, skipped = read_lines(bundle / "events.jsonl"), read_lines(bundle / "skipped.jsonl")
    assert [e["seq"] for e in included] == [e["seq"] for e in log.rows[9:29] if e["study_id"] == 3]
    assert included == [e for e in log.rows[9:29] if e["study_id"] == 3]
    assert all(tuple(sorted(e)) == tuple(sorted(EXPORT_FIELDS)) for e in included)
    assert all(set(s) == set(LEAF_FIELDS) for s in skipped)  # no details, no object_repr
    assert len(included) + len(skipped) == 20


def test_it_writes_csv_with_the_export_columns_and_formula_safe_cells(tmp_path, key, log):
    bundle = write(tmp_path, log, key, events_format="csv")
    text = (bundle / "events.csv").read_text(encoding="utf-8")
    assert text.splitlines()[0] == ",".join(EXPORT_FIELDS)
    assert "'=HYPERLINK" in text and "'-agent a" in text and "''quoted" in text
    verify(bundle, key)


def test_it_verifies_the_same_bundle_as_a_zip(tmp_path, key, log):
    archive = write(tmp_path, log, key, name="export.zip", filters={"site_id": 1}, events_format="csv")
    with zipfile.ZipFile(archive) as z:
        assert sorted(z.namelist()) == ["events.csv", "manifest.json", "prefix.json", "skipped.jsonl", "suffix.json"]
    assert "OK" not in verify(archive, key)  # the report lists checks; the CLI prints OK
    assert not list(tmp_path.glob("tmp*")), "the scratch directory is removed"


def test_it_hash_checks_extra_files_such_as_a_ledger(tmp_path, key, log):
    ledger = tmp_path / "ledger.csv"
    with open(ledger, "w", newline="", encoding="utf-8") as handle:
        fmt.csvsafe.write_rows(handle, ["site", "rounds"], [["A", 3], ["B\nsecond line", 4]])
    bundle = write(tmp_path, log, key, extra_files={"ledger.csv": ledger})
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["files"]["ledger.csv"]["rows"] == 2
    verify(bundle, key)
    (bundle / "ledger.csv").write_bytes((bundle / "ledger.csv").read_bytes().replace(b"3", b"9"))
    with pytest.raises(EvidenceError, match="^ledger.csv: SHA-256 differs from the manifest$"):
        verify(bundle, key)


def test_it_notes_a_file_nobody_vouches_for_without_failing(tmp_path, key, log):
    bundle = write(tmp_path, log, key)
    (bundle / ".DS_Store").write_bytes(b"finder")
    assert "note: .DS_Store is not in the manifest: nothing vouches for it, and it was not checked" in verify(bundle,
                                                                                                            key)


def test_it_verifies_an_empty_log(tmp_path, key):
    empty = MemoryLog()
    bundle = write(tmp_path, empty, key)
    assert any(line.startswith("merkle: the root over 0 leaves") for line in verify(bundle, key))


def test_it_proves_earlier_checkpoints_are_prefixes_of_the_export(tmp_path, key):
    log = synthetic_log(10)
    earlier = [log.checkpoint(key, 0), log.checkpoint(key, 1), log.checkpoint(key, 7)]
    synthetic_log(30, log=log)
    earlier.append(log.checkpoint(key))
    bundle = write(tmp_path, log, key, first_seq=12, last_seq=20, earlier_checkpoints=earlier)
    lines = verify(bundle, key, held_checkpoints=[earlier[2]])
    assert sum(line.startswith("consistency: ") for line in lines) == 5
    assert "is a prefix of checkpoint #40" in lines[-1]


def test_it_refuses_to_write_a_range_beyond_the_checkpoint(tmp_path, key, log):
    with pytest.raises(ValueError, match="does not fit a log of 75 events"):
        write(tmp_path, log, key, first_seq=1, last_seq=76)
    with pytest.raises(ValueError, match="signed by another key"):
        write(tmp_path, log, key, checkpoint=log.checkpoint(signing.generate_private_key()))
    with pytest.raises(ValueError, match="cannot name an extra file"):
        write(tmp_path, log, key, name="b2", extra_files={"manifest.json": tmp_path / "x"})
    with pytest.raises(ValueError, match="cannot name an extra file"):
        write(tmp_path, log, key, name="b3", extra_files={"../escape.csv": tmp_path / "x"})
    assert not (tmp_path / "escape.csv").exists()
