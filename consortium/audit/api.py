"""The audit app's REST API: API tokens for scripts, and the audit log (read and exported, both audited)."""

from typing import Any

from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.pagination import PageNumberPagination
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response

from consortium.api_base import AuditedRead, ConsortiumApi, IdField, StrictSerializer, errors
from consortium.audit.exports import EXPORT_COLUMNS
from consortium.audit.log import export_record
from consortium.audit.models import AuditEvent
from consortium.audit.selectors import audit_csv, audit_events_for
from consortium.audit.services import api_token_obtain, select_or_deny
from consortium.audit_actions import ConsortiumAction
from consortium.request_limits import MAX_ID
from consortium.web import csv_attachment

AUDIT = ["audit"]


class TokenObtainApi(ConsortiumApi):
    """Scripts trade a username and password for a token, then send `Authorization: Token <key>`."""

    authentication_classes: list = []
    permission_classes = [AllowAny]

    class InputSerializer(StrictSerializer):
        username = serializers.CharField()
        password = serializers.CharField(style={"input_type": "password"}, trim_whitespace=False)

        class Meta:
            ref_name = "TokenObtainInput"

    class OutputSerializer(serializers.Serializer):
        token = serializers.CharField(help_text="Send as `Authorization: Token <token>`.")

        class Meta:
            ref_name = "TokenOutput"

    class LockedOutSerializer(serializers.Serializer):
        error = serializers.CharField(help_text="`locked_out`")
        detail = serializers.CharField()
        retry_after = serializers.IntegerField(help_text="Seconds to wait, as in the Retry-After header.")

        class Meta:
            ref_name = "LockedOut"

    @extend_schema(tags=["auth"], summary="Obtain the API token for a username and password", auth=[],
                   request=InputSerializer, responses={
                       200: OutputSerializer, **errors(400, public=True),
                       429: OpenApiResponse(LockedOutSerializer, description=(
                           "Too many failed logins for this username or from this address (LOGIN_FAILURE_LIMIT "
                           "per LOGIN_LOCKOUT_MINUTES): refused without checking the password until the time "
                           "in `detail`; `Retry-After` gives the seconds."))})
    def post(self, request: Request) -> Response:
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        # The Django request: django-axes marks it when the login is locked out, and its middleware answers 429.
        token = api_token_obtain(request=request._request, **serializer.validated_data)
        return Response(self.OutputSerializer({"token": token.key}).data)


class AuditFilterSerializer(serializers.Serializer):
    """The audit log's filters (the export's query parameters)."""

    study = IdField(required=False, help_text="Only this study's events.")
    action = serializers.CharField(required=False, allow_blank=True, default="", max_length=100,
                                   help_text="Only actions starting with this, e.g. `studies.dpia.`.")


class AuditPagination(PageNumberPagination):
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500


class AuditListQuerySerializer(AuditFilterSerializer):
    """The filters, and the paginator's `page` and `page_size`."""

    page = serializers.IntegerField(required=False, min_value=1, max_value=MAX_ID, help_text="Page number, from 1.")
    page_size = serializers.IntegerField(required=False, min_value=1, max_value=AuditPagination.max_page_size,
                                         help_text="Events a page (default 50).")


def _events(request: Request, query: dict[str, Any], via: str) -> tuple[Any, dict[str, Any]]:
    """The filtered log if the caller may read it; a refusal (403) is audited as `consortium.audit.<via>`."""
    filters = {"study_id": query.get("study"), "action_prefix": query.get("action", "")}
    events = select_or_deny(request.user, f"consortium.audit.{via}", lambda: audit_events_for(request.user, **filters))
    return events, filters


class AuditEventOutputSerializer(serializers.ModelSerializer):
    """An event exactly as the chain hashed it, then its hash (the export columns): `created_at` in UTC to
    the microsecond, `details` as stored. Anyone can recompute the chain from these rows."""

    actor_user_id = serializers.IntegerField(read_only=True, allow_null=True)
    created_at = serializers.CharField(read_only=True, help_text="UTC, ISO 8601 to the microsecond, as hashed.")

    class Meta:
        model = AuditEvent
        ref_name = "AuditEventOutput"
        fields = EXPORT_COLUMNS
        read_only_fields = fields

    def to_representation(self, event: AuditEvent) -> dict[str, Any]:
        return export_record(event)


class AuditEventListApi(ConsortiumApi):
    reads = AuditedRead(ConsortiumAction.AUDIT_API_VIEWED)
    query_serializer = AuditListQuerySerializer
    pagination_class = AuditPagination

    @extend_schema(tags=AUDIT, summary="The audit log, newest first (auditors, DPOs, consortium admins)",
                   responses={200: AuditEventOutputSerializer(many=True), **errors(400)})
    def get(self, request: Request) -> Response:
        events, filters = _events(request, self.query, "api_view")
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(events, request, view=self)
        self.audit_read(study=filters["study_id"], filters=filters, events=len(page))
        return paginator.get_paginated_response(AuditEventOutputSerializer(page, many=True).data)


class AuditEventExportApi(ConsortiumApi):
    reads = AuditedRead(ConsortiumAction.AUDIT_API_EXPORTED)
    query_serializer = AuditFilterSerializer

    @extend_schema(
        tags=AUDIT, operation_id="audit_events_export",
        summary="The audit log as CSV, every field the hash chain covers (the export is audited)",
        responses={(200, "text/csv"): OpenApiResponse(OpenApiTypes.STR, description=(
            "CSV, one event a row, columns as in the JSON list. A cell starting with `'` had it added "
            "(formula protection): remove it before recomputing the chain.")), **errors(400)},
    )
    def get(self, request: Request) -> HttpResponse:
        events, filters = _events(request, self.query, "api_export")
        rows = list(events.order_by("seq"))
        self.audit_read(study=filters["study_id"], filters=filters, events=len(rows))
        return csv_attachment(audit_csv(rows), "consortium-audit.csv")
