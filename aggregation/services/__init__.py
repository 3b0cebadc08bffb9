"""Every state change of rounds, updates and model versions."""

from aggregation.services.aggregate import round_aggregate
from aggregation.services.declines import round_decline
from aggregation.services.rounds import round_check_deadline, round_open_next, rounds_tick
from aggregation.services.submissions import evaluation_submit, model_download, statistics_submit, update_submit
from aggregation.services.versions import model_version_download

__all__ = [
    "evaluation_submit",
    "model_download",
    "model_version_download",
    "round_aggregate",
    "round_check_deadline",
    "round_decline",
    "round_open_next",
    "rounds_tick",
    "statistics_submit",
    "update_submit",
]
