"""The agent's HTTP client against a scripted coordinator: what it retries, what it refuses, what it sends."""

import hashlib
import json
import socket

import pytest

from sites.agent.client import AgentClient, ApiError, CoordinatorUnreachable, ModelIntegrityError, TokenRefused
from tests.agent.scripted_server import Reply

ME = {"site": {"id": 3, "code": "amc", "name": "Amsterdam UMC"}, "token": {"prefix": "cst_ab12"}}
MODEL = b"safetensors bytes stand-in"
UPDATE = "/api/agent/rounds/17/update/"


def client_for(server, sleeps=None, **kwargs) -> AgentClient:
    recorder = sleeps if sleeps is not None else []
    return AgentClient(server.url, "cst_secret", sleep=recorder.append, timeout=5, **kwargs)


def submit(client: AgentClient, key: str = "key-1") -> dict:
    return client.submit_update(17, b"weights", round_number=3, base_version=2, num_examples=212,
                                metrics={"val_auc": 0.97}, idempotency_key=key)


def test_it_sends_the_bearer_token(server):
    server.on("GET", "/api/agent/me/", Reply(200, ME))
    assert client_for(server).me() == ME
    assert server.seen[0].headers["Authorization"] == "Bearer cst_secret"


def test_it_retries_a_503_with_backoff_then_succeeds(server):
    server.on("GET", "/api/agent/rounds/", Reply(503, {"detail": "busy"}), Reply(503), Reply(200, []))
    sleeps: list[float] = []
    assert client_for(server, sleeps, backoff_base=0.5).rounds() == []
    assert len(server.requests_to("GET", "/api/agent/rounds/")) == 3
    assert 0.25 <= sleeps[0] <= 0.5 and 0.5 <= sleeps[1] <= 1.0  # doubling, jittered within half of nominal


def test_it_gives_up_after_a_bounded_number_of_attempts_with_capped_delays(server):
    server.on("GET", "/api/agent/rounds/", Reply(502))
    sleeps: list[float] = []
    with pytest.raises(CoordinatorUnreachable, match="after 6 attempts .*HTTP 502"):
        client_for(server, sleeps, max_attempts=6, backoff_base=1, backoff_cap=4).rounds()
    assert len(server.seen) == 6 and len(sleeps) == 5 and max(sleeps) <= 4


def test_it_retries_network_errors_and_says_the_coordinator_is_unreachable():
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sleeps: list[float] = []
    client = AgentClient(f"http://127.0.0.1:{port}", "t", sleep=sleeps.append, max_attempts=3, timeout=2)
    with pytest.raises(CoordinatorUnreachable, match="did not answer GET /api/agent/me/ after 3 attempts"):
        client.me()
    assert len(sleeps) == 2


def test_it_does_not_retry_a_400_and_raises_the_servers_detail(server):
    detail = "Tensor 'linear.weight' has shape [1, 29]; expected [1, 30]."
    server.on("POST", UPDATE, Reply(400, {"error": "shape", "detail": detail}), Reply(201, {"status": "accepted"}))
    with pytest.raises(ApiError) as caught:
        submit(client_for(server))
    assert (caught.value.status, caught.value.code, caught.value.detail) == (400, "shape", detail)
    assert detail in str(caught.value)
    assert len(server.requests_to("POST", UPDATE)) == 1


def test_it_reports_a_refused_token_in_plain_words_without_retrying(server):
    server.on("GET", "/api/agent/me/", Reply(401, {"error": "authentication_failed", "detail": "Token revoked."}))
    with pytest.raises(TokenRefused, match="refused the agent token .*Token revoked.*create a new token"):
        client_for(server).me()
    assert len(server.seen) == 1


def test_it_refuses_a_model_whose_sha256_does_not_match(server):
    wrong = hashlib.sha256(b"something else").hexdigest()
    server.on("GET", "/api/agent/rounds/17/model/",
              Reply(200, MODEL, {"X-Model-SHA256": wrong, "X-Model-Version": "2"}))
    with pytest.raises(ModelIntegrityError, match="corrupt or altered"):
        client_for(server).download_model(17)


def test_it_accepts_a_model_whose_sha256_matches(server):
    digest = hashlib.sha256(MODEL).hexdigest()
    server.on("GET", "/api/agent/rounds/17/model/",
              Reply(200, MODEL, {"X-Model-SHA256": digest.upper(), "X-Model-Version": "2"}))
    model = client_for(server).download_model(17)
    assert (model.data, model.sha256, model.version) == (MODEL, digest, 2)


def test_it_refuses_a_model_without_a_sha256_header(server):
    server.on("GET", "/api/agent/rounds/17/model/", Reply(200, MODEL, {"X-Model-Version": "2"}))
    with pytest.raises(ModelIntegrityError, match="without an X-Model-SHA256"):
        client_for(server).download_model(17)


def test_it_reuses_the_idempotency_key_across_retries_of_one_upload(server):
    accepted = {"update_id": 5, "round_id": 17, "sha256": "ab", "status": "accepted"}
    server.on("POST", UPDATE, Reply(503), Reply(500), Reply(201, accepted))
    assert submit(client_for(server), key="k-42") == accepted
    attempts = server.requests_to("POST", UPDATE)
    assert [a.headers["Idempotency-Key"] for a in attempts] == ["k-42"] * 3
    assert {a.body for a in attempts} == {b"weights"}


def test_it_sends_the_protocol_headers_with_an_update(server):
    server.on("POST", UPDATE, Reply(201, {"status": "accepted"}))
    submit(client_for(server))
    sent = server.requests_to("POST", UPDATE)[0].headers
    assert (sent["X-Round"], sent["X-Base-Version"], sent["X-Num-Examples"]) == ("3", "2", "212")
    assert json.loads(sent["X-Metrics"]) == {"val_auc": 0.97}
    assert sent["Content-Type"] == "application/octet-stream"


def test_it_treats_already_submitted_as_done(server):
    server.on("POST", UPDATE, Reply(409, {"error": "already_submitted", "detail": "This site already submitted."}))
    assert submit(client_for(server))["status"] == "already_submitted"


def test_it_raises_a_stale_round_conflict(server):
    server.on("POST", UPDATE, Reply(409, {"error": "stale_round", "detail": "Round 3 is closed; round 4 is open."}))
    with pytest.raises(ApiError, match="Round 3 is closed"):
        submit(client_for(server))


def test_it_does_not_follow_redirects_with_the_token(server):
    server.on("GET", "/api/agent/me/", Reply(301, b"", {"Location": "https://elsewhere.example/api/agent/me/"}))
    with pytest.raises(ApiError, match="redirect to https://elsewhere.example"):
        client_for(server).me()
    assert len(server.seen) == 1
