"""Plumbing every API module shares: strict input parsing, aware datetimes, and audited lookups.

API classes stay thin (parse, call a service or selector, serialize); what is here only parses
input or records that a lookup was refused, never decides anything a service decides.
"""

from datetime import datetime
from typing import Any

from django.utils import timezone
from django.utils.dateparse import parse_datetime
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema_field, inline_serializer
from rest_framework import serializers


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
    """OpenAPI responses for error codes, all with the one JSON error body; 401 and 403 unless `public`."""
    codes = codes if public else (401, 403, *codes)
    return {code: OpenApiResponse(ErrorSerializer, description=_ERROR_TEXT[code]) for code in codes}


