"""Signed checkpoints of the audit log: the service, the stored Merkle tree, the key's configuration, the
periodic task, and the API that publishes them (checkpoints, consistency proofs, the public key)."""

import pytest
from django.core.exceptions import ImproperlyConfigured

from consortium.audit import keys as audit_keys
from consortium.audit import tree as audit_tree
from consortium.audit.checkpoints import HistoryRewritten, checkpoint_sign, consistency_proof, inclusion_proof
from consortium.audit.log import record
from consortium.audit.models import AuditCheckpoint, AuditEvent, AuditTreeNode
from consortium.audit.tasks import audit_checkpoint
from consortium.evidence import merkle, signing
from consortium.evidence.canonical import event_leaf_hash
from consortium.evidence.checkpoint import verify_checkpoint
from tests.api_support import assert_anonymous_refused, assert_error, client, nothing_changes
from tests.sites.agent_support import issue
from tests.witness_support import rewrite_history


def add_events(count: int) -> None:
    for n in range(count):
        record(actor=None, action="tests.system.tick", details={"n": n})


def fresh_tree() -> merkle.MerkleTree:
    return merkle.MerkleTree(event_leaf_hash(row) for row in audit_tree.leaves(1, 10**9))


def test_it_signs_the_head_with_the_root_over_every_event(p):
    add_events(150)
    checkpoint = checkpoint_sign(reason="manual")
    signed = verify_checkpoint(checkpoint.document, audit_keys.public_key())
    head = AuditEvent.objects.order_by("-seq").first()
    assert (signed.seq, signed.chain_head, signed.log_id) == (head.seq, head.hash, "consortium-audit")
    assert signed.root == fresh_tree().root()
    assert checkpoint.number == 1 and checkpoint.key_fingerprint == audit_keys.fingerprint()
    # Perfect subtrees of 64 leaves and more are stored; smaller ones are recomputed from the events.
    assert AuditTreeNode.objects.filter(level__lt=audit_tree.STORED_LEVEL).count() == 0
    assert AuditTreeNode.objects.filter(level=audit_tree.STORED_LEVEL).count() == head.seq // 64


def test_the_next_checkpoint_extends_the_stored_tree_with_only_the_new_events(p):
    add_events(70)
    first = checkpoint_sign(reason="manual")
    add_events(61)
    second = checkpoint_sign(reason="interval")
    assert second.number == first.number + 1 and second.tree_size == first.tree_size + 61
    assert bytes.fromhex(second.merkle_root) == fresh_tree().root()
    proof = [bytes.fromhex(h) for h in consistency_proof(first.tree_size, second.tree_size)["proof"]]
    assert merkle.verify_consistency(first.tree_size, second.tree_size, bytes.fromhex(first.merkle_root),
                                     bytes.fromhex(second.merkle_root), proof)
    for seq in (1, 64, 65, second.tree_size):
        leaf = event_leaf_hash(next(audit_tree.leaves(seq, seq)))
        path = [bytes.fromhex(h) for h in inclusion_proof(seq, second.tree_size)]
        assert merkle.verify_inclusion(seq - 1, second.tree_size, leaf, path, bytes.fromhex(second.merkle_root))


def test_it_refuses_to_sign_a_log_that_no_longer_extends_the_last_checkpoint(p):
    add_events(10)
    size = checkpoint_sign(reason="manual").tree_size
    rewrite_history(edit_seq=3)
    with pytest.raises(HistoryRewritten, match=f"no longer extends checkpoint 1: event #{size} has another hash"):
        checkpoint_sign(reason="interval")


def test_the_periodic_task_signs_only_when_the_log_grew(p):
    add_events(3)
    assert audit_checkpoint() == 1
    assert audit_checkpoint() is None  # run twice, one checkpoint
    add_events(1)
    assert audit_checkpoint() == 2
    assert AuditCheckpoint.objects.count() == 2


def test_checkpoints_are_append_only(p):
    add_events(2)
    checkpoint = checkpoint_sign(reason="manual")
    with pytest.raises(Exception, match="append-only"):
        checkpoint.save()
    with pytest.raises(Exception, match="append-only"):
        AuditCheckpoint.objects.all().delete()


def test_without_a_key_and_debug_off_signing_fails_naming_the_settings(p, settings, tmp_path):
    settings.AUDIT_SIGNING_KEY, settings.DEBUG = "", False
    settings.AUDIT_DEMO_KEY_FILE = tmp_path / "demo.pem"
    with pytest.raises(ImproperlyConfigured, match="set AUDIT_SIGNING_KEY .* or AUDIT_SIGNING_KEY_FILE"):
        checkpoint_sign(reason="manual")
    assert not (tmp_path / "demo.pem").exists() and AuditCheckpoint.objects.count() == 0


def test_a_key_file_is_read_and_a_missing_one_named(p, settings, tmp_path):
    key = signing.generate_private_key()
    (tmp_path / "k.pem").write_bytes(signing.private_key_pem(key))
    settings.AUDIT_SIGNING_KEY, settings.AUDIT_SIGNING_KEY_FILE = "", str(tmp_path / "k.pem")
    assert checkpoint_sign(reason="manual").key_fingerprint == signing.fingerprint(key)
    settings.AUDIT_SIGNING_KEY_FILE = str(tmp_path / "missing.pem")
    with pytest.raises(ImproperlyConfigured, match="missing.pem' cannot be read"):
        checkpoint_sign(reason="manual")


def test_the_demo_generates_its_key_once_into_the_data_folder_under_debug(p, settings, tmp_path):
    settings.AUDIT_SIGNING_KEY, settings.DEBUG = "", True
    settings.AUDIT_DEMO_KEY_FILE = tmp_path / "audit_signing_key.pem"
    first = checkpoint_sign(reason="manual").key_fingerprint
    assert (tmp_path / "audit_signing_key.pem").stat().st_mode & 0o777 == 0o600
    assert checkpoint_sign(reason="manual").key_fingerprint == first


# --- API -------------------------------------------------------------------------------------------------------

LIST, KEY, CONSISTENCY = "/api/audit/checkpoints/", "/api/audit/public-key/", "/api/audit/consistency/"


def agent_client(p):
    _, secret = issue(p)
    api = client()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    return api


def test_it_lists_checkpoints_newest_first_to_readers_of_the_log_and_audits_the_read(p):
    add_events(3)
    checkpoint_sign(reason="manual")
    add_events(2)
    newest = checkpoint_sign(reason="manual")
    body = client(p.auditor).get(LIST).json()
    assert [row["number"] for row in body["results"]] == [2, 1]
    assert body["results"][0]["checkpoint"] == newest.document
    read = AuditEvent.objects.order_by("-seq").first()
    assert (read.action, read.actor_user_id, read.details) == (
        "consortium.audit.checkpoints_viewed", p.auditor.pk, {"via": "api", "numbers": [2, 1]})


def test_a_site_agent_reads_checkpoints_and_proofs_as_a_witness_without_burying_the_log(p):
    add_events(3)
    first = checkpoint_sign(reason="manual")
    add_events(100)
    second = checkpoint_sign(reason="manual")
    agent = agent_client(p)
    before = AuditEvent.objects.count()
    assert agent.get(LIST, {"page_size": 1}).json()["results"][0]["number"] == second.number
    proof = agent.get(CONSISTENCY, {"first": first.tree_size, "second": second.tree_size}).json()
    assert proof == consistency_proof(first.tree_size, second.tree_size)
    assert AuditEvent.objects.count() == before


@pytest.mark.parametrize(("url", "attempt"), [(LIST, "consortium.audit.checkpoints_view"),
                                              (CONSISTENCY + "?first=0&second=0", "consortium.audit.consistency_view")])
@pytest.mark.parametrize("who", ["pi", "site_a_admin", "outsider"])
def test_it_refuses_checkpoints_to_others_and_audits_the_attempt(p, url, attempt, who):
    with nothing_changes(denied=attempt) as events:
        response = client(getattr(p, who)).get(url)
    assert_error(response, 403, "forbidden", mentions="Only auditors, DPOs, consortium admins and site agents")
    assert events[0].actor_user_id == getattr(p, who).pk


def test_it_refuses_anonymous_callers(p):
    with nothing_changes():
        assert_anonymous_refused(client().get(LIST))


def test_a_proof_beyond_the_latest_checkpoint_or_backwards_is_a_400(p):
    add_events(3)
    checkpoint_sign(reason="manual")
    assert_error(client(p.auditor).get(CONSISTENCY, {"first": 1, "second": 99}), 400, mentions="beyond the latest")
    assert_error(client(p.auditor).get(CONSISTENCY, {"first": 3, "second": 2}), 400, mentions="not be larger")
    assert_error(client(p.auditor).get(CONSISTENCY, {"first": "x", "second": 2}), 400)
    assert_error(client(p.auditor).get(LIST, {"sort": "old"}), 400, mentions="Unknown query parameter")


def test_the_public_key_is_published_to_anyone_with_its_fingerprint(p):
    body = client().get(KEY).json()
    assert body["fingerprint"] == audit_keys.fingerprint() and body["algorithm"] == "Ed25519"
    assert signing.fingerprint(signing.load_public_key(body["public_key_pem"])) == body["fingerprint"]
    response = client().get("/.well-known/consortium-audit-key")
    assert response.status_code == 200 and response["X-Key-Fingerprint"] == body["fingerprint"]
    assert response.content.decode() == body["public_key_pem"]


def test_without_a_key_the_public_key_answers_503_saying_why(p, settings):
    settings.AUDIT_SIGNING_KEY, settings.DEBUG = "", False
    assert_error(client().get(KEY), 503, "checkpoint_unavailable", mentions="AUDIT_SIGNING_KEY")
    assert client().get("/.well-known/consortium-audit-key").status_code == 503


def test_the_audit_page_and_the_footer_show_the_key_fingerprint_and_the_latest_checkpoint(p):
    add_events(2)
    checkpoint = checkpoint_sign(reason="manual")
    api = client(p.auditor)
    body = api.get("/audit/").content.decode()
    assert audit_keys.fingerprint() in body and 'data-testid="audit-key"' in body
    assert f"Latest signed checkpoint: no. {checkpoint.number}, {checkpoint.tree_size} events" in body
