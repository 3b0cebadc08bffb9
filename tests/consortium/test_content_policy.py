"""Every answer carries a Content-Security-Policy: scripts from our own files only (no inline script, no
eval), styles from files only except where plotly.js or Swagger UI draw (the dashboard, /api/docs/).
The browser tests (tests/browser/) check that pages run under it without a violation."""

import re
from pathlib import Path

from django.test import Client

from tests.base import active_study
from tests.pages import client_for

TEMPLATES = Path(__file__).resolve().parents[2] / "templates"


def policy(response) -> dict[str, list[str]]:
    header = response["Content-Security-Policy"]
    return {name: values for name, *values in (part.split() for part in header.split(";") if part.strip())}


def assert_strict_scripts(directives: dict[str, list[str]]) -> None:
    assert directives["script-src"] == ["'self'"]
    assert directives["object-src"] == ["'none'"] and directives["frame-ancestors"] == ["'none'"]
    assert not any("unsafe-eval" in value for values in directives.values() for value in values)


def test_pages_allow_scripts_and_styles_from_our_files_only(p):
    admin = client_for(p.admin)
    for url in ("/accounts/login/", "/", "/studies/", "/audit/", "/admin/"):
        directives = policy((Client() if url == "/accounts/login/" else admin).get(url, follow=True))
        assert_strict_scripts(directives)
        assert directives["style-src"] == ["'self'"], url


def test_the_dashboard_and_swagger_ui_add_inline_styles_and_nothing_else(p):
    study = active_study(p)
    for response in (client_for(p.pi).get(f"/studies/{study.pk}/dashboard/"), Client().get("/api/docs/")):
        assert response.status_code == 200
        directives = policy(response)
        assert_strict_scripts(directives)
        assert sorted(directives["style-src"]) == ["'self'", "'unsafe-inline'"]


def test_no_template_holds_an_inline_script_or_event_handler():
    """JSON data blocks (`json_script`) are data, not script; anything else must be a file under static/."""
    for path in TEMPLATES.rglob("*.html"):
        text = path.read_text()
        for tag in re.findall(r"<script\b[^>]*>", text):
            assert "src=" in tag, f"{path.name}: inline script {tag}"
        assert not re.search(r"\son[a-z]+\s*=", text), f"{path.name}: an inline event handler"
        assert "javascript:" not in text, f"{path.name}: a javascript: URL"
