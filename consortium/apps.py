from django.apps import AppConfig
from django.urls import register_converter


class ProjectConfig(AppConfig):
    """The project package: settings, URLs, ASGI and Celery wiring, and the pages that span every app
    (`consortium.pages`). Its models live in the audit app (`consortium.audit`, label "consortium")."""

    name = "consortium"
    label = "project"
    verbose_name = "Consortium"

    def ready(self) -> None:
        # Load the Celery app when Django starts, so `shared_task(...).delay_on_commit` uses it (not Celery's
        # default app). Here rather than in consortium/__init__.py, which the Django-free verifier imports.
        import consortium.celery  # noqa: F401
        from consortium.request_limits import IdConverter

        # Before any URLconf is read: routes name ids as `<id:pk>`, bounded to what the database stores.
        register_converter(IdConverter, "id")
