"""`python -m sites.agent reconcile`: the site's record against the coordinator's, every difference printed."""

from pathlib import Path

from sites.agent.__main__ import main
from sites.agent.reconcile import differences
from sites.agent.record import LocalRecord
from tests.agent.scripted_server import Reply
from tests.agent.test_runner import ME

ROW = {"round": 1, "update_sha256": "a" * 64, "num_examples": 120, "base_version": 0, "base_sha256": "c" * 64}


def held(**changes) -> dict:
    return {**ROW, "status": "accepted", "round_id": 10, **changes}


def test_records_that_agree_have_no_difference():
    assert differences([ROW], [held()]) == []


def test_every_kind_of_difference_is_named_by_round():
    local = [ROW, {**ROW, "round": 2, "update_sha256": "d" * 64}]
    coordinator = [held(num_examples=12000), held(round=3, update_sha256="e" * 64)]
    found = differences(local, coordinator)
    assert found == [
        "round 1: examples declared differs: this site recorded 120, the coordinator holds 12000",
        "round 2: this site sent an update (SHA-256 dddddddddddd...) that the coordinator does not list",
        "round 3: the coordinator lists an update from this site (SHA-256 eeeeeeeeeeee...) that this site's record "
        "does not hold",
    ]


def test_the_command_exits_1_and_prints_a_planted_difference(server, tmp_path: Path, capsys):
    record = LocalRecord(tmp_path / "record.jsonl")
    record.append("update", study_id=7, **ROW)
    server.on("GET", "/api/agent/me/", Reply(200, ME))
    server.on("GET", "/api/agent/ledger/?study=7", Reply(200, [held(update_sha256="f" * 64)]))
    argv = ["reconcile", "--server", server.url, "--token", "cst_x", "--study", "7", "--record", str(record.path)]
    assert main(argv) == 1
    out = capsys.readouterr().out
    assert "round 1: update SHA-256 differs" in out and "1 difference(s)" in out
    server.on("GET", "/api/agent/ledger/?study=7", Reply(200, [held()]))
    assert main(argv) == 0
    assert "they agree" in capsys.readouterr().out
