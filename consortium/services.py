"""Writes that span the consortium: recording reads of the audit log itself."""

from typing import Any

from django.contrib.auth.models import AbstractBaseUser

from consortium.audit import record


def audit_log_read(*, actor: AbstractBaseUser, via: str, filters: dict[str, Any], count: int) -> None:
    """Record that someone read or exported the audit log ("who saw what" includes the log itself)."""
    record(actor=actor, action=f"consortium.audit.{via}", study=filters.get("study_id"),
           details={"filters": filters, "events": count})
