"""Sites as witnesses, against the real coordinator: the agent's `Witness` (Django-free) talks to the real
checkpoint API (through Django's test client instead of a socket). A history rewritten in the database,
every later hash recomputed so `verify_audit` passes, is caught by the checkpoint a site kept from before;
and an export of the rewritten log fails offline verification against that same checkpoint."""

import json

import pytest
from django.core.management import call_command
from django.http import JsonResponse
from rest_framework.test import APIClient

from consortium import verify
from consortium.audit.checkpoints import checkpoint_sign
from consortium.audit.keys import public_key_pem
from consortium.audit.log import record, verify_chain
from consortium.evidence import signing
from consortium.evidence.checkpoint import sign_checkpoint
from sites.agent.client import AgentClient, Response, Transport
from sites.agent.witness import Witness
from tests.sites.agent_support import issue
from tests.witness_support import forget_checkpoints, rewrite_history


class InProcessAgentClient(AgentClient):
    """The agent's own client (retries, error mapping), its requests answered by the Django app in-process."""

    def __init__(self, token: str) -> None:
        # In-process: nothing travels, so plain http to Django's test host is allowed here.
        super().__init__("http://testserver", token, max_attempts=1, transport=Transport(allow_insecure_http=True))
        self.api = APIClient()

    def _send(self, method, path, body, headers):
        answer = self.api.generic(method, path, HTTP_AUTHORIZATION=f"Bearer {self.token}")
        return Response(answer.status_code, {k.lower(): v for k, v in answer.items()}, answer.content)


def add_events(count: int) -> None:
    for n in range(count):
        record(actor=None, action="tests.system.tick", details={"n": n})


@pytest.fixture
def witness(p, tmp_path):
    _, secret = issue(p)
    lines: list[str] = []
    site = Witness(InProcessAgentClient(secret), tmp_path / "witness.json", say=lines.append)
    site.lines = lines
    return site


def test_a_site_pins_the_key_keeps_each_new_checkpoint_and_checks_it_extends_the_last(witness, tmp_path):
    add_events(5)
    first = checkpoint_sign(reason="interval")
    assert witness.observe() == "new"
    assert "pinned the coordinator's audit key" in witness.lines[0]
    add_events(70)
    second = checkpoint_sign(reason="interval")
    assert witness.observe() == "new"
    assert witness.observe() == "same"
    kept = json.loads((tmp_path / "witness.json").read_text())
    assert [c["seq"] for c in kept["checkpoints"]] == [first.tree_size, second.tree_size]
    assert kept["public_key"] == public_key_pem() and kept["alerts"] == []


def test_a_rewritten_history_is_caught_by_the_checkpoint_a_site_kept(witness, tmp_path):
    add_events(80)
    held = checkpoint_sign(reason="interval")
    assert witness.observe() == "new"
    # The operator rewrites event #3 and every later hash, then wipes the checkpoints and tree that would betray
    # it; the server signs the rewritten log afresh, and verify_audit passes.
    rewrite_history(edit_seq=3)
    forget_checkpoints()
    add_events(2)
    checkpoint_sign(reason="interval")
    assert verify_chain().intact
    assert witness.observe() == "alert"
    expected = f"does not extend checkpoint #{held.tree_size} this site holds"
    assert any("WITNESS ALERT" in line and expected in line for line in witness.lines)
    kept = json.loads((tmp_path / "witness.json").read_text())
    assert expected in kept["alerts"][0]["problem"] and "rewritten" in kept["alerts"][0]["problem"]
    assert kept["checkpoints"][-1] == held.document  # the forged one is not adopted
    # An export of the rewritten log verifies on its own, but not against the checkpoint the site kept.
    (tmp_path / "key.pem").write_text(public_key_pem())
    (tmp_path / "held.json").write_text(json.dumps(held.document))
    call_command("audit_export", "--out", str(tmp_path / "bundle"))
    assert verify.main([str(tmp_path / "bundle"), "--public-key", str(tmp_path / "key.pem")]) == 0
    assert verify.main([str(tmp_path / "bundle"), "--public-key", str(tmp_path / "key.pem"),
                        "--checkpoint", str(tmp_path / "held.json")]) == 1


def test_a_checkpoint_signed_by_another_key_is_reported(witness, settings):
    add_events(3)
    checkpoint_sign(reason="interval")
    assert witness.observe() == "new"
    other = signing.generate_private_key()
    settings.AUDIT_SIGNING_KEY = signing.private_key_pem(other).decode()
    add_events(1)
    checkpoint_sign(reason="interval")
    assert witness.observe() == "alert"
    assert "signed by key" in witness.lines[-1] and "not by the given key" in witness.lines[-1]


def test_a_log_cut_short_is_reported(witness, settings):
    add_events(10)
    checkpoint_sign(reason="interval")
    assert witness.observe() == "new"
    held = witness.latest()
    shorter = sign_checkpoint(signing.load_private_key(settings.AUDIT_SIGNING_KEY),
                              log_id=held["log_id"], seq=held["seq"] - 2, chain_head="a" * 64,
                              merkle_root="b" * 64)
    witness.client.api = _Replay(shorter)
    assert witness.observe() == "alert"
    assert "older than" in witness.lines[-1] and "cut short" in witness.lines[-1]


class _Replay:
    """A coordinator that answers the checkpoint list with one forged checkpoint."""

    def __init__(self, document):
        self.document = document

    def generic(self, method, path, **headers):
        return JsonResponse({"count": 1, "next": None, "previous": None,
                             "results": [{"number": 9, "reason": "interval", "checkpoint": self.document}]})
