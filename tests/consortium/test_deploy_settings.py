"""Production security settings come from the environment: with HTTPS=1 (behind a TLS-terminating proxy),
DEBUG=0, a SECRET_KEY and ALLOWED_HOSTS, `manage.py check --deploy --fail-level WARNING` passes; without
HTTPS=1 it warns about HSTS, the SSL redirect and insecure cookies."""

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEPLOY_WARNINGS = ("security.W004", "security.W008", "security.W012", "security.W016")


@pytest.fixture
def production_env(tmp_path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items()
           if key not in {"DATABASE_URL", "REDIS_URL", "HTTPS", "DEBUG", "DJANGO_SETTINGS_MODULE"}
           and not key.startswith(("HSTS_", "SECURE_"))}
    env.update(CONSORTIUM_DATA_DIR=str(tmp_path), DEBUG="0", SECRET_KEY=secrets.token_urlsafe(50),
               ALLOWED_HOSTS="consortium.example.org")
    return env


def manage(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)


def settings_of(env: dict[str, str], *names: str) -> list[str]:
    code = "from django.conf import settings as s; " + "; ".join(f"print(repr(s.{n}))" for n in names)
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**env, "DJANGO_SETTINGS_MODULE":
                                                                        "consortium.settings"},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.split("\n")[: len(names)]


def test_the_deploy_check_passes_with_https_on(production_env):
    done = manage({**production_env, "HTTPS": "1"}, "check", "--deploy", "--fail-level", "WARNING")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def test_without_https_the_deploy_check_warns_about_hsts_redirect_and_cookies(production_env):
    done = manage(production_env, "check", "--deploy", "--fail-level", "WARNING")
    assert done.returncode != 0
    for warning in DEPLOY_WARNINGS:
        assert warning in done.stderr + done.stdout


def test_https_turns_on_hsts_the_redirect_secure_cookies_and_the_proxy_header(production_env):
    values = settings_of({**production_env, "HTTPS": "1"}, "SECURE_HSTS_SECONDS", "SECURE_HSTS_INCLUDE_SUBDOMAINS",
                         "SECURE_SSL_REDIRECT", "SESSION_COOKIE_SECURE", "CSRF_COOKIE_SECURE",
                         "SECURE_PROXY_SSL_HEADER")
    assert values == [str(365 * 24 * 3600), "True", "True", "True", "True", "('HTTP_X_FORWARDED_PROTO', 'https')"]


def test_an_operator_may_opt_out_of_hsts_preload_and_the_check_still_passes(production_env):
    env = {**production_env, "HTTPS": "1", "HSTS_PRELOAD": "0"}
    assert settings_of(env, "SECURE_HSTS_PRELOAD") == ["False"]
    assert manage(env, "check", "--deploy", "--fail-level", "WARNING").returncode == 0
