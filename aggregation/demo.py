"""The demo federation: each demo hospital's data partition and agent credentials, someone's own site
CSVs with a held-out test split, and the processes of a live federation (ASGI server, Celery worker with
its scheduler, one agent per site).

Shared by `serve_demo` (for `make run`) and the headless `run_study_demo`.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model

from sites.agent import data as agent_data
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


def ensure_tokens(codes: Sequence[str] = ()) -> dict[str, str]:
    """One agent token per site (the demo sites by default), issued by the site's own admin; returns those
    sites' tokens. Plaintext is kept in a private file because this is a demo; a real site admin copies it
    once from the browser."""
    codes = list(codes) or [s.code for s in SITES]
    path = demo_dir() / "agent_tokens.json"
    known = json.loads(path.read_text()) if path.exists() else {}
    live = set(AgentToken.objects.filter(revoked_at__isnull=True, name=DEMO_TOKEN_NAME)
               .values_list("site__code", flat=True))
    users = get_user_model().objects
    for site in Site.objects.filter(code__in=codes):
        if site.code in known and site.code in live:
            continue
        admin = users.get(username=f"admin_{site.code}")
        _, known[site.code] = agent_token_create(actor=admin, site=site, name=DEMO_TOKEN_NAME)
    demo_dir().mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(known, indent=2))
    path.chmod(0o600)
    return {code: known[code] for code in codes if code in known}


@dataclass(frozen=True)
class FederationData:
    """What a headless run federates: the CSV each site's agent reads, the rows each site trains on (for the
    single-site and central reference models), and the held-out test rows no site trains on."""

    files: dict[str, Path]
    train: dict[str, agent_data.Dataset]
    test: agent_data.Dataset
    label: str

    @property
    def num_features(self) -> int:
        return len(self.test.features)

    @property
    def feature_names(self) -> list[str]:
        """The sites' feature columns, in order: the headless study declares them as its schema."""
        return list(self.test.features)


def demo_federation(seed: int = 0, *, out: Path | None = None) -> FederationData:
    """The demo's four non-IID breast cancer partitions and its held-out test split (seed 0: the files
    `make run` uses; another seed writes its own under `out`)."""
    files = ensure_partitions() if seed == 0 or out is None else demo_data.write_partitions(
        out, [site.code for site in SITES], seed=seed)
    folder = next(iter(files.values())).parent
    train = {code: agent_data.load_csv(path, demo_data.LABEL) for code, path in files.items()}
    return FederationData(files, train, agent_data.load_csv(folder / demo_data.TEST_FILE, demo_data.LABEL),
                          demo_data.LABEL)


def site_files(folder: Path, *, exclude: Path | None = None) -> dict[str, Path]:
    """One CSV per site in `folder` (every `*.csv` but `exclude`): the site code is the file name without
    `.csv` and without a leading `site_`, in lower case (`site_AMC.csv` and `amc.csv` are both site `amc`)."""
    if not folder.is_dir():
        raise agent_data.DataError(f"{folder} is not a folder.")
    found: dict[str, Path] = {}
    for path in sorted(folder.glob("*.csv")):
        if exclude is not None and path.resolve() == exclude.resolve():
            continue
        code = path.stem.removeprefix("site_").lower()
        if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,39}", code):
            raise agent_data.DataError(f"{path.name}: a site code (the file name without .csv and site_) may hold "
                                       "only letters, digits, '-' and '_', up to 40.")
        if code in found:
            raise agent_data.DataError(f"{found[code].name} and {path.name} are both site {code!r}.")
        found[code] = path
    if not found:
        raise agent_data.DataError(f"{folder} holds no site CSV (*.csv).")
    return found


def own_federation(folder: Path, *, label: str, out: Path, seed: int, test_csv: Path | None = None,
                   holdout: float = 0.2) -> FederationData:
    """Someone's own site CSVs (`site_files`), all with the same feature columns, and a held-out test split:
    `test_csv`, or else a stratified `holdout` fraction of each site's rows (by `seed`), taken out before
    training; the rows each site keeps are written to `out` for its agent."""
    files = site_files(folder, exclude=test_csv)
    sites = {code: agent_data.load_csv(path, label) for code, path in files.items()}
    features = next(iter(sites.values())).features
    for code, rows in sites.items():
        if rows.features != features:
            raise agent_data.DataError(f"{files[code].name} has other feature columns (names or order) than "
                                       f"{next(iter(files.values())).name}; every site needs the same.")
    if test_csv is not None:
        train, test = sites, agent_data.load_csv(test_csv, label)
        if test.features != features:
            raise agent_data.DataError(f"{test_csv.name} has other feature columns than the sites' CSVs.")
    else:
        train, test = demo_data.hold_out(sites, holdout, seed)
        files = {code: demo_data.write_csv(rows, out / f"site_{code}.csv", label) for code, rows in train.items()}
        demo_data.write_csv(test, out / demo_data.TEST_FILE, label)
    if not 0 < test.positives < len(test):
        raise agent_data.DataError("The held-out test rows hold one class only; their ROC AUC is undefined.")
    return FederationData(files, train, test, label)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(port: int, log: Path) -> subprocess.Popen:
    return spawn(["daphne", "-b", "127.0.0.1", "-p", str(port), "consortium.asgi:application"], log)


def start_worker(log: Path, *, tick_seconds: int = 5) -> subprocess.Popen:
    """A real Celery worker with the embedded scheduler (beat) that opens rounds and enforces deadlines; two
    processes, so that an aggregation never waits behind a beat's tick."""
    schedule = Path(settings.DATA_DIR) / "celerybeat-schedule"
    command = ["celery", "-A", "consortium", "worker", "--beat", "--schedule", str(schedule), "--concurrency", "2",
               "--loglevel", "INFO"]
    return spawn(command, log, ROUNDS_TICK_SECONDS=str(tick_seconds))


def start_agents(server: str, tokens: dict[str, str], data: dict[str, Path], logs: Path, *, poll: float = 1.0,
                 studies: Iterable[int] = (), seed: int = 0) -> list[subprocess.Popen]:
    """One agent per site; agent i splits its data and orders its batches with seed `seed` + i."""
    only = [arg for study in studies for arg in ("--study", str(study))]
    return [
        spawn([sys.executable, "-m", "sites.agent", "--server", server, "--data", str(data[code]), "--poll",
                str(poll), "--seed", str(seed + index), "--record", str(logs / f"agent_{code}.record.jsonl"), *only],
              logs / f"agent_{code}.log",
              CONSORTIUM_AGENT_TOKEN=token)
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
