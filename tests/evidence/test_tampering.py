"""Every way of altering an export or the log behind it is caught, and the message names what broke.

Most cases re-sign the manifest after editing (`resign`): what only the coordinator, holding the
key, could do. That is the hard case; an outsider's edit is caught earlier, by the manifest's
signature or a file's hash, as the first tests show.
"""

import copy
import json
import zipfile
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from consortium.evidence import csvsafe, signing
from consortium.evidence.bundle import write_csv
from consortium.evidence.canonical import EXPORT_FIELDS, GENESIS_HASH, event_hash, event_leaf_hash
from consortium.evidence.errors import EvidenceError
from consortium.evidence.memory import MemoryLog
from consortium.evidence.merkle import MerkleTree
from tests.evidence.support import (
    START,
    edit_jsonl,
    edit_manifest,
    read_lines,
    resign,
    synthetic_log,
    verify,
    write,
    write_lines,
)

KEY = signing.generate_private_key()


@pytest.fixture(scope="module")
def log():
    return synthetic_log(60)


@pytest.fixture
def bundle(tmp_path, log):
    """Events #11..#50 of 60 about study 1 (so about a quarter included, the rest skipped)."""
    return write(tmp_path, log, KEY, first_seq=11, last_seq=50, filters={"study_id": 1})


@pytest.fixture
def full(tmp_path, log):
    return write(tmp_path, log, KEY, name="full")


def fails(path, message, **options):
    with pytest.raises(EvidenceError) as caught:
        verify(path, KEY, **options)
    assert message in str(caught.value), str(caught.value)
    return str(caught.value)


def rehash(row: dict) -> dict:
    row["hash"] = event_hash(row)
    return row


# An outsider, without the key


def test_an_edited_file_is_caught_by_its_hash_in_the_manifest(full):
    edit_jsonl(full, "events.jsonl", lambda rows: rows[4].update(actor_label="no one") or rows)
    fails(full, "events.jsonl: ")


def test_a_same_size_edit_is_caught_by_the_sha256(full):
    data = (full / "events.jsonl").read_bytes()
    (full / "events.jsonl").write_bytes(data.replace(b'"ok"', b'"OK"', 1))
    assert fails(full, "events.jsonl: SHA-256 differs from the manifest") == \
        "events.jsonl: SHA-256 differs from the manifest"


def test_an_edited_manifest_is_caught_by_its_signature(bundle):
    edit_manifest(bundle, lambda m: m["filters"].update(study_id=2))
    fails(bundle, "manifest: signature invalid")


def test_a_manifest_updated_to_match_edited_files_is_caught_by_its_signature(full):
    edit_jsonl(full, "events.jsonl", lambda rows: rows.pop(3) and rows)
    other = signing.generate_private_key()
    resign(full, other)  # signed, but not by the coordinator: its fingerprint still names the coordinator's key
    fails(full, "manifest: signature invalid")


def test_a_bundle_signed_by_another_key_is_refused_naming_both_keys(tmp_path, log):
    other = signing.generate_private_key()
    forged = write(tmp_path, log, other, name="forged")
    message = fails(forged, f"manifest: signed by key {signing.fingerprint(other)}")
    assert f"not by the given key {signing.fingerprint(KEY)}" in message


def test_verifying_with_the_wrong_public_key_fails(full):
    with pytest.raises(EvidenceError, match="manifest: signed by key .*, not by the given key"):
        verify(full, signing.generate_private_key())


def test_a_missing_file_is_named(bundle):
    (bundle / "skipped.jsonl").unlink()
    fails(bundle, "skipped.jsonl: missing from the bundle")


def test_an_edited_zip_member_is_caught(tmp_path, log):
    archive = write(tmp_path, log, KEY, name="export.zip")
    with zipfile.ZipFile(archive) as original, zipfile.ZipFile(tmp_path / "edited.zip", "w") as edited:
        for item in original.infolist():
            data = original.read(item)
            edited.writestr(item, data.replace(b'"pi"', b'"PI"') if item.filename == "events.jsonl" else data)
    fails(tmp_path / "edited.zip", "events.jsonl: SHA-256 differs from the manifest")


# The coordinator itself, re-signing what it altered


def test_an_edited_event_is_caught_by_its_hash(full):
    edit_jsonl(full, "events.jsonl", lambda rows: rows[11]["details"].update(reason="rewritten") or rows)
    resign(full, KEY)
    assert fails(full, "event #12: content does not match its hash") == "event #12: content does not match its hash"


def test_an_edited_hash_is_caught(full):
    edit_jsonl(full, "events.jsonl", lambda rows: rows[19].update(hash="f" * 64) or rows)
    resign(full, KEY)
    fails(full, "event #20: content does not match its hash")


def test_an_event_edited_with_its_own_hash_recomputed_breaks_the_chain(full):
    edit_jsonl(full, "events.jsonl", lambda rows: [*rows[:19], rehash({**rows[19], "outcome": "denied"}), *rows[20:]])
    resign(full, KEY)
    fails(full, "event #21 does not chain to event #20")


def test_a_deleted_event_is_named_missing(full):
    edit_jsonl(full, "events.jsonl", lambda rows: rows.pop(29) and rows)
    resign(full, KEY)
    fails(full, "event #30 is missing or out of order (#31 stands in its place)")


def test_an_inserted_event_is_caught(full, log):
    def insert(rows):
        fake = rehash({**rows[9], "actor_label": "inserted", "prev_hash": rows[9]["hash"]})
        return [*rows[:10], fake, *rows[10:]]

    edit_jsonl(full, "events.jsonl", insert)
    resign(full, KEY)
    fails(full, "event #10 is out of order or repeated (found after #10)")


def test_an_inserted_event_with_every_later_one_renumbered_and_rehashed_fails_the_signed_root(full):
    def insert(rows):
        fake = {**rows[9], "actor_label": "inserted"}
        rewritten, previous = rows[:10], rows[9]["hash"]
        for number, row in enumerate([fake, *rows[10:-1]], start=11):
            rewritten.append(rehash({**row, "seq": number, "prev_hash": previous}))
            previous = rewritten[-1]["hash"]
        return rewritten

    edit_jsonl(full, "events.jsonl", insert)
    resign(full, KEY)
    fails(full, "chain: event #60's hash differs from the checkpoint's chain head")


def test_reordered_events_are_caught(full):
    edit_jsonl(full, "events.jsonl", lambda rows: [*rows[:5], rows[6], rows[5], *rows[7:]])
    resign(full, KEY)
    fails(full, "event #6 is missing or out of order (#7 stands in its place)")


def test_a_truncated_export_is_caught(full):
    edit_jsonl(full, "events.jsonl", lambda rows: rows[:52])
    resign(full, KEY)
    fails(full, "event #53 is missing: the export ends at #52, its range at #60")


def test_an_event_outside_the_range_is_caught(bundle, log):
    edit_jsonl(bundle, "events.jsonl", lambda rows: [*rows, dict(log.rows[55])])
    resign(bundle, KEY)
    fails(bundle, "event #56 lies outside the export's range #11..#50")


def test_a_matching_event_moved_to_skipped_makes_the_export_incomplete(bundle, log):
    moved = {}

    def take(rows):
        moved.update(rows.pop(2))
        return rows

    edit_jsonl(bundle, "events.jsonl", take)
    leaf = {name: moved[name] for name in moved if name not in ("details", "object_repr", "prev_hash")}
    edit_jsonl(bundle, "skipped.jsonl", lambda rows: sorted([*rows, leaf], key=lambda r: r["seq"]))
    resign(bundle, KEY)
    fails(bundle, f"skipped event #{moved['seq']} matches the filter: the export is incomplete")


def test_a_skipped_entry_edited_to_escape_the_filter_fails_the_signed_root(bundle):
    # The coordinator hides a study-1 event by claiming it was about study 2: its leaf no longer matches the root.
    def hide(rows):
        rows[0]["action"] = "sites.site.viewed"
        return rows

    edit_jsonl(bundle, "skipped.jsonl", hide)
    resign(bundle, KEY)
    fails(bundle, "merkle: the root over the 60 leaves differs from checkpoint #60's")


def test_a_skipped_entrys_edited_hash_breaks_the_chain_or_the_root(bundle):
    edit_jsonl(bundle, "skipped.jsonl", lambda rows: rows[1].update(hash="e" * 64) or rows)
    resign(bundle, KEY)
    message = fails(bundle, "")
    assert "does not chain to event" in message or "merkle: the root" in message


def test_an_event_outside_the_filter_included_is_refused(bundle, log):
    extra = dict(next(e for e in log.rows[10:50] if e["study_id"] != 1))
    edit_jsonl(bundle, "events.jsonl", lambda rows: sorted([*rows, extra], key=lambda r: r["seq"]))
    resign(bundle, KEY)
    fails(bundle, f"event #{extra['seq']} is both included and skipped")
    edit_jsonl(bundle, "skipped.jsonl", lambda rows: [r for r in rows if r["seq"] != extra["seq"]])
    resign(bundle, KEY)
    fails(bundle, f"event #{extra['seq']} does not match the filter, yet the export includes it")


def test_an_edited_prefix_or_suffix_fails_the_signed_root(bundle):
    prefix = json.loads((bundle / "prefix.json").read_text())
    prefix["compact_range"][0] = "0" * 64
    (bundle / "prefix.json").write_text(json.dumps(prefix))
    resign(bundle, KEY)
    fails(bundle, "merkle: the root over the 60 leaves differs")


def test_an_altered_checkpoint_inside_a_re_signed_manifest_is_caught(bundle):
    edit_manifest(bundle, lambda m: m["checkpoint"].update(seq=59))
    resign(bundle, KEY)
    fails(bundle, "checkpoint: signature invalid")


# A history rewritten in the database, every later hash recomputed


def rewritten_copy(log: MemoryLog, seq: int) -> MemoryLog:
    """The same log with event `seq` edited and every hash after it recomputed: `verify_audit` finds nothing."""
    other = MemoryLog(log.log_id)
    other.rows, other.tree, previous = [], MerkleTree(), GENESIS_HASH
    for row in copy.deepcopy(log.rows):
        if row["seq"] == seq:
            row["details"] = {"reason": "what we wish we had written"}
        row["prev_hash"] = previous
        row["hash"] = previous = event_hash(row)
        other.rows.append(row)
        other.tree.append(event_leaf_hash(row))
    return other


def test_a_rewritten_history_exported_under_the_original_checkpoint_fails_it(tmp_path, log):
    rewritten = rewritten_copy(log, 30)
    bundle = write(tmp_path, rewritten, KEY, checkpoint=log.checkpoint(KEY))
    fails(bundle, "chain: event #60's hash differs from the checkpoint's chain head")
    ranged = write(tmp_path, rewritten, KEY, name="ranged", checkpoint=log.checkpoint(KEY), first_seq=20,
                   last_seq=40)
    fails(ranged, "differs from the checkpoint's chain head")


def test_a_rewritten_history_with_a_fresh_checkpoint_is_caught_by_the_one_a_site_kept(tmp_path, log):
    kept = log.checkpoint(KEY, 45)  # a site fetched this before the rewrite
    rewritten = rewritten_copy(log, 30)
    bundle = write(tmp_path, rewritten, KEY, earlier_checkpoints=[kept])
    fails(bundle, "the bundle's checkpoint #45 of consortium-audit")
    fails(bundle, "is not a prefix of checkpoint #60: the history it vouched for was rewritten since")
    alone = write(tmp_path, rewritten, KEY, name="alone")
    verify(alone, KEY)  # on its own, a consistent rewrite signed afresh verifies: hence the witnesses
    fails(alone, "held checkpoint #45 of consortium-audit", held_checkpoints=[kept])


def test_a_held_checkpoint_the_bundle_cannot_prove_is_refused(tmp_path, log):
    bundle = write(tmp_path, log, KEY, earlier_checkpoints=[log.checkpoint(KEY, 10)])
    fails(bundle, "the bundle carries no consistency proof from it", held_checkpoints=[log.checkpoint(KEY, 20)])
    verify(bundle, KEY, held_checkpoints=[log.checkpoint(KEY, 10), log.checkpoint(KEY, 60)])
    longer = synthetic_log(5, log=copy.deepcopy(log))
    fails(bundle, "is newer than the bundle's #60", held_checkpoints=[longer.checkpoint(KEY)])


def test_a_held_checkpoint_of_the_same_size_but_another_history_is_caught(tmp_path, log):
    bundle = write(tmp_path, log, KEY)
    other = rewritten_copy(log, 59).checkpoint(KEY)
    fails(bundle, "held checkpoint #60 of consortium-audit", held_checkpoints=[other])


def test_a_held_checkpoint_signed_by_another_key_is_refused(tmp_path, log):
    bundle = write(tmp_path, log, KEY)
    fails(bundle, "held checkpoint 1: signed by key", held_checkpoints=[log.checkpoint(signing.generate_private_key())])


# Any single change to any exported value, anywhere, is caught


def test_it_catches_events_dated_otherwise_or_retyped(full):
    edit_jsonl(full, "events.jsonl",
               lambda rows: rows[7].update(created_at=(START + timedelta(days=1)).isoformat()) or rows)
    resign(full, KEY)
    fails(full, "event #8: content does not match its hash")


VALUES = st.one_of(st.none(), st.integers(-5, 10**6), st.text(max_size=12), st.booleans(),
                   st.dictionaries(st.text(max_size=4), st.integers(), max_size=2))


def as_written(value, events_format: str) -> str:
    """What a value becomes in the file: a change that writes the same bytes is no change."""
    return csvsafe.to_cell(value) if events_format == "csv" else json.dumps(value, sort_keys=True)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_it_catches_any_single_changed_value(tmp_path_factory, log, data):
    events_format = data.draw(st.sampled_from(["jsonl", "csv"]))
    bundle = write(tmp_path_factory.mktemp("b"), log, KEY, first_seq=5, last_seq=55,
                   filters={"site_id": {"in": [1, 2]}}, events_format=events_format)
    in_events = data.draw(st.booleans())
    rows = ([dict(e) for e in log.rows[4:55] if e["site_id"] in (1, 2)] if in_events
            else read_lines(bundle / "skipped.jsonl"))
    row = rows[data.draw(st.integers(0, len(rows) - 1))]
    field = data.draw(st.sampled_from(sorted(row)))
    value = data.draw(VALUES)
    written_as = events_format if in_events else "jsonl"
    assume(as_written(value, written_as) != as_written(row[field], written_as))
    row[field] = value
    if not in_events:
        write_lines(bundle / "skipped.jsonl", rows)
    elif events_format == "csv":
        write_csv(bundle / "events.csv", EXPORT_FIELDS, rows)
    else:
        write_lines(bundle / "events.jsonl", rows)
    resign(bundle, KEY)
    with pytest.raises(EvidenceError):
        verify(bundle, KEY)


@pytest.mark.parametrize(("field", "value", "message"), [
    ("prev_hash", None, "event #3: prev_hash has the wrong type or form (None)"),
    ("hash", 12, "event #3: hash has the wrong type or form (12)"),
    ("study_id", "1", "event #3: study_id has the wrong type or form ('1')"),
    ("seq", True, "events.jsonl line 3: seq has the wrong type or form (True)"),
])
def test_it_names_a_value_of_the_wrong_type_instead_of_crashing(full, field, value, message):
    edit_jsonl(full, "events.jsonl", lambda rows: rows[2].update({field: value}) or rows)
    resign(full, KEY)
    fails(full, message)
