"""The consortium REST API: API tokens for scripts, and the audit log (read and exported, both audited)."""

from typing import Any

from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.pagination import PageNumberPagination
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from consortium.api_base import StrictSerializer, errors
from consortium.models import AuditEvent
from consortium.selectors import audit_csv, audit_events_for
from consortium.services import api_token_obtain, audit_log_read, select_or_deny

AUDIT = ["audit"]


class TokenObtainApi(APIView):
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
    """Not strict: the same query string carries the paginator's `page` and `page_size`."""

    study = serializers.IntegerField(required=False, min_value=1, help_text="Only this study's events.")
    action = serializers.CharField(required=False, allow_blank=True, default="", max_length=100,
                                   help_text="Only actions starting with this, e.g. `studies.dpia.`.")

    def selector_kwargs(self) -> dict[str, Any]:
        return {"study_id": self.validated_data.get("study"), "action_prefix": self.validated_data["action"]}


class AuditPagination(PageNumberPagination):
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500


def _events(request: Request, via: str) -> tuple[Any, dict[str, Any]]:
    """The filtered log if the caller may read it; a refusal (403) is audited as `consortium.audit.<via>`."""
    query = AuditFilterSerializer(data=request.query_params)
    query.is_valid(raise_exception=True)
    filters = query.selector_kwargs()
    events = select_or_deny(request.user, f"consortium.audit.{via}", lambda: audit_events_for(request.user, **filters))
    return events, filters


class AuditEventListApi(APIView):
    pagination_class = AuditPagination

    class OutputSerializer(serializers.ModelSerializer):
        class Meta:
            model = AuditEvent
            ref_name = "AuditEventOutput"
            fields = ("seq", "created_at", "actor_kind", "actor_label", "action", "outcome", "object_type",
                      "object_id", "object_repr", "study_id", "site_id", "details", "prev_hash", "hash")
            read_only_fields = fields

    @extend_schema(tags=AUDIT, summary="The audit log, newest first (auditors, DPOs, consortium admins)",
                   parameters=[AuditFilterSerializer], responses={200: OutputSerializer(many=True), **errors(400)})
    def get(self, request: Request) -> Response:
        events, filters = _events(request, "api_view")
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(events, request, view=self)
        audit_log_read(actor=request.user, via="api_viewed", filters=filters, count=len(page))
        return paginator.get_paginated_response(self.OutputSerializer(page, many=True).data)


class AuditEventExportApi(APIView):
    @extend_schema(
        tags=AUDIT, operation_id="audit_events_export",
        summary="The audit log as CSV, every field the hash chain covers (the export is audited)",
        parameters=[AuditFilterSerializer],
        responses={(200, "text/csv"): OpenApiResponse(OpenApiTypes.STR, description="CSV, one event a row."),
                   **errors(400)},
    )
    def get(self, request: Request) -> HttpResponse:
        events, filters = _events(request, "api_export")
        rows = list(events.order_by("seq"))
        audit_log_read(actor=request.user, via="api_exported", filters=filters, count=len(rows))
        response = HttpResponse(audit_csv(rows), content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = 'attachment; filename="consortium-audit.csv"'
        return response
