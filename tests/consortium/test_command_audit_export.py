"""`manage.py audit_export`: a signed bundle of the real log, filtered like the page and the API, that
`python -m consortium.verify` checks offline; the export is audited; and every kind of tampering, in the
database or in the bundle, is caught by `verify_audit`, the bundle verifier or an earlier checkpoint, with
a message naming what broke."""

import json
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from consortium import verify
from consortium.audit.checkpoints import checkpoint_sign
from consortium.audit.keys import public_key_pem
from consortium.audit.log import record
from consortium.audit.models import AuditEvent, AuditOutcome
from studies import services
from tests.base import draft_study
from tests.consortium.test_audit import TABLE, tamper
from tests.evidence.support import edit_jsonl, read_lines, resign


@pytest.fixture
def log(p):
    study = draft_study(p)
    services.participation_invite(actor=p.pi, study=study, site=p.site_a)
    services.participation_invite(actor=p.pi, study=study, site=p.site_b)
    record(actor=p.dpo, action="studies.dpia.viewed", study=study, outcome=AuditOutcome.DENIED,
           details={"reason": "=cmd|' /C calc'!A0", "nested": {"a": [1, None]}})
    for n in range(70):
        record(actor=None, action="tests.system.tick", details={"n": n})
    return study


def export(tmp_path, *args: str, name: str = "bundle") -> tuple:
    out = StringIO()
    call_command("audit_export", "--out", str(tmp_path / name), *args, stdout=out)
    return tmp_path / name, out.getvalue()


def check(tmp_path, bundle, *held) -> tuple[int, str]:
    (tmp_path / "key.pem").write_text(public_key_pem())
    args = [str(bundle), "--public-key", str(tmp_path / "key.pem")]
    for index, document in enumerate(held):
        (tmp_path / f"held{index}.json").write_text(json.dumps(document))
        args += ["--checkpoint", str(tmp_path / f"held{index}.json")]
    return verify.main(args), ""


@pytest.mark.parametrize("options", [
    [], ["--format", "csv"], ["--study", "{study}"], ["--actor", "pi"], ["--site", "{site}"],
    ["--outcome", "denied"], ["--action", "studies.participation."], ["--since", "{since}", "--until", "{until}"],
    ["--object-type", "studies.study", "--object-id", "{study}"],
])
def test_each_filter_writes_a_bundle_the_offline_verifier_accepts(p, log, tmp_path, options, capsys):
    since = (timezone.now() - timedelta(hours=1)).isoformat()
    until = (timezone.now() + timedelta(hours=1)).isoformat()
    args = [o.format(study=log.pk, site=p.site_a.code, since=since, until=until) for o in options]
    bundle, said = export(tmp_path, *args, name="b.zip")
    assert "events exported" in said and "Verify: python -m consortium.verify" in said
    assert check(tmp_path, bundle)[0] == 0
    out = capsys.readouterr().out
    assert "merkle: the root over" in out and out.rstrip().endswith("OK")


def test_the_bundle_holds_exactly_the_filtered_events_and_the_export_is_audited(p, log, tmp_path):
    bundle, _ = export(tmp_path, "--study", str(log.pk), "--outcome", "denied")
    events = read_lines(bundle / "events.jsonl")
    assert [(e["action"], e["outcome"]) for e in events] == [("studies.dpia.viewed", "denied")]
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["filters"] == {"study_id": log.pk, "outcome": "denied"}
    audited = AuditEvent.objects.get(action="consortium.audit.bundle_exported")
    assert audited.seq == manifest["checkpoint"]["seq"]  # the export's own event is inside what it proves
    assert audited.details["filters"] == {"study_id": log.pk, "outcome": "denied"}
    assert (audited.actor_kind, audited.actor_label, audited.study_id) == ("system", "manage.py audit_export", log.pk)


def test_a_second_export_proves_it_extends_the_first_checkpoints(p, log, tmp_path):
    export(tmp_path, name="first")
    record(actor=None, action="tests.system.tick")
    bundle, _ = export(tmp_path, name="second")
    assert (bundle / "consistency.json").exists()
    assert check(tmp_path, bundle)[0] == 0


@pytest.mark.parametrize(("args", "message"), [
    (["--study", "nope"], "study: Select a valid choice"),
    (["--actor", "mallory"], "actor: Select a valid choice"),
    (["--site", "XX"], "site: Select a valid choice"),
    (["--since", "2026-01-01T00:00:00"], "since: Give the UTC offset too"),
    (["--since", "yesterday"], "since: Give an ISO 8601 date and time"),
    (["--since", "2026-02-01T00:00Z", "--until", "2026-01-01T00:00Z"], "'From' must be before 'Until'"),
])
def test_a_malformed_filter_is_refused_and_nothing_is_written(p, log, tmp_path, args, message):
    before = AuditEvent.objects.count()
    with pytest.raises(CommandError, match=message):
        export(tmp_path, *args)
    assert AuditEvent.objects.count() == before and not (tmp_path / "bundle").exists()


def test_without_a_key_it_fails_naming_the_settings_and_records_nothing(p, log, tmp_path, settings):
    settings.AUDIT_SIGNING_KEY, settings.DEBUG = "", False
    before = AuditEvent.objects.count()
    with pytest.raises(CommandError, match="No audit signing key: set AUDIT_SIGNING_KEY"):
        export(tmp_path)
    assert AuditEvent.objects.count() == before


# --- Tampering: each change, and what catches it ---------------------------------------------------------------


def verify_audit() -> tuple[int, str]:
    err = StringIO()
    try:
        call_command("verify_audit", stdout=StringIO(), stderr=err)
    except SystemExit as exc:
        return int(exc.code), err.getvalue()
    return 0, ""


def failure(tmp_path, bundle, capsys, *held) -> str:
    assert check(tmp_path, bundle, *held)[0] == 1
    return capsys.readouterr().err


@pytest.mark.parametrize(("changes", "message"), [
    ([(f"UPDATE {TABLE} SET actor_label = %s WHERE seq = %s", ["mallory", 3])],
     "BROKEN at event #3: its content does not match its hash"),
    ([(f"UPDATE {TABLE} SET hash = %s WHERE seq = %s", ["f" * 64, 3])],
     "BROKEN at event #3: its content does not match its hash"),
    ([(f"DELETE FROM {TABLE} WHERE seq = %s", [3])], "BROKEN at event #3: event #3 is missing"),
    ([(f"UPDATE {TABLE} SET seq = %s WHERE seq = %s", [10**9, 3]),
      (f"UPDATE {TABLE} SET seq = %s WHERE seq = %s", [3, 4]),
      (f"UPDATE {TABLE} SET seq = %s WHERE seq = %s", [4, 10**9])],
     "BROKEN at event #3: does not chain to the event before it"),
])
def test_verify_audit_names_each_change_made_in_the_database(p, log, changes, message):
    for sql, params in changes:
        tamper(sql, params)
    code, err = verify_audit()
    assert code == 1 and message in err


def test_a_truncated_log_is_caught_by_the_checkpoint_signed_before(p, log, tmp_path, capsys):
    held = checkpoint_sign(reason="interval").document
    last = AuditEvent.objects.order_by("-seq").first().seq
    tamper(f"DELETE FROM {TABLE} WHERE seq > %s", [last - 5])
    assert verify_audit()[0] == 0  # a shorter chain still verifies on its own
    with pytest.raises(CommandError, match=f"no longer extends checkpoint 1: event #{last} is missing"):
        export(tmp_path)
    assert held["seq"] == last
    refused = AuditEvent.objects.order_by("-seq").first()
    assert (refused.action, refused.outcome) == ("consortium.audit.bundle_exported", AuditOutcome.DENIED)


@pytest.mark.parametrize(("change", "message"), [
    ("edit", "event #5: content does not match its hash"),
    ("delete", "event #5 is missing or out of order"),
    ("insert", "is out of order or repeated"),
    ("reorder", "event #5 is missing or out of order (#6 stands in its place)"),
    ("truncate", "is missing: the export ends at"),
    ("edit_hash", "event #5: content does not match its hash"),
])
def test_the_bundle_verifier_names_each_change_to_an_export_even_resigned(p, log, tmp_path, capsys, change,
                                                                          message, settings):
    from consortium.evidence import signing

    bundle, _ = export(tmp_path)

    def tampered(rows):
        index = next(i for i, row in enumerate(rows) if row["seq"] == 5)
        if change == "edit":
            rows[index]["actor_label"] = "mallory"
        elif change == "delete":
            del rows[index]
        elif change == "insert":
            rows.insert(index, dict(rows[index]))
        elif change == "reorder":
            rows[index], rows[index + 1] = rows[index + 1], rows[index]
        elif change == "truncate":
            del rows[index:]
        else:
            rows[index]["hash"] = "e" * 64
        return rows

    edit_jsonl(bundle, "events.jsonl", tampered)
    resign(bundle, signing.load_private_key(settings.AUDIT_SIGNING_KEY))  # even the key holder cannot hide it
    assert message in failure(tmp_path, bundle, capsys)


def test_a_rewrite_with_recomputed_hashes_is_caught_by_an_earlier_checkpoint(p, log, tmp_path, capsys):
    from tests.witness_support import forget_checkpoints, rewrite_history

    held = checkpoint_sign(reason="interval").document
    rewrite_history(edit_seq=4)
    assert verify_audit()[0] == 0  # verify_audit cannot see it
    forget_checkpoints()
    bundle, _ = export(tmp_path)
    assert check(tmp_path, bundle)[0] == 0  # nor can the new export on its own
    capsys.readouterr()
    err = failure(tmp_path, bundle, capsys, held)
    assert f"held checkpoint #{held['seq']}" in err and "the bundle carries no consistency proof from it" in err
