"""A real Flower federation governed by Consortium, on loopback: Consortium's ASGI server and Celery worker,
`flower-superlink` with TLS (a CA made here) and SuperNode authentication, three `flower-supernode`s each
with its own key pair registered twice (with the SuperLink by `flwr supernode register`, with its site by the
site's admin through Consortium's API), and the example app (`examples/flower_app`, FedAvg wrapped in
`aggregation.flower.GovernedStrategy`) started with `flwr run` against a SuperLink connection in the Flower
config. It trains the demo model for three rounds; one site revokes its participation during round 2.

Runs once per `make test` (marker `flower`: scripts/test.sh deselects it in the PostgreSQL pass)."""

import datetime
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.conftest import skip_or_fail

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
APP = ROOT / "examples" / "flower_app"
PASSWORD = "consortium-demo"
SITES = ("amc", "charite", "clinic")
REVOKED = "clinic"
pytestmark = [pytest.mark.integration, pytest.mark.flower]


@pytest.fixture(scope="module", autouse=True)
def _flower_installed() -> None:
    if not (BIN / "flower-superlink").exists():
        skip_or_fail("flwr is not installed (pip install -r requirements-dev.txt)")


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Deployment:
    """The processes of the test, each logging to its own file; all stopped at the end, by their own id."""

    def __init__(self, folder: Path, env: dict[str, str]) -> None:
        self.folder, self.env, self.processes = folder, env, []

    def start(self, name: str, command: list[str], **env: str) -> subprocess.Popen:
        log = (self.folder / f"{name}.log").open("ab")
        process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                   env={**self.env, **env}, start_new_session=True)
        self.processes.append(process)
        return process

    def run(self, command: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(command, cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout)

    def log(self, name: str) -> str:
        path = self.folder / f"{name}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)  # the process group of this one child only
        for process in self.processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)


def _tls(folder: Path) -> dict[str, Path]:
    """A CA and a server certificate for 127.0.0.1 and localhost: Flower's node authentication needs TLS."""
    now = datetime.datetime.now(datetime.UTC)

    def certificate(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name,
                    signer: ec.EllipticCurvePrivateKey, ca: bool) -> x509.Certificate:
        builder = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME,
                                                                                      subject)]))
                   .issuer_name(issuer).public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if not ca:
            import ipaddress

            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        return builder.sign(signer, hashes.SHA256())

    ca_key, server_key = ec.generate_private_key(ec.SECP384R1()), ec.generate_private_key(ec.SECP384R1())
    ca = certificate("Consortium test CA", ca_key, x509.Name([x509.NameAttribute(NameOID.COMMON_NAME,
                                                                                 "Consortium test CA")]), ca_key, True)
    server = certificate("127.0.0.1", server_key, ca.subject, ca_key, False)
    paths = {"ca": folder / "ca.crt", "cert": folder / "server.pem", "key": folder / "server.key"}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    paths["key"].write_bytes(server_key.private_bytes(serialization.Encoding.PEM,
                                                      serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return paths


def _node_keys(folder: Path, code: str) -> tuple[Path, Path]:
    """A SuperNode's key pair as `ssh-keygen -t ecdsa -b 384` writes it."""
    key = ec.generate_private_key(ec.SECP384R1())
    private, public = folder / f"{code}_key", folder / f"{code}_key.pub"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                          serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                     serialization.PublicFormat.OpenSSH))
    return private, public


def _api_token(client: httpx.Client, username: str) -> dict[str, str]:
    response = client.post("/api/auth/token/", json={"username": username, "password": PASSWORD})
    assert response.status_code == 200, response.text
    return {"Authorization": f"Token {response.json()['token']}"}


def _wait_for(predicate, what: str, timeout: float, deployment: Deployment, logs: tuple[str, ...]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"Timed out waiting for {what}:\n" + "\n".join(f"--- {n}\n{deployment.log(n)}" for n in logs))


def _query(db: Path, sql: str, *args: object) -> list[tuple]:
    with sqlite3.connect(db, timeout=30) as conn:
        return conn.execute(sql, args).fetchall()


def test_it_governs_a_real_flower_federation_and_drops_a_site_revoked_mid_round(tmp_path):
    db = tmp_path / "consortium.sqlite3"
    env = {key: value for key, value in os.environ.items()
           if key not in {"REDIS_URL", "CELERY_BROKER_URL", "DATABASE_URL"}}
    env.update(CONSORTIUM_DATA_DIR=str(tmp_path / "data"), DATABASE_URL=f"sqlite:///{db}",
               FLWR_HOME=str(tmp_path / "flwr"), PYTHONPATH=str(ROOT), PATH=f"{BIN}:{env.get('PATH', '')}")
    deployment = Deployment(tmp_path, env)
    try:
        _run_federation(deployment, tmp_path, db)
    finally:
        deployment.stop()


def _run_federation(deployment: Deployment, tmp_path: Path, db: Path) -> None:
    made = deployment.run([sys.executable, "manage.py", "flower_study", "--sites", *SITES, "--rounds", "3",
                           "--quorum", "2", "--json"], timeout=300)
    assert made.returncode == 0, made.stdout[-2000:] + made.stderr[-3000:]
    setup = json.loads(made.stdout.strip().splitlines()[-1])
    study_id, data = setup["study_id"], setup["data"]

    port = _free_port()
    deployment.start("server", [str(BIN / "daphne"), "-b", "127.0.0.1", "-p", str(port),
                                "consortium.asgi:application"])
    server = f"http://127.0.0.1:{port}"
    client = httpx.Client(base_url=server, timeout=30)
    _wait_for(lambda: _up(client), "the Consortium server", 60, deployment, ("server",))

    # The PI issues the coordinator's token; each site's admin registers its SuperNode's public key.
    pi = _api_token(client, "pi")
    issued = client.post(f"/api/studies/{study_id}/flower-tokens/", json={"name": "SuperLink on loopback"},
                         headers=pi)
    assert issued.status_code == 201, issued.text
    coordinator_token = issued.json()["token"]
    keys, site_ids = {}, {}
    for code in SITES:
        keys[code] = _node_keys(tmp_path, code)
        admin = _api_token(client, f"admin_{code}")
        site_ids[code] = next(s["id"] for s in client.get("/api/sites/", headers=admin).json() if s["code"] == code)
        registered = client.post(f"/api/sites/{site_ids[code]}/flower-nodes/", headers=admin,
                                 json={"name": f"SuperNode of {code}", "public_key": keys[code][1].read_text()})
        assert registered.status_code == 201, registered.text
    # The worker comes after the token: from then on it leaves this study's rounds to Flower.
    deployment.start("worker", [str(BIN / "celery"), "-A", "consortium", "worker", "--beat", "--schedule",
                                str(tmp_path / "beat"), "--concurrency", "1", "--loglevel", "INFO"],
                     ROUNDS_TICK_SECONDS="1")

    tls, flower_port = _tls(tmp_path), _free_port()
    deployment.start("superlink", [str(BIN / "flower-superlink"), "--ssl-ca-certfile", str(tls["ca"]),
                                   "--ssl-certfile", str(tls["cert"]), "--ssl-keyfile", str(tls["key"]),
                                   "--enable-supernode-auth", "--host", "127.0.0.1", "--port", str(flower_port),
                                   "--disable-runtime-dependency-installation"],
                     CONSORTIUM_FLOWER_TOKEN=coordinator_token)
    config = Path(deployment.env["FLWR_HOME"]) / "config.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(f'[superlink]\ndefault = "consortium"\n\n[superlink.consortium]\n'
                      f'address = "127.0.0.1:{flower_port}"\nroot-certificates = "{tls["ca"]}"\n')
    _wait_for(lambda: "Starting" in deployment.log("superlink") and _registered(deployment, keys[SITES[0]][1]),
              "the SuperLink to register the first SuperNode", 60, deployment, ("superlink",))
    for code in SITES[1:]:
        assert _registered(deployment, keys[code][1])
    for code in SITES:
        deployment.start(f"supernode_{code}", [
            str(BIN / "flower-supernode"), "--root-certificates", str(tls["ca"]), "--superlink",
            f"127.0.0.1:{flower_port}", "--auth-supernode-private-key", str(keys[code][0]), "--port",
            str(_free_port()), "--node-config", f'data="{data[code]}"'])

    run = deployment.start("flwr_run", [str(BIN / "flwr"), "run", str(APP), "consortium", "--stream", "--run-config",
                                        f'consortium-server="{server}" consortium-study={study_id} '
                                        f'num-server-rounds=3 wait-for-nodes=3 min-nodes=2'])
    logs = ("flwr_run", "superlink", "server", *(f"supernode_{c}" for c in SITES))
    # Round 2 opens with the three sites; the revoked site's admin acts while its node trains.
    _wait_for(lambda: _flower_rounds(db, study_id) >= 2, "the second Flower round", 600, deployment, logs)
    _revoke(client, study_id, site_ids[REVOKED])
    _wait_for(lambda: run.poll() is not None, "flwr run to finish", 600, deployment, logs)
    assert run.returncode == 0, "\n".join(f"--- {n}\n{deployment.log(n)}" for n in logs)

    _assert_ledger(db, study_id, site_ids)
    _assert_dashboard(client, study_id)
    verified = deployment.run([sys.executable, "manage.py", "verify_audit"])
    assert verified.returncode == 0 and "Audit chain intact" in verified.stdout, verified.stdout + verified.stderr


def _up(client: httpx.Client) -> bool:
    try:
        return client.get("/accounts/login/").status_code == 200
    except httpx.HTTPError:
        return False


def _registered(deployment: Deployment, public_key: Path) -> bool:
    """`flwr supernode register` of one node's key with the SuperLink (node authentication's allow list)."""
    done = deployment.run([str(BIN / "flwr"), "supernode", "register", str(public_key), "consortium"])
    return done.returncode == 0 and "registered successfully" in done.stdout


def _flower_rounds(db: Path, study_id: int) -> int:
    rows = _query(db, "SELECT count(*) FROM aggregation_flowerround f JOIN aggregation_round r ON r.id = f.round_id "
                      "WHERE r.study_id = ?", study_id)
    return rows[0][0]


def _revoke(client: httpx.Client, study_id: int, site_id: int) -> None:
    admin = _api_token(client, f"admin_{REVOKED}")
    participations = client.get(f"/api/studies/{study_id}/participations/", headers=admin).json()
    [mine] = [p for p in participations if p["site"] == site_id]
    revoked = client.post(f"/api/participations/{mine['id']}/revoke/", headers=admin,
                          json={"reason": "Our hospital withdraws its data from this study."})
    assert revoked.status_code == 200, revoked.text


def _assert_ledger(db: Path, study_id: int, site_ids: dict[str, int]) -> None:
    rounds = _query(db, "SELECT r.number, r.status, f.server_round, f.nodes FROM aggregation_round r "
                        "JOIN aggregation_flowerround f ON f.round_id = r.id WHERE r.study_id = ? ORDER BY r.number",
                    study_id)
    assert [(status, server_round) for _, status, server_round, _ in rounds] == [
        ("closed", 1), ("closed", 2), ("closed", 3)]
    configured = [{n["site_id"] for n in json.loads(nodes).values()} for *_, nodes in rounds]
    everyone, revoked = set(site_ids.values()), site_ids[REVOKED]
    # Rounds 1 and 2 were configured with every site; round 3, after the revocation, without it.
    assert configured[0] == configured[1] == everyone and configured[2] == everyone - {revoked}
    updates = _query(db, "SELECT r.number, u.site_id, u.status, u.exclusion_reason, length(u.sha256) FROM "
                         "aggregation_update u JOIN aggregation_round r ON r.id = u.round_id WHERE r.study_id = ? "
                         "ORDER BY r.number, u.site_id", study_id)
    by_round = {number: {site: (status, reason) for n, site, status, reason, _ in updates if n == number}
                for number in (1, 2, 3)}
    assert all(length == 64 for *_, length in updates)
    assert {site: status for site, (status, _) in by_round[1].items()} == dict.fromkeys(everyone, "included")
    # Its result of round 2 arrived after the revocation: recorded, excluded with the gate's reason.
    assert by_round[2][revoked][0] == "excluded" and "revoked" in by_round[2][revoked][1].lower()
    assert {s for s, (status, _) in by_round[2].items() if status == "included"} == everyone - {revoked}
    assert set(by_round[3]) == everyone - {revoked}
    versions = _query(db, "SELECT number, provenance FROM aggregation_modelversion WHERE study_id = ? ORDER BY number",
                      study_id)
    assert [number for number, _ in versions] == [0, 1, 2, 3]
    provenance = json.loads(versions[2][1])
    assert sorted(c["site_id"] for c in provenance["contributors"]) == sorted(everyone - {revoked})
    assert provenance["strategy"]["name"] == "flower:FedAvg" and provenance["flower"]["server_round"] == 2
    assert provenance["gate"]["allowed"] and revoked not in provenance["gate"]["eligible_site_ids"]
    kinds = [kind for (kind,) in _query(db, "SELECT kind FROM studies_studyevent WHERE study_id = ? ORDER BY seq",
                                        study_id)]
    assert kinds.count("aggregation.finished") == 3 and kinds.count("round.opened") == 3
    assert kinds.count("update.excluded") == 1
    actions = [a for (a,) in _query(db, "SELECT action FROM consortium_auditevent WHERE study_id = ?", study_id)]
    assert actions.count("aggregation.update.accepted") == 8 and actions.count("aggregation.update.excluded") == 1


def _assert_dashboard(client: httpx.Client, study_id: int) -> None:
    """The PI's live dashboard shows the rounds Flower ran and the versions they made."""
    client.cookies.clear()
    page = client.get("/accounts/login/")
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)[1]
    client.post("/accounts/login/", data={"username": "pi", "password": PASSWORD, "csrfmiddlewaretoken": token},
                headers={"Referer": str(client.base_url) + "/accounts/login/"})
    dashboard = client.get(f"/studies/{study_id}/dashboard/")
    assert dashboard.status_code == 200
    assert "v3" in dashboard.text and "Round 3" in dashboard.text, dashboard.text[:3000]
