"""OpenAPI (drf-spectacular) description of the Flower coordinator's bearer token; imported from
`AggregationConfig.ready`."""

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension


class FlowerTokenScheme(OpenApiAuthenticationExtension):
    """Documents `FlowerTokenAuthentication` as HTTP bearer auth wherever an endpoint uses it."""

    target_class = "aggregation.flower_auth.FlowerTokenAuthentication"
    name = "flowerCoordinatorToken"

    def get_security_definition(self, auto_schema: Any) -> dict[str, Any]:
        return {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "csf_<prefix>_<secret>",
            "description": "A study's Flower coordinator token, issued by the study's PI (shown once).",
        }
