import multiprocessing
import time

import pytest
from kombu import Connection
from kombu.transport.virtual.base import Empty

MESSAGES = 300
BODY = {"task": "aggregation.tasks.aggregate_round", "args": [1], "padding": "x" * 100_000}


def _write(folder: str, transport: str) -> None:
    options = {"data_folder_in": folder, "data_folder_out": folder}
    with Connection("filesystem://", transport=transport, transport_options=options) as conn:
        channel = conn.channel()
        for _ in range(MESSAGES):
            channel._put("celery", BODY)


@pytest.mark.parametrize("transport", ["consortium.broker:Transport"])
def test_it_never_hands_a_worker_a_half_written_message(tmp_path, transport):
    """The embedded broker's messages appear whole: a worker polling while another process enqueues
    never reads an empty or truncated message (kombu's own filesystem channel can)."""
    writer = multiprocessing.get_context("spawn").Process(target=_write, args=(str(tmp_path), transport))
    writer.start()
    options = {"data_folder_in": str(tmp_path), "data_folder_out": str(tmp_path)}
    received, deadline = [], time.monotonic() + 60
    with Connection("filesystem://", transport=transport, transport_options=options) as conn:
        channel = conn.channel()
        while len(received) < MESSAGES and time.monotonic() < deadline:
            try:
                received.append(channel._get("celery"))
            except Empty:
                continue
    writer.join(timeout=30)
    assert len(received) == MESSAGES and all(message == BODY for message in received)
    assert not list(tmp_path.glob("*.partial"))
