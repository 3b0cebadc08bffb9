from django.apps import AppConfig


class AggregationConfig(AppConfig):
    name = "aggregation"
    verbose_name = "Federated rounds and aggregation"

    def ready(self) -> None:
        from aggregation import events

        events.register()
