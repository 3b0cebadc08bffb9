"""The agent API of secure-aggregation rounds (docs/secure-aggregation.md): thin adapters over
`aggregation.services.secure`, which asks the gate and audits every message, accepted or refused."""

import json
import re
from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response

from aggregation.api import AGENT, AgentApi, read_body, require_identity_encoding
from aggregation.audit_actions import AggregationAction
from aggregation.services import secure
from consortium.api_base import UnauditedRead, errors
from consortium.audit.log import record_denial
from consortium.errors import DomainError, ValidationFailed

# The masked-with header names site codes: a few hundred at most, each short.
MAX_MASKED_WITH_CHARS = 64 * 1024


class AgentSecureStateApi(AgentApi):
    reads = UnauditedRead(
        "Polled by the agent at each step of a secure round: the stage, the round's public setup and what the "
        "stage needs from this site (public keys, shares encrypted to it, the list of survivors). No study data; "
        "every message a site sends is audited.")

    @extend_schema(tags=AGENT, responses={200: OpenApiTypes.OBJECT, **errors(404)},
                   summary="The secure round's stage and what it needs from this site")
    def get(self, request: Request, round_id: int) -> Response:
        return Response(secure.secure_state(actor=request.user, round_id=round_id))


def _accepted(message: Any) -> Response:
    return Response({"round_id": message.round_id, "stage": message.stage, "status": "accepted"},
                    status=status.HTTP_201_CREATED)


class _JsonStageApi(AgentApi):
    service: Any = None

    def post(self, request: Request, round_id: int) -> Response:
        return _accepted(type(self).service(actor=request.user, round_id=round_id, payload=request.data))


STAGE_SCHEMA = {"request": OpenApiTypes.OBJECT, "responses": {201: OpenApiTypes.OBJECT, **errors(400, 403, 404, 409)}}


class AgentSecureKeysApi(_JsonStageApi):
    service = staticmethod(secure.secure_keys_submit)

    @extend_schema(tags=AGENT, summary="Stage 1: the site's two public keys for the round", **STAGE_SCHEMA)
    def post(self, request: Request, round_id: int) -> Response:
        return super().post(request, round_id)


class AgentSecureSharesApi(_JsonStageApi):
    service = staticmethod(secure.secure_shares_submit)

    @extend_schema(tags=AGENT, summary="Stage 2: the commitment and the shares encrypted to each neighbour",
                   **STAGE_SCHEMA)
    def post(self, request: Request, round_id: int) -> Response:
        return super().post(request, round_id)


class AgentSecureUnmaskApi(_JsonStageApi):
    service = staticmethod(secure.secure_unmask_submit)

    @extend_schema(tags=AGENT, summary="Stage 4: the shares that remove the masks of the sum", **STAGE_SCHEMA)
    def post(self, request: Request, round_id: int) -> Response:
        return super().post(request, round_id)


MASKED_HEADERS = [
    OpenApiParameter("X-SHA256", str, OpenApiParameter.HEADER, required=True,
                     description="SHA-256 (hex) of the body"),
    OpenApiParameter("X-Masked-With", str, OpenApiParameter.HEADER, required=True,
                     description="JSON list of the neighbours' site codes the input was masked with"),
]


class AgentSecureMaskedInputApi(AgentApi):
    @extend_schema(tags=AGENT, parameters=MASKED_HEADERS, request={"application/octet-stream": OpenApiTypes.BINARY},
                   responses={201: OpenApiTypes.OBJECT, **errors(400, 403, 404, 409)},
                   summary="Stage 3: the site's masked, quantised change to the model (safetensors, one uint32 "
                           "tensor)")
    def post(self, request: Request, round_id: int) -> Response:
        try:
            require_identity_encoding(request)
            digest = request.headers.get("X-SHA256", "").strip().lower()
            if not re.fullmatch(r"[0-9a-f]{64}", digest):
                raise ValidationFailed("Header X-SHA256 must be the body's SHA-256 in hex.", code="bad_header")
            parsed = {"body": read_body(request), "sha256": digest, "masked_with": _masked_with(request)}
        except DomainError as exc:
            # Refused before the service runs: audited all the same, as the service audits its refusals.
            record_denial(actor=request.user, action=AggregationAction.SECURE_SUBMIT, reason=exc.message,
                          site=request.user.site_id, details={"code": exc.code, "round_id": round_id})
            raise
        return _accepted(secure.secure_masked_input_submit(actor=request.user, round_id=round_id, **parsed))


def _masked_with(request: Request) -> Any:
    raw = request.headers.get("X-Masked-With", "")
    if not raw or len(raw) > MAX_MASKED_WITH_CHARS:
        raise ValidationFailed("Header X-Masked-With must be a JSON list of site codes.", code="bad_header")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        raise ValidationFailed("Header X-Masked-With must be a JSON list of site codes.", code="bad_header") from None
