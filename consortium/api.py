"""The project's own REST endpoints: the schema and its browsable docs, and the JSON 404 for any other /api/
path. The API tokens and the audit log's endpoints are in `consortium.audit.api`."""

from typing import Any

from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response

from consortium.api_base import ConsortiumApi, UnauditedRead
from consortium.audit.services import access_denied
from consortium.audit_actions import ConsortiumAction
from consortium.errors import NotFound


class SchemaApi(SpectacularAPIView):
    reads = UnauditedRead("The API's own description: no study data.")


class SwaggerApi(SpectacularSwaggerSplitView):
    """The split view serves Swagger UI's start-up script as a file: the Content-Security-Policy allows no inline
    script."""

    reads = UnauditedRead("The API's browsable documentation page: no study data.")


class ApiNotFound(ConsortiumApi):
    """Any /api/ path no endpoint answers, including ids too large to exist: a JSON 404. An
    authenticated caller's attempt is audited, as a refused lookup of an existing endpoint would be."""

    reads = UnauditedRead("No endpoint: answers 404 (the attempt is audited as denied).")
    permission_classes = [AllowAny]
    schema = None

    def parse_query(self, request: Request) -> dict[str, Any]:
        return {}  # nothing to parse: whatever was asked, the answer is a 404

    def _not_found(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        reason = f"No API endpoint at {request.path[:200]}."
        if request.user.is_authenticated:
            access_denied(actor=request.user, action=ConsortiumAction.API_NOT_FOUND, reason=reason, code="not_found",
                          site=getattr(request.user, "site_id", None),  # a site agent acts for its site
                          details={"method": request.method, "path": request.path[:300]})
        raise NotFound(reason)

    get = post = put = patch = delete = _not_found
