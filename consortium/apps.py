from django.apps import AppConfig
from django.db.models.signals import post_migrate
from django.urls import register_converter


class ConsortiumConfig(AppConfig):
    name = "consortium"
    verbose_name = "Consortium"

    def ready(self) -> None:
        # Load the Celery app when Django starts, so `shared_task(...).delay_on_commit` uses it (not Celery's
        # default app). Here rather than in consortium/__init__.py, which the Django-free verifier imports.
        import consortium.celery  # noqa: F401
        from consortium.request_limits import IdConverter
        from consortium.roles import ensure_role_groups

        # Before any URLconf is read: routes name ids as `<id:pk>`, bounded to what the database stores.
        register_converter(IdConverter, "id")

        # Reference data, not a rule: the role groups exist on every database, fresh or flushed.
        post_migrate.connect(ensure_role_groups, sender=self, dispatch_uid="consortium.ensure_role_groups")
