"""Websocket fan-out latency: N subscribers on one study over real sockets, M `round.metrics` events.

Per channel layer (in-memory, then channels-redis) it starts a daphne server (--servers N: several), opens N
websocket clients with a PI's session cookie, and publishes M events from a forked child process, as the Celery
worker would: `publish` in its own transaction every --interval-ms. Latency runs from the commit (an on_commit
hook registered ahead of the broadcast) to a subscriber reading the event, on one clock. Every subscriber must
get every event once and in order, and keep its socket; otherwise the exit code is 1. With the in-memory layer
the server only learns of an event through its relay, which reads the log every EVENTS_RELAY_MS (500 ms): that
is the honest figure there. `send ms` is what the broadcast costs the publisher. A throwaway SQLite file and
data folder are used; Redis mode empties --redis-url's database (db 14) before and after and is skipped if
unreachable (--require-redis).

    .venv/bin/python bench/ws_fanout.py                  # 200 subscribers, 100 events every 100 ms, both layers
    .venv/bin/python bench/ws_fanout.py --quick          # 20 subscribers, 20 events
    .venv/bin/python bench/ws_fanout.py --mode redis --interval-ms 20   # 50 events a second: near saturation
"""

import argparse
import asyncio
import atexit
import json
import logging
import math
import multiprocessing
import os
import re
import shutil
import socket
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from subprocess import Popen

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
WORKDIR = Path(tempfile.mkdtemp(prefix="consortium-bench-ws-"))
atexit.register(shutil.rmtree, WORKDIR, ignore_errors=True)
os.environ.update(DATABASE_URL=f"sqlite:///{WORKDIR}/bench.sqlite3", CONSORTIUM_DATA_DIR=str(WORKDIR / "data"))
for name in ("REDIS_URL", "EVENTS_RELAY_MS", "CELERY_BROKER_URL"):
    os.environ.pop(name, None)  # the server's layer is chosen per mode below
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "consortium.settings")

import django  # noqa: E402

django.setup()

import redis  # noqa: E402
from django.conf import settings  # noqa: E402
from django.contrib.auth import get_user_model  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection, connections, transaction  # noqa: E402
from django.test import Client, override_settings  # noqa: E402
from websockets.asyncio.client import ClientConnection, connect  # noqa: E402

from aggregation.demo import free_port, spawn, stop  # noqa: E402
from aggregation.events import RoundEventKind  # noqa: E402
from consortium.audit.log import SYSTEM  # noqa: E402
from consortium.audit.services import user_roles_add  # noqa: E402
from consortium.layers import redis_channel_layer  # noqa: E402
from consortium.roles import Role  # noqa: E402
from studies import services  # noqa: E402
from studies.events import publish  # noqa: E402

GOAL_MS = 100.0
EVENT_ID = re.compile(r'"id": (\d+)')
CONNECTING_AT_ONCE = 25


@dataclass
class Run:
    mode: str
    subscribers: int
    events: int
    connect_seconds: float
    latencies: list[float] = field(default_factory=list)  # ms, commit to receipt, one per delivery
    sends: list[float] = field(default_factory=list)  # ms, commit to publish() returning (the broadcast)
    missing: int = 0
    duplicates: int = 0
    out_of_order: int = 0
    closed: int = 0  # sockets the server closed before the end
    wall: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return bool(self.missing or self.duplicates or self.out_of_order or self.closed)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))] if ordered else math.nan


def seed() -> tuple[int, str]:
    """A fresh database, a PI leading one draft study, and the PI's session cookie (`name=value`)."""
    call_command("migrate", verbosity=0)
    pi = get_user_model().objects.create_user(username="bench_pi", email="bench_pi@example.org")
    user_roles_add(actor=SYSTEM, user=pi, roles=[Role.PI.value], via="bench")
    study = services.study_create(actor=pi, title="ws fan-out", clinical_question="q", agreement_text="DUA", quorum=1)
    client = Client()
    client.force_login(pi)
    return study.pk, f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}"


def metrics(index: int) -> dict:
    """A `round.metrics` payload of realistic size (five sites)."""
    local = {"val_loss": 0.41, "val_accuracy": 0.86, "val_auc": 0.91, "val_examples": 120}
    sites = {str(s): {"site": f"site {s}", "num_examples": 400, "weight_norm": 12.5, "delta_norm": 0.8, **local}
             for s in range(1, 6)}
    return {"round_id": index + 1, "round": index + 1, "kind": "training", "version": index + 2,
            "evaluated_version": index + 1, "global": local, "evaluated_by_site": {s: local for s in sites},
            "global_weight_norm": 12.5, "sites": sites, "sent_at": time.time()}


def publish_all(study_id: int, count: int, interval: float) -> tuple[dict[int, float], list[float]]:
    """One transaction per event, on a fixed cadence (in a child process). Returns seq -> commit time."""
    commits: dict[int, float] = {}
    sends: list[float] = []
    start = time.monotonic()
    try:
        for index in range(count):
            time.sleep(max(0.0, start + index * interval - time.monotonic()))
            stamp: list[float] = []
            with transaction.atomic():
                transaction.on_commit(lambda box=stamp: box.append(time.time()))  # runs before the broadcast
                event = publish(study_id, RoundEventKind.ROUND_METRICS, metrics(index))
            commits[event.seq] = stamp[0]
            sends.append((time.time() - stamp[0]) * 1000)
    finally:
        connection.close()
    return commits, sends


def publish_from_child(study_id: int, count: int, interval: float) -> tuple[dict[int, float], list[float]]:
    """`publish_all` in a forked process, as the Celery worker would publish: the listeners in this
    process then share no interpreter lock with the publisher."""
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    connections.close_all()  # the child opens its own
    child = context.Process(target=lambda: results.put(publish_all(study_id, count, interval)))
    child.start()
    try:
        return results.get(timeout=count * interval + 120)
    finally:
        child.join(30)


async def subscribe(url: str, origin: str, cookie: str, gate: asyncio.Semaphore,
                    opened: list[ClientConnection]) -> ClientConnection:
    async with gate:
        ws = await connect(url, origin=origin, additional_headers={"Cookie": cookie}, open_timeout=60)
        opened.append(ws)
        hello = json.loads(await asyncio.wait_for(ws.recv(), 60))
        if hello.get("type") != "hello":
            raise RuntimeError(f"expected hello, got {hello}")
        return ws


async def listen(ws: ClientConnection, inbox: list[tuple[int, float]]) -> None:
    """Stamps each message as it is read; ends when the socket closes."""
    async for raw in ws:
        at = time.time()
        if raw.startswith('{"type": "event"'):  # the id is read after the clock, the rest is not parsed
            inbox.append((int(EVENT_ID.search(raw).group(1)), at))


async def drain(inboxes: list[list[tuple[int, float]]], count: int, grace: float) -> None:
    """Wait until every subscriber has `count` events (at most 60 s), then `grace` more for late duplicates."""
    deadline = time.monotonic() + 60
    while any(len(inbox) < count for inbox in inboxes) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    await asyncio.sleep(grace)


async def fan_out(mode: str, ports: list[int], study_id: int, cookie: str, args: argparse.Namespace) -> Run:
    """Subscribers spread evenly over the server processes, as a load balancer would."""
    targets = [(f"ws://127.0.0.1:{port}/ws/studies/{study_id}/", f"http://127.0.0.1:{port}") for port in ports]
    gate, opened = asyncio.Semaphore(CONNECTING_AT_ONCE), list[ClientConnection]()
    try:
        began = time.perf_counter()
        sockets = await asyncio.gather(*(subscribe(*targets[i % len(targets)], cookie, gate, opened)
                                         for i in range(args.subscribers)))
        run = Run(mode, len(sockets), args.events, time.perf_counter() - began)
        inboxes: list[list[tuple[int, float]]] = [[] for _ in sockets]
        listeners = [asyncio.create_task(listen(ws, inbox)) for ws, inbox in zip(sockets, inboxes, strict=True)]
        commits, run.sends = await asyncio.to_thread(publish_from_child, study_id, args.events,
                                                     args.interval_ms / 1000)
        await drain(inboxes, args.events, grace=settings.EVENTS_RELAY_SECONDS + 0.5)
        closed = Counter(ws.close_code for ws in sockets if ws.close_code is not None)
        run.closed = closed.total()
        run.notes += [f"{n} sockets closed by the server with code {code}" for code, n in closed.items()]
    finally:
        await asyncio.gather(*(ws.close() for ws in opened), return_exceptions=True)
    await asyncio.gather(*listeners, return_exceptions=True)
    score(run, commits, inboxes)
    return run


def score(run: Run, commits: dict[int, float], inboxes: list[list[tuple[int, float]]]) -> None:
    expected = set(commits)
    for inbox in inboxes:
        seqs = [seq for seq, _ in inbox]
        run.missing += len(expected - set(seqs))
        run.duplicates += len(seqs) - len(set(seqs))
        run.out_of_order += sum(1 for a, b in zip(seqs, seqs[1:], strict=False) if b < a)
        run.latencies += [(at - commits[seq]) * 1000 for seq, at in inbox if seq in commits]
    received = [at for inbox in inboxes for _, at in inbox]
    run.wall = max(received) - min(commits.values()) if received and commits else math.nan


def wait_ready(port: int, server: Popen, log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"daphne exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"daphne did not listen on port {port} within 60 s")


def log_notes(log: Path) -> list[str]:
    """Server-side signs of trouble: consumers that crashed (with the reason), failed broadcasts."""
    text = log.read_text(errors="replace")
    signs = {"Could not broadcast": "failed broadcasts", "Exception inside application": "consumer crashes"}
    notes = [f"{text.count(sign)} {what} in the server log" for sign, what in signs.items() if sign in text]
    crashes = {line for line in text.splitlines() if line.startswith("Exception inside application")}
    return notes + [f"  {line}" for line in sorted(crashes)]


OVER_CAPACITY: list[str] = []  # channels-redis dropped a broadcast: the receiving process's queue was full


def _count_over_capacity(record: logging.LogRecord) -> bool:
    if "over capacity" not in record.getMessage():
        return True
    OVER_CAPACITY.append(record.getMessage())
    return False  # counted and reported, not printed


logging.getLogger("channels_redis.core").addFilter(_count_over_capacity)


def run_mode(mode: str, args: argparse.Namespace, study_id: int, cookie: str) -> Run:
    ports, logs = [free_port() for _ in range(args.servers)], [WORKDIR / f"daphne-{mode}-{i}.log"
                                                               for i in range(args.servers)]
    extra = {"REDIS_URL": args.redis_url} if mode == "redis" else {}
    layer = {"BACKEND": "channels.layers.InMemoryChannelLayer"} if mode == "memory" else redis_channel_layer(
        args.redis_url)
    servers = [spawn(["daphne", "-b", "127.0.0.1", "-p", str(port), "consortium.asgi:application"], log, **extra)
               for port, log in zip(ports, logs, strict=True)]
    try:
        for port, server, log in zip(ports, servers, logs, strict=True):
            wait_ready(port, server, log)
        relay = 0.0 if mode == "redis" else settings.EVENTS_RELAY_SECONDS
        OVER_CAPACITY.clear()
        with override_settings(CHANNEL_LAYERS={"default": layer}, EVENTS_RELAY_SECONDS=relay):
            run = asyncio.run(fan_out(mode, ports, study_id, cookie, args))
    finally:
        stop(servers)
    run.mode = f"{mode}×{args.servers}"
    if OVER_CAPACITY:
        run.notes.append(f"{len(OVER_CAPACITY)} broadcasts dropped by channels-redis (server's queue over capacity)")
    for log in logs:
        run.notes += log_notes(log)
    return run


def redis_problem(url: str) -> str | None:
    """Empties the bench's Redis database; returns why Redis cannot be used, if it cannot."""
    try:
        redis.Redis.from_url(url, socket_timeout=2).flushdb()
    except redis.RedisError as exc:
        return str(exc)
    return None


COLUMNS = (f"{'mode':<7}{'subs':>6}{'events':>8}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'deliveries':>13}"
           f"{'missing':>9}{'dup':>5}{'order':>7}{'closed':>8}{'send ms':>9}{'connect s':>11}{'wall s':>8}")


def row(run: Run) -> str:
    delivered = f"{len(run.latencies)}/{run.subscribers * run.events}"
    return (f"{run.mode:<7}{run.subscribers:>6}{run.events:>8}{percentile(run.latencies, 0.5):>9.1f}"
            f"{percentile(run.latencies, 0.99):>9.1f}{max(run.latencies, default=math.nan):>9.1f}{delivered:>13}"
            f"{run.missing:>9}{run.duplicates:>5}{run.out_of_order:>7}{run.closed:>8}"
            f"{percentile(run.sends, 0.5):>9.1f}{run.connect_seconds:>11.1f}{run.wall:>8.2f}")


def report(runs: list[Run]) -> None:
    print(f"\n{COLUMNS}" if runs else "\nnothing measured")
    for run in runs:
        print(row(run))
        for note in run.notes:
            print(f"  {run.mode}: {note}")
    redis_run = next((run for run in runs if run.mode.startswith("redis")), None)
    if redis_run is not None:
        met = percentile(redis_run.latencies, 0.99) < GOAL_MS and not redis_run.failed
        print(f"\np99 < {GOAL_MS:.0f} ms with Redis: {'met' if met else 'missed'}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=200)
    parser.add_argument("--events", type=int, default=100)
    # 10 events a second: far more than a study makes (about ten events per round), so a backlog shows.
    parser.add_argument("--interval-ms", type=float, default=100.0)
    parser.add_argument("--mode", choices=["memory", "redis", "both"], default="both")
    parser.add_argument("--servers", type=int, default=1, help="server processes sharing the subscribers")
    parser.add_argument("--quick", action="store_true", help="20 subscribers, 20 events")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/14", help="its database is emptied")
    parser.add_argument("--require-redis", action="store_true", help="fail instead of skipping without Redis")
    args = parser.parse_args()
    if args.quick:
        args.subscribers, args.events = 20, 20
    study_id, cookie = seed()
    print(f"{args.subscribers} subscribers, {args.events} events every {args.interval_ms:g} ms, "
          f"published from a separate process; in-memory relay every {settings.EVENTS_RELAY_SECONDS * 1000:.0f} ms")
    runs, skipped = [], False
    for mode in ["memory", "redis"] if args.mode == "both" else [args.mode]:
        if mode == "redis" and (problem := redis_problem(args.redis_url)):
            print(f"redis: skipped, {args.redis_url} is unreachable ({problem})")
            skipped = True
            continue
        try:
            runs.append(run_mode(mode, args, study_id, cookie))
        finally:
            if mode == "redis":
                redis_problem(args.redis_url)
    report(runs)
    return 1 if any(run.failed for run in runs) or (skipped and args.require_redis) else 0


if __name__ == "__main__":
    sys.exit(main())
