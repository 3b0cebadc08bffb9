"""Domain errors raised by services; views and the API turn them into messages and 4xx codes."""

from typing import Any


class DomainError(Exception):
    """A refused request. `status` is the HTTP status adapters answer with."""

    status = 400
    code = "invalid"

    def __init__(
        self, message: str, *, code: str = "", study: Any = None, site: Any = None, target: Any = None, **details: Any
    ):
        super().__init__(message)
        self.message = message
        if code:
            self.code = code  # a more precise code than the class's, e.g. "stale_round"
        self.study = study
        self.site = site
        self.target = target
        self.details = details


class NotFound(DomainError):
    """The object does not exist or the actor may not see it: both look the same (no existence leak)."""

    status = 404
    code = "not_found"


class Forbidden(DomainError):
    """The actor may see the object but not do this to it."""

    status = 403
    code = "forbidden"


class InvalidTransition(DomainError):
    """The object's current state does not allow this step."""

    status = 409
    code = "invalid_transition"


class Conflict(DomainError):
    """The request collides with existing data (duplicate, stale version)."""

    status = 409
    code = "conflict"


class ValidationFailed(DomainError):
    """The input is malformed or breaks a business rule."""

    status = 400
    code = "validation_failed"


class PayloadTooLarge(DomainError):
    """The request body is over the configured limit."""

    status = 413
    code = "too_large"


class GateRefused(DomainError):
    """The governance gate refused the action; `details['checks']` lists the failing checks."""

    status = 403
    code = "gate_refused"
