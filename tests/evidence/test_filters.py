"""Export filters: what an export claims to be complete for, evaluated alike by exporter and verifier."""

import pytest

from consortium.evidence.errors import EvidenceError
from consortium.evidence.filters import EventFilter

LEAF = {"seq": 10, "created_at": "2025-02-01T10:00:00.000000+00:00", "actor_kind": "user", "actor_user_id": 3,
        "actor_label": "pi", "action": "studies.dpia.approved", "outcome": "ok", "object_type": "studies.dpia",
        "object_id": "4", "study_id": 5, "site_id": None, "hash": "0" * 64}


@pytest.mark.parametrize(("spec", "matches"), [
    ({}, True),
    ({"study_id": 5}, True),
    ({"study_id": 6}, False),
    ({"site_id": None}, True),
    ({"site_id": {"in": [1, None]}}, True),
    ({"action": {"prefix": "studies.dpia."}}, True),
    ({"action": {"prefix": "aggregation."}}, False),
    ({"created_at": {"gte": "2025-02-01T10:00:00+00:00", "lt": "2025-02-02T00:00:00+00:00"}}, True),
    ({"created_at": {"gt": "2025-02-01T11:00:00+01:00"}}, False),  # the same moment, in another zone
    ({"seq": {"gt": 5, "lte": 10}}, True),
    ({"seq": {"lt": 10}}, False),
    ({"study_id": 5, "outcome": "denied"}, False),
])
def test_it_matches_a_leaf_when_every_condition_holds(spec, matches):
    assert EventFilter(spec).matches(LEAF) is matches


@pytest.mark.parametrize(("spec", "message"), [
    ({"details": {}}, "cannot filter on 'details'"),
    ({"hash": "0" * 64}, "cannot filter on 'hash'"),
    ({"study_id": "5"}, "study_id takes an integer or null"),
    ({"seq": None}, "seq takes an integer"),
    ({"action": 3}, "action takes text"),
    ({"study_id": {"prefix": "1"}}, "'prefix' takes text and applies to text fields"),
    ({"action": {"gte": "a"}}, "applies to seq and created_at only"),
    ({"created_at": {"gte": "2025-01-01T00:00:00"}}, "has no time zone"),
    ({"created_at": {"gte": "yesterday"}}, "is not an ISO 8601 time"),
    ({"site_id": {"like": 1}}, "unknown condition 'like'"),
    ({"site_id": {}}, "empty condition"),
    ([("site_id", 1)], "not a JSON object"),
])
def test_it_refuses_a_filter_it_could_not_evaluate_faithfully(spec, message):
    with pytest.raises(EvidenceError, match=message):
        EventFilter(spec)
