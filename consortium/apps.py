from django.apps import AppConfig
from django.db.models.signals import post_migrate


class ConsortiumConfig(AppConfig):
    name = "consortium"
    verbose_name = "Consortium"

    def ready(self) -> None:
        from consortium.roles import ensure_role_groups

        # Reference data, not a rule: the role groups exist on every database, fresh or flushed.
        post_migrate.connect(ensure_role_groups, sender=self, dispatch_uid="consortium.ensure_role_groups")
