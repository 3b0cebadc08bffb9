"""The contribution ledger: one row per (study, training round, site), computed from what is already
recorded (rounds, updates, model versions' provenance, the studies' history and the audit log), never kept
as a second copy. It answers what each site contributed to which model, and the audit event each row rests
on, so that a site admin or an auditor can reconcile it with the log (and with the hospital's own records).

A site's row in a round is
- `submitted`: its update was accepted (and, once the round aggregated into a version, included with the
  weight the strategy applied);
- `excluded`: accepted, then left out at aggregation because the gate no longer allowed the site (its reason);
- `refused`: it sent an update that was refused (the reason of its last refusal);
- `missing`: the gate counted it eligible when the round opened, and nothing arrived.
"""

import bisect
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from django.utils import timezone

from aggregation.audit_actions import AggregationAction
from aggregation.choices import RoundKind, UpdateStatus
from aggregation.models import Round, Update
from consortium.audit.exports import write_csv
from consortium.audit.models import AuditEvent, AuditOutcome
from sites.models import Site
from studies.models import AgreementSignature, Study

SUBMITTED, EXCLUDED, REFUSED, MISSING = "submitted", "excluded", "refused", "missing"
STATUSES = (SUBMITTED, EXCLUDED, REFUSED, MISSING)

# The audit events rows rest on.
OPENED, ACCEPTED = AggregationAction.ROUND_OPENED, AggregationAction.UPDATE_ACCEPTED
UPDATE_EXCLUDED, VERSION_CREATED = AggregationAction.UPDATE_EXCLUDED, AggregationAction.MODEL_VERSION_CREATED
SUBMIT_REFUSED = AggregationAction.UPDATE_SUBMIT


@dataclass(frozen=True)
class LedgerRow:
    """One site in one training round of one study. `audit_seq` is the sequence number of the audit event
    holding the gate's verdict the row rests on: the new version's event (which names every included site
    with its weight and update hash), the exclusion, the refusal, the acceptance, or the round's opening."""

    study_id: int
    study: str
    round: int
    round_id: int
    round_status: str
    site_id: int
    site: str
    status: str
    reason: str
    num_examples: int | None
    weight: float | None
    update_sha256: str
    base_version: int | None
    base_version_sha256: str
    resulting_version: int | None
    resulting_version_sha256: str
    protocol_sha256: str
    dua_version: int | None
    audit_seq: int | None
    gate_at_open: str
    gate_at_aggregation: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


COLUMNS = tuple(LedgerRow.__dataclass_fields__)
SORT_KEYS = ("round", "site", "status", "num_examples", "weight", "audit_seq")


def study_ledger(study: Study, *, site_id: int | None = None) -> list[LedgerRow]:
    """Every row of the study's ledger (only `site_id`'s, if given), by round then site. A constant number
    of queries whatever the number of rounds and sites."""
    rounds = list(Round.objects.filter(study=study, kind=RoundKind.TRAINING)
                  .select_related("base_version", "produced_version").order_by("number"))
    if not rounds:
        return []
    ids = [round_.pk for round_ in rounds]
    updates = Update.objects.filter(round__in=ids).only(
        "round_id", "site_id", "status", "exclusion_reason", "num_examples", "sha256")
    by_round: dict[int, dict[int, Update]] = {}
    for update in updates:
        by_round.setdefault(update.round_id, {})[update.site_id] = update
    events = _events(study, ids)
    protocols = _protocol_hashes(study)
    signatures = _signatures(study)
    rows: list[LedgerRow] = []
    names = _site_names(by_round, events)
    for round_ in rounds:
        for site in _sites_of(round_, by_round, events):
            if site_id is None or site == site_id:
                rows.append(_row(study, round_, site, names.get(site, f"Site {site}"), by_round, events, protocols,
                                 signatures))
    return sorted(rows, key=lambda row: (row.round, row.site))


def site_ledger(site: Site, studies: Iterable[Study]) -> list[LedgerRow]:
    """The site's rows across `studies` (those the reader may see), by study then round."""
    rows: list[LedgerRow] = []
    for study in studies:
        rows.extend(study_ledger(study, site_id=site.pk))
    return sorted(rows, key=lambda row: (row.study_id, row.round))


def filter_rows(rows: list[LedgerRow], *, round: int | None = None, site: int | None = None,
                status: str | None = None, sort: str = "round", descending: bool = False) -> list[LedgerRow]:
    """The rows matching every filter given, sorted by `sort` (then round and site)."""
    kept = [row for row in rows if (round is None or row.round == round) and (site is None or row.site_id == site)
            and (status is None or row.status == status)]
    if sort not in SORT_KEYS:
        raise ValueError(f"Sort by one of {', '.join(SORT_KEYS)}.")

    def key(row: LedgerRow) -> tuple:
        value = row.site if sort == "site" else getattr(row, sort)
        return (value if value is not None else 0, row.study_id, row.round, row.site)

    # Rows without a value (no weight, no examples) come last in either direction.
    valued = sorted((row for row in kept if getattr(row, sort) is not None), key=key, reverse=descending)
    return valued + sorted((row for row in kept if getattr(row, sort) is None), key=key)


def totals(rows: list[LedgerRow]) -> dict[str, Any]:
    """What reconciles with the audit log: rows per status, and the examples and weight that went into models."""
    included = [row for row in rows if row.weight is not None]
    return {"rows": len(rows), **{status: sum(row.status == status for row in rows) for status in STATUSES},
            "included": len(included), "included_examples": sum(row.num_examples or 0 for row in included),
            "weight": sum(row.weight for row in included)}


def ledger_csv(rows: list[LedgerRow]) -> str:
    return write_csv(COLUMNS, ([getattr(row, name) for name in COLUMNS] for row in rows))


def ledger_jsonl(rows: list[LedgerRow]) -> str:
    return "".join(json.dumps(row.as_dict(), sort_keys=True, separators=(",", ":")) + "\n" for row in rows)


# --- how a row is made ---------------------------------------------------------------------------------


@dataclass
class _Events:
    opened: dict[int, dict[str, Any]]  # round id -> {seq, eligible}
    accepted: dict[str, int]  # update id -> seq
    excluded: dict[str, int]  # update id -> seq
    created: dict[str, int]  # version id -> seq
    refused: dict[tuple[int, int], dict[str, Any]]  # (round id, site id) -> the last refusal {seq, reason}


def _events(study: Study, round_ids: list[int]) -> _Events:
    """The audit events the rows rest on: two queries (a refusal may name no study, only the round)."""
    found = _Events({}, {}, {}, {}, {})
    rows = AuditEvent.objects.filter(study_id=study.pk, outcome=AuditOutcome.OK,
                                     action__in=(OPENED, ACCEPTED, UPDATE_EXCLUDED, VERSION_CREATED))
    for event in rows.values("seq", "action", "object_id", "details").order_by("seq"):
        if event["action"] == OPENED:
            found.opened[int(event["object_id"])] = {"seq": event["seq"],
                                                     "eligible": event["details"].get("eligible_site_ids") or []}
        else:
            target = {ACCEPTED: found.accepted, UPDATE_EXCLUDED: found.excluded, VERSION_CREATED: found.created}
            target[event["action"]][event["object_id"]] = event["seq"]
    refusals = AuditEvent.objects.filter(action=SUBMIT_REFUSED, outcome=AuditOutcome.DENIED,
                                         details__round_id__in=round_ids, site_id__isnull=False)
    for event in refusals.values("seq", "site_id", "details").order_by("seq"):
        found.refused[(event["details"]["round_id"], event["site_id"])] = {
            "seq": event["seq"], "reason": event["details"].get("reason", "")}
    return found


def _sites_of(round_: Round, by_round: dict[int, dict[int, Update]], events: _Events) -> set[int]:
    """Who belongs in the round's rows: the sites eligible when it opened, and any that sent something."""
    refused = {site for (round_id, site) in events.refused if round_id == round_.pk}
    return {*events.opened.get(round_.pk, {}).get("eligible", []), *by_round.get(round_.pk, {}), *refused}


def _site_names(by_round: dict[int, dict[int, Update]], events: _Events) -> dict[int, str]:
    ids = {site for updates in by_round.values() for site in updates} | {site for _, site in events.refused}
    ids |= {site for opened in events.opened.values() for site in opened["eligible"]}
    return dict(Site.objects.filter(pk__in=ids).values_list("pk", "name"))


def _protocol_hashes(study: Study) -> tuple[list[datetime], list[str]]:
    """The study's protocol hash after each of its saved states (its history), in time order."""
    states = list(study.history.order_by("history_date", "history_id"))
    return [state.history_date for state in states], [state.instance.protocol_sha256() for state in states]


def _protocol_at(protocols: tuple[list[datetime], list[str]], moment: datetime, fallback: str) -> str:
    index = bisect.bisect_right(protocols[0], moment) - 1
    return protocols[1][index] if index >= 0 else fallback


def _signatures(study: Study) -> dict[int, list[tuple[datetime, int]]]:
    """Per site, the DUA versions it signed with when, in time order."""
    signed: dict[int, list[tuple[datetime, int]]] = {}
    for site, version, when in (AgreementSignature.objects.filter(agreement__study=study)
                                .values_list("site_id", "agreement__version", "signed_at").order_by("signed_at")):
        signed.setdefault(site, []).append((when, version))
    return signed


def _dua_at(signed: list[tuple[datetime, int]], moment: datetime) -> int | None:
    """The newest version the site had signed by `moment`."""
    versions = [version for when, version in signed if when <= moment]
    return max(versions) if versions else None


def _row(study: Study, round_: Round, site: int, name: str, by_round: dict[int, dict[int, Update]], events: _Events,
         protocols: tuple[list[datetime], list[str]], signatures: dict[int, list[tuple[datetime, int]]]) -> LedgerRow:
    update = by_round.get(round_.pk, {}).get(site)
    version = getattr(round_, "produced_version", None)
    provenance = version.provenance if version else {}
    weights = {c["site_id"]: c for c in provenance.get("contributors") or []}
    refusal = events.refused.get((round_.pk, site))
    weight, reason, seq = None, "", None
    if update is not None and update.status == UpdateStatus.EXCLUDED:
        status, reason, seq = EXCLUDED, update.exclusion_reason, events.excluded.get(str(update.pk))
    elif update is not None:
        status, seq = SUBMITTED, events.accepted.get(str(update.pk))
        if version is not None and site in weights:
            weight, seq = weights[site]["weight"], events.created.get(str(version.pk))
    elif refusal is not None:
        status, reason, seq = REFUSED, refusal["reason"], refusal["seq"]
    else:
        status, seq = MISSING, events.opened.get(round_.pk, {}).get("seq")
    decided = round_.aggregation_started_at or round_.closed_at or timezone.now()
    base = round_.base_version
    return LedgerRow(
        study_id=study.pk, study=study.title, round=round_.number, round_id=round_.pk, round_status=round_.status,
        site_id=site, site=name, status=status, reason=reason,
        num_examples=update.num_examples if update is not None else None, weight=weight,
        update_sha256=update.sha256 if update is not None else "",
        base_version=base.number if base else None, base_version_sha256=base.sha256 if base else "",
        resulting_version=version.number if version else None,
        resulting_version_sha256=version.sha256 if version else "",
        protocol_sha256=provenance.get("protocol_sha256") or _protocol_at(protocols, round_.opened_at,
                                                                           study.protocol_sha256()),
        dua_version=_dua_at(signatures.get(site, []), decided), audit_seq=seq,
        gate_at_open=round_.opened_at.isoformat(),
        gate_at_aggregation=round_.aggregation_started_at.isoformat() if round_.aggregation_started_at else "",
    )
