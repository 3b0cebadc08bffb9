"""The ASGI middleware that refuses oversized uploads before Django reads them (`UploadSizeLimit`),
driven with hand-made receive/send coroutines: what the app sees, what the client is answered, and the
audit event each refusal leaves (naming the agent when its token identifies one)."""

import asyncio
import json
from typing import Any

import pytest
from channels.db import database_sync_to_async

from aggregation.services.uploads import upload_refused
from consortium.audit.log import verify_chain
from consortium.audit.models import AuditActorKind, AuditEvent, AuditOutcome
from consortium.request_limits import RequestTargetLimit
from consortium.upload_limit import RefusedUpload, UploadSizeLimit
from tests.aggregation.support import open_round

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


def scope(*, path: str = PATH, method: str = "POST", content_length: int | None = None,
          authorization: str = "") -> dict[str, Any]:
    headers = [(b"content-type", b"application/octet-stream")]
    if authorization:
        headers.append((b"authorization", authorization.encode()))
    if content_length is not None:
        headers.append((b"content-length", str(content_length).encode()))
    return {"type": "http", "path": path, "method": method, "headers": headers}


def run(app: RecordingApp, scope_: dict, chunks: list[bytes], on_refused=None) -> tuple[list[dict], int]:
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

    guard = UploadSizeLimit(app, limit=LIMIT, prefix="/api/agent/", on_refused=on_refused)
    asyncio.run(guard(scope_, receive, send))
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

    outer = application.application_mapping["http"]
    assert isinstance(outer, RequestTargetLimit) and isinstance(outer.app, UploadSizeLimit)
    guard = outer.app
    assert (guard.limit, guard.prefix) == (settings.MAX_UPDATE_BYTES, "/api/agent/")
    assert guard.on_refused is not None


# --- Each refusal is reported, then audited -------------------------------------------------------------


class Reports(list):
    async def __call__(self, refused: RefusedUpload) -> None:
        self.append(refused)


def test_it_reports_each_refusal_with_what_is_known_without_the_body():
    reports = Reports()
    sent, read = run(RecordingApp(), scope(content_length=LIMIT + 1, authorization="Bearer cst_x"), [b"x" * 1001],
                     on_refused=reports)
    assert_413(sent)
    assert read == 0, "the body was read"
    assert reports == [RefusedUpload(method="POST", path=PATH, authorization="Bearer cst_x", size=LIMIT + 1,
                                     declared=True, limit=LIMIT)]
    reports.clear()
    run(RecordingApp(), scope(), [b"x" * 600, b"x" * 600, b"x" * 600], on_refused=reports)
    assert [(r.size, r.declared, r.authorization) for r in reports] == [(1200, False, "")]
    reports.clear()
    run(RecordingApp(), scope(content_length=LIMIT), [b"x" * LIMIT], on_refused=reports)
    assert reports == []


def deployed(scope_: dict) -> list[dict]:
    """The request through the deployed ASGI application; returns what the client was sent."""
    from consortium.asgi import application

    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.disconnect"}  # never asked for: the Content-Length alone refuses it

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(application(scope_, receive, send))
    return sent


@pytest.mark.django_db(transaction=True)  # the guard writes from its own thread, as under daphne
def test_it_audits_an_over_size_update_as_a_denied_submission_of_the_agent_its_token_names(fed, settings):
    round_ = open_round(fed.study)
    path = f"/api/agent/rounds/{round_.pk}/update/"
    size = settings.MAX_UPDATE_BYTES + 1
    start, body = deployed({**scope(path=path, content_length=size, authorization=f"Bearer {fed.plaintext_a}"),
                            "query_string": b"", "raw_path": path.encode()})
    assert start["status"] == 413
    event = AuditEvent.objects.order_by("-seq").first()
    assert (event.action, event.outcome, event.actor_kind, event.actor_label) == (
        "aggregation.update.submit", AuditOutcome.DENIED, AuditActorKind.AGENT, fed.agent_a.get_username())
    assert (event.site_id, event.study_id) == (fed.p.site_a.pk, fed.study.pk)
    assert event.details == {"reason": f"The upload is over the {settings.MAX_UPDATE_BYTES:,}-byte limit.",
                             "code": "too_large", "method": "POST", "path": path, "bytes": size,
                             "measured": "content-length", "limit": settings.MAX_UPDATE_BYTES,
                             "round_id": round_.pk, "token": "valid"}
    assert verify_chain().intact


@pytest.mark.django_db(transaction=True)
def test_it_audits_an_over_size_upload_from_an_unknown_token_without_naming_a_site(fed):
    round_ = open_round(fed.study)
    path = f"/api/agent/rounds/{round_.pk}/statistics/"
    sent, _ = run(RecordingApp(), scope(path=path, authorization="Bearer cst_00000000_" + "x" * 43),
                  [b"x" * 700, b"x" * 700], on_refused=database_sync_to_async(upload_refused))
    assert_413(sent)
    event = AuditEvent.objects.order_by("-seq").first()
    assert (event.action, event.outcome, event.actor_kind, event.actor_label, event.site_id) == (
        "aggregation.statistics.submit", AuditOutcome.DENIED, AuditActorKind.USER, "anonymous", None)
    assert (event.details["bytes"], event.details["measured"], event.details["token"]) == (
        1400, "received", "unidentified")
