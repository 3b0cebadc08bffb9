"""The audit log's action names of aggregation (`consortium.audit.record(action=...)`), each typed once.

Values never change: the hash-chained log, its exports and the auditors' filters hold them. An attempt is
named by its verb (`...submit`), what it recorded by its outcome (`...submitted`)."""


class AggregationAction:
    CONTRIBUTIONS_READ = "aggregation.contributions.read"
    EVALUATION_ACCEPTED = "aggregation.evaluation.accepted"
    EVALUATION_SUBMIT = "aggregation.evaluation.submit"
    FLOWER_INITIAL_MODEL = "aggregation.flower.initial_model"
    FLOWER_RESULTS = "aggregation.flower.results"
    FLOWER_ROUND_OPEN = "aggregation.flower.round_open"
    FLOWER_TOKEN_CREATE = "aggregation.flower_token.create"
    FLOWER_TOKEN_CREATED = "aggregation.flower_token.created"
    FLOWER_TOKEN_LIST = "aggregation.flower_token.list"
    FLOWER_TOKEN_REVOKE = "aggregation.flower_token.revoke"
    FLOWER_TOKEN_REVOKED = "aggregation.flower_token.revoked"
    FLOWER_VERSION = "aggregation.flower.version"
    # Reads for people (`aggregation.people_api`, `aggregation.views.ledger`): the attempt, then the read.
    LEDGER_VIEW = "aggregation.ledger.view"
    LEDGER_VIEWED = "aggregation.ledger.viewed"
    LEDGER_EXPORTED = "aggregation.ledger.exported"
    MODEL_CARD_VIEW = "aggregation.model_card.view"
    MODEL_CARD_VIEWED = "aggregation.model_card.viewed"
    MODEL_VERSION_LIST = "aggregation.model_version.list"
    MODEL_VERSION_LISTED = "aggregation.model_version.listed"
    MODEL_VERSION_VIEW = "aggregation.model_version.view"
    MODEL_VERSION_VIEWED = "aggregation.model_version.viewed"
    ROUND_LIST = "aggregation.round.list"
    ROUND_LISTED = "aggregation.round.listed"
    MODEL_DOWNLOAD = "aggregation.model.download"
    MODEL_DOWNLOADED = "aggregation.model.downloaded"
    MODEL_VERSION_CREATED = "aggregation.model_version.created"
    ROUND_OPENED = "aggregation.round.opened"
    ROUND_AGGREGATING = "aggregation.round.aggregating"
    ROUND_CLOSED = "aggregation.round.closed"
    ROUND_BLOCKED = "aggregation.round.blocked"
    ROUND_FAILED = "aggregation.round.failed"
    ROUND_DECLINE = "aggregation.round.decline"
    ROUND_DECLINED = "aggregation.round.declined"
    # Secure-aggregation rounds (`aggregation.services.secure`): a site's message for a stage (the attempt, then
    # what was accepted), a stage opening and closing, a site left out of the sum as a dropout.
    SECURE_SUBMIT = "aggregation.secure.submit"
    SECURE_ACCEPTED = "aggregation.secure.accepted"
    SECURE_EXCLUDED = "aggregation.secure.excluded"
    SECURE_STAGE_OPENED = "aggregation.secure.stage_opened"
    SECURE_STAGE_CLOSED = "aggregation.secure.stage_closed"
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
