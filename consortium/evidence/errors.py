"""The one error the evidence modules raise: its message names what broke, for a person to read."""


class EvidenceError(Exception):
    """A check failed, or the evidence is malformed; `str(error)` says which, and where."""

    @property
    def message(self) -> str:
        return str(self)
