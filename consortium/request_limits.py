"""Bounds on what a request may name: ids in paths, and the length of the request target.

- Ids: every `<id:...>` in a route is an integer from 0 to 2**63 - 1 (a BIGINT, SQLite's INTEGER).
  A larger number does not match the route, so it is a 404 (JSON under /api/) instead of a database
  overflow answered with a 500.
- Request targets (path plus query string) longer than `MAX_TARGET_BYTES` get a 414, JSON under /api/
  and a short HTML page elsewhere: from `RequestTargetLimit` (ASGI) when the server passed the request
  on, and from the HTTP server itself when the line is longer than Twisted reads (daphne used to drop
  the connection without a word; `answer_overlong_request_lines` makes it answer).
"""

import json
from collections.abc import Awaitable, Callable
from typing import Any

MAX_ID = 2**63 - 1
MAX_TARGET_BYTES = 8 * 1024
API_PREFIX = "/api/"

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class IdConverter:
    """`<id:pk>`: a database id or a number (a model version counts from 0), up to 2**63 - 1; anything
    larger is no match (so a 404). The OpenAPI schema describes it through
    SPECTACULAR_SETTINGS["PATH_CONVERTER_OVERRIDES"]."""

    regex = "[0-9]{1,19}"

    def to_python(self, value: str) -> int:
        number = int(value)
        if number > MAX_ID:
            raise ValueError("id out of range")
        return number

    def to_url(self, value: int) -> str:
        return str(value)


URL_TOO_LONG = f"The URL is over the {MAX_TARGET_BYTES:,}-byte limit: send fewer or shorter query parameters."
HEADER_TOO_LONG = "A request header line is over the server's limit."


def too_long_answer(path: str, detail: str = URL_TOO_LONG, code: str = "uri_too_long") -> tuple[bytes, bytes]:
    """(content type, body) of a 414 or 431: the API's JSON error under /api/, a short page elsewhere."""
    if path.startswith(API_PREFIX):
        return b"application/json", json.dumps({"error": code, "detail": detail}).encode()
    title = "URL too long" if code == "uri_too_long" else "Request header too long"
    page = (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title></head>\n'
            f'<body><h1>{title}</h1><p>{detail}</p><p><a href="/">Back to the home page</a></p></body></html>\n')
    return b"text/html; charset=utf-8", page.encode()


class RequestTargetLimit:
    """ASGI middleware: a 414 for a path plus query string over `limit` bytes, before Django parses it."""

    def __init__(self, app: Callable[..., Awaitable[None]], *, limit: int = MAX_TARGET_BYTES):
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("raw_path") or scope["path"].encode()
        if len(path) + len(scope.get("query_string", b"")) <= self.limit:
            await self.app(scope, receive, send)
            return
        content_type, body = too_long_answer(scope["path"])
        await send({"type": "http.response.start", "status": 414,
                    "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def answer_overlong_request_lines() -> None:
    """Make Twisted's HTTP server (under daphne) answer 414 to a request line longer than it reads.

    Twisted reads lines of at most 16 KiB and drops the connection on a longer one, without an answer;
    and it answers a bare 400 when the request line and headers together pass 16 KiB. Here the first
    answers a 414 (JSON for /api/), and the second limit is raised so that a request line under 16 KiB
    reaches `RequestTargetLimit`, which answers the 414 itself.
    """
    from twisted.web import http

    http.HTTPChannel.totalHeadersSize = max(http.HTTPChannel.totalHeadersSize, 2 * http.HTTPChannel.MAX_LENGTH)
    http.HTTPChannel.lineLengthExceeded = _line_too_long


def _line_too_long(channel: Any, line: bytes) -> None:
    """Answer 414 (or 431 for an over-long header line), then read and discard what the client still
    sends until it closes: closing with unread bytes would reset the connection and lose the answer."""
    parts = line.split(b" ", 2)
    is_request_line = len(parts) >= 2 and parts[0].isalpha() and parts[1].startswith(b"/")
    if is_request_line:
        status, (content_type, body) = b"414 URI Too Long", too_long_answer(parts[1].decode("latin-1"))
    else:
        status = b"431 Request Header Fields Too Large"
        path = (getattr(channel, "_path", None) or b"").decode("latin-1")  # the request line came before
        content_type, body = too_long_answer(path, HEADER_TOO_LONG, "header_too_long")
    channel.transport.write(
        b"HTTP/1.1 " + status + b"\r\nContent-Type: " + content_type + b"\r\nContent-Length: "
        + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body
    )
    channel.dataReceived = channel.lineReceived = lambda *args: None
    if hasattr(channel.transport, "loseWriteConnection"):
        channel.transport.loseWriteConnection()  # FIN after the answer; the client closes its side
        channel.setTimeout(10)  # and the idle timeout closes ours if it never does
    else:
        channel.loseConnection()
