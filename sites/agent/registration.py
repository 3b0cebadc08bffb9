"""The site's data set registration: for each study the site takes part in, the agent computes the summary of
its data file (row count, label balance, per feature its name, type and missing values; never rows), registers
it with the coordinator when the coordinator does not hold that very summary, and tells the site's staff, in
plain words and feature by feature, where the data file does not match the study's protocol. Imports no
Django."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from consortium.federated.dataset_schema import schema_mismatches, summary_sha256

from .client import AgentClient, ApiError, TokenRefused
from .data import DEFAULT_LABEL, Table


class Registrar:
    """Keeps the coordinator's registration of this site's data set in step with the data file."""

    def __init__(self, client: AgentClient, *, label: str | None, say: Callable[[str], None],
                 studies: set[int] | None = None):
        self.client, self.label, self.say = client, label, say
        self.studies = studies or set()  # empty: every study the site takes part in
        self._told: dict[int, tuple[str, str]] = {}  # per study, (protocol hash, summary hash) last reported

    def sync(self, table: Table) -> None:
        """Register, for every study of the site, the summary the coordinator does not hold yet; report each
        study's schema status once per change. A refusal is reported and the other studies go on; a refused
        token stops the agent (raised)."""
        try:
            studies = self.client.studies()
        except TokenRefused:
            raise
        except ApiError as exc:
            self.say(f"Could not list this site's studies to register its data set: {exc.detail}")
            return
        for study in studies:
            if self.studies and study.get("study_id") not in self.studies:
                continue
            try:
                self._sync_one(study, table)
            except TokenRefused:
                raise
            except ApiError as exc:
                self.say(f"{_title(study)}: the coordinator refused the data set registration (HTTP {exc.status}): "
                         f"{exc.detail}")

    def _sync_one(self, study: Mapping[str, Any], table: Table) -> None:
        protocol = study.get("protocol") or {}
        label = self.label or protocol.get("label_column") or DEFAULT_LABEL
        summary = table.summary(label)
        digest = summary_sha256(summary)
        if study.get("dataset_summary_sha256") != digest:
            answer = self.client.register_dataset(int(study["study_id"]), summary)
            mismatches = [str(line) for line in answer.get("mismatches") or []]
            registered = True
        else:
            mismatches = schema_mismatches(summary, feature_names=protocol.get("feature_names") or [],
                                           num_features=int(protocol.get("num_features") or 0), label_column=label)
            registered = False
        told = (str(study.get("protocol_sha256")), digest)
        if registered or self._told.get(study["study_id"]) != told:
            self.say(report(study, summary, mismatches, registered=registered))
        self._told[study["study_id"]] = told


def report(study: Mapping[str, Any], summary: Mapping[str, Any], mismatches: list[str], *, registered: bool) -> str:
    """What the site's staff read: the summary sent (counts only) and, when it does not match the protocol,
    every mismatch on its own line with what to do."""
    label = summary["label"]
    balance = (f"{label['positives']} positive, {label['negatives']} negative" if label["present"]
               else f"no label column {summary['label_column']!r}")
    missing = sum(feature["missing"] for feature in summary["features"])
    what = (f"{summary['rows']} rows ({balance}), {len(summary['features'])} features, {missing} missing values; "
            "no rows sent")
    head = f"{_title(study)}: {'registered' if registered else 'the coordinator holds'} this site's data set ({what})"
    if not mismatches:
        return f"{head}; it matches the study's protocol."
    lines = "\n".join(f"  - {line}" for line in mismatches)
    return (f"{head}. It does NOT match the study's protocol, so this site is not eligible for its rounds until "
            f"the data file is fixed (then restart the agent, or it notices the changed file):\n{lines}")


def _title(study: Mapping[str, Any]) -> str:
    return f"study {study.get('study_title', study.get('study_id'))!r}"
