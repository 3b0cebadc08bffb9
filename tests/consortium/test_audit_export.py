"""Every export of the audit log (the page's CSV, the API's CSV and the API's JSON) carries every field
the hash chain covers, so an auditor recomputes the chain from an export alone; and no CSV cell can run as
a spreadsheet formula, whoever chose its text (a failed login's username, a study's title)."""

import csv
import hashlib
import io
import json
from typing import Any

import pytest
from django.core.management import call_command
from django.urls import reverse

from consortium.audit.api import AuditEventOutputSerializer
from consortium.audit.exports import EXPORT_COLUMNS, neutralise, restore
from consortium.audit.log import canonical_fields, record
from consortium.audit.models import AuditEvent
from tests.api_support import client
from tests.base import draft_study, make_user

FORMULA = '=HYPERLINK("http://x","click")'
EXPORTS = {"page": lambda: reverse("audit-export"), "api": lambda: "/api/audit/events.csv"}


@pytest.fixture
def hostile_log(p) -> dict[str, Any]:
    """A log holding text an attacker chose: a failed token login (no account needed), a study title, a
    user named like a formula, and cells starting with every character a spreadsheet treats specially."""
    response = client().post("/api/auth/token/", {"username": FORMULA, "password": "x"}, format="json")
    assert response.status_code == 400
    study = draft_study(p, title=FORMULA)
    named_like_a_formula = make_user("-2+3")  # made before usernames were checked: stored names stay valid
    for text in ("@A1", "\t=tab", "\r=cr", "'quoted", "''twice", "-", "plain"):
        record(actor=named_like_a_formula, action="tests.cell", target=text, details={"text": text})
    return {"study": study, "user": named_like_a_formula}


def restored(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    """Undo the CSV's formula protection: a `'` was added to every cell starting with = + - @ TAB CR or '."""
    return [{name: value[1:] if value.startswith("'") else value for name, value in row.items()} for row in rows]


def recompute_chain(rows: list[dict[str, str]]) -> int:
    """The chain from exported text cells alone, as an outside verifier would: type the cells (integers,
    empty is null, details is JSON) and hash the fields but `hash` as canonical JSON (sorted keys, no
    spaces, UTF-8). Each row must chain to the one before it, from the genesis hash."""
    previous = "0" * 64
    for number, cells in enumerate(rows, start=1):
        fields: dict[str, Any] = {name: value for name, value in cells.items() if name != "hash"}
        fields["seq"] = int(fields["seq"])
        for name in ("actor_user_id", "study_id", "site_id"):
            fields[name] = int(fields[name]) if fields[name] else None
        fields["details"] = json.loads(fields["details"])
        encoded = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        assert (fields["seq"], fields["prev_hash"]) == (number, previous), f"row {number} does not chain"
        assert hashlib.sha256(encoded).hexdigest() == cells["hash"], f"event #{number}: hash does not match"
        previous = cells["hash"]
    return len(rows)


def export(user, kind: str, **query: Any) -> tuple[list[str], list[dict[str, str]], str]:
    response = client(user).get(EXPORTS[kind](), query)
    assert response.status_code == 200, response.content[:300]
    text = response.content.decode("utf-8")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    return list(reader.fieldnames or []), list(reader), text


@pytest.mark.parametrize("kind", EXPORTS)
def test_it_recomputes_the_whole_chain_from_a_csv_export_alone(p, hostile_log, kind):
    header, rows, _ = export(p.auditor, kind)
    assert header[:-1] == list(canonical_fields(AuditEvent.objects.first())) and header[-1] == "hash"
    assert recompute_chain(restored(rows)) == AuditEvent.objects.count() - 1  # all but the export's own event
    users = {row["actor_user_id"] for row in rows if row["actor_kind"] == "user"}
    assert {str(p.pi.pk), str(p.admin.pk), str(hostile_log["user"].pk)} <= users


@pytest.mark.parametrize("kind", EXPORTS)
def test_it_neutralises_every_cell_a_spreadsheet_would_run_as_a_formula(p, hostile_log, kind):
    _, rows, text = export(p.auditor, kind)
    refused = next(row for row in rows if row["action"] == "consortium.login.failed")
    assert (refused["outcome"], refused["actor_label"]) == ("denied", "'" + FORMULA)
    created = next(row for row in rows if row["action"] == "studies.study.created"
                   and row["study_id"] == str(hostile_log["study"].pk))
    assert created["object_repr"] == "'" + FORMULA
    assert {row["actor_label"] for row in rows} >= {"'-2+3"}
    cells = [row["object_repr"] for row in rows if row["action"] == "tests.cell"]
    assert cells == ["'@A1", "'\t=tab", "'\r=cr", "''quoted", "'''twice", "'-", "plain"]
    every_cell = [cell for row in csv.reader(io.StringIO(text, newline="")) for cell in row]
    assert not [cell for cell in every_cell if cell[:1] in {"=", "+", "-", "@", "\t", "\r"}]


def test_it_lists_every_hashed_field_in_the_json_api_so_the_chain_recomputes_from_it(p, hostile_log):
    body = client(p.auditor).get("/api/audit/events/", {"page_size": 500}).json()
    results = list(reversed(body["results"]))
    assert all(tuple(row) == EXPORT_COLUMNS for row in results)
    assert recompute_chain([{**row, "details": json.dumps(row["details"]),
                             **{name: "" if row[name] is None else str(row[name])
                                for name in ("seq", "actor_user_id", "study_id", "site_id")}}
                            for row in results]) == body["count"]


def test_it_defines_every_export_from_the_canonical_fields(p, hostile_log):
    event = AuditEvent.objects.exclude(actor_user_id=None).first()
    assert EXPORT_COLUMNS == (*canonical_fields(event), "hash")
    assert tuple(AuditEventOutputSerializer().fields) == EXPORT_COLUMNS
    assert AuditEventOutputSerializer(event).data == {**canonical_fields(event), "hash": event.hash}


@pytest.mark.parametrize("text", ["", "plain", "=1+1", "+1", "-1", "@A1", "\tx", "\rx", "'", "'=x", "''", "a=b"])
def test_it_undoes_the_formula_protection_exactly(text):
    assert restore(neutralise(text)) == text
    assert neutralise(text)[:1] not in {"=", "+", "-", "@", "\t", "\r"}


def test_verify_audit_checks_an_export_and_names_the_row_that_was_edited(p, hostile_log, tmp_path, capsys):
    _, _, text = export(p.auditor, "api")
    good = tmp_path / "export.csv"
    good.write_bytes(text.encode("utf-8"))
    call_command("verify_audit", "--csv", str(good))
    assert "Export intact" in capsys.readouterr().out

    _, _, filtered = export(p.auditor, "page", study=hostile_log["study"].pk)
    good.write_bytes(filtered.encode("utf-8"))
    call_command("verify_audit", "--csv", str(good))
    assert "a filtered export" in capsys.readouterr().out

    edited = tmp_path / "edited.csv"
    edited.write_bytes(text.replace("x\"\",\"\"click", "y\"\",\"\"click", 1).encode("utf-8"))
    assert edited.read_bytes() != text.encode("utf-8")
    with pytest.raises(SystemExit) as exited:
        call_command("verify_audit", "--csv", str(edited))
    assert exited.value.code == 1
    assert "does not match its hash" in capsys.readouterr().err
