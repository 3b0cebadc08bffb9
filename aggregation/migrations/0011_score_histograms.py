"""Each site's score histogram of a model version moves out of the version's evaluation into its own row; the
evaluation keeps their sum and which sites sent one (recording a site no longer rewrites every site's)."""

import django.db.models.deletion
from django.db import migrations, models

KEYS = ("positives", "negatives")


def _sum(histograms):
    histograms = list(histograms)
    bins = len(histograms[0][KEYS[0]]) if histograms else 100
    return {key: [sum(h[key][i] for h in histograms) for i in range(bins)] for key in KEYS}


def split_histograms(apps, schema_editor):
    ModelVersion = apps.get_model("aggregation", "ModelVersion")
    ScoreHistogram = apps.get_model("aggregation", "ScoreHistogram")
    for version in ModelVersion.objects.filter(evaluation__has_key="score_histograms"):
        histograms = version.evaluation.pop("score_histograms") or {}
        ScoreHistogram.objects.bulk_create(ScoreHistogram(version=version, site_id=int(site), histogram=histogram)
                                           for site, histogram in histograms.items())
        version.evaluation["score_histogram_sum"] = _sum(histograms.values())
        version.evaluation["score_histogram_sites"] = sorted(histograms)
        version.save(update_fields=["evaluation"])


def join_histograms(apps, schema_editor):
    ModelVersion = apps.get_model("aggregation", "ModelVersion")
    ScoreHistogram = apps.get_model("aggregation", "ScoreHistogram")
    for version in ModelVersion.objects.filter(evaluation__has_key="score_histogram_sum"):
        version.evaluation.pop("score_histogram_sum")
        version.evaluation.pop("score_histogram_sites", None)
        version.evaluation["score_histograms"] = {
            str(row.site_id): row.histogram for row in ScoreHistogram.objects.filter(version=version)}
        version.save(update_fields=["evaluation"])


class Migration(migrations.Migration):

    dependencies = [
        ('aggregation', '0010_round_expected_sites'),
        ('sites', '0005_signing_authority'),
    ]

    operations = [
        migrations.CreateModel(
            name='ScoreHistogram',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('histogram', models.JSONField()),
                ('site', models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='+', to='sites.site')),
                ('version', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='score_histograms', to='aggregation.modelversion')),
            ],
            options={
                'constraints': [models.UniqueConstraint(fields=('version', 'site'), name='score_histogram_per_site')],
            },
        ),
        migrations.RunPython(split_histograms, join_histograms),
    ]
