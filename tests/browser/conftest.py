"""What the browser tests share: Debian's chromium driven by Playwright, a logged-in page per person
(each in its own browser context, so its own cookies), and screenshots under test-results/browser/."""

import os
import shutil
from pathlib import Path

import pytest

from tests.base import PASSWORD
from tests.conftest import skip_or_fail

SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-results" / "browser"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
# Generous, for every wait and screenshot: a test waits for an outcome, it does not time it, and on a busy
# machine (two cores, several test runs) drawing the dashboard alone has taken more than 15 s.
TIMEOUT_MS = 60_000


def _chromium() -> str:
    path = os.environ.get("CHROMIUM_PATH") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium")
                                               else shutil.which("chromium"))
    if not path:
        skip_or_fail("chromium not found")
    return path


@pytest.fixture
def browser(monkeypatch):
    executable = _chromium()
    # Playwright's sync API runs an event loop in this thread; Django's ORM calls in the test are still sync.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    from playwright.sync_api import sync_playwright

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


# Runs in every document before its own scripts (through the debugger protocol, so the page's
# Content-Security-Policy does not apply to it): collects the policy's violations as the page reports them.
WATCH_CSP = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__cspViolations.push(e.violatedDirective + " blocked " + (e.blockedURI || "inline") + " at " +
    e.sourceFile + ":" + e.lineNumber);
});
"""


def watched_page(browser):
    """A fresh browser context (its own cookies) whose page records every dialog (and dismisses it) and every
    Content-Security-Policy violation, reported in the page or logged to the console."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.add_init_script(WATCH_CSP)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.dialogs, page.csp_console = [], []

    def on_dialog(dialog) -> None:
        page.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    page.on("dialog", on_dialog)
    page.on("console", lambda message: page.csp_console.append(message.text)
            if "Content Security Policy" in message.text else None)
    return page


def csp_violations(page) -> list[str]:
    """What the current document reported, and what any document of this page logged, since it opened."""
    return list(page.evaluate("window.__cspViolations || []")) + page.csp_console


def log_in(browser, base_url: str, username: str, password: str = PASSWORD):
    """A fresh watched page (`watched_page`) logged in through the login form."""
    page = watched_page(browser)
    page.goto(f"{base_url}/accounts/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("button[type=submit]")
    page.wait_for_selector(f'[data-testid="whoami"]:text-is("{username}")')
    return page


def shot(page, name: str) -> None:
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True, timeout=TIMEOUT_MS)
