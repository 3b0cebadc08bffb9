"""What people see of the sites' evaluations: the dashboard keeps the global AUC on a label-skewed federation
and says which site could not compute its own and why; the final model's figures after the evaluation round
on the study, rounds and dashboard pages; and never a site's score histogram."""

import json
import re

import pytest
from django.urls import reverse

from aggregation.models import ModelVersion, Round
from aggregation.services import round_aggregate
from tests.aggregation.support import (
    GOOD_METRICS,
    evaluation_metrics,
    governed_study,
    open_round,
    send_evaluation,
    submit,
)
from tests.pages import client_for, page

pytestmark = pytest.mark.usefixtures("no_broker")

ONE_CLASS = evaluation_metrics([0.7, 0.8, 0.9, 0.95, 0.6], [1, 1, 1, 1, 1], val_auc=None, val_accuracy=1.0)
BOTH = evaluation_metrics([0.1, 0.3, 0.65, 0.4, 0.9, 0.2], [0, 0, 0, 1, 1, 0], val_auc=0.875, val_accuracy=0.8)
ONE_CLASS_NOTE = "Amsterdam UMC: no AUC of its own for v0–v1 (only one class in the validation split)."


def embedded(body: str, element_id: str):
    found = re.search(rf'<script id="{element_id}" type="application/json">(.*?)</script>', body, re.S)
    assert found, f"no {element_id} on the page"
    return json.loads(found.group(1))


def skewed_history(fed) -> ModelVersion:
    """A one-round study (now `fed.study`): site A's validation split holds one class, site B's both. A and B
    evaluate v0 in round 1, then the final v1 in the evaluation round (round 2), which closes."""
    fed.study = governed_study(fed.p, rounds=1)
    first = open_round(fed.study)
    submit(fed.agent_a, first, metrics={**GOOD_METRICS, "base": ONE_CLASS})
    submit(fed.agent_b, first, metrics={**GOOD_METRICS, "base": BOTH})
    v1 = round_aggregate(round_id=first.pk)
    final = Round.objects.get(study=fed.study, number=2)
    send_evaluation(fed.agent_a, final, metrics=ONE_CLASS)
    send_evaluation(fed.agent_b, final, metrics=BOTH)
    return v1


def test_the_dashboard_keeps_the_auc_line_and_says_which_site_has_no_auc_and_why(fed):
    skewed_history(fed)
    body = page(client_for(fed.p.pi).get(reverse("aggregation:dashboard", args=[fed.study.pk])))
    figures = embedded(body, "dashboard-figures")
    auc = next(t for t in figures["global"]["data"] if t["meta"] == "val_auc")
    assert auc["x"] == [0, 1] and auc["y"] == [26 / 28, 26 / 28], "v0 and the final v1, from the histograms"
    sites = {t["meta"]: t["x"] for t in figures["sites"]["data"] if str(t.get("meta", "")).startswith("site:")}
    assert sites == {f"site:{fed.p.site_b.pk}": [0, 1]}, "site A has no AUC of its own to draw"
    note = re.search(r'<div class="chart-note" data-testid="auc-gaps">(.*?)</div>', body, re.S)
    assert note and f'<li data-site-id="{fed.p.site_a.pk}">{ONE_CLASS_NOTE}</li>' in note.group(1)
    state = embedded(body, "dashboard-state")
    assert state["auc_gaps"] == [{"site_id": fed.p.site_a.pk, "site": "Amsterdam UMC",
                                  "reason": "only one class in the validation split", "versions": [0, 1],
                                  "text": ONE_CLASS_NOTE}]
    assert "positives" not in body and "score_histogram" not in body


def test_the_dashboard_hides_the_note_while_every_site_has_its_auc(fed):
    first = open_round(fed.study)
    submit(fed.agent_a, first, metrics={**GOOD_METRICS, "base": BOTH})
    submit(fed.agent_b, first, metrics={**GOOD_METRICS, "base": BOTH})
    round_aggregate(round_id=first.pk)
    body = page(client_for(fed.p.pi).get(reverse("aggregation:dashboard", args=[fed.study.pk])))
    assert '<div class="chart-note" data-testid="auc-gaps" hidden>' in body


def test_the_dashboard_marks_the_sites_that_evaluated_the_final_model(fed):
    skewed_history(fed)
    body = page(client_for(fed.p.pi).get(reverse("aggregation:dashboard", args=[fed.study.pk])))
    heatmap = embedded(body, "dashboard-figures")["heatmap"]["data"][0]
    assert heatmap["x"] == [1, 2]
    assert all(row[1].startswith("submitted: final model evaluated") for row in heatmap["text"])


def test_the_study_page_shows_the_final_models_figures_once_the_sites_evaluated_it(fed):
    v1 = skewed_history(fed)
    body = page(client_for(fed.p.dpo).get(reverse("studies:detail", args=[fed.study.pk])))
    final = re.search(r'<div class="final-evaluation" data-testid="final-evaluation" data-version="1">(.*?)</div>',
                      body, re.S)
    assert final, "no final figures on the study page"
    text = final.group(1)
    assert "round 2, 2 sites, 11 validation rows" in text
    assert '<tr data-final="val_auc"><th>ROC AUC (all sites\' rows)</th><td><strong>0.929</strong></td></tr>' in text
    v1.refresh_from_db()
    accuracy = v1.evaluation["global"]["val_accuracy"]
    assert f'<tr data-final="val_accuracy"><th>Accuracy</th><td>{accuracy:.3f}</td></tr>' in text
    assert "1 of 1 training rounds closed." in body


def test_the_study_page_shows_no_final_figures_before_the_evaluation_round_closed(fed):
    fed.study = governed_study(fed.p, rounds=1)
    first = open_round(fed.study)
    submit(fed.agent_a, first)
    submit(fed.agent_b, first)
    round_aggregate(round_id=first.pk)
    send_evaluation(fed.agent_a, Round.objects.get(study=fed.study, number=2))
    body = page(client_for(fed.p.pi).get(reverse("studies:detail", args=[fed.study.pk])))
    assert 'data-testid="final-evaluation"' not in body and 'data-round-status="open"' in body
    assert "(final evaluation)" in body


def test_the_rounds_and_version_pages_show_who_evaluated_and_why_a_site_has_no_auc(fed):
    skewed_history(fed)
    rounds = page(client_for(fed.p.auditor).get(reverse("aggregation:rounds", args=[fed.study.pk])))
    assert 'data-evaluation-site="amc">Amsterdam UMC' in rounds and 'data-evaluation-site="charite">' in rounds
    version = page(client_for(fed.p.auditor).get(reverse("aggregation:version", args=[fed.study.pk, 1])))
    assert (f'data-evaluation-site="{fed.p.site_a.pk}"><td>Amsterdam UMC</td><td>— <span class="help" '
            'data-testid="auc-note">(only one class in the validation split)</span></td>') in version
    assert '<tr data-evaluation="mean"><th>All sites</th><th>0.929</th>' in version
    assert "positives" not in version and "score_histogram" not in rounds + version
