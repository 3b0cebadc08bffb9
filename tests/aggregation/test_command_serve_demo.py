"""`serve_demo`'s watch over its processes: a worker that dies is replaced (the new one sends a lost
aggregation again), any other process that dies stops the demo, and a worker that keeps dying is given up."""

from io import StringIO
from pathlib import Path

import pytest
from django.core.management.base import CommandError

from aggregation import demo
from aggregation.management.commands import serve_demo


class FakeProcess:
    """Alive for `lives` polls, then exited with `code`."""

    def __init__(self, lives: int, code: int = -9):
        self.lives, self.code, self.returncode = lives, code, None

    def poll(self) -> int | None:
        if self.lives <= 0:
            self.returncode = self.code
            return self.code
        self.lives -= 1
        return None


@pytest.fixture
def command(db, monkeypatch) -> serve_demo.Command:
    monkeypatch.setattr(serve_demo.time, "sleep", lambda seconds: None)
    return serve_demo.Command(stdout=StringIO())


def test_it_replaces_a_worker_that_died(command, monkeypatch, tmp_path):
    started: list[Path] = []
    replacement = FakeProcess(lives=1000)
    monkeypatch.setattr(demo, "start_worker", lambda log: started.append(log) or replacement)
    server = FakeProcess(lives=6)  # the demo ends when the server stops
    processes = [FakeProcess(lives=1), server]
    with pytest.raises(CommandError, match="stopped unexpectedly"):
        command._watch(processes, tmp_path)
    assert started == [tmp_path / "worker.log"] and processes[0] is replacement
    assert "The worker stopped (exit -9); starting a new one." in command.stdout.getvalue()


def test_it_gives_up_on_a_worker_that_keeps_dying(command, monkeypatch, tmp_path):
    started: list[Path] = []
    monkeypatch.setattr(demo, "start_worker", lambda log: started.append(log) or FakeProcess(lives=0, code=1))
    with pytest.raises(CommandError, match="stopped unexpectedly"):
        command._watch([FakeProcess(lives=0, code=1), FakeProcess(lives=10_000)], tmp_path)
    assert len(started) == serve_demo.MAX_WORKER_RESTARTS
