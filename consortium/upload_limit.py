"""ASGI middleware that refuses oversized uploads before Django reads them.

Under ASGI, Django reads a whole request body (spooling large ones to disk) before a view runs, so
a limit checked in the view comes too late. This middleware answers 413 from the Content-Length
header alone, and otherwise counts the streamed bytes and answers 413 as soon as they pass the limit,
holding at most `limit` bytes in memory. Only paths under `prefix` are limited.

Each refusal is reported to `on_refused` (the deployed application audits it, naming the agent when
its token identifies one) before the 413 is sent; the body is never read for that.
"""

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


@dataclass(frozen=True)
class RefusedUpload:
    """What is known of a refused upload without its body."""

    method: str
    path: str
    authorization: str  # the Authorization header as sent: it may identify the agent (never recorded)
    size: int  # bytes: the declared Content-Length, or those received when the count passed the limit
    declared: bool  # True when `size` is the Content-Length header
    limit: int


OnRefused = Callable[[RefusedUpload], Awaitable[None]]


class UploadSizeLimit:
    def __init__(self, app: Callable[..., Awaitable[None]], *, limit: int, prefix: str,
                 on_refused: OnRefused | None = None):
        self.app, self.limit, self.prefix, self.on_refused = app, limit, prefix, on_refused

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Every method: Django would spool a PUT's or PATCH's body to disk before answering 405.
        if scope["type"] != "http" or not scope["path"].startswith(self.prefix):
            await self.app(scope, receive, send)
            return
        declared = self._content_length(scope)
        if declared is not None and declared > self.limit:
            await self._refuse(scope, send, size=declared, declared=True)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            size += len(message.get("body", b""))
            if size > self.limit:
                await self._refuse(scope, send, size=size, declared=False)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay(b"".join(chunks), receive), send)

    @staticmethod
    def _header(scope: Scope, wanted: bytes) -> bytes | None:
        for name, value in scope.get("headers", []):
            if name.lower() == wanted:
                return value
        return None

    def _content_length(self, scope: Scope) -> int | None:
        value = self._header(scope, b"content-length")
        try:
            return int(value) if value is not None else None
        except ValueError:
            return None

    async def _refuse(self, scope: Scope, send: Send, *, size: int, declared: bool) -> None:
        if self.on_refused is not None:
            authorization = (self._header(scope, b"authorization") or b"").decode("latin-1")
            await self.on_refused(RefusedUpload(method=scope.get("method", ""), path=scope["path"],
                                                authorization=authorization, size=size, declared=declared,
                                                limit=self.limit))
        body = json.dumps({"error": "too_large", "detail": f"The upload is over the {self.limit:,}-byte limit."})
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body.encode()})


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive() that hands the buffered body to the app once, then defers to the real one."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
