"""The coordinator's agent API over HTTP (standard library only), as in docs/agent-protocol.md.

Network errors, timeouts, 429 and 5xx answers are retried with bounded exponential backoff and jitter.
Any other 4xx is raised at once as an `ApiError` carrying the server's own `detail`: retrying a refusal
blindly would only repeat it. Imports no Django.
"""

from __future__ import annotations

import hashlib
import http.client
import ipaddress
import json
import random
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

RETRYABLE_STATUSES = {429, 500, 502, 503, 504}
# 409 codes meaning "this site's update for the round is already in": the work is done, not refused.
ALREADY_SUBMITTED_CODES = {"duplicate_statistics", "already_submitted", "duplicate", "duplicate_update",
                           "duplicate_evaluation"}


class AgentError(Exception):
    """Anything that stops the agent from doing a piece of work; the message is meant for the site's staff."""


class CoordinatorUnreachable(AgentError):
    """The coordinator did not answer usefully even after every retry."""


class ApiError(AgentError):
    """A 4xx answer from the coordinator, with its JSON error code and detail."""

    def __init__(self, status: int, code: str, detail: str, path: str, body: Mapping[str, Any] | None = None):
        super().__init__(f"The coordinator refused {path} (HTTP {status}, {code}): {detail}")
        self.status, self.code, self.detail, self.path = status, code, detail, path
        self.body = dict(body or {})


class TokenRefused(ApiError):
    """401: the agent token is unknown, revoked or mistyped. Nothing will work until a site admin issues a new one."""

    def __init__(self, status: int, code: str, detail: str, path: str, body: Mapping[str, Any] | None = None):
        super().__init__(status, code, detail, path, body)
        self.args = (f"The coordinator refused the agent token (HTTP {status}): {detail} "
                     "Ask a site admin to create a new token in the browser and restart the agent with it.",)


class ModelIntegrityError(AgentError):
    """The downloaded model's bytes do not match the SHA-256 the coordinator announced."""


@dataclass(frozen=True)
class DownloadedModel:
    data: bytes
    sha256: str
    version: int


@dataclass(frozen=True)
class Response:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body.decode("utf-8")) if self.body else None


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Never follow redirects: the bearer token must not travel to another address behind our back."""

    def redirect_request(self, req: urllib.request.Request, fp: Any, code: int, msg: str, headers: Any,
                         newurl: str) -> None:
        return None


@dataclass(frozen=True)
class Transport:
    """How the agent reaches the coordinator. Plain http carries the bearer token and the weights unencrypted,
    so it is refused except to this machine (loopback) unless the site says otherwise. `ca_bundle` trusts a
    private CA; `client_cert` (+ `client_key`) proves the agent's identity to a server that asks (mutual TLS)."""

    ca_bundle: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    allow_insecure_http: bool = False

    def check(self, server: str) -> None:
        if not server.startswith(("http://", "https://")):
            raise AgentError(f"The server address {server!r} must start with https:// (or http:// to this machine).")
        host = urllib.parse.urlsplit(server).hostname or ""
        if server.startswith("http://") and not (self.allow_insecure_http or is_loopback(host)):
            raise AgentError(f"Refusing plain http to {host}: the agent token and the model weights would travel "
                             "unencrypted. Use https://, or pass --allow-insecure-http if this network is trusted.")

    def ssl_context(self) -> ssl.SSLContext:
        try:
            context = ssl.create_default_context(cafile=self.ca_bundle)
            if self.client_cert:
                context.load_cert_chain(self.client_cert, self.client_key)
        except (OSError, ssl.SSLError) as exc:
            raise AgentError(f"Cannot set up TLS: {exc}. Check --ca-bundle, --client-cert and --client-key.") from exc
        return context


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class AgentClient:
    """One coordinator, one token. `sleep` and `rng` are injectable so tests need not wait.

    `token` may be a callable that reads it (e.g. from a file): when the coordinator refuses the token, the
    client reads it again and, if the site has put a new one there (a rotation), retries once with it."""

    def __init__(self, server: str, token: str | Callable[[], str], *, timeout: float = 30.0, max_attempts: int = 5,
                 backoff_base: float = 0.5, backoff_cap: float = 30.0,
                 sleep: Callable[[float], None] = time.sleep, rng: random.Random | None = None,
                 transport: Transport | None = None):
        transport = transport or Transport()
        transport.check(server)
        self.server = server.rstrip("/")
        self._token_source = token if callable(token) else None
        self.token = token() if callable(token) else token
        self.timeout = timeout
        self.max_attempts = max(1, max_attempts)
        self.backoff_base, self.backoff_cap = backoff_base, backoff_cap
        self.sleep = sleep
        self.rng = rng or random.Random()
        handlers: list[Any] = [_NoRedirect]
        if self.server.startswith("https://"):
            handlers.append(urllib.request.HTTPSHandler(context=transport.ssl_context()))
        self._opener = urllib.request.build_opener(*handlers)

    # --- the protocol -------------------------------------------------------------------------------------------

    def me(self) -> dict[str, Any]:
        return self.request("GET", "/api/agent/me/").json()

    def rounds(self) -> list[dict[str, Any]]:
        return self.request("GET", "/api/agent/rounds/").json() or []

    def download_model(self, round_id: int) -> DownloadedModel:
        """The round's base model; refused unless its bytes hash to the announced X-Model-SHA256."""
        response = self.request("GET", f"/api/agent/rounds/{round_id}/model/")
        announced = (response.headers.get("x-model-sha256") or "").strip().lower()
        actual = hashlib.sha256(response.body).hexdigest()
        if not announced:
            raise ModelIntegrityError(f"The model for round {round_id} came without an X-Model-SHA256 header; "
                                      "it was not used.")
        if announced != actual:
            raise ModelIntegrityError(f"The model for round {round_id} is corrupt or altered: its SHA-256 is "
                                      f"{actual}, the coordinator announced {announced}. It was not used.")
        try:
            version = int(response.headers.get("x-model-version", ""))
        except ValueError:
            raise AgentError(f"The model for round {round_id} came without a valid X-Model-Version header.") from None
        return DownloadedModel(data=response.body, sha256=actual, version=version)

    def submit_update(self, round_id: int, body: bytes, *, round_number: int, base_version: int,
                      num_examples: int, metrics: Mapping[str, Any], idempotency_key: str | None = None
                      ) -> dict[str, Any]:
        """POST the trained weights. Every retry carries the same Idempotency-Key, so the server stores one update.

        A 409 whose code says the site's update is already in counts as success (`status` "already_submitted").
        """
        headers = {
            "Content-Type": "application/octet-stream",
            "Idempotency-Key": idempotency_key or new_idempotency_key(),
            "X-Round": str(round_number),
            "X-Base-Version": str(base_version),
            "X-Num-Examples": str(num_examples),
            "X-Metrics": json.dumps(dict(metrics), allow_nan=False, separators=(",", ":")),
        }
        try:
            return self.request("POST", f"/api/agent/rounds/{round_id}/update/", body=body, headers=headers).json()
        except ApiError as exc:
            if exc.status == 409 and _is_already_submitted(exc):
                return {"round_id": round_id, "status": "already_submitted", "detail": exc.detail}
            raise

    def submit_statistics(self, round_id: int, statistics: Mapping[str, Any]) -> dict[str, Any]:
        body = json.dumps(dict(statistics), allow_nan=False).encode("utf-8")
        try:
            return self.request("POST", f"/api/agent/rounds/{round_id}/statistics/", body=body,
                                headers={"Content-Type": "application/json"}).json() or {}
        except ApiError as exc:
            if exc.status == 409 and _is_already_submitted(exc):
                return {"round_id": round_id, "status": "already_submitted", "detail": exc.detail}
            raise

    def submit_evaluation(self, round_id: int, *, round_number: int, base_version: int,
                          metrics: Mapping[str, Any]) -> dict[str, Any]:
        """POST the metrics of the round's model on the validation split (an evaluation round: no weights).

        A 409 whose code says the site's evaluation is already in counts as success ("already_submitted")."""
        body = json.dumps({"round": round_number, "base_version": base_version, "metrics": dict(metrics)},
                          allow_nan=False, separators=(",", ":")).encode("utf-8")
        try:
            return self.request("POST", f"/api/agent/rounds/{round_id}/evaluation/", body=body,
                                headers={"Content-Type": "application/json"}).json() or {}
        except ApiError as exc:
            if exc.status == 409 and _is_already_submitted(exc):
                return {"round_id": round_id, "status": "already_submitted", "detail": exc.detail}
            raise

    def decline_round(self, round_id: int, reason: str) -> dict[str, Any]:
        """Tell the coordinator this site declines the round under its own policy (recorded, shown to the PI)."""
        body = json.dumps({"reason": reason}).encode("utf-8")
        return self.request("POST", f"/api/agent/rounds/{round_id}/decline/", body=body,
                            headers={"Content-Type": "application/json"}).json() or {}

    def studies(self) -> list[dict[str, Any]]:
        """The studies this site takes part in, with their protocol, its hash and the hash of the data set summary
        the coordinator holds for this site (null: none registered)."""
        return self.request("GET", "/api/agent/studies/").json() or []

    def register_dataset(self, study_id: int, summary: Mapping[str, Any]) -> dict[str, Any]:
        """Register the summary of this site's data set for a study (counts only); the answer carries the schema
        report (`matches_protocol`, `mismatches`)."""
        body = json.dumps(dict(summary), allow_nan=False).encode("utf-8")
        return self.request("POST", f"/api/agent/studies/{study_id}/dataset/", body=body,
                            headers={"Content-Type": "application/json"}).json() or {}

    def ledger(self, study_id: int) -> list[dict[str, Any]]:
        """This site's rows of the study's contribution ledger, as the coordinator records them."""
        return self.request("GET", f"/api/agent/ledger/?study={study_id}").json() or []

    # --- transport ----------------------------------------------------------------------------------------------

    def request(self, method: str, path: str, *, body: bytes | None = None,
                headers: Mapping[str, str] | None = None) -> Response:
        """One logical request: retried on network errors, timeouts, 429 and 5xx; other 4xx raised at once."""
        last_problem = ""
        for attempt in range(self.max_attempts):
            if attempt:
                self.sleep(self._delay(attempt))
            try:
                response = self._send(method, path, body, headers or {})
            except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
                reason = getattr(exc, "reason", exc)
                if isinstance(reason, ssl.SSLError):
                    # A certificate problem does not go away by retrying: say so now, in words the site can act on.
                    raise AgentError(f"TLS with {self.server} failed: {reason}. Check the server's certificate "
                                     "(--ca-bundle) and, if the server asks for one, the agent's (--client-cert, "
                                     "--client-key).") from exc
                last_problem = f"network error: {reason}"
                continue
            if response.status in RETRYABLE_STATUSES:
                last_problem = f"HTTP {response.status}"
                continue
            if response.status == 401 and self._reread_token():
                return self.request(method, path, body=body, headers=headers)
            if response.status >= 300:
                raise _api_error(response, method, path)
            return response
        raise CoordinatorUnreachable(f"The coordinator at {self.server} did not answer {method} {path} after "
                                     f"{self.max_attempts} attempts (last: {last_problem}).")

    def _reread_token(self) -> bool:
        """After a 401: has the site put a new token where this one came from? Then use it from now on."""
        if self._token_source is None:
            return False
        fresh = self._token_source().strip()
        if not fresh or fresh == self.token:
            return False
        self.token = fresh
        return True

    def _delay(self, attempt: int) -> float:
        """Exponential backoff, capped, with 'equal jitter': between half and all of the nominal delay."""
        nominal = min(self.backoff_cap, self.backoff_base * 2 ** (attempt - 1))
        return nominal / 2 + self.rng.uniform(0, nominal / 2)

    def _send(self, method: str, path: str, body: bytes | None, headers: Mapping[str, str]) -> Response:
        request = urllib.request.Request(self.server + path, data=body, method=method,
                                         headers={"Authorization": f"Bearer {self.token}", "Accept": "*/*",
                                                  **headers})
        try:
            with self._opener.open(request, timeout=self.timeout) as raw:
                return Response(raw.status, _lowered(raw.headers.items()), raw.read())
        except urllib.error.HTTPError as error:
            with error:
                return Response(error.code, _lowered(error.headers.items()), error.read())


def _lowered(items: Any) -> dict[str, str]:
    """Header names are case-insensitive (ASGI servers send them in lower case): keep them lower-cased."""
    return {name.lower(): value for name, value in items}


def new_idempotency_key() -> str:
    return str(uuid.uuid4())


def _is_already_submitted(error: ApiError) -> bool:
    return error.code in ALREADY_SUBMITTED_CODES or "already submitted" in error.detail.lower()


def _api_error(response: Response, method: str, path: str) -> ApiError:
    try:
        body = response.json()
    except (ValueError, UnicodeDecodeError):
        body = None
    if not isinstance(body, dict):
        body = {}
    code = str(body.get("error") or "error")
    detail = str(body.get("detail") or _plain_status(response))
    where = f"{method} {path}"
    if response.status == 401:
        return TokenRefused(response.status, code, detail, where, body)
    return ApiError(response.status, code, detail, where, body)


def _plain_status(response: Response) -> str:
    if 300 <= response.status < 400:
        return (f"it answered with a redirect to {response.headers.get('location', 'another address')}; "
                "use that address as --server.")
    return f"it gave no explanation ({http.client.responses.get(response.status, 'unknown status')})."
