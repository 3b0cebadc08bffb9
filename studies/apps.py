from django.apps import AppConfig


class StudiesConfig(AppConfig):
    name = "studies"
    verbose_name = "Studies and governance"

    def ready(self) -> None:
        from studies import governance_events

        governance_events.register()
