from django.apps import AppConfig
from django.db.models.signals import post_migrate


class AuditConfig(AppConfig):
    """The audit log: append-only, hash-chained, at the bottom of the app order.

    Its label stays "consortium" (it was the project package's app before it had a package of its own), so
    its table, migrations and content types keep their names."""

    name = "consortium.audit"
    label = "consortium"
    verbose_name = "Consortium"

    def ready(self) -> None:
        from consortium.roles import ensure_role_groups

        # Reference data, not a rule: the role groups exist on every database, fresh or flushed.
        post_migrate.connect(ensure_role_groups, sender=self, dispatch_uid="consortium.ensure_role_groups")
