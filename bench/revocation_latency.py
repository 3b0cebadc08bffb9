"""Revocation latency: from a site admin's revocation to the PI's live dashboard showing that site in red.

It starts the real demo as the browser test does (`migrate`, `seed_demo`, `serve_demo`: daphne, a Celery
worker with its scheduler and four site agents training, on the embedded defaults: SQLite, in-memory channel
layer, filesystem broker) in a throwaway data folder, opens the PI's dashboard of the active study in Debian's
chromium driven by Playwright, and then, --tries times: Helsinki's admin revokes its participation through
the REST API, and the page notes (a MutationObserver, `Date.now()`) when Helsinki's row in the governance
panel turns red; the PI re-invites Helsinki and its admin grants again (through the API) before the next try.

Latency runs from the revocation as the coordinator recorded it (the participation's `decided_at`, set by the
service just before it commits) to the row turning red, on the machine's one wall clock; `from request` runs
from the moment the API request was sent, so it also counts the request's own time in a busy server. (The
HTTP answer is no start: the dashboard hears of the commit before the answer reaches the client, often by
tens of milliseconds.) The federation keeps training throughout, as it would in real use. Prints p50 and p99
(nearest rank) with min and max; exits 1 if a row did not turn red within --timeout seconds.

    .venv/bin/python bench/revocation_latency.py              # 30 revocations
    .venv/bin/python bench/revocation_latency.py --tries 100
"""

import argparse
import json
import math
import os
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
PASSWORD = "consortium-demo"
ACTIVE_TITLE = "Breast cancer malignancy from FNA cytology"
SITE = "hus"
# Records, in the page, the instant Helsinki's governance row turns red once armed (one entry per revocation).
OBSERVER = """(selector) => {
  window.__red = [];
  window.__armed = false;
  new MutationObserver(() => {
    const row = document.querySelector(selector);
    if (window.__armed && row && row.dataset.eligible === "false") {
      window.__red.push(Date.now());
      window.__armed = false;
    }
  }).observe(document.body, {subtree: true, childList: true, attributes: true, attributeFilter: ["data-eligible"]});
}"""


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))] if ordered else math.nan


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def manage(env: dict[str, str], *args: str) -> None:
    done = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    if done.returncode != 0:
        raise SystemExit(f"manage.py {' '.join(args)} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")


def wait_for(url: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise SystemExit(f"{url} did not answer within {seconds} s")


class Api:
    """The REST API with a user's token (what a script or an integration would use)."""

    def __init__(self, base: str, username: str) -> None:
        self.base = base
        self.token = self._call("POST", "/api/auth/token/", {"username": username, "password": PASSWORD})["token"]

    def _call(self, method: str, path: str, body: dict | None = None) -> dict | list:
        request = urllib.request.Request(f"{self.base}{path}", method=method,
                                         data=json.dumps(body).encode() if body is not None else None,
                                         headers={"Content-Type": "application/json"})
        if getattr(self, "token", None):
            request.add_header("Authorization", f"Token {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            raise SystemExit(f"{method} {path}: {exc.code} {exc.read()[:300]!r}") from exc

    def post(self, path: str, body: dict | None = None) -> dict:
        return self._call("POST", path, body or {})

    def get(self, path: str) -> dict | list:
        return self._call("GET", path)


def start_demo(data: Path) -> tuple[subprocess.Popen, str]:
    env = {key: value for key, value in os.environ.items()
           if key not in {"REDIS_URL", "CELERY_BROKER_URL", "DATABASE_URL", "DJANGO_ALLOW_ASYNC_UNSAFE"}}
    env.update(CONSORTIUM_DATA_DIR=str(data), DEBUG="1", ROUNDS_TICK_SECONDS="1")
    manage(env, "migrate", "--noinput")
    manage(env, "seed_demo")
    port = free_port()
    log = (data / "serve_demo.log").open("w")
    server = subprocess.Popen([sys.executable, "manage.py", "serve_demo", "--port", str(port)], cwd=ROOT, env=env,
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(f"{base}/accounts/login/", seconds=180)  # a busy machine starts five processes slowly
    except BaseException:
        stop_demo(server)
        raise
    return server, base


def stop_demo(server: subprocess.Popen) -> None:
    os.killpg(server.pid, signal.SIGTERM)  # serve_demo stops its worker and agents
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)


def ids(data: Path) -> tuple[int, int]:
    """The active demo study's id and Helsinki's site id, read from the demo's own database."""
    with sqlite3.connect(data / "consortium.sqlite3") as conn:
        study = conn.execute("SELECT id FROM studies_study WHERE title = ?", [ACTIVE_TITLE]).fetchone()[0]
        site = conn.execute("SELECT id FROM sites_site WHERE code = ?", [SITE]).fetchone()[0]
    return study, site


def open_dashboard(browser, base: str, study: int):
    page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
    page.goto(f"{base}/accounts/login/")
    page.fill("#id_username", "pi")
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_selector('[data-testid="whoami"]:text-is("pi")')
    page.goto(f"{base}/studies/{study}/dashboard/")
    page.wait_for_selector('[data-testid="connection"][data-state="live"]', timeout=30_000)
    return page


def wait_green(page, api: Api, study: int, site: int, row: str, timeout: float) -> float:
    """Wait until the site's row is green again; returns the seconds waited. Polled on a timer, not per
    animation frame: a busy page may draw few frames."""
    began = time.time()
    try:
        page.wait_for_function(f"document.querySelector({json.dumps(row)})?.dataset.eligible === 'true'",
                               polling=50, timeout=timeout * 1000)
    except Exception:
        checks = [c for c in api.get(f"/api/studies/{study}/gate/")["checks"] if c["site_id"] == site]
        print("The row stayed red; the gate says:", checks, page.inner_html(row), sep="\n", file=sys.stderr)
        raise
    return time.time() - began


def measure(page, base: str, study: int, site: int, tries: int, timeout: float) -> list[tuple[float, float]]:
    """(ms from the recorded revocation, ms from its request) to the red row, per try."""
    pi, admin = Api(base, "pi"), Api(base, f"admin_{SITE}")
    row = f'[data-testid="governance-panel"] [data-site-id="{site}"]'
    page.evaluate(OBSERVER, row)
    current = next(p for p in admin.get(f"/api/studies/{study}/participations/")
                   if p["site"] == site and p["status"] == "granted")
    wait_green(page, pi, study, site, row, timeout)
    found = []
    for attempt in range(tries):
        page.evaluate("window.__armed = true")
        sent = time.time()
        revoked = admin.post(f"/api/participations/{current['id']}/revoke/",
                             {"reason": f"Bench revocation {attempt + 1}."})
        recorded = datetime.fromisoformat(revoked["decided_at"].replace("Z", "+00:00")).timestamp()
        page.wait_for_function(f"window.__red.length > {attempt}", polling=50, timeout=timeout * 1000)
        red = page.evaluate(f"window.__red[{attempt}]") / 1000
        found.append(((red - recorded) * 1000, (red - sent) * 1000))
        # Taking part again needs a new invitation; the signature and ethics approval still hold.
        current = pi.post(f"/api/studies/{study}/participations/", {"site": site})
        admin.post(f"/api/participations/{current['id']}/grant/", {"reason": "Bench: taking part again."})
        back = wait_green(page, pi, study, site, row, timeout)
        print(f"  revocation {attempt + 1}: red after {found[-1][0]:.0f} ms; green again {back * 1000:.0f} ms "
              "after the grant's answer", file=sys.stderr, flush=True)
    return found


def report(found: list[tuple[float, float]]) -> None:
    print(f"{'from':<14} {'n':>4} {'p50 ms':>8} {'p99 ms':>8} {'min ms':>8} {'max ms':>8} {'mean ms':>8}")
    for index, label in enumerate(("revocation", "request")):
        values = [pair[index] for pair in found]
        print(f"{label:<14} {len(values):>4} {percentile(values, 0.5):>8.1f} {percentile(values, 0.99):>8.1f} "
              f"{min(values):>8.1f} {max(values):>8.1f} {statistics.fmean(values):>8.1f}")
    print(f"load average (1, 5, 15 min): {' '.join(f'{value:.2f}' for value in os.getloadavg())} "
          f"on {os.cpu_count()} CPUs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tries", type=int, default=30)
    parser.add_argument("--timeout", type=float, default=30, help="seconds to wait for a row to change")
    args = parser.parse_args()
    chromium = os.environ.get("CHROMIUM_PATH") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium")
                                                   else shutil.which("chromium"))
    if not chromium:
        print("skipped: no chromium (set CHROMIUM_PATH)")
        return
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    data = Path(tempfile.mkdtemp(prefix="consortium-revocation-"))
    server, base = start_demo(data)
    try:
        study, site = ids(data)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            try:
                found = measure(open_dashboard(browser, base, study), base, study, site, args.tries, args.timeout)
            except PlaywrightError as exc:
                raise SystemExit(f"a row did not change within {args.timeout:.0f} s: {exc}") from exc
            finally:
                browser.close()
    finally:
        stop_demo(server)
        shutil.rmtree(data, ignore_errors=True)
    print(f"Revocation to a red row on the PI's live dashboard ({args.tries} revocations, demo training "
          "throughout; in-memory channel layer, one daphne process):")
    report(found)


if __name__ == "__main__":
    main()
