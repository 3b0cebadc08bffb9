from django.apps import AppConfig


class SitesConfig(AppConfig):
    name = "sites"
    label = "sites"
    verbose_name = "Hospital sites"

    def ready(self) -> None:
        # Registers the agent token's OpenAPI security scheme with drf-spectacular.
        from sites import schema  # noqa: F401
