"""The agent's side of a secure round (`sites.agent.secure`) against an in-process coordinator that keeps the
documented contract with the real `CoordinatorRound`: the sum comes out as FedAvg of the changes, a dropout
is recovered, and a tampered share stops the agent with a reason and without answering."""

import base64
import json

import numpy as np
import pytest

from consortium.federated.secagg import (
    CoordinatorRound,
    Keys,
    MaskedInput,
    RoundConfig,
    Shares,
    Unmask,
)
from sites.agent.client import AgentError, Response
from sites.agent.secure import SecureRounds, model_change

LENGTH = 64
ROUND = 5


class Coordinator:
    """The coordinator's secure-round endpoints, in memory: each stage closes once `expected` sites have posted
    (or when the test closes it, as a deadline would)."""

    def __init__(self, sites: list[str]) -> None:
        self.config = RoundConfig(context=b"study-1/round-5", vector_length=LENGTH, clip=1.0, max_weight=1000)
        self.core = CoordinatorRound(self.config)
        self.expected = set(sites)
        self.stage, self.posted, self.mail, self.result, self.reason = "keys", set(), {}, None, ""

    def transport(self, site: str):
        def request(method: str, path: str, *, body: bytes | None = None, headers=None) -> Response:
            tail = path.removeprefix(f"/api/agent/rounds/{ROUND}/secagg/")
            if method == "GET":
                return self._state(site)
            if tail == "keys/":
                self.core.add_keys(Keys.from_wire(json.loads(body)))
            elif tail == "shares/":
                self.core.add_shares(Shares.from_wire(json.loads(body)))
            elif tail == "masked-input/":
                vector = MaskedInput.from_safetensors(body, length=LENGTH + 1, sha256=headers["X-SHA256"])
                self.core.add_masked_input(MaskedInput(site, vector, tuple(json.loads(headers["X-Masked-With"]))))
            elif tail == "unmask/":
                self.core.add_unmask(Unmask.from_wire(json.loads(body)))
            self.posted.add(site)
            if self.posted >= self.expected:
                self.close()
            return Response(201, {}, b"{}")
        return request

    def close(self) -> None:
        self.posted = set()
        if self.stage == "keys":
            self.roster = self.core.close_keys()
            self.stage = "shares"
        elif self.stage == "shares":
            self.mail = self.core.close_shares()
            self.expected &= set(self.mail)
            self.stage = "masked_inputs"
        elif self.stage == "masked_inputs":
            self.request = self.core.close_masked_inputs()
            self.expected &= set(self.request.survivors)
            self.stage = "unmasking"
        else:
            self.result = self.core.finish()
            self.stage = "done"

    def _state(self, site: str) -> Response:
        state = {"stage": self.stage, "config": self.config.to_wire()}
        if self.stage == "shares":
            state["roster"] = [k.to_wire() for k in self.roster.keys]
        if self.stage == "masked_inputs":
            state["mail"] = {s: base64.b64encode(c).decode() for s, c in self.mail.get(site, {}).items()}
        if self.stage == "unmasking":
            state["request"] = self.request.to_wire()
        return Response(200, {}, json.dumps(state).encode())


def changes(sites):
    rng = np.random.default_rng(3)
    return {s: (rng.normal(0, 0.1, LENGTH).astype(np.float32), 10 * (i + 1)) for i, s in enumerate(sites)}


def run(coordinator: Coordinator, agents: dict[str, SecureRounds], updates, *, stop_after: dict[str, str]) -> None:
    for _ in range(6):
        for site, agent in agents.items():
            if stop_after.get(site) in agent.sent.get(ROUND, set()):
                continue  # this site went away
            agent.step(ROUND, lambda site=site: updates[site])
        if coordinator.stage == "done":
            return
        if not coordinator.posted >= coordinator.expected and coordinator.posted:
            coordinator.close()  # the stage's deadline passes


def test_three_agents_get_fedavg_of_their_changes():
    sites = ["site-a", "site-b", "site-c"]
    coordinator = Coordinator(sites)
    agents = {s: SecureRounds(s, coordinator.transport(s)) for s in sites}
    updates = changes(sites)
    run(coordinator, agents, updates, stop_after={})
    total = sum(w for _, w in updates.values())
    expected = sum(u.astype(np.float64) * w for u, w in updates.values()) / total
    assert coordinator.stage == "done"
    assert np.abs(coordinator.result.mean - expected).max() <= coordinator.result.max_error


def test_a_site_that_leaves_after_sharing_is_recovered_from_the_others():
    sites = ["site-a", "site-b", "site-c", "site-d", "site-e"]
    coordinator = Coordinator(sites)
    agents = {s: SecureRounds(s, coordinator.transport(s)) for s in sites}
    updates = changes(sites)
    run(coordinator, agents, updates, stop_after={"site-c": "shares"})
    kept = {s: u for s, u in updates.items() if s != "site-c"}
    expected = sum(u.astype(np.float64) * w for u, w in kept.values()) / sum(w for _, w in kept.values())
    assert coordinator.result.dropped == ("site-c",)
    assert np.abs(coordinator.result.mean - expected).max() <= coordinator.result.max_error


def test_a_tampered_share_stops_the_agent_with_a_reason_and_it_forgets_its_secrets():
    sites = ["site-a", "site-b", "site-c"]
    coordinator = Coordinator(sites)
    agents = {s: SecureRounds(s, coordinator.transport(s)) for s in sites}
    for _ in range(2):
        for agent in agents.values():
            agent.step(ROUND, lambda: (np.zeros(LENGTH, np.float32), 1))
    assert coordinator.stage == "masked_inputs"
    ciphertext = coordinator.mail["site-b"]["site-a"]
    coordinator.mail["site-b"]["site-a"] = ciphertext[:-1] + bytes([ciphertext[-1] ^ 1])
    with pytest.raises(AgentError, match="from site site-a failed authentication"):
        agents["site-b"].step(ROUND, lambda: (np.zeros(LENGTH, np.float32), 1))
    assert ROUND not in agents["site-b"].sessions


def test_the_change_is_the_update_minus_the_base_in_name_order():
    base = {"b": np.ones(2, np.float32), "a": np.zeros(3, np.float32)}
    update = {"a": np.full(3, 2.0, np.float32), "b": np.full(2, 4.0, np.float32)}
    assert model_change(update, base).tolist() == [2.0, 2.0, 2.0, 3.0, 3.0]
