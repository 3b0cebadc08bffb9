"""DRF exception handler: domain errors and DRF's own become JSON {"error": code, "detail": message}."""

from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from rest_framework import status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from consortium.errors import DomainError


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, DjangoValidationError):
        # A model's own rules (full_clean in a service) refused the input: the client's fault, not a 500.
        fields = exc.message_dict if hasattr(exc, "error_dict") else {"non_field_errors": exc.messages}
        return Response({"error": "validation_failed", "detail": summarise(fields), "fields": fields},
                        status=status.HTTP_400_BAD_REQUEST)
    if isinstance(exc, DomainError):
        body: dict[str, Any] = {"error": exc.code, "detail": exc.message}
        if "checks" in exc.details:
            body["checks"] = exc.details["checks"]
        return Response(body, status=exc.status)
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    code = getattr(exc, "default_code", "error")
    if isinstance(response.data, dict) and "detail" in response.data and len(response.data) == 1:
        response.data = {"error": code, "detail": str(response.data["detail"])}
    elif response.status_code == status.HTTP_400_BAD_REQUEST:
        response.data = {"error": "validation_failed", "detail": summarise(response.data), "fields": response.data}
    return response


def summarise(errors: Any, prefix: str = "") -> str:
    """The first field error as one sentence ("valid_until: Give the UTC offset too ..."), so a client
    that shows only `detail` still tells its user what to fix; `fields` keeps them all."""
    if isinstance(errors, dict):
        for field, value in errors.items():
            label = "" if field == "non_field_errors" else f"{prefix}{field}"
            return summarise(value, f"{label}." if label else "")
    if isinstance(errors, list) and errors:
        if isinstance(errors[0], (dict, list)):
            return summarise(errors[0], prefix)
        message = str(errors[0])
        return f"{prefix.rstrip('.')}: {message}" if prefix else message
    return "The request is not valid."
