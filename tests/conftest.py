import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.core.cache import cache

from tests.aggregation.support import Federation, federation, record_enqueued
from tests.base import Personas, make_personas


def services_required() -> bool:
    """Under REQUIRE_SERVICES=1 (CI) a missing service fails a test instead of skipping it."""
    return os.environ.get("REQUIRE_SERVICES", "") == "1"


def skip_or_fail(reason: str) -> None:
    if services_required():
        pytest.fail(f"{reason} (REQUIRE_SERVICES=1: this must not be skipped)")
    pytest.skip(reason)


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings) -> None:
    """Personas are made per test; the production hasher would cost ~0.25 s per user."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def _fresh_throttles() -> Iterator[None]:
    """Throttle counters live in the cache, which no test transaction rolls back: each test starts afresh,
    so one test's refused agent tokens do not lock another out (the limits themselves stay as configured)."""
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def p(db) -> Personas:
    """The personas: pi, dpo, dpo2, site_a_admin, site_b_admin, auditor, outsider, admin, site_a, site_b."""
    return make_personas()


@pytest.fixture
def model_store(settings, tmp_path) -> Path:
    """Tensors go to a temporary folder, never to the checkout's data folder. Autouse under tests/aggregation
    (its conftest.py); a module elsewhere asks for it with `pytest.mark.usefixtures("model_store")`."""
    settings.MODEL_STORE = tmp_path / "models"
    return settings.MODEL_STORE


@pytest.fixture
def fed(p) -> Federation:
    """An active study (no statistics round, four features, quorum 2) and one agent per site."""
    return federation(p)


@pytest.fixture
def no_broker(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The aggregation task's `delay` is recorded, not sent (no broker): `pytest.mark.usefixtures("no_broker")`."""
    return record_enqueued(monkeypatch)
