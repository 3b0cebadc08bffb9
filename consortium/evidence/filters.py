"""The filter an export claims to be complete for, evaluated the same way by the exporter and the verifier.

A filter is a JSON object over the leaf's filterable attributes (`FILTER_FIELDS`), all conditions
must hold (AND):

    {"study_id": 7}                                   equal (null matches null)
    {"site_id": {"in": [1, 2]}}                       one of
    {"action": {"prefix": "studies.dpia."}}           starts with (text fields)
    {"created_at": {"gte": "2025-01-01T00:00:00+00:00", "lt": "2025-04-01T00:00:00+00:00"}}
    {"seq": {"gt": 100, "lte": 200}}                  ranges (seq and created_at only)

The empty filter `{}` matches every event. Since leaves commit to these attributes, an event the
export leaves out can be proven not to match, against the signed Merkle root.
"""

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from consortium.evidence.canonical import FILTER_FIELDS, INT_FIELDS, NULLABLE_INT_FIELDS
from consortium.evidence.errors import EvidenceError

Predicate = Callable[[Mapping[str, Any]], bool]
RANGE_FIELDS = frozenset({"seq", "created_at"})
_ORDER: dict[str, Callable[[Any, Any], bool]] = {
    "gt": lambda value, bound: value > bound,
    "gte": lambda value, bound: value >= bound,
    "lt": lambda value, bound: value < bound,
    "lte": lambda value, bound: value <= bound,
}


class EventFilter:
    """A validated filter: `matches(attributes)` for an event's (or a leaf's) attributes."""

    def __init__(self, spec: Mapping[str, Any] | None = None) -> None:
        if not isinstance(spec or {}, Mapping):
            raise EvidenceError("filters: not a JSON object")
        self.spec = dict(spec or {})
        self._predicates = [_compile(field, condition) for field, condition in sorted(self.spec.items())]

    def matches(self, attributes: Mapping[str, Any]) -> bool:
        return all(predicate(attributes) for predicate in self._predicates)

    def describe(self) -> str:
        return "every event" if not self.spec else ", ".join(f"{k} {v!r}" for k, v in sorted(self.spec.items()))


def _check_value(field: str, value: Any) -> Any:
    """The value as compared: ints for id fields, aware datetimes for created_at, text otherwise."""
    if field in INT_FIELDS or field in NULLABLE_INT_FIELDS:
        if (value is None and field in NULLABLE_INT_FIELDS) or (isinstance(value, int) and not isinstance(value, bool)):
            return value
        raise EvidenceError(f"filters: {field} takes {'an integer or null' if field != 'seq' else 'an integer'}")
    if not isinstance(value, str):
        raise EvidenceError(f"filters: {field} takes text")
    if field == "created_at":
        return _moment(value, where=f"filters: {field}")
    return value


def _moment(text: str, *, where: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except (TypeError, ValueError) as exc:
        raise EvidenceError(f"{where}: {text!r} is not an ISO 8601 time") from exc
    if moment.tzinfo is None:
        raise EvidenceError(f"{where}: {text!r} has no time zone")
    return moment


def _getter(field: str) -> Callable[[Mapping[str, Any]], Any]:
    if field == "created_at":
        return lambda attributes: _moment(attributes[field], where=f"event #{attributes.get('seq')}: created_at")
    return lambda attributes: attributes[field]


def _compile(field: str, condition: Any) -> Predicate:
    if field not in FILTER_FIELDS:
        raise EvidenceError(f"filters: cannot filter on {field!r} (filterable: {', '.join(FILTER_FIELDS)})")
    get = _getter(field)
    if not isinstance(condition, Mapping):
        wanted = _check_value(field, condition)
        return lambda attributes: get(attributes) == wanted
    if not condition:
        raise EvidenceError(f"filters: {field} has an empty condition")
    parts: list[Predicate] = []
    for op, operand in sorted(condition.items()):
        parts.append(_compile_op(field, op, operand, get))
    return lambda attributes: all(part(attributes) for part in parts)


def _compile_op(field: str, op: str, operand: Any, get: Callable[[Mapping[str, Any]], Any]) -> Predicate:
    if op == "in":
        if not isinstance(operand, list):
            raise EvidenceError(f"filters: {field} 'in' takes a list")
        allowed = [_check_value(field, value) for value in operand]
        return lambda attributes: get(attributes) in allowed
    if op == "prefix":
        if field in INT_FIELDS or field in NULLABLE_INT_FIELDS or field == "created_at" or not isinstance(operand, str):
            raise EvidenceError(f"filters: 'prefix' takes text and applies to text fields, not {field}")
        return lambda attributes: attributes[field].startswith(operand)
    if op in _ORDER:
        if field not in RANGE_FIELDS or operand is None:
            raise EvidenceError(f"filters: {op!r} applies to seq and created_at only, with a value")
        bound, compare = _check_value(field, operand), _ORDER[op]
        return lambda attributes: compare(get(attributes), bound)
    raise EvidenceError(f"filters: unknown condition {op!r} on {field} (known: in, prefix, gt, gte, lt, lte)")
