"""An audit event's details as a person reads them: labelled fields, not a Python dict."""

from typing import Any

MAX_ITEMS = 40  # a huge details object shows its first fields and says how many more there are


def _label(key: str) -> str:
    return key.replace("_", " ").strip().capitalize() or key


def _text(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(_text(item) for item in value) if value else "none"
    if isinstance(value, dict):
        return "; ".join(f"{_label(str(k))}: {_text(v)}" for k, v in value.items()) or "—"
    return str(value)


def readable_details(details: Any, prefix: str = "") -> list[tuple[str, str]]:
    """(label, text) pairs, nested objects flattened one level into "Parent › child" labels."""
    if not isinstance(details, dict):
        return [("Details", _text(details))] if details not in (None, "", [], {}) else []
    pairs: list[tuple[str, str]] = []
    for key, value in details.items():
        label = f"{prefix}{_label(str(key))}"
        if isinstance(value, dict) and value and not prefix:
            pairs.extend(readable_details(value, prefix=f"{label} › "))
        else:
            pairs.append((label, _text(value)))
    if len(pairs) > MAX_ITEMS:
        return [*pairs[:MAX_ITEMS], ("…", f"{len(pairs) - MAX_ITEMS} more fields")]
    return pairs
