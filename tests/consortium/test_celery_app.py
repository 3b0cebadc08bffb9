"""The Celery app loads with Django (not with the `consortium` package, which the offline verifier imports)."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROBE = """
import django
django.setup()
from celery import current_app
from django.conf import settings
from aggregation.tasks import aggregate_round
print(current_app.main, aggregate_round.app.main, hasattr(aggregate_round, "delay_on_commit"),
      current_app.conf.broker_url == settings.CELERY_BROKER_URL)
"""


def run(*command: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "consortium.settings"}
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_it_gives_every_django_process_the_consortium_app_so_tasks_enqueue_on_commit_to_our_broker():
    result = run(sys.executable, "-c", PROBE)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["consortium", "consortium", "True", "True"]


def test_it_lets_the_celery_command_find_the_app_by_the_package_name():
    result = run(str(Path(sys.executable).with_name("celery")), "-A", "consortium", "report")
    assert result.returncode == 0, result.stderr
    assert "transport:consortium.broker:Transport" in result.stdout or "transport:redis" in result.stdout
