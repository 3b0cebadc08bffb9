"""OpenAPI (drf-spectacular) description of the agent bearer token; imported from `SitesConfig.ready`."""

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension


class AgentTokenScheme(OpenApiAuthenticationExtension):
    """Documents `AgentTokenAuthentication` as HTTP bearer auth wherever an endpoint uses it."""

    target_class = "sites.authentication.AgentTokenAuthentication"
    name = "agentToken"

    def get_security_definition(self, auto_schema: Any) -> dict[str, Any]:
        return {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "cst_<prefix>_<secret>",
            "description": "A site agent token, created by the site's admin on the site page (shown once).",
        }
