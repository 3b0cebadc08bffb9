"""Against a real daphne server: while a site sends hostile uploads (a header of a hundred thousand
zero-size tensors, megabytes of metadata), another site is still served: it lists its round, downloads
the model and has its update accepted. No timing is asserted (bench/hostile_upload.py measures it); each
request only has to answer within a generous timeout."""

import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from safetensors.torch import load

from aggregation.demo import free_port, spawn, stop
from consortium.federated import codec
from tests.aggregation.hostile import join, split, zero_size_tensors

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 120  # seconds: generous, the machine may be busy


def request(url: str, token: str, *, body: bytes | None = None, headers: dict[str, str] | None = None
            ) -> tuple[int, bytes]:
    call = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET",
                                  headers={"Authorization": f"Bearer {token}", **(headers or {})})
    try:
        with urllib.request.urlopen(call, timeout=TIMEOUT) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def update_headers(federation: dict, key: str) -> dict[str, str]:
    return {"Content-Type": "application/octet-stream", "Idempotency-Key": key, "X-Round": str(federation["round"]),
            "X-Base-Version": str(federation["base_version"]), "X-Num-Examples": "20", "X-Metrics": "{}"}


def wait_until_up(base: str, token: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        try:
            if request(f"{base}/api/agent/me/", token)[0] == 200:
                return
        except OSError:
            time.sleep(0.3)
    raise AssertionError("the server did not start")


@pytest.fixture
def server(tmp_path, monkeypatch):
    # A SQLite file of its own and the embedded defaults (in-memory channel layer, no Redis), shared with the server.
    for name in ("REDIS_URL", "CELERY_BROKER_URL", "DJANGO_ALLOW_ASYNC_UNSAFE"):
        monkeypatch.delenv(name, raising=False)
    env = {"CONSORTIUM_DATA_DIR": str(tmp_path / "data"), "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}"}
    prepared = subprocess.run([sys.executable, "-m", "tests.aggregation.hostile_server"], cwd=ROOT, timeout=300,
                              env={**os.environ, **env}, capture_output=True, text=True)
    assert prepared.returncode == 0, prepared.stderr[-3000:]
    federation = json.loads(prepared.stdout.strip().splitlines()[-1])
    port = free_port()
    process = spawn(["daphne", "-b", "127.0.0.1", "-p", str(port), "consortium.asgi:application"],
                    tmp_path / "server.log", **env)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(base, federation["token_b"])
        yield base, federation, tmp_path / "data" / "models"
    finally:
        stop([process])


def test_it_serves_another_site_while_refusing_hostile_uploads(server):
    base, federation, store = server
    url = f"{base}/api/agent/rounds/{federation['round_id']}"
    model = request(f"{url}/model/", federation["token_b"])[1]
    header, data = split(model)
    hostile = [zero_size_tensors(model, 100_000), join({"__metadata__": {"pad": "x" * 8_000_000}, **header}, data)]
    answers: list[tuple[int, bytes]] = []

    def send_hostile() -> None:
        for index, body in enumerate(hostile * 2):
            answers.append(request(f"{url}/update/", federation["token_a"], body=body,
                                   headers=update_headers(federation, f"hostile-{index}")))

    attacker = threading.Thread(target=send_hostile)
    attacker.start()
    listed = request(f"{base}/api/agent/rounds/", federation["token_b"])
    downloaded = request(f"{url}/model/", federation["token_b"])
    honest = codec.encode({name: tensor + 0.01 for name, tensor in load(downloaded[1]).items()})
    accepted = request(f"{url}/update/", federation["token_b"], body=honest,
                       headers=update_headers(federation, "honest"))
    attacker.join(TIMEOUT)

    assert listed[0] == 200 and [r["round_id"] for r in json.loads(listed[1])] == [federation["round_id"]]
    assert downloaded == (200, model)
    assert accepted[0] == 201, accepted
    assert len(answers) == 4 and all(status == 400 for status, _ in answers), answers
    assert {json.loads(body)["error"] for _, body in answers} == {"header_too_large"}
    updates = sorted(path.name for path in (store / "updates").rglob("*.safetensors"))
    assert updates == [f"{json.loads(accepted[1])['sha256']}.safetensors"], "only the honest update is stored"
