"""Disclosure control: the one policy on who sees which per-site figures of a study (metrics, norms, times,
example counts), applied alike by the pages, the live event stream and the exports.

The study's PI, DPOs, auditors and consortium admins see every site's figures. Anyone else who may see the
study (a site admin) sees the figures of the sites they administer, and figures pooled over other sites only
when at least `Study.disclosure_min_sites` (k) sites are in the pool; a smaller pool is suppressed, with the
reason. Which sites take part, and whether they have submitted, are not figures: everyone sees them.

Min-max bands and the like are not pools: a minimum is one site's value, so they are full-disclosure only.
"""

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser

from consortium.roles import sees_everything
from sites.selectors import administered_site_ids
from studies.event_registry import event_sentence, event_tone
from studies.models import Study
from studies.permissions import can_lead, studies_for

# The per-site figures of each live event kind (keys of its payload), withheld from other sites' viewers.
SITE_FIGURES = ("num_examples", "weight_norm", "delta_norm", "metrics", "elapsed_seconds", "received_at", "count")


@dataclass(frozen=True)
class Disclosure:
    """What one viewer may see of one study's per-site figures."""

    full: bool
    own_sites: frozenset[int]
    min_sites: int

    def sees_site(self, site_id: int | str | None) -> bool:
        if self.full:
            return True
        try:
            return int(site_id) in self.own_sites  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return False

    def sees_pool(self, site_ids: Iterable[int | str] | int) -> bool:
        """A figure pooled over these sites (or over this many): visible to the full view, or over at least k."""
        if self.full:
            return True
        count = site_ids if isinstance(site_ids, int) else len(set(map(str, site_ids)))
        return count >= self.min_sites

    def suppressed_reason(self, count: int | None = None) -> str:
        pooled = "fewer sites" if count is None else f"{count} site{'s' if count != 1 else ''}"
        return (f"Suppressed: pooled over {pooled}; figures of other sites are shown to site admins only over "
                f"at least {self.min_sites}.")


FULL = Disclosure(True, frozenset(), 0)


def disclosure_for(user: AbstractBaseUser | AnonymousUser, study: Study) -> Disclosure:
    """The viewer's disclosure of `study` (one or two queries); the caller already knows they may see the study."""
    if sees_everything(user) or can_lead(user, study):
        return FULL
    return Disclosure(False, frozenset(administered_site_ids(user)), study.disclosure_min_sites)


def disclosures_for(user: AbstractBaseUser | AnonymousUser, studies: Iterable[Study]) -> dict[int, Disclosure]:
    """`disclosure_for` for many studies (a dashboard of studies), in two queries whatever their number."""
    studies = list(studies)
    if sees_everything(user):
        return {study.pk: FULL for study in studies}
    led = set(studies_for(user, "lead").filter(pk__in=[study.pk for study in studies]).values_list("pk", flat=True))
    own = frozenset(administered_site_ids(user))
    return {study.pk: FULL if study.pk in led else Disclosure(False, own, study.disclosure_min_sites)
            for study in studies}


def disclose_event(kind: str, payload: dict[str, Any], disclosure: Disclosure) -> dict[str, Any]:
    """The payload of a live event as this viewer may see it: other sites' figures withheld, pools of fewer than
    k sites suppressed with the reason. The full view gets the payload unchanged."""
    if disclosure.full:
        return payload
    data = dict(payload)
    if "site_id" in data and not disclosure.sees_site(data["site_id"]):
        for key in SITE_FIGURES:
            if key in data:
                data[key] = {} if key == "metrics" else None
    if "evaluated_by_site" in data:  # a round's metrics: the pooled evaluation and figures by site
        data = _disclose_round_metrics(data, disclosure)
    return data


def _disclose_round_metrics(data: dict[str, Any], disclosure: Disclosure) -> dict[str, Any]:
    evaluated = data.get("evaluated_by_site") or {}
    if data.get("global") and not disclosure.sees_pool(evaluated.keys()):
        data["global"] = {}
        data["global_suppressed"] = disclosure.suppressed_reason(len(evaluated))
    data["evaluated_by_site"] = {key: value for key, value in evaluated.items() if disclosure.sees_site(key)}
    data["sites"] = {key: value for key, value in (data.get("sites") or {}).items() if disclosure.sees_site(key)}
    return data


def disclose_message(message: dict[str, Any], disclosure: Disclosure) -> dict[str, Any]:
    """A websocket message (`StudyEvent.as_message`) as this viewer may see it, its sentence told anew from
    what remains."""
    if disclosure.full or message.get("type") != "event":
        return message
    data = disclose_event(message["kind"], message.get("data") or {}, disclosure)
    return {**message, "data": data, "text": event_sentence(message["kind"], data),
            "tone": event_tone(message["kind"], data)}
