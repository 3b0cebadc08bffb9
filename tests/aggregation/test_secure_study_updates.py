"""A study whose protocol promises secure aggregation never takes an update in the clear (until the masked
stages run over HTTP, its training rounds fail closed): refused before decoding, nothing stored, audited."""

import pytest

from consortium.errors import Conflict
from tests.aggregation.support import (
    agent_for,
    open_round,
    rejected,
    submit,
    third_site,
    three_site_study,
    update_bytes,
)

pytestmark = pytest.mark.usefixtures("no_broker")


def test_it_refuses_a_clear_update_to_a_secure_study_and_stores_nothing(p):
    study = three_site_study(p, third_site(p), secure_aggregation=True, quorum=3)
    agent = agent_for(p, p.site_a)[0]
    round_ = open_round(study)
    with rejected(Conflict, "takes masked inputs only, never an update in the clear",
                  code="secure_aggregation_required", status=409):
        submit(agent, round_, body=update_bytes(round_))
