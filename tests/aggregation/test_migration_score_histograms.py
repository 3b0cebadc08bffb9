"""The data migration that moves each site's score histogram of a model version out of the version's
evaluation into its own row: the evaluation keeps their sum and which sites sent one, its figures unchanged,
and the reverse puts them back as they were."""

import importlib

import pytest
from django.apps import apps

from aggregation.models import ModelVersion, ScoreHistogram
from consortium.federated.metrics import summed
from tests.aggregation.support import evaluation_metrics, open_round

migration = importlib.import_module("aggregation.migrations.0011_score_histograms")

A = evaluation_metrics([0.1, 0.3, 0.65, 0.4, 0.9, 0.2], [0, 0, 0, 1, 1, 0], val_auc=0.875)["score_histogram"]
B = evaluation_metrics([0.7, 0.8, 0.9], [1, 1, 1], val_auc=None)["score_histogram"]


@pytest.fixture
def as_before(p, fed):
    """v0 of the federation's study with its evaluation as stored before the migration."""
    version = open_round(fed.study).base_version
    before = {"sites": {str(p.site_a.pk): {"val_auc": 0.875}, str(p.site_b.pk): {"val_auc": None}},
              "global": {"val_auc": 0.9, "val_auc_method": "federated_roc"},
              "score_histograms": {str(p.site_a.pk): A, str(p.site_b.pk): B}}
    ModelVersion.objects.filter(pk=version.pk).update(evaluation=before)
    return version, before


def test_it_moves_each_sites_histogram_into_its_row_and_keeps_their_sum(p, as_before):
    version, before = as_before
    migration.split_histograms(apps, None)
    version.refresh_from_db()
    assert dict(ScoreHistogram.objects.filter(version=version).values_list("site_id", "histogram")) == {
        p.site_a.pk: A, p.site_b.pk: B}
    assert version.evaluation == {"sites": before["sites"], "global": before["global"],
                                  "score_histogram_sum": summed([A, B]),
                                  "score_histogram_sites": sorted([str(p.site_a.pk), str(p.site_b.pk)])}
    migration.join_histograms(apps, None)
    version.refresh_from_db()
    assert version.evaluation == before
