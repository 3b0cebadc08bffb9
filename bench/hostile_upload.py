"""What one hostile upload costs the server: a body of N zero-size tensors (the hardening issue's million),
sent by one site to a real daphne server while another site keeps asking for its rounds.

A throwaway data folder and SQLite file hold a governed study with round 1 open (`tests.aggregation.
hostile_server`); daphne serves it. The script prints the hostile request's answer and wall time, the
server's resident memory before and its peak after (VmHWM), the other site's request latency while the
upload was in flight (median and worst), and how long the refusal's audit reason and live event are.

    .venv/bin/python bench/hostile_upload.py                  # a million zero-size tensors
    .venv/bin/python bench/hostile_upload.py --tensors 100000
"""

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def request(url: str, token: str, body: bytes | None = None, headers: dict[str, str] | None = None,
            timeout: float = 600) -> tuple[int, bytes]:
    call = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET",
                                  headers={"Authorization": f"Bearer {token}", **(headers or {})})
    try:
        with urllib.request.urlopen(call, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def memory_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def zero_size_body(model: bytes, count: int) -> bytes:
    """The model's own tensors plus `count` tensors of shape [0], in compact JSON (the issue's body)."""
    length = int.from_bytes(model[:8], "little")
    header, data = json.loads(model[8:8 + length]), model[8 + length:]
    end = len(data)
    header.update({f"z{i}": {"dtype": "F32", "shape": [0], "data_offsets": [end, end]} for i in range(count)})
    text = json.dumps(header, separators=(",", ":")).encode()
    return len(text).to_bytes(8, "little") + text + data


def poll(url: str, token: str, stop: threading.Event, latencies: list[float]) -> None:
    """The other site: ask for its rounds again and again; record how long each answer took."""
    while not stop.is_set():
        started = time.perf_counter()
        status, _ = request(url, token, timeout=120)
        latencies.append(time.perf_counter() - started)
        assert status == 200, status
        time.sleep(0.02)


def serve(workdir: Path) -> tuple[subprocess.Popen, dict, dict[str, str]]:
    env = {key: value for key, value in os.environ.items() if key not in {"REDIS_URL", "CELERY_BROKER_URL"}}
    env.update(CONSORTIUM_DATA_DIR=str(workdir / "data"), DATABASE_URL=f"sqlite:///{workdir / 'db.sqlite3'}",
               DJANGO_SETTINGS_MODULE="consortium.settings")
    prepared = subprocess.run([sys.executable, "-m", "tests.aggregation.hostile_server"], cwd=ROOT, env=env,
                              capture_output=True, text=True, check=True)
    federation = json.loads(prepared.stdout.strip().splitlines()[-1])
    port = free_port()
    daphne = Path(sys.executable).with_name("daphne")
    server = subprocess.Popen([str(daphne), "-b", "127.0.0.1", "-p", str(port), "consortium.asgi:application"],
                              cwd=ROOT, env=env, stdout=(workdir / "server.log").open("wb"), stderr=subprocess.STDOUT)
    federation["base"] = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if request(f"{federation['base']}/api/agent/me/", federation["token_b"], timeout=5)[0] == 200:
                return server, federation, env
        except OSError:
            time.sleep(0.3)
    raise SystemExit("the server did not start; see " + str(workdir / "server.log"))


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def refusal_sizes(workdir: Path) -> tuple[int, int]:
    """Characters of the last denial's audit reason, and of the last live event's payload."""
    with sqlite3.connect(workdir / "db.sqlite3") as conn:
        details = conn.execute("SELECT details FROM consortium_auditevent WHERE outcome = 'denied' "
                               "ORDER BY seq DESC LIMIT 1").fetchone()
        payload = conn.execute("SELECT payload FROM studies_studyevent ORDER BY id DESC LIMIT 1").fetchone()
    return len(json.loads(details[0]).get("reason", "")) if details else 0, len(payload[0]) if payload else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tensors", type=int, default=1_000_000, help="zero-size tensors in the hostile body")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="consortium-bench-hostile-"))
    server = None
    try:
        server, federation, _ = serve(workdir)
        base, url = federation["base"], f"{federation['base']}/api/agent/rounds/{federation['round_id']}"
        model = request(f"{url}/model/", federation["token_a"])[1]
        body = zero_size_body(model, args.tensors)
        headers = {"Content-Type": "application/octet-stream", "Idempotency-Key": "hostile",
                   "X-Round": str(federation["round"]), "X-Base-Version": str(federation["base_version"]),
                   "X-Num-Examples": "20", "X-Metrics": "{}"}
        idle: list[float] = []
        stop = threading.Event()
        warmup = threading.Thread(target=poll, args=(f"{base}/api/agent/rounds/", federation["token_b"], stop, idle))
        warmup.start()
        time.sleep(2)
        stop.set()
        warmup.join()
        rss_before = memory_kb(server.pid, "VmRSS")
        latencies: list[float] = []
        stop = threading.Event()
        other = threading.Thread(target=poll, args=(f"{base}/api/agent/rounds/", federation["token_b"], stop,
                                                    latencies))
        other.start()
        started = time.perf_counter()
        status, answer = request(f"{url}/update/", federation["token_a"], body=body, headers=headers)
        seconds = time.perf_counter() - started
        stop.set()
        other.join()
        peak = memory_kb(server.pid, "VmHWM")
        reason, payload = refusal_sizes(workdir)
        print(f"hostile body: {args.tensors:,} zero-size tensors, {len(body) / 1e6:.1f} MB")
        print(f"  answer: {status} {answer[:160].decode(errors='replace')}")
        print(f"  answer size {len(answer):,} bytes; audit reason {reason:,} chars; last live event {payload:,} chars")
        print(f"  server time (request sent to answer): {seconds:.2f} s")
        print(f"  server memory: {rss_before / 1024:.0f} MB resident before, peak {peak / 1024:.0f} MB")
        print(f"  other site, idle server: median {statistics.median(idle) * 1000:.0f} ms over {len(idle)} requests")
        if latencies:
            print(f"  other site meanwhile: {len(latencies)} requests, median "
                  f"{statistics.median(latencies) * 1000:.0f} ms, worst {max(latencies) * 1000:.0f} ms")
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
