"""Plumbing every API module shares: the base view (strict query parameters, audited reads of study
data), strict input parsing, bounded ids and aware datetimes.

API classes stay thin (parse, call a service or selector, serialize); what is here only parses
input or records that something was read, never decides anything a service decides.
"""

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar

from django.core.exceptions import ImproperlyConfigured
from django.db import transaction
from django.http import HttpResponse
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.plumbing import get_doc
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema_field, inline_serializer
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.views import APIView

from consortium.audit.services import study_data_read
from consortium.errors import ValidationFailed
from consortium.request_limits import MAX_ID


class StrictMixin:
    """Refuses fields the serializer does not know, so a typo is a clear 400 rather than a silent no-op."""

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(getattr(self, "initial_data", None) or {}) - set(self.fields))
        if unknown:
            raise serializers.ValidationError(f"Unknown fields: {', '.join(unknown)}.")
        return super().validate(attrs)


class StrictSerializer(StrictMixin, serializers.Serializer):
    pass


@extend_schema_field(OpenApiTypes.DATETIME)
class AwareDateTimeField(serializers.DateTimeField):
    """An ISO 8601 moment with its UTC offset. A naive one is refused: expiry is exact to the second
    across time zones, and guessing the zone would move it by hours."""

    default_error_messages = {
        "naive": "Give the UTC offset too (ISO 8601, e.g. 2026-06-30T23:59:59+02:00 or ...Z).",
    }

    def to_internal_value(self, value: Any) -> datetime:
        if isinstance(value, str):
            try:
                parsed = parse_datetime(value.strip())
            except ValueError:
                parsed = None
            if parsed is not None and timezone.is_naive(parsed):
                self.fail("naive")
        elif isinstance(value, datetime) and timezone.is_naive(value):
            self.fail("naive")
        return super().to_internal_value(value)


class ReasonInputSerializer(StrictSerializer):
    # Blank passes parsing on purpose: the service says a reason is needed, and audits the refusal.
    reason = serializers.CharField(allow_blank=True,
                                   help_text="Why; recorded in the audit log and shown to the people concerned.")


class OptionalReasonInputSerializer(StrictSerializer):
    reason = serializers.CharField(required=False, allow_blank=True, default="")


ErrorSerializer = inline_serializer(
    name="Error",
    fields={
        "error": serializers.CharField(help_text="Machine-readable code, e.g. not_found, forbidden."),
        "detail": serializers.CharField(help_text="A sentence saying what went wrong."),
        "fields": serializers.DictField(required=False, help_text="Per-field messages of a refused input."),
        "checks": serializers.ListField(child=serializers.DictField(), required=False,
                                        help_text="The gate's checks, when the gate refused."),
    },
)

# Every endpoint answers these; `errors(...)` adds the ones a given endpoint may return.
_ERROR_TEXT = {
    400: "The input is not valid.",
    401: "Not authenticated (or the token is not valid).",
    403: "Authenticated, but not allowed to do this.",
    404: "No such object, or the caller may not see it.",
    409: "The object's current state does not allow this.",
}


def errors(*codes: int, public: bool = False) -> dict[int, Any]:
    """OpenAPI responses for error codes, all with the one JSON error body. Every endpoint may answer 400
    (a query parameter it does not take); 401 and 403 too unless `public`."""
    always = (400,) if public else (400, 401, 403)
    return {code: OpenApiResponse(ErrorSerializer, description=_ERROR_TEXT[code]) for code in sorted({*always, *codes})}


# --- Ids ---------------------------------------------------------------------------------------------


class IdField(serializers.IntegerField):
    """A database id: 1 to 2**63 - 1, so a larger number is a clear 400 rather than a database overflow."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(min_value=kwargs.pop("min_value", 1), max_value=kwargs.pop("max_value", MAX_ID), **kwargs)


# --- Reads: audited, or classified as not study data ----------------------------------------------------


@dataclass(frozen=True)
class AuditedRead:
    """A GET that returns study data. `ConsortiumApi` records one event named `action` for each
    successful read, in the transaction of the read; with `by_service`, the service the view calls
    records it (in its own transaction, e.g. a model download)."""

    action: str
    by_service: bool = False


@dataclass(frozen=True)
class UnauditedRead:
    """A GET that is not a read of study data, and why: every view that answers GET says one or the
    other, so a new endpoint cannot skip the audit unnoticed."""

    reason: str


READ_METHODS = ("GET", "HEAD")


class ConsortiumSchema(AutoSchema):
    """The OpenAPI operation of a `ConsortiumApi`: its GET lists the view's `query_serializer` fields."""

    def get_description(self) -> str:
        # The method's or the view's own docstring; never ConsortiumApi's, which describes plumbing.
        method_doc = get_doc(getattr(self.view, self.method.lower(), None))
        if method_doc:
            return method_doc
        mro = type(self.view).__mro__
        own = [cls for cls in mro[: mro.index(ConsortiumApi)] if cls.__doc__] if ConsortiumApi in mro else []
        return inspect.cleandoc(own[0].__doc__) if own else ""

    def get_override_parameters(self) -> list[Any]:
        parameters = super().get_override_parameters()
        query = getattr(self.view, "query_serializer", None)
        if self.method == "GET" and query is not None:
            return [query, *parameters]
        return parameters


def _names(names: list[str]) -> str:
    shown = [name if len(name) <= 40 else name[:40] + "..." for name in names[:5]]
    return ", ".join(shown) + (", ..." if len(names) > 5 else "")


def parse_query(request: Request, serializer_class: type[serializers.Serializer] | None) -> dict[str, Any]:
    """The query parameters, typed; an unknown, repeated or malformed one is a 400 (never ignored)."""
    params = request.query_params
    accepted = sorted(serializer_class().fields) if serializer_class is not None else []
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        takes = f"It takes {', '.join(accepted)}." if accepted else "It takes no query parameters."
        raise ValidationFailed(f"Unknown query parameter: {_names(unknown)}. {takes}", code="unknown_parameter")
    repeated = sorted(name for name, values in params.lists() if len(values) > 1)
    if repeated:
        raise ValidationFailed(f"Give each query parameter once: {_names(repeated)}.", code="repeated_parameter")
    if serializer_class is None:
        return {}
    serializer = serializer_class(data=params.dict())
    serializer.is_valid(raise_exception=True)
    return dict(serializer.validated_data)


class ConsortiumApi(APIView):
    """Every API view. It declares what its GET reads (`reads`) and the query parameters it takes
    (`query_serializer`, GET only; other methods take none). Any other query parameter is a 400, and a
    successful read of study data writes one audit event in the transaction that read it."""

    reads: ClassVar[AuditedRead | UnauditedRead | None] = None
    query_serializer: ClassVar[type[serializers.Serializer] | None] = None
    schema = ConsortiumSchema()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if callable(getattr(cls, "get", None)) and cls.reads is None:
            raise ImproperlyConfigured(f"{cls.__name__} answers GET: declare `reads` (AuditedRead or UnauditedRead).")

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)  # authentication and permissions first: 401/403 before 400
        self.query = self.parse_query(request)
        self._read: dict[str, Any] | None = None
        reads = self.reads
        if request.method in READ_METHODS and isinstance(reads, AuditedRead) and not reads.by_service:
            # Only the handler runs in the read's transaction: a caller refused above opens none.
            name = request.method.lower()
            setattr(self, name, functools.partial(self._audited_read, getattr(self, name), reads.action))

    def parse_query(self, request: Request) -> dict[str, Any]:
        return parse_query(request, self.query_serializer if request.method in READ_METHODS else None)

    def audit_read(self, *, study: Any = None, site: Any = None, target: Any = None, **details: Any) -> None:
        """Say what this GET read; it is recorded once the handler answers with a success."""
        self._read = {"study": study, "site": site, "target": target, "details": {"via": "api", **details}}

    def _audited_read(self, handler: Callable[..., HttpResponse], action: str, request: Request, *args: Any,
                      **kwargs: Any) -> HttpResponse:
        with transaction.atomic():
            try:
                response = handler(request, *args, **kwargs)
            except Exception as exc:  # answered inside the block, so a refusal's own audit event commits
                return self.handle_exception(exc)
            if status.is_success(response.status_code):
                if self._read is None:
                    raise ImproperlyConfigured(f"{type(self).__name__} read study data without saying what "
                                               "(call audit_read).")
                study_data_read(actor=request.user, action=action, **self._read)
            return response
