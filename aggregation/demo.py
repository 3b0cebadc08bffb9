"""The demo federation: each demo hospital's data partition and agent credentials, and the
processes of a live federation (ASGI server, Celery worker with its scheduler, one agent per site).

Shared by `demo_agents` (for `make run`) and the headless `run_study_demo`.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model

from sites.agent import demo_data
from sites.models import AgentToken, Site
from sites.services import agent_token_create
from studies.demo import SITES

DEMO_TOKEN_NAME = "demo agent"


def demo_dir() -> Path:
    return Path(settings.DATA_DIR) / "demo"


def ensure_partitions(seed: int = 0) -> dict[str, Path]:
    """Each site's non-IID share of the breast cancer data, plus the held-out test split (written once)."""
    codes = [site.code for site in SITES]
    paths = {code: demo_dir() / f"site_{code}.csv" for code in codes}
    if not all(path.exists() for path in paths.values()) or not (demo_dir() / demo_data.TEST_FILE).exists():
        paths = demo_data.write_partitions(demo_dir(), codes, seed=seed)
    return paths


def ensure_tokens() -> dict[str, str]:
    """One agent token per demo site, issued by the site's own admin. Plaintext is kept in a private
    file because this is a demo; a real site admin copies it once from the browser."""
    path = demo_dir() / "agent_tokens.json"
    known = json.loads(path.read_text()) if path.exists() else {}
    live = set(AgentToken.objects.filter(revoked_at__isnull=True, name=DEMO_TOKEN_NAME)
               .values_list("site__code", flat=True))
    users = get_user_model().objects
    for site in Site.objects.filter(code__in=[s.code for s in SITES]):
        if site.code in known and site.code in live:
            continue
        admin = users.get(username=f"admin_{site.code}")
        _, known[site.code] = agent_token_create(actor=admin, site=site, name=DEMO_TOKEN_NAME)
    demo_dir().mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(known, indent=2))
    path.chmod(0o600)
    return known


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(port: int, log: Path) -> subprocess.Popen:
    return spawn(["daphne", "-b", "127.0.0.1", "-p", str(port), "consortium.asgi:application"], log)


def start_worker(log: Path, *, tick_seconds: int = 5) -> subprocess.Popen:
    """A real Celery worker with the embedded scheduler (beat) that opens rounds and enforces deadlines."""
    schedule = Path(settings.DATA_DIR) / "celerybeat-schedule"
    command = ["celery", "-A", "consortium", "worker", "--beat", "--schedule", str(schedule), "--concurrency", "1",
               "--loglevel", "INFO"]
    return spawn(command, log, ROUNDS_TICK_SECONDS=str(tick_seconds))


def start_agents(server: str, tokens: dict[str, str], data: dict[str, Path], logs: Path, *, poll: float = 1.0,
                 studies: Iterable[int] = ()) -> list[subprocess.Popen]:
    only = [arg for study in studies for arg in ("--study", str(study))]
    return [
        spawn([sys.executable, "-m", "sites.agent", "--server", server, "--data", str(data[code]), "--poll",
                str(poll), "--seed", str(index), *only], logs / f"agent_{code}.log", CONSORTIUM_AGENT_TOKEN=token)
        for index, (code, token) in enumerate(sorted(tokens.items()))
    ]


def spawn(command: list[str], log: Path, **env: str) -> subprocess.Popen:
    """A child process of this one, logging to `log`, in the project folder and the same environment."""
    log.parent.mkdir(parents=True, exist_ok=True)
    if command[0] in {"daphne", "celery"}:
        command[0] = str(Path(sys.executable).with_name(command[0]))
    return subprocess.Popen(command, cwd=settings.BASE_DIR, stdout=log.open("ab"), stderr=subprocess.STDOUT,
                            env={**os.environ, **env})


def interrupt_on_sigterm() -> None:
    """Treat SIGTERM like Ctrl-C, so the `finally` that stops the child processes runs either way."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def stop(processes: Iterable[subprocess.Popen]) -> None:
    processes = list(processes)
    for process in processes:
        if process.poll() is None:
            process.terminate()
    deadline = time.monotonic() + 10
    for process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
