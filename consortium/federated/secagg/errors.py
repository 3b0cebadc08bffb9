"""The one error of the secure-aggregation core: every refusal carries a reason a person can read."""


class SecAggError(Exception):
    """A secure-aggregation step refused to go on. The round fails closed; `reason` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
