"""The audit log's action names of aggregation (`consortium.audit.record(action=...)`), each typed once.

Values never change: the hash-chained log, its exports and the auditors' filters hold them. An attempt is
named by its verb (`...submit`), what it recorded by its outcome (`...submitted`)."""


class AggregationAction:
    EVALUATION_ACCEPTED = "aggregation.evaluation.accepted"
    EVALUATION_SUBMIT = "aggregation.evaluation.submit"
    MODEL_DOWNLOAD = "aggregation.model.download"
    MODEL_DOWNLOADED = "aggregation.model.downloaded"
    MODEL_VERSION_CREATED = "aggregation.model_version.created"
    ROUND_OPENED = "aggregation.round.opened"
    ROUND_AGGREGATING = "aggregation.round.aggregating"
    ROUND_CLOSED = "aggregation.round.closed"
    ROUND_BLOCKED = "aggregation.round.blocked"
    ROUND_FAILED = "aggregation.round.failed"
    STATISTICS_ACCEPTED = "aggregation.statistics.accepted"
    STATISTICS_EXCLUDED = "aggregation.statistics.excluded"
    STATISTICS_SUBMIT = "aggregation.statistics.submit"
    UPDATE_ACCEPTED = "aggregation.update.accepted"
    UPDATE_EXCLUDED = "aggregation.update.excluded"
    UPDATE_SUBMIT = "aggregation.update.submit"
    UPLOAD_SUBMIT = "aggregation.upload.submit"


# What a round's state step records, by the state it moves to (`aggregation.choices.ROUND_TRANSITIONS`).
ROUND_MOVES = {"aggregating": AggregationAction.ROUND_AGGREGATING, "closed": AggregationAction.ROUND_CLOSED,
               "blocked": AggregationAction.ROUND_BLOCKED, "failed": AggregationAction.ROUND_FAILED}
