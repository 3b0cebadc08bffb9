"""The ASGI middleware that refuses oversized uploads before Django reads them (`UploadSizeLimit`),
driven with hand-made receive/send coroutines: what the app sees, and what the client is answered."""

import asyncio
import json
from typing import Any

from consortium.upload_limit import UploadSizeLimit

LIMIT = 1000
PATH = "/api/agent/rounds/1/update/"


class RecordingApp:
    """Stands for Django: reads the whole body, remembers it, answers 200."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    async def __call__(self, scope: dict, receive, send) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        self.bodies.append(body)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"stored"})


def scope(*, path: str = PATH, method: str = "POST", content_length: int | None = None) -> dict[str, Any]:
    headers = [(b"content-type", b"application/octet-stream")]
    if content_length is not None:
        headers.append((b"content-length", str(content_length).encode()))
    return {"type": "http", "path": path, "method": method, "headers": headers}


def run(app: RecordingApp, scope_: dict, chunks: list[bytes]) -> tuple[list[dict], int]:
    """Call the middleware; returns the messages sent to the client and how many chunks it read."""
    pending = [{"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1}
               for i, chunk in enumerate(chunks)]
    sent: list[dict] = []
    read = 0

    async def receive() -> dict:
        nonlocal read
        if read < len(pending):
            read += 1
            return pending[read - 1]
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(UploadSizeLimit(app, limit=LIMIT, prefix="/api/agent/")(scope_, receive, send))
    return sent, read


def assert_413(sent: list[dict]) -> None:
    start, body = sent
    assert start["type"] == "http.response.start" and start["status"] == 413
    assert (b"content-type", b"application/json") in start["headers"]
    error = json.loads(body["body"])
    assert error == {"error": "too_large", "detail": "The upload is over the 1,000-byte limit."}


def test_it_answers_413_from_the_content_length_alone_without_calling_the_app():
    app = RecordingApp()
    sent, read = run(app, scope(content_length=LIMIT + 1), [b"x" * 600, b"x" * 401])
    assert_413(sent)
    assert read == 0, "the body was read"
    assert app.bodies == []


def test_it_answers_413_once_streamed_chunks_pass_the_limit_without_a_content_length():
    app = RecordingApp()
    sent, read = run(app, scope(), [b"x" * 400, b"x" * 400, b"x" * 400, b"x" * 400])
    assert_413(sent)
    assert read == 3, "it read on after the limit was passed"
    assert app.bodies == []


def test_it_counts_the_streamed_bytes_when_the_content_length_lies():
    app = RecordingApp()
    sent, _ = run(app, scope(content_length=10), [b"x" * 600, b"x" * 600])
    assert_413(sent)
    assert app.bodies == []


def test_it_passes_a_body_within_the_limit_through_intact():
    app = RecordingApp()
    chunks = [bytes(range(256)), b"\x00" * 300, b"end" * 100 + b"!" * 144]
    assert sum(map(len, chunks)) == LIMIT
    sent, read = run(app, scope(content_length=LIMIT), chunks)
    assert app.bodies == [b"".join(chunks)]
    assert read == 3 and [m.get("status") for m in sent] == [200, None] and sent[1]["body"] == b"stored"


def test_it_leaves_other_paths_alone():
    app = RecordingApp()
    sent, _ = run(app, scope(path="/api/studies/", content_length=LIMIT * 5), [b"x" * (LIMIT * 5)])
    assert app.bodies == [b"x" * (LIMIT * 5)] and sent[0]["status"] == 200


def test_it_limits_every_method_under_the_prefix():
    # Django reads a whole body before it answers 405, so a PUT must be limited too.
    for method in ("PUT", "PATCH"):
        app = RecordingApp()
        sent, read = run(app, scope(method=method, content_length=LIMIT * 5), [b"x" * (LIMIT * 5)])
        assert_413(sent)
        assert read == 0 and app.bodies == []
    app = RecordingApp()
    sent, _ = run(app, scope(method="GET"), [b""])
    assert app.bodies == [b""] and sent[0]["status"] == 200


def test_it_calls_nothing_when_the_client_disconnects_mid_upload():
    app = RecordingApp()

    async def main() -> list[dict]:
        messages = iter([{"type": "http.request", "body": b"x" * 10, "more_body": True}, {"type": "http.disconnect"}])
        sent: list[dict] = []

        async def receive() -> dict:
            return next(messages)

        async def send(message: dict) -> None:
            sent.append(message)

        await UploadSizeLimit(app, limit=LIMIT, prefix="/api/agent/")(scope(), receive, send)
        return sent

    assert asyncio.run(main()) == [] and app.bodies == []


def test_it_guards_the_agent_api_of_the_deployed_application(settings):
    from consortium.asgi import application

    guard = application.application_mapping["http"]
    assert isinstance(guard, UploadSizeLimit)
    assert (guard.limit, guard.prefix) == (settings.MAX_UPDATE_BYTES, "/api/agent/")
