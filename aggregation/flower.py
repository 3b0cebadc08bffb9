"""Put a Flower app under Consortium's governance: wrap its server strategy.

    strategy = GovernedStrategy(FedAvg(...), server="https://consortium.example", token=TOKEN, study=12)
    strategy.start(grid=grid, initial_arrays=arrays, num_rounds=5)

`GovernedStrategy` is a Flower `Strategy` (the Message API of Flower 1.2x: `flwr.serverapp.strategy`) that
imports no Django: it talks HTTP to Consortium's Flower API (`/api/agent/flower/`, docs/flower.md) with the
study's coordinator token, which the study's PI issues. Each round:

1. `configure_train` sends Consortium the connected nodes' public keys (Flower's node authentication binds a
   node id to a key, and each site admin registered their SuperNode's key with their site). Consortium asks
   its gate and answers which nodes may take part; the inner strategy samples among those only.
2. `aggregate_train` reports every result received (node, num_examples, SHA-256 of its parameters as
   safetensors, norms, metrics); Consortium asks the gate again in its own transaction and answers which
   results to keep (a site revoked meanwhile is dropped, per the study's revocation policy). The inner
   strategy aggregates the kept results only, and the new parameters are uploaded as safetensors: Consortium
   records them as the study's next model version, with provenance.

Any refusal fails closed: `GovernanceRefused` is raised and the run stops; nothing is aggregated without
Consortium's yes. Parameters travel as safetensors, never pickle.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Iterable
from typing import Any

import httpx
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from consortium.federated import codec

logger = logging.getLogger(__name__)

API_PREFIX = "/api/agent/flower/"
# How often the inner strategy may be asked to aggregate again when a site loses its eligibility while it
# aggregates (each time, Consortium excludes that site's result first).
MAX_REAGGREGATIONS = 3


class GovernanceRefused(RuntimeError):
    """Consortium refused (the gate, a revoked token, a model it does not know): the run must stop."""


class GovernedStrategy(Strategy):
    """A Flower strategy that takes part only with Consortium's yes; `inner` does the federated arithmetic."""

    def __init__(self, inner: Strategy, *, server: str, token: str, study: int, wait_for_nodes: int = 0,
                 node_wait_seconds: float = 120.0, timeout: float = 60.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.inner = inner
        self.study = int(study)
        self.wait_for_nodes = wait_for_nodes
        self.node_wait_seconds = node_wait_seconds
        self._http = httpx.Client(base_url=server.rstrip("/") + API_PREFIX, timeout=timeout, transport=transport,
                                  headers={"Authorization": f"Bearer {token}"})
        self._initial_recorded = False
        self._round: dict[str, Any] = {}
        self._base: dict[str, torch.Tensor] = {}
        self._allowed: set[int] = set()
        self._check_study()

    # --- Flower's Strategy ------------------------------------------------------------------------------

    def summary(self) -> None:
        logger.info("GovernedStrategy: study %s, governed by Consortium at %s", self.study, self._http.base_url)
        self.inner.summary()

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        data = _safetensors(arrays)
        if not self._initial_recorded:
            self._post("initial-model/", content=data, headers={"Content-Type": "application/octet-stream"})
            self._initial_recorded = True
        self._base = arrays.to_torch_state_dict()
        nodes = self._connected(grid)
        answer = self._post("rounds/", json={"server_round": server_round, "base_sha256": _sha256(data),
                                             "nodes": nodes})
        self._round = answer
        self._allowed = {node["node_id"] for node in answer["nodes"]}
        logger.info("Consortium round %s: nodes %s may take part (sites %s)", answer["round_id"],
                    sorted(self._allowed), [node["site"] for node in answer["nodes"]])
        messages = self.inner.configure_train(server_round, arrays, config, EligibleGrid(grid, self._allowed))
        return [message for message in messages if message.metadata.dst_node_id in self._allowed]

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = [reply for reply in replies if not reply.has_error()]
        results = [self._result(reply) for reply in replies]
        round_id = self._round["round_id"]
        answer = self._post(f"rounds/{round_id}/results/", json={"results": results, "acted_on": self._acted_on()})
        kept = {node["node_id"] for node in answer["nodes"]}
        for attempt in range(MAX_REAGGREGATIONS + 1):
            for dropped in answer.get("dropped", []):
                logger.warning("Consortium dropped the result of node %s (%s): %s", dropped.get("node_id"),
                               dropped.get("site", "unregistered"), dropped.get("reason"))
            arrays, metrics = self.inner.aggregate_train(
                server_round, [reply for reply in replies if reply.metadata.src_node_id in kept])
            if arrays is None:
                raise GovernanceRefused(f"The inner strategy aggregated nothing in round {server_round}.")
            response = self._http.post(f"rounds/{round_id}/version/", content=_safetensors(arrays), headers={
                "Content-Type": "application/octet-stream", "X-Flower-Strategy": type(self.inner).__name__,
                "X-Acted-On": json.dumps({"kept_node_ids": sorted(kept), "results": answer.get("gate", {}).get(
                    "moment"), "attempt": attempt})})
            body = _json(response)
            if response.status_code == 200:
                logger.info("Consortium recorded model v%s (round %s)", body.get("version"), round_id)
                return arrays, metrics
            if response.status_code == 409 and body.get("code") == "aggregate_again":
                answer, kept = body, {node["node_id"] for node in body["nodes"]}
                continue
            raise _refused(response, body)
        raise GovernanceRefused(f"Sites kept losing their eligibility while round {server_round} was aggregated.")

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        # Only the nodes that may take part now see the model: those of the round just governed.
        messages = self.inner.configure_evaluate(server_round, arrays, config, EligibleGrid(grid, self._allowed))
        return [message for message in messages if message.metadata.dst_node_id in self._allowed]

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.inner.aggregate_evaluate(server_round, replies)

    # --- Talking to Consortium -------------------------------------------------------------------------

    def _check_study(self) -> None:
        response = self._http.get("me/")
        body = _json(response)
        if response.status_code != 200:
            raise _refused(response, body)
        if body["study"]["id"] != self.study:
            raise GovernanceRefused(f"The token is for study {body['study']['id']}, not study {self.study}.")

    def _post(self, path: str, **kwargs: Any) -> dict[str, Any]:
        response = self._http.post(path, **kwargs)
        body = _json(response)
        if response.status_code != 200:
            raise _refused(response, body)
        return body

    def _connected(self, grid: Grid) -> list[dict[str, Any]]:
        """The connected nodes with their public keys, once `wait_for_nodes` of them are there (or the wait
        is over: Consortium then judges the ones that came)."""
        deadline = time.monotonic() + self.node_wait_seconds
        while True:
            nodes = list(grid.get_nodes())
            if len(nodes) >= self.wait_for_nodes or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        return [{"node_id": int(node.node_id), "public_key": bytes(node.public_key).decode("ascii", "replace")}
                for node in nodes]

    def _result(self, reply: Message) -> dict[str, Any]:
        """What Consortium records of one result: never the parameters themselves, their SHA-256."""
        arrays = next(iter(reply.content.array_records.values()))
        metrics = next(iter(reply.content.metric_records.values()), MetricRecord())
        tensors = arrays.to_torch_state_dict()
        data = codec.encode(tensors)
        key = getattr(self.inner, "weighted_by_key", "num-examples")
        return {"node_id": int(reply.metadata.src_node_id), "num_examples": int(metrics.get(key, 0)),
                "sha256": _sha256(data), "size_bytes": len(data), "weight_norm": _norm(tensors.values()),
                "delta_norm": _norm(t - self._base[name] for name, t in tensors.items() if name in self._base),
                "metrics": {name: float(value) for name, value in metrics.items()
                            if isinstance(value, int | float) and math.isfinite(value)}}

    def _acted_on(self) -> dict[str, Any]:
        """The verdict this round was configured with, as Consortium sent it (echoed into the ledger)."""
        gate = self._round.get("gate", {})
        return {"round_id": self._round.get("round_id"), "gate_moment": gate.get("moment"),
                "eligible_site_ids": gate.get("eligible_site_ids"), "node_ids": sorted(self._allowed)}


class EligibleGrid:
    """The grid as the inner strategy sees it: only the nodes Consortium allowed this round."""

    def __init__(self, grid: Grid, allowed: set[int]) -> None:
        self._grid, self._allowed = grid, allowed

    def get_node_ids(self) -> list[int]:
        return [node_id for node_id in self._grid.get_node_ids() if node_id in self._allowed]

    def get_nodes(self) -> list[Any]:
        return [node for node in self._grid.get_nodes() if node.node_id in self._allowed]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)


def _safetensors(arrays: ArrayRecord) -> bytes:
    return codec.encode(arrays.to_torch_state_dict())


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _norm(tensors: Iterable[torch.Tensor]) -> float:
    return math.sqrt(sum(float(t.double().pow(2).sum()) for t in tensors))


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {"detail": response.text[:500]}
    return body if isinstance(body, dict) else {"detail": str(body)[:500]}


def _refused(response: httpx.Response, body: dict[str, Any]) -> GovernanceRefused:
    reason = body.get("detail") or body.get("reason") or body.get("message") or response.text[:500]
    return GovernanceRefused(f"Consortium refused ({response.status_code}): {reason}")
