"""Many simulated site agents in one process: asyncio and one shared `httpx.AsyncClient`, each agent with its
own token and data, speaking the same agent protocol as `sites.agent.client` (docs/agent-protocol.md) and
training with the same code (`training.local_update`). Imports no Django.

A real site runs one `python -m sites.agent` process; a swarm lets a single machine stand in for hundreds of
hospitals (`manage.py simulate`), so the coordinator's API, gate and worker are measured under that load.
Training a tiny model takes milliseconds, so it runs on the event loop between requests: the agents share one
core the way a thread pool would, without hundreds of threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np

from consortium.federated import codec

from .client import ALREADY_SUBMITTED_CODES, RETRYABLE_STATUSES, new_idempotency_key
from .data import Dataset, local_statistics, split, standardize
from .runner import MAX_MODEL_BYTES, _json_safe
from .training import Protocol, check_features, evaluate, local_update

MAX_ATTEMPTS = 6


class SwarmError(Exception):
    """An agent of the swarm was refused for good (a 4xx other than "already submitted")."""


@dataclass(frozen=True)
class SimulatedSite:
    """One simulated hospital: its site code, agent token and local rows."""

    code: str
    token: str
    dataset: Dataset
    seed: int


@dataclass
class SwarmLog:
    """What the swarm did, for the figures: each submission's client-side latency, refusals and retries."""

    submit_seconds: list[float] = field(default_factory=list)
    submitted: int = 0
    evaluations: int = 0
    refused: list[str] = field(default_factory=list)
    retries: int = 0
    polls: int = 0


def synthetic_sites(codes: Sequence[str], tokens: Mapping[str, str], *, features: int = 8, seed: int = 0,
                    rows: tuple[int, int] = (40, 160)) -> list[SimulatedSite]:
    """Non-IID tabular data for each site, from one logistic ground truth: sites differ in size, in where their
    patients lie (a shifted feature mean) and so in label balance. Deterministic for a given seed."""
    rng = np.random.default_rng(seed)
    truth = rng.normal(size=features)
    sites = []
    for index, code in enumerate(codes):
        n = int(rng.integers(rows[0], rows[1] + 1))
        shift = rng.normal(scale=0.7, size=features)
        x = rng.normal(size=(n, features)) + shift
        y = (rng.random(n) < 1 / (1 + np.exp(-(x @ truth)))).astype(np.float32)
        y[:2] = [0.0, 1.0]  # both classes at every site, so its validation AUC is defined more often
        dataset = Dataset(features=[f"x{i}" for i in range(features)], x=x, y=y)
        sites.append(SimulatedSite(code=code, token=tokens[code], dataset=dataset, seed=seed + index))
    return sites


class Burst:
    """Holds each agent's trained update until every agent of the swarm has one for the round (or `patience`
    seconds passed), then lets them all submit at once: the round's updates then arrive as fast as the
    coordinator takes them, so its ingest is measured rather than the agents' pace of polling and training."""

    def __init__(self, agents: int, *, patience: float = 60.0):
        self.agents, self.patience = agents, patience
        self._ready: dict[int, tuple[list[int], asyncio.Event]] = {}

    async def wait(self, round_id: int) -> None:
        count, everyone = self._ready.setdefault(round_id, ([0], asyncio.Event()))
        count[0] += 1
        if count[0] >= self.agents:
            everyone.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(everyone.wait(), timeout=self.patience)


class SwarmAgent:
    """One simulated site: polls its open rounds, trains, submits; like `runner.Agent`, but asynchronous."""

    def __init__(self, http: httpx.AsyncClient, site: SimulatedSite, log: SwarmLog, *, studies: Sequence[int] = (),
                 val_fraction: float = 0.2, burst: Burst | None = None):
        self.http, self.site, self.log, self.burst = http, site, log, burst
        self.studies = set(studies)
        self.val_fraction = val_fraction
        self.finished: set[int] = set()
        self.headers = {"Authorization": f"Bearer {site.token}"}

    async def run(self, stop: asyncio.Event, *, poll: float) -> None:
        """Poll until `stop` is set; the first poll is spread over one interval so the agents do not march in step."""
        await _sleep_or_stop(stop, random.uniform(0, poll))
        while not stop.is_set():
            await self.run_once()
            await _sleep_or_stop(stop, poll * random.uniform(0.8, 1.2))

    async def run_once(self) -> None:
        self.log.polls += 1
        rounds = (await self._request("GET", "/api/agent/rounds/")).json() or []
        for round_ in rounds:
            if round_["submitted"] or round_["round_id"] in self.finished:
                continue
            if self.studies and round_["study_id"] not in self.studies:
                continue
            try:
                if round_["kind"] == "training":
                    await self.training_round(round_)
                elif round_["kind"] == "evaluation":
                    await self.evaluation_round(round_)
                elif round_["kind"] == "statistics":
                    await self.statistics_round(round_)
            except SwarmError as exc:
                self.log.refused.append(f"{self.site.code}: {exc}")
            self.finished.add(round_["round_id"])

    async def training_round(self, round_: Mapping[str, Any]) -> None:
        protocol = Protocol.from_json(round_["protocol"])
        train_set, val_set = self._prepared(protocol, round_.get("standardization"))
        version, state = await self._download(round_, protocol)
        update = local_update(protocol, state, train_set, val_set, seed=self.site.seed + int(round_["number"]))
        headers = {"Content-Type": "application/octet-stream", "Idempotency-Key": new_idempotency_key(),
                   "X-Round": str(round_["number"]), "X-Base-Version": str(version),
                   "X-Num-Examples": str(update.num_examples),
                   "X-Metrics": json.dumps(_json_safe(update.metrics), allow_nan=False, separators=(",", ":"))}
        if self.burst:
            await self.burst.wait(round_["round_id"])
        started = time.perf_counter()
        await self._request("POST", f"/api/agent/rounds/{round_['round_id']}/update/",
                            content=codec.encode(update.state), headers=headers)
        self.log.submit_seconds.append(time.perf_counter() - started)
        self.log.submitted += 1

    async def statistics_round(self, round_: Mapping[str, Any]) -> None:
        protocol = Protocol.from_json(round_["protocol"])
        check_features(protocol, self.site.dataset)
        train_set, _ = split(self.site.dataset, self.val_fraction, self.site.seed)
        body = json.dumps(local_statistics(train_set), allow_nan=False).encode()
        await self._request("POST", f"/api/agent/rounds/{round_['round_id']}/statistics/", content=body,
                            headers={"Content-Type": "application/json"})

    async def evaluation_round(self, round_: Mapping[str, Any]) -> None:
        protocol = Protocol.from_json(round_["protocol"])
        _, val_set = self._prepared(protocol, round_.get("standardization"))
        version, state = await self._download(round_, protocol)
        metrics = _json_safe(evaluate(protocol, state, val_set, histogram=True))
        body = json.dumps({"round": int(round_["number"]), "base_version": version, "metrics": metrics},
                          allow_nan=False, separators=(",", ":")).encode()
        await self._request("POST", f"/api/agent/rounds/{round_['round_id']}/evaluation/", content=body,
                            headers={"Content-Type": "application/json"})
        self.log.evaluations += 1

    def _prepared(self, protocol: Protocol, standardization: Mapping[str, Any] | None) -> tuple[Dataset, Dataset]:
        check_features(protocol, self.site.dataset)
        train_set, val_set = split(self.site.dataset, self.val_fraction, self.site.seed)
        if standardization:
            train_set, val_set = standardize(train_set, standardization), standardize(val_set, standardization)
        return train_set, val_set

    async def _download(self, round_: Mapping[str, Any], protocol: Protocol) -> tuple[int, dict[str, Any]]:
        """The round's model, checked against its announced SHA-256 and the protocol's tensor spec."""
        response = await self._request("GET", f"/api/agent/rounds/{round_['round_id']}/model/")
        if hashlib.sha256(response.content).hexdigest() != response.headers.get("x-model-sha256", "").lower():
            raise SwarmError(f"the model of round {round_['round_id']} does not match its SHA-256")
        expected = codec.spec_of(protocol.initial_state())
        state = codec.decode(response.content, expected=expected, max_bytes=MAX_MODEL_BYTES)
        return int(response.headers["x-model-version"]), state

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Retried with backoff on network errors, 429 and 5xx (same idempotency key); other 4xx refuse."""
        headers = {**self.headers, **kwargs.pop("headers", {})}
        for attempt in range(MAX_ATTEMPTS):
            if attempt:
                self.log.retries += 1
                await asyncio.sleep(min(8.0, 0.25 * 2 ** attempt) * random.uniform(0.5, 1.0))
            try:
                response = await self.http.request(method, path, headers=headers, **kwargs)
            except httpx.TransportError:
                continue
            if response.status_code in RETRYABLE_STATUSES:
                continue
            if response.status_code == 409 and _already_in(response):
                return response
            if response.status_code >= 400:
                raise SwarmError(f"{method} {path}: HTTP {response.status_code} {response.text[:300]}")
            return response
        raise SwarmError(f"{method} {path}: no useful answer after {MAX_ATTEMPTS} attempts")


def _already_in(response: httpx.Response) -> bool:
    try:
        return response.json().get("error") in ALREADY_SUBMITTED_CODES
    except ValueError:
        return False


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except TimeoutError:
        pass


async def run_swarm(server: str | Sequence[str], sites: Sequence[SimulatedSite], *, done: Callable[[], bool],
                    poll: float, studies: Sequence[int] = (), connections: int = 32, check_every: float = 0.5,
                    timeout: float = 600.0, burst: bool = False) -> SwarmLog:
    """Run one agent per site against `server` until `done()` says the federation is over (checked every
    `check_every` seconds, off the event loop: it may query a database), or `timeout` seconds passed. Several
    servers (one coordinator behind several ASGI processes) share the agents in turn, as a load balancer would.
    With `burst`, the agents submit each training round's updates together (`Burst`)."""
    log, stop = SwarmLog(), asyncio.Event()
    together = Burst(len(sites)) if burst else None
    servers = [server] if isinstance(server, str) else list(server)
    each = max(1, connections // len(servers))
    limits = httpx.Limits(max_connections=each, max_keepalive_connections=each)
    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(httpx.AsyncClient(base_url=url.rstrip("/"), limits=limits,
                                                                     timeout=60.0, follow_redirects=False))
                   for url in servers]
        tasks = [asyncio.create_task(SwarmAgent(clients[i % len(clients)], site, log, studies=studies,
                                                burst=together).run(stop, poll=poll))
                 for i, site in enumerate(sites)]
        deadline = time.monotonic() + timeout
        try:
            while not await asyncio.to_thread(done):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the federation did not finish within {timeout:.0f} s")
                failed = [task for task in tasks if task.done()]
                if failed:
                    failed[0].result()  # an agent that crashed raises here
                await asyncio.sleep(check_every)
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
    return log
