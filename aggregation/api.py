"""The agent API (docs/agent-protocol.md): thin adapters over `aggregation.services`.

Authenticated by agent tokens only; the gate, inside each service, decides what the site may do."""

import json
import math
import re
from typing import Any

from django.conf import settings
from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from aggregation import selectors, services
from aggregation.audit_actions import AggregationAction
from aggregation.downloads import model_file_response
from consortium.api_base import AuditedRead, ConsortiumApi, IdField, StrictSerializer, UnauditedRead, errors
from consortium.api_errors import summarise
from consortium.audit.log import record_denial
from consortium.errors import DomainError, NotFound, PayloadTooLarge, ValidationFailed
from sites.authentication import AgentTokenAuthentication, IsAgent
from studies.models import Participation
from studies.selectors import agent_studies
from studies.services import dataset_register

AGENT = ["agent"]


class AgentApi(ConsortiumApi):
    authentication_classes = [AgentTokenAuthentication]
    permission_classes = [IsAgent]


class AgentMeApi(AgentApi):
    reads = UnauditedRead("Which site and token the agent acts as: no study data.")

    class OutputSerializer(serializers.Serializer):
        site = serializers.DictField()
        token = serializers.DictField()

        class Meta:
            ref_name = "AgentMeOutput"

    @extend_schema(tags=AGENT, responses={200: OutputSerializer, **errors()}, summary="Which site this agent acts for")
    def get(self, request: Request) -> Response:
        site, token = request.user.site, request.user.token
        return Response({"site": {"id": site.pk, "code": site.code, "name": site.name},
                         "token": {"prefix": token.prefix, "name": token.name, "created_at": token.created_at}})


class AgentRoundListApi(AgentApi):
    reads = UnauditedRead(
        "The agent's work list, polled every few seconds: the open rounds of the studies its own site takes "
        "part in, with the protocol that site agreed to. Auditing each poll would bury the log; the model "
        "download that follows is audited, as is every submission.")

    @extend_schema(tags=AGENT, responses={200: OpenApiTypes.OBJECT, **errors()},
                   summary="Open rounds this site may work on now")
    def get(self, request: Request) -> Response:
        return Response(selectors.open_rounds_for_site(request.user.site_id))


class AgentModelDownloadApi(AgentApi):
    reads = AuditedRead(AggregationAction.MODEL_DOWNLOADED, by_service=True)  # `model_download` records it

    @extend_schema(tags=AGENT, responses={(200, "application/octet-stream"): OpenApiTypes.BINARY,
                                          **errors(404, 409)},
                   summary="Download the round's global model (safetensors; audited)")
    def get(self, request: Request, round_id: int) -> HttpResponse:
        return model_file_response(*services.model_download(actor=request.user, round_id=round_id))


# Round and version numbers and example counts are stored in 32-bit columns; anything past that is malformed.
HEADER_INT_MAX = 2**31 - 1
# Metrics the agent sends: at most 4 KiB of JSON.
MAX_METRICS_CHARS = 4096


def _header_int(request: Request, name: str) -> int:
    raw = request.headers.get(name, "")
    # ASCII digits only: int() would also take "1_000", " 7 " and other scripts' digits.
    if not re.fullmatch(r"[0-9]{1,10}", raw) or int(raw) > HEADER_INT_MAX:
        raise ValidationFailed(f"Header {name} must be an integer from 0 to {HEADER_INT_MAX:,} (got {raw[:40]!r}).",
                               code="bad_header")
    return int(raw)


def _not_json(constant: str) -> None:
    raise ValueError(f"{constant} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 parses as infinity, which no JSON column stores
        raise ValueError(f"{text[:20]} is out of range")
    return value


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > 15:  # metrics count rows at most; a longer integer is no float either
        raise ValueError(f"{text[:20]} is out of range")
    return int(text)


def _metrics(request: Request) -> dict[str, Any]:
    raw = request.headers.get("X-Metrics", "{}")
    if len(raw) > MAX_METRICS_CHARS:
        raise ValidationFailed(f"Header X-Metrics is {len(raw):,} characters; at most {MAX_METRICS_CHARS:,}.",
                               code="bad_header")
    try:
        # NaN and Infinity are not JSON (nor storable as JSON); RecursionError: nesting past the parser's stack.
        metrics = json.loads(raw, parse_constant=_not_json, parse_float=_finite_float, parse_int=_bounded_int)
    except (ValueError, RecursionError):
        message = "Header X-Metrics must be a JSON object with finite numbers."
        raise ValidationFailed(message, code="bad_header") from None
    if not isinstance(metrics, dict):
        raise ValidationFailed("Header X-Metrics must be a JSON object.", code="bad_header")
    return metrics


def require_identity_encoding(request: Request) -> None:
    """The body is the safetensors bytes as they are: a compressed (or falsely labelled) body is refused,
    not read as if it were plain."""
    encoding = request.headers.get("Content-Encoding", "").strip().lower()
    if encoding not in ("", "identity"):
        shown = encoding if len(encoding) <= 40 else encoding[:40] + "…"
        raise ValidationFailed(f"Content-Encoding {shown!r} is not accepted: send the safetensors bytes "
                               "uncompressed, without a Content-Encoding header.", code="content_encoding")


def read_body(request: Request) -> bytes:
    """The upload, read no further than the limit (the ASGI middleware already refused larger bodies)."""
    limit = settings.MAX_UPDATE_BYTES
    if int(request.headers.get("Content-Length") or 0) > limit:
        raise PayloadTooLarge(f"The update is over the {limit:,}-byte limit.", code="too_large")
    data = request.stream.read(limit + 1) if request.stream is not None else b""
    if len(data) > limit:
        raise PayloadTooLarge(f"The update is over the {limit:,}-byte limit.", code="too_large")
    return data


UPDATE_HEADERS = [
    OpenApiParameter("Idempotency-Key", str, OpenApiParameter.HEADER, required=True),
    OpenApiParameter("X-Round", int, OpenApiParameter.HEADER, required=True),
    OpenApiParameter("X-Base-Version", int, OpenApiParameter.HEADER, required=True),
    OpenApiParameter("X-Num-Examples", int, OpenApiParameter.HEADER, required=True),
    OpenApiParameter("X-Metrics", str, OpenApiParameter.HEADER, description="JSON object of metrics"),
]


class AgentUpdateSubmitApi(AgentApi):
    class OutputSerializer(serializers.Serializer):
        update_id = serializers.IntegerField()
        round_id = serializers.IntegerField()
        sha256 = serializers.CharField()
        status = serializers.CharField()

        class Meta:
            ref_name = "AgentUpdateOutput"

    @extend_schema(tags=AGENT, parameters=UPDATE_HEADERS, request={"application/octet-stream": OpenApiTypes.BINARY},
                   responses={201: OutputSerializer, 200: OutputSerializer, **errors(400, 404, 409)},
                   summary="Submit the site's trained weights (safetensors)")
    def post(self, request: Request, round_id: int) -> Response:
        try:
            require_identity_encoding(request)
            key = request.headers.get("Idempotency-Key", "").strip()
            if not key or len(key) > 100:
                raise ValidationFailed("Send an Idempotency-Key header (at most 100 characters).", code="bad_header")
            parsed = {"body": read_body(request), "round_number": _header_int(request, "X-Round"),
                      "base_version": _header_int(request, "X-Base-Version"),
                      "num_examples": _header_int(request, "X-Num-Examples"), "metrics": _metrics(request)}
        except DomainError as exc:
            # Refused before the service runs: audited all the same, as the service audits its refusals.
            record_denial(actor=request.user, action=AggregationAction.UPDATE_SUBMIT, reason=exc.message,
                          site=request.user.site_id, details={"code": exc.code})
            raise
        update, created = services.update_submit(actor=request.user, round_id=round_id, idempotency_key=key, **parsed)
        body = {"update_id": update.pk, "round_id": update.round_id, "sha256": update.sha256, "status": "accepted"}
        return Response(body, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)


class AgentStatisticsSubmitApi(AgentApi):
    class InputSerializer(StrictSerializer):
        features = serializers.ListField(child=serializers.CharField(), min_length=1)
        count = serializers.IntegerField(min_value=0, max_value=HEADER_INT_MAX)
        sum = serializers.ListField(child=serializers.FloatField())
        sum_sq = serializers.ListField(child=serializers.FloatField())

        class Meta:
            ref_name = "AgentStatisticsInput"

    @extend_schema(tags=AGENT, request=InputSerializer, responses={201: OpenApiTypes.OBJECT, **errors(400, 404, 409)},
                   summary="Submit the site's feature counts, sums and sums of squares")
    def post(self, request: Request, round_id: int) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        row = services.statistics_submit(
            actor=request.user, round_id=round_id, features=data.validated_data["features"],
            count=data.validated_data["count"], sums=data.validated_data["sum"],
            sums_of_squares=data.validated_data["sum_sq"],
        )
        return Response({"round_id": row.round_id, "status": "accepted"}, status=status.HTTP_201_CREATED)


class AgentEvaluationSubmitApi(AgentApi):
    class InputSerializer(StrictSerializer):
        round = serializers.IntegerField(help_text="The round number (`number` in the round list).")
        base_version = serializers.IntegerField(help_text="The model version evaluated (X-Model-Version).")
        metrics = serializers.DictField(help_text='{"val_loss", "val_accuracy", "val_auc", "val_examples", '
                                                  '"score_histogram": {"positives": [100 counts], '
                                                  '"negatives": [100 counts]}}')

        class Meta:
            ref_name = "AgentEvaluationInput"

    @extend_schema(tags=AGENT, request=InputSerializer, responses={201: OpenApiTypes.OBJECT, **errors(400, 404, 409)},
                   summary="Submit the site's evaluation of the final model (metrics only; an evaluation round)")
    def post(self, request: Request, round_id: int) -> Response:
        data = self.InputSerializer(data=request.data)
        if not data.is_valid():
            # Refused before the service runs: audited all the same, as the service audits its refusals.
            record_denial(actor=request.user, action=AggregationAction.EVALUATION_SUBMIT, reason=summarise(data.errors),
                          site=request.user.site_id, details={"code": "validation_failed"})
            raise serializers.ValidationError(data.errors)
        row = services.evaluation_submit(actor=request.user, round_id=round_id,
                                         round_number=data.validated_data["round"],
                                         base_version=data.validated_data["base_version"],
                                         metrics=data.validated_data["metrics"])
        return Response({"round_id": row.round_id, "status": "accepted"}, status=status.HTTP_201_CREATED)


class AgentRoundDeclineApi(AgentApi):
    class InputSerializer(StrictSerializer):
        reason = serializers.CharField(help_text="Why the site's policy declines the round, in plain words.")

        class Meta:
            ref_name = "AgentDeclineInput"

    @extend_schema(tags=AGENT, request=InputSerializer, responses={201: OpenApiTypes.OBJECT, **errors(400, 404, 409)},
                   summary="Decline a round under the site's own policy (recorded and shown to the PI)")
    def post(self, request: Request, round_id: int) -> Response:
        data = self.InputSerializer(data=request.data)
        if not data.is_valid():
            record_denial(actor=request.user, action=AggregationAction.ROUND_DECLINE, reason=summarise(data.errors),
                          site=request.user.site_id, details={"code": "validation_failed"})
            raise serializers.ValidationError(data.errors)
        decline = services.round_decline(actor=request.user, round_id=round_id, reason=data.validated_data["reason"])
        return Response({"round_id": decline.round_id, "status": "declined"}, status=status.HTTP_201_CREATED)


class AgentStudyListApi(AgentApi):
    reads = UnauditedRead(
        "The agent's list of the studies its own site takes part in, with the protocol that site reviews and the "
        "hash of the data set summary it registered; read at start and now and then to register again. The "
        "registration that follows is audited, as is every round's work.")

    @extend_schema(tags=AGENT, responses={200: OpenApiTypes.OBJECT, **errors()},
                   summary="Studies this site takes part in, with their protocol and its hash")
    def get(self, request: Request) -> Response:
        return Response(agent_studies(request.user.site_id))


class AgentDatasetRegisterApi(AgentApi):
    @extend_schema(tags=AGENT, request=OpenApiTypes.OBJECT,
                   responses={201: OpenApiTypes.OBJECT, 200: OpenApiTypes.OBJECT, **errors(400, 404, 409)},
                   summary="Register this site's data set summary for a study (counts only, never rows; audited)")
    def post(self, request: Request, study_id: int) -> Response:
        """Body: {"rows", "label_column", "label": {"present", "positives", "negatives", "other"}, "features":
        [{"name", "type", "missing"}]} (consortium.federated.dataset_schema). The answer carries the schema
        report: every mismatch with the protocol, feature by feature (empty: it matches)."""
        done = dataset_register(actor=request.user, study_id=study_id, summary=request.data)
        body = {"study_id": study_id, "registration_id": done.registration.pk, "rows": done.registration.rows,
                "summary_sha256": done.registration.summary_sha256, "matches_protocol": not done.mismatches,
                "mismatches": done.mismatches}
        return Response(body, status=status.HTTP_201_CREATED if done.created else status.HTTP_200_OK)


class AgentLedgerQuerySerializer(serializers.Serializer):
    study = IdField(help_text="The study whose rows to list (this site's own rows only).")


class AgentLedgerApi(AgentApi):
    reads = AuditedRead(AggregationAction.CONTRIBUTIONS_READ)
    query_serializer = AgentLedgerQuerySerializer

    @extend_schema(tags=AGENT, responses={200: OpenApiTypes.OBJECT, **errors(400, 404)},
                   summary="This site's contributions to a study, as the coordinator records them (audited)")
    def get(self, request: Request) -> Response:
        study_id, site_id = self.query["study"], request.user.site_id
        if not Participation.objects.filter(study_id=study_id, site_id=site_id).exists():
            raise NotFound("This site takes no part in that study.")
        self.audit_read(study=study_id, site=site_id)
        return Response(selectors.site_contributions(study_id, site_id))
