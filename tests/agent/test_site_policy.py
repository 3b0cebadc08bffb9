"""The site's own policy (sites/agent/policy.py): the agent declines rounds outside it, says why, tells the
coordinator, and keeps an append-only record of what it sent and declined (sites/agent/record.py)."""

import hashlib
import json
from pathlib import Path

import pytest

from consortium.federated.protocol import protocol_hash
from sites.agent.client import AgentClient
from sites.agent.data import load_table
from sites.agent.demo_data import write_partitions
from sites.agent.policy import Policy, PolicyError
from sites.agent.record import LocalRecord, RecordError
from sites.agent.runner import Agent
from tests.agent.scripted_server import Reply
from tests.agent.test_runner import script_training, training_round

DECLINE = "/api/agent/rounds/17/decline/"
UPDATE = "/api/agent/rounds/17/update/"


@pytest.fixture(scope="module")
def csv_path(tmp_path_factory) -> Path:
    return write_partitions(tmp_path_factory.mktemp("demo"), ["amc"], seed=0)["amc"]


def run_agent(server, csv_path, policy: Policy | None, record: LocalRecord) -> tuple[int, list[str]]:
    lines: list[str] = []
    client = AgentClient(server.url, "cst_secret", sleep=lambda s: None, timeout=5)
    agent = Agent(client, load_table(csv_path), say=lines.append, policy=policy, record=record)
    return agent.run(once=True, poll=0), lines


def script_with_protocol(server, csv_path, **protocol_changes) -> dict:
    script_training(server, csv_path)
    round_ = training_round(csv_path)
    round_["protocol"] = {**round_["protocol"], **protocol_changes}
    round_["protocol_sha256"] = protocol_hash(round_["protocol"])
    server.on("GET", "/api/agent/rounds/", Reply(200, [round_]))
    server.on("POST", DECLINE, Reply(201, {"round_id": 17, "status": "declined"}))
    return round_


def test_a_protocol_the_site_did_not_accept_is_declined_and_the_coordinator_told(server, csv_path, tmp_path):
    script_with_protocol(server, csv_path)
    policy = Policy.from_mapping({"protocol_sha256": ["a" * 64]})
    record = LocalRecord(tmp_path / "record.jsonl")
    code, lines = run_agent(server, csv_path, policy, record)
    assert code == 0
    assert not server.requests_to("POST", UPDATE) and not server.requests_to("GET", "/api/agent/rounds/17/model/")
    reason = server.requests_to("POST", DECLINE)[0].json()["reason"]
    assert "is not one this site accepted" in reason
    assert "declined by this site's policy" in lines[-1] and reason in lines[-1]
    assert [e["kind"] for e in record.entries()] == ["declined"]


def test_a_protocol_that_does_not_match_its_announced_hash_is_declined(server, csv_path, tmp_path):
    round_ = script_with_protocol(server, csv_path)
    round_["protocol"]["local_epochs"] = 50  # changed after hashing: what the site would train is not what it saw
    server.on("GET", "/api/agent/rounds/", Reply(200, [round_]))
    code, _ = run_agent(server, csv_path, Policy(), LocalRecord(tmp_path / "r.jsonl"))
    assert "does not match its announced hash" in server.requests_to("POST", DECLINE)[0].json()["reason"]
    assert not server.requests_to("POST", UPDATE)


@pytest.mark.parametrize(("policy", "protocol", "says"), [
    ({"studies": [99]}, {}, "study 2 is not in this site's policy"),
    ({"require_secure_aggregation": True}, {}, "requires secure aggregation"),
    ({"min_dp_noise_multiplier": 0.8}, {"dp_noise_multiplier": 0.5}, "at least 0.8"),
])
def test_each_rule_of_the_policy_declines_with_its_own_reason(server, csv_path, tmp_path, policy, protocol, says):
    script_with_protocol(server, csv_path, **protocol)
    run_agent(server, csv_path, Policy.from_mapping(policy), LocalRecord(tmp_path / "r.jsonl"))
    assert says in server.requests_to("POST", DECLINE)[0].json()["reason"]
    assert not server.requests_to("POST", UPDATE)


def test_a_round_inside_the_policy_is_trained_and_kept_in_the_local_record(server, csv_path, tmp_path):
    round_ = script_with_protocol(server, csv_path, dp_noise_multiplier=1.0)
    policy = Policy.from_mapping({"studies": [2], "protocol_sha256": [round_["protocol_sha256"]],
                                  "min_dp_noise_multiplier": 0.8, "max_rounds_per_day": 1})
    record = LocalRecord(tmp_path / "record.jsonl")
    assert run_agent(server, csv_path, policy, record)[0] == 0
    sent = server.requests_to("POST", UPDATE)[0]
    (entry,) = record.entries()
    assert entry["kind"] == "update" and entry["round"] == 3 and entry["study_id"] == 2
    assert entry["update_sha256"] == hashlib.sha256(sent.body).hexdigest()
    assert entry["num_examples"] == int(sent.headers["X-Num-Examples"])
    assert entry["protocol_sha256"] == round_["protocol_sha256"]
    # The day's quota is now used: the next round is declined, counted from the record itself.
    server.seen.clear()
    run_agent(server, csv_path, policy, record)
    assert "at most 1 rounds a day" in server.requests_to("POST", DECLINE)[0].json()["reason"]


def test_the_policy_file_is_toml_and_a_misspelt_key_is_refused(tmp_path):
    good = tmp_path / "policy.toml"
    good.write_text('studies = [3]\nrequire_secure_aggregation = true\nmin_dp_noise_multiplier = 1.1\n')
    assert Policy.load(str(good)) == Policy(studies=frozenset({3}), require_secure_aggregation=True,
                                            min_dp_noise_multiplier=1.1)
    bad = tmp_path / "bad.toml"
    bad.write_text("require_secure_agregation = true\n")
    with pytest.raises(PolicyError, match="unknown setting.*require_secure_agregation"):
        Policy.load(str(bad))
    with pytest.raises(PolicyError, match="list of 64-hex-digit"):
        Policy.from_mapping({"protocol_sha256": ["abc"]})


def test_an_edited_local_record_is_caught(tmp_path):
    record = LocalRecord(tmp_path / "record.jsonl")
    record.append("update", round=1, study_id=2, update_sha256="a" * 64, num_examples=100)
    record.append("update", round=2, study_id=2, update_sha256="b" * 64, num_examples=100)
    lines = record.path.read_text().splitlines()
    edited = json.loads(lines[0])
    edited["num_examples"] = 1000
    record.path.write_text(json.dumps(edited) + "\n" + lines[1] + "\n")
    with pytest.raises(RecordError, match="line 1"):
        record.entries()
    record.path.write_text(lines[1] + "\n")  # the first line removed
    with pytest.raises(RecordError, match="line 1"):
        record.entries()
