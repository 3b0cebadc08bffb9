"""The Flower API: the PI issues the coordinator's token, site admins register SuperNode keys, and the
coordinator (and only it, for its own study) opens rounds, reports results and uploads parameters; a gate
refusal answers 409 so that a coordinator reading only the status stops."""

from rest_framework.test import APIClient

from aggregation.choices import RoundStatus
from aggregation.models import Round
from consortium.federated import codec, zoo
from sites.models import FlowerNode
from studies.services import study_suspend
from tests.aggregation.flower_support import node_key, register_node, result
from tests.aggregation.support import (
    governed_study,
    update_tensors,
)
from tests.api_support import assert_error, call, client
from tests.support import last_seq, only_event


def coordinator_client(p, study) -> APIClient:
    response = call(client(p.pi), "post", f"/api/studies/{study.pk}/flower-tokens/", {"name": "SuperLink"})
    assert response.status_code == 201, response.content
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {response.json()['token']}")
    return api


def upload(api: APIClient, url: str, body: bytes, **headers: str):
    return api.post(url, data=body, content_type="application/octet-stream", **headers)


def test_it_refuses_callers_without_the_coordinators_token(p):
    study = governed_study(p)
    anonymous = APIClient().post("/api/agent/flower/rounds/", {}, format="json")
    assert_error(anonymous, 401, "not_authenticated")
    assert anonymous["WWW-Authenticate"] == "Bearer"
    forged = APIClient()
    forged.credentials(HTTP_AUTHORIZATION="Bearer csf_0000abcd_" + "A" * 43)
    assert_error(forged.get("/api/agent/flower/me/"), 401, mentions="Unknown Flower coordinator token")
    # A site admin sees the study but may not issue its token; an outsider does not even see it.
    assert_error(call(client(p.site_a_admin), "post", f"/api/studies/{study.pk}/flower-tokens/", {"name": "x"}),
                 403, mentions="Only the study's PI")
    assert_error(call(client(p.outsider), "post", f"/api/studies/{study.pk}/flower-tokens/", {"name": "x"}), 404)


def test_a_site_admin_registers_a_supernode_key_through_the_api(p):
    openssh, _ = node_key()
    mark = last_seq()
    response = call(client(p.site_a_admin), "post", f"/api/sites/{p.site_a.pk}/flower-nodes/",
                    {"name": "Flower box", "public_key": openssh})
    assert response.status_code == 201, response.content
    node = FlowerNode.objects.get()
    assert response.json()["fingerprint"] == node.fingerprint
    only_event(mark, "sites.flower_node.registered")
    assert_error(call(client(p.site_b_admin), "post", f"/api/flower-nodes/{node.pk}/revoke/", {"reason": "x"}), 404)
    assert call(client(p.site_a_admin), "post", f"/api/flower-nodes/{node.pk}/revoke/",
                {"reason": "Replaced"}).status_code == 200


def test_a_coordinator_runs_a_round_over_http(p):
    study = governed_study(p)
    api = coordinator_client(p, study)
    keys = {1: register_node(p, p.site_a), 2: register_node(p, p.site_b)}
    initial = codec.encode(zoo.initial_state(study.model_kind, study.num_features, seed=0))
    recorded = upload(api, "/api/agent/flower/initial-model/", initial)
    assert recorded.status_code == 200, recorded.content
    opened = api.post("/api/agent/flower/rounds/", {
        "server_round": 1, "base_sha256": recorded.json()["sha256"],
        "nodes": [{"node_id": n, "public_key": k} for n, k in keys.items()]}, format="json")
    assert opened.status_code == 200, opened.content
    round_ = Round.objects.get(pk=opened.json()["round_id"])
    results = api.post(f"/api/agent/flower/rounds/{round_.pk}/results/",
                       {"results": [result(round_, 1, seed=1), result(round_, 2, seed=2)], "acted_on": {}},
                       format="json")
    assert results.status_code == 200 and [n["node_id"] for n in results.json()["nodes"]] == [1, 2]
    version = upload(api, f"/api/agent/flower/rounds/{round_.pk}/version/", codec.encode(update_tensors(round_)),
                     HTTP_X_FLOWER_STRATEGY="FedAvg", HTTP_X_ACTED_ON='{"kept": [1, 2]}')
    assert version.status_code == 200 and version.json()["version"] == 1


def test_a_gate_refusal_answers_409_and_blocks_the_round(p):
    study = governed_study(p)
    api = coordinator_client(p, study)
    keys = {1: register_node(p, p.site_a), 2: register_node(p, p.site_b)}
    sha = upload(api, "/api/agent/flower/initial-model/",
                 codec.encode(zoo.initial_state(study.model_kind, study.num_features, seed=0))).json()["sha256"]
    study_suspend(actor=p.pi, study=study, justification="Breach")
    opened = api.post("/api/agent/flower/rounds/", {"server_round": 1, "base_sha256": sha, "nodes": [
        {"node_id": n, "public_key": k} for n, k in keys.items()]}, format="json")
    assert opened.status_code == 409 and opened.json()["code"] == "gate_refused"
    assert "suspended" in opened.json()["detail"]
    assert Round.objects.get(pk=opened.json()["round_id"]).status == RoundStatus.BLOCKED


def test_a_coordinator_cannot_touch_another_studys_round(p):
    study, other = governed_study(p), governed_study(p, title="Another study")
    api, other_api = coordinator_client(p, study), coordinator_client(p, other)
    keys = {1: register_node(p, p.site_a), 2: register_node(p, p.site_b)}
    sha = upload(api, "/api/agent/flower/initial-model/",
                 codec.encode(zoo.initial_state(study.model_kind, study.num_features, seed=0))).json()["sha256"]
    opened = api.post("/api/agent/flower/rounds/", {"server_round": 1, "base_sha256": sha, "nodes": [
        {"node_id": n, "public_key": k} for n, k in keys.items()]}, format="json")
    assert_error(other_api.post(f"/api/agent/flower/rounds/{opened.json()['round_id']}/results/",
                                {"results": [], "acted_on": {}}, format="json"), 404)
