from django.apps import AppConfig


class AggregationConfig(AppConfig):
    name = "aggregation"
    verbose_name = "Federated rounds and aggregation"

    def ready(self) -> None:
        # Register the Celery tasks in every process: services send them by name (`aggregation.dispatch`).
        import aggregation.tasks  # noqa: F401
        from aggregation import events

        events.register()
