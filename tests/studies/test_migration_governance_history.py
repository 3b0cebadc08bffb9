"""The backfill of governance history for rows that predate it (studies.0010): each row gets the records its
own columns prove, so the gate as of a moment answers for them, conservatively where nothing is proven."""

import importlib

from django.apps import apps
from django.utils import timezone

from studies.governance import evaluate
from studies.models import AgreementSignature, AgreementVersion, Approval, Dpia, EthicsApproval, Participation, Study
from tests.base import active_study

migration = importlib.import_module("studies.migrations.0010_backfill_governance_history")
GOVERNED = (Study, AgreementVersion, AgreementSignature, Dpia, EthicsApproval, Participation, Approval)


def test_it_gives_rows_without_history_the_history_their_columns_prove(p):
    study = active_study(p, quorum=1)
    for model in GOVERNED:
        model.history.all().delete()  # as on a database migrated before the history tables existed
    assert evaluate(study, at=timezone.now()).allowed is False

    migration.backfill(apps, None)

    now = timezone.now()
    result = evaluate(study, at=now)
    assert result.allowed and {v.site_id for v in result.eligible_sites} == {p.site_a.pk, p.site_b.pk}
    granted = Participation.objects.get(study=study, site=p.site_a)
    then = evaluate(study, site=p.site_a, at=granted.invited_at).for_site(p.site_a.pk)
    assert [c.reason for c in then.failures][:1] == ["Participation is invited."]  # not yet granted then
    assert Participation.history.filter(id=granted.pk).count() == 2
    migration.backfill(apps, None)  # run again: nothing added
    assert Participation.history.filter(id=granted.pk).count() == 2
