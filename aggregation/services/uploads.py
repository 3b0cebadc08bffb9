"""Uploads refused for their size before any view ran (the ASGI guard, consortium/upload_limit.py).

The guard answers 413 from the Content-Length header or from the bytes counted so far, so no view
and no service sees the request; it reports the refusal here, and it is audited like any refused
submission: the agent (when its token identifies one), its site, the study of the round, the size and
the path. The body is never read.
"""

from django.contrib.auth.models import AnonymousUser
from django.db import transaction
from django.urls import Resolver404, resolve

from aggregation.audit_actions import AggregationAction
from aggregation.models import Round
from consortium.audit.log import record_denial
from consortium.audit.models import AuditEvent
from consortium.upload_limit import RefusedUpload
from sites.agents import AgentPrincipal
from sites.selectors import agent_token_identify

# The submission each upload endpoint stands for, so a refusal sits beside the service's own refusals.
UPLOAD_ACTIONS = {"api-agent-update": AggregationAction.UPDATE_SUBMIT,
                  "api-agent-statistics": AggregationAction.STATISTICS_SUBMIT}
OTHER_UPLOAD = AggregationAction.UPLOAD_SUBMIT


def _sender(authorization: str) -> tuple[AgentPrincipal | AnonymousUser, dict[str, str]]:
    """The agent a bearer token identifies (revoked or not: it still names who sent the upload)."""
    scheme, _, raw = authorization.strip().partition(" ")
    token = agent_token_identify(raw.strip()) if scheme.lower() == "bearer" and raw else None
    if token is None:
        return AnonymousUser(), {"token": "unidentified" if authorization else "none"}
    return AgentPrincipal(token), {"token": "revoked" if token.revoked_at else "valid"}


def upload_refused(refused: RefusedUpload) -> AuditEvent:
    """Record an upload refused for its size, as a denied submission by whoever sent it."""
    actor, token_state = _sender(refused.authorization)
    try:
        match = resolve(refused.path)
    except Resolver404:
        match = None
    action = UPLOAD_ACTIONS.get(match.url_name, OTHER_UPLOAD) if match else OTHER_UPLOAD
    round_id = match.kwargs.get("round_id") if match else None
    study_id = Round.objects.filter(pk=round_id).values_list("study_id", flat=True).first() if round_id else None
    details = {"code": "too_large", "method": refused.method, "path": refused.path[:300], "bytes": refused.size,
               "measured": "content-length" if refused.declared else "received", "limit": refused.limit,
               "round_id": round_id, **token_state}
    with transaction.atomic():
        return record_denial(actor=actor, action=action, reason=f"The upload is over the {refused.limit:,}-byte limit.",
                             study=study_id, site=getattr(actor, "site_id", None), details=details)
