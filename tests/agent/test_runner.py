"""The agent's rounds against a scripted coordinator: what it sends for statistics and training rounds, what it
never sends, and how it stops on a refused token."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load as st_load

from consortium.federated import codec
from consortium.federated.metrics import SCORE_BINS
from sites.agent.client import AgentClient
from sites.agent.data import load_table, local_statistics, split
from sites.agent.demo_data import DEMO_PROTOCOL, write_partitions
from sites.agent.runner import Agent
from sites.agent.training import Protocol
from tests.agent.scripted_server import Reply

ROOT = Path(__file__).resolve().parents[2]
ME = {"site": {"id": 3, "code": "amc", "name": "Amsterdam UMC"}, "token": {"prefix": "cst_ab12"}}
STATS_ROUND = {"round_id": 16, "study_id": 2, "study_title": "Breast cancer", "number": 0, "kind": "statistics",
               "base_version": None, "submitted": False, "protocol": DEMO_PROTOCOL, "standardization": None}
MODEL = codec.encode(Protocol.from_json(DEMO_PROTOCOL).initial_state())


@pytest.fixture(scope="module")
def csv_path(tmp_path_factory) -> Path:
    return write_partitions(tmp_path_factory.mktemp("demo"), ["amc", "hus"], seed=0)["amc"]


def training_round(csv_path: Path) -> dict:
    train_set, _ = split(load_table(csv_path).dataset("target"), 0.2, seed=0)
    stats = local_statistics(train_set)
    mean = [s / stats["count"] for s in stats["sum"]]
    std = [max(q / stats["count"] - m * m, 1e-12) ** 0.5 for q, m in zip(stats["sum_sq"], mean, strict=True)]
    return {**STATS_ROUND, "round_id": 17, "number": 3, "kind": "training", "base_version": 2,
            "standardization": {"features": stats["features"], "mean": mean, "std": std}}


def script_training(server, csv_path: Path) -> None:
    server.on("GET", "/api/agent/me/", Reply(200, ME))
    server.on("GET", "/api/agent/rounds/", Reply(200, [training_round(csv_path)]))
    server.on("GET", "/api/agent/rounds/17/model/", Reply(200, MODEL, {
        "X-Model-SHA256": hashlib.sha256(MODEL).hexdigest(), "X-Model-Version": "2"}))
    accepted = {"update_id": 9, "round_id": 17, "status": "accepted"}
    server.on("POST", "/api/agent/rounds/17/update/", Reply(201, accepted))


def agent_for(server, csv_path: Path, lines: list[str]) -> Agent:
    client = AgentClient(server.url, "cst_secret", sleep=lambda s: None, timeout=5)
    return Agent(client, load_table(csv_path), val_fraction=0.2, seed=0, say=lines.append)


def test_it_sends_only_counts_sums_and_squares_in_a_statistics_round(server, csv_path):
    server.on("GET", "/api/agent/me/", Reply(200, ME))
    server.on("GET", "/api/agent/rounds/", Reply(200, [STATS_ROUND]))
    server.on("POST", "/api/agent/rounds/16/statistics/", Reply(201, {"status": "accepted"}))
    lines: list[str] = []
    assert agent_for(server, csv_path, lines).run(once=True, poll=0) == 0
    sent = server.requests_to("POST", "/api/agent/rounds/16/statistics/")[0].json()
    train_set, _ = split(load_table(csv_path).dataset("target"), 0.2, seed=0)
    assert sent == local_statistics(train_set) and set(sent) == {"features", "count", "sum", "sum_sq"}
    assert "round 0 of study 'Breast cancer': sent counts, sums and sums of squares" in lines[-1]


def test_it_trains_and_submits_an_update_with_the_protocol_headers(server, csv_path):
    script_training(server, csv_path)
    lines: list[str] = []
    assert agent_for(server, csv_path, lines).run(once=True, poll=0) == 0
    update = server.requests_to("POST", "/api/agent/rounds/17/update/")[0]
    tensors = st_load(update.body)
    assert codec.spec_of(tensors) == codec.spec_of(st_load(MODEL))
    metrics = json.loads(update.headers["X-Metrics"])
    assert {"train_loss", "val_loss", "val_accuracy", "val_auc", "val_examples", "training_seconds"} <= set(metrics)
    assert set(metrics["base"]) == {"val_loss", "val_accuracy", "val_auc", "val_examples", "score_histogram"}
    histogram = metrics["base"]["score_histogram"]
    assert len(histogram["positives"]) == len(histogram["negatives"]) == SCORE_BINS
    assert sum(histogram["positives"]) + sum(histogram["negatives"]) == metrics["base"]["val_examples"]
    assert "score_histogram" not in metrics  # only the downloaded model's evaluation carries one
    rows = len(load_table(csv_path).values)
    assert int(update.headers["X-Num-Examples"]) + metrics["val_examples"] == rows
    assert (update.headers["X-Round"], update.headers["X-Base-Version"]) == ("3", "2")
    assert "downloaded model v2 (sha ok)" in lines[-1] and "submitted (accepted)" in lines[-1]


def script_evaluation(server, csv_path: Path) -> None:
    """An evaluation round (after the last training round): round 21 scores the final model v20."""
    server.on("GET", "/api/agent/me/", Reply(200, ME))
    final = {**training_round(csv_path), "round_id": 40, "number": 21, "kind": "evaluation", "base_version": 20}
    server.on("GET", "/api/agent/rounds/", Reply(200, [final]))
    server.on("GET", "/api/agent/rounds/40/model/", Reply(200, MODEL, {
        "X-Model-SHA256": hashlib.sha256(MODEL).hexdigest(), "X-Model-Version": "20"}))
    server.on("POST", "/api/agent/rounds/40/evaluation/", Reply(201, {"round_id": 40, "status": "accepted"}))


def test_it_evaluates_the_final_model_and_sends_only_its_metrics_in_an_evaluation_round(server, csv_path):
    script_evaluation(server, csv_path)
    lines: list[str] = []
    assert agent_for(server, csv_path, lines).run(once=True, poll=0) == 0
    assert len(server.requests_to("GET", "/api/agent/rounds/40/model/")) == 1
    [sent] = server.requests_to("POST", "/api/agent/rounds/40/evaluation/")
    assert sent.headers["Content-Type"] == "application/json"
    body = sent.json()
    assert set(body) == {"round", "base_version", "metrics"} and (body["round"], body["base_version"]) == (21, 20)
    metrics = body["metrics"]
    assert set(metrics) == {"val_loss", "val_accuracy", "val_auc", "val_examples", "score_histogram"}
    _, val_set = split(load_table(csv_path).dataset("target"), 0.2, seed=0)
    histogram = metrics["score_histogram"]
    assert metrics["val_examples"] == len(val_set) == sum(histogram["positives"]) + sum(histogram["negatives"])
    assert sum(histogram["positives"]) == val_set.positives
    assert not server.requests_to("POST", "/api/agent/rounds/40/update/")  # no weights leave the site
    assert "round 21 of study 'Breast cancer': evaluated model v20 (sha ok) on" in lines[-1]
    assert "sent the metrics (no rows, no weights)" in lines[-1]


def test_it_counts_an_evaluation_the_coordinator_already_has_as_done(server, csv_path):
    script_evaluation(server, csv_path)
    server.on("POST", "/api/agent/rounds/40/evaluation/", Reply(409, {
        "error": "duplicate_evaluation", "detail": "Amsterdam UMC already sent its evaluation for round 21."}))
    lines: list[str] = []
    assert agent_for(server, csv_path, lines).run(once=True, poll=0) == 0
    assert "already sent earlier" in lines[-1]


def test_it_does_a_submitted_round_only_once(server, csv_path):
    script_training(server, csv_path)
    agent = agent_for(server, csv_path, [])
    agent.introduce()
    agent.run_once()
    agent.run_once()
    assert len(server.requests_to("POST", "/api/agent/rounds/17/update/")) == 1


def test_it_resends_the_same_update_with_the_same_key_after_the_coordinator_was_unreachable(server, csv_path):
    script_training(server, csv_path)
    server.on("POST", "/api/agent/rounds/17/update/", *[Reply(503)] * 5, Reply(201, {"status": "accepted"}))
    agent = agent_for(server, csv_path, [])
    assert agent.run(once=True, poll=0) == 1  # five attempts, all 503
    assert agent.run(once=True, poll=0) == 0
    attempts = server.requests_to("POST", "/api/agent/rounds/17/update/")
    assert len({a.headers["Idempotency-Key"] for a in attempts}) == 1 and len({a.body for a in attempts}) == 1
    assert len(server.requests_to("GET", "/api/agent/rounds/17/model/")) == 1


def test_it_reports_a_gate_refusal_in_plain_words_and_leaves_the_round(server, csv_path):
    script_training(server, csv_path)
    refusal = {"error": "gate_refused", "detail": "The gate refuses submit_update for this site.",
               "checks": [{"name": "dua", "passed": False, "reason": "The site has not signed DUA v3."}]}
    server.on("POST", "/api/agent/rounds/17/update/", Reply(403, refusal))
    lines: list[str] = []
    agent = agent_for(server, csv_path, lines)
    assert agent.run(once=True, poll=0) == 1
    assert "refused by the coordinator (HTTP 403)" in lines[-1] and "has not signed DUA v3" in lines[-1]
    agent.run_once()
    assert len(server.requests_to("POST", "/api/agent/rounds/17/update/")) == 1


def test_it_refuses_to_train_when_the_study_features_differ_from_the_file(server, csv_path):
    script_training(server, csv_path)
    other = training_round(csv_path)
    other["standardization"]["features"][0] = "tumour size"
    server.on("GET", "/api/agent/rounds/", Reply(200, [other]))
    lines: list[str] = []
    assert agent_for(server, csv_path, lines).run(once=True, poll=0) == 1
    assert "not done: The study's features do not match" in lines[-1]
    assert not server.requests_to("POST", "/api/agent/rounds/17/update/")


def test_the_command_stops_with_a_plain_message_when_the_token_is_revoked(server, csv_path):
    server.on("GET", "/api/agent/me/", Reply(401, {"error": "authentication_failed", "detail": "Token revoked."}))
    done = subprocess.run([sys.executable, "-m", "sites.agent", "--server", server.url, "--token", "cst_old",
                           "--data", str(csv_path), "--once"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "Stopping: The coordinator refused the agent token (HTTP 401): Token revoked." in done.stdout


def test_the_command_trains_and_submits_once(server, csv_path):
    script_training(server, csv_path)
    done = subprocess.run([sys.executable, "-m", "sites.agent", "--server", server.url, "--token", "cst_secret",
                           "--data", str(csv_path), "--once", "--seed", "1"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "round 3 of study 'Breast cancer': downloaded model v2 (sha ok)" in done.stdout
    assert len(server.requests_to("POST", "/api/agent/rounds/17/update/")) == 1


def test_the_agent_imports_no_django():
    code = ("import sys, sites.agent.runner, sites.agent.training, sites.agent.client, sites.agent.data, "
            "sites.agent.demo_data, sites.agent.secure, sites.agent.witness, sites.agent.__main__; "
            "assert not any(m == 'django' or m.startswith('django.') for m in sys.modules), "
            "sorted(m for m in sys.modules if m.startswith('django'))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_a_polling_agent_waits_for_a_coordinator_that_is_not_up_yet(server, csv_path):
    script_training(server, csv_path)
    server.on("GET", "/api/agent/me/", *[Reply(503)] * 5, Reply(200, ME))
    polls: list[float] = []

    def sleep(seconds: float) -> None:
        polls.append(seconds)
        if server.requests_to("POST", "/api/agent/rounds/17/update/"):
            raise KeyboardInterrupt  # the staff stop the agent once the work is done

    with pytest.raises(KeyboardInterrupt):
        agent_for(server, csv_path, []).run(once=False, poll=2.0, sleep=sleep)
    assert polls == [2.0, 2.0] and len(server.requests_to("GET", "/api/agent/me/")) == 6


def test_it_never_sends_an_update_in_the_clear_when_the_protocol_asks_for_secure_aggregation(server, csv_path):
    script_training(server, csv_path)
    secure = training_round(csv_path)
    secure["protocol"] = {**secure["protocol"], "secure_aggregation": True}
    server.on("GET", "/api/agent/rounds/", Reply(200, [secure]))
    lines: list[str] = []
    agent = agent_for(server, csv_path, lines)
    assert agent.run(once=True, poll=0) == 1
    assert "asks for secure aggregation" in lines[-1] and "Nothing was trained or sent" in lines[-1]
    assert server.requests_to("POST", "/api/agent/rounds/17/update/") == []
    assert server.requests_to("GET", "/api/agent/rounds/17/model/") == []
