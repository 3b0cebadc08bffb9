"""A site's data set registration for a study: what its agent computed locally (row count, label balance, per
feature its name, type and missing values; never rows), checked strictly, kept append-only (the newest counts)
and judged against the protocol's schema by the gate (`dataset_registered`)."""

from dataclasses import dataclass
from typing import Any

from django.utils import timezone

from consortium.audit.log import audited_service, record
from consortium.errors import InvalidTransition, NotFound, ValidationFailed
from consortium.federated.dataset_schema import FEATURE_TYPES, schema_mismatches, summary_sha256
from consortium.locks import locked
from studies.audit_actions import StudyAction
from studies.choices import PARTICIPATION_CURRENT, EventKind, StudyStatus
from studies.events import announce_governance
from studies.models import MAX_FEATURE_NAME, DatasetRegistration, Participation, Study

MAX_ROWS = 2**31 - 1
MAX_FEATURES = 100_000


@dataclass(frozen=True)
class Registered:
    """The registration in force, its schema report now (empty: it matches) and whether it is new."""

    registration: DatasetRegistration
    mismatches: list[str]
    created: bool


@audited_service(StudyAction.DATASET_REGISTER)
def dataset_register(*, actor: Any, study_id: int, summary: Any) -> Registered:
    """The agent of a site taking part in the study registers the summary of its data set. The same summary as
    the site's newest registration adds no row; anything malformed is refused and changes nothing."""
    study = locked(Study.objects.filter(pk=study_id)).first()
    taking_part = study is not None and Participation.objects.filter(
        study=study, site_id=actor.site_id, status__in=PARTICIPATION_CURRENT).exists()
    if not taking_part:
        raise NotFound("This site takes no part in that study.", site=actor.site_id)
    if study.status == StudyStatus.CLOSED:
        raise InvalidTransition("The study is closed: it takes no more data set registrations.", study=study,
                                site=actor.site_id)
    clean = checked_summary(summary, study=study, site_id=actor.site_id)
    digest = summary_sha256(clean)
    report = schema_mismatches(clean, feature_names=study.feature_names, num_features=study.num_features,
                               label_column=study.label_column)
    newest = DatasetRegistration.objects.filter(study=study, site_id=actor.site_id).order_by("-registered_at",
                                                                                             "-pk").first()
    if newest is not None and newest.summary_sha256 == digest:
        return Registered(newest, report, created=False)
    label = clean["label"]
    registration = DatasetRegistration(study=study, site_id=actor.site_id, rows=clean["rows"],
                                       label_column=clean["label_column"], positives=label["positives"],
                                       negatives=label["negatives"], summary=clean, summary_sha256=digest,
                                       registered_by=actor.get_username(), registered_at=timezone.now())
    registration.full_clean()
    registration.save()
    record(actor=actor, action=StudyAction.DATASET_REGISTERED, target=registration, study=study,
           site=actor.site_id, details={"rows": clean["rows"], "positive_rows": label["positives"],
                                        "negative_rows": label["negatives"], "features": len(clean["features"]),
                                        "summary_sha256": digest, "matches_protocol": not report,
                                        "mismatches": report})
    announce_governance(study, EventKind.GOVERNANCE_CHANGED, {
        "what": "dataset", "change": "registered" if not report else "registered, not matching the protocol",
        "site_id": actor.site_id, "site": actor.site.name})
    return Registered(registration, report, created=True)


def checked_summary(summary: Any, *, study: Study, site_id: int) -> dict[str, Any]:
    """The summary as stored: exactly the documented keys (`consortium.federated.dataset_schema`), whole numbers
    in range, counts that add up, distinct feature names. Anything else is a 400 that says what is wrong."""
    def refuse(message: str) -> ValidationFailed:
        return ValidationFailed(f"The data set summary is malformed: {message}", code="bad_dataset_summary",
                                study=study, site=site_id)

    _exact_keys(summary, {"rows", "label_column", "label", "features"}, "the summary", refuse)
    rows = _count(summary["rows"], "rows", MAX_ROWS, refuse)
    label_column = summary["label_column"]
    if not isinstance(label_column, str) or not label_column.strip() or len(label_column) > 100:
        raise refuse("label_column must be a column name of at most 100 characters.")
    label = summary["label"]
    _exact_keys(label, {"present", "positives", "negatives", "other"}, "label", refuse)
    if not isinstance(label["present"], bool):
        raise refuse("label.present must be true or false.")
    counts = {key: _count(label[key], f"label.{key}", rows, refuse) for key in ("positives", "negatives", "other")}
    if label["present"] and sum(counts.values()) != rows:
        raise refuse(f"the label's positives, negatives and other values add up to {sum(counts.values())}, not the "
                     f"{rows} rows.")
    if not label["present"] and any(counts.values()):
        raise refuse("an absent label column has no positives, negatives or other values.")
    features = summary["features"]
    if not isinstance(features, list) or len(features) > MAX_FEATURES:
        raise refuse(f"features must be a list of at most {MAX_FEATURES:,} entries.")
    clean_features = [_feature(feature, rows, refuse) for feature in features]
    names = [feature["name"] for feature in clean_features]
    if len(set(names)) != len(names):
        raise refuse("feature names repeat.")
    if label["present"] and label_column in names:
        raise refuse(f"the label column {label_column!r} is listed as a feature too.")
    return {"rows": rows, "label_column": label_column, "label": {"present": label["present"], **counts},
            "features": clean_features}


def _exact_keys(value: Any, keys: set[str], what: str, refuse: Any) -> None:
    if not isinstance(value, dict):
        raise refuse(f"{what} must be a JSON object.")
    if set(value) != keys:
        missing, unknown = sorted(keys - set(value)), sorted(set(value) - keys)
        raise refuse(f"{what} must have exactly the keys {', '.join(sorted(keys))}"
                     + (f" (missing {', '.join(missing)})" if missing else "")
                     + (f" (unknown {', '.join(str(k)[:40] for k in unknown[:5])})" if unknown else "") + ".")


def _count(value: Any, what: str, most: int, refuse: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= most:
        raise refuse(f"{what} must be a whole number from 0 to {most:,}.")
    return value


def _feature(feature: Any, rows: int, refuse: Any) -> dict[str, Any]:
    _exact_keys(feature, {"name", "type", "missing"}, "each feature", refuse)
    name = feature["name"]
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_FEATURE_NAME:
        raise refuse(f"a feature name must be a non-empty string of at most {MAX_FEATURE_NAME} characters.")
    if feature["type"] not in FEATURE_TYPES:
        raise refuse(f"feature {name[:40]!r} has type {str(feature['type'])[:20]!r}; one of "
                     f"{', '.join(FEATURE_TYPES)}.")
    return {"name": name, "type": feature["type"], "missing": _count(feature["missing"], f"missing of {name[:40]!r}",
                                                                     rows, refuse)}
