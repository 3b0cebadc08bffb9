"""Presentation helpers for rounds and model versions, and the rounds summary on the study page.

The study app must not import aggregation; its template loads this library instead (`{% load rounds_tags %}`)."""

from numbers import Real
from typing import Any

from django import template

from aggregation import selectors
from studies.disclosure import FULL, Disclosure
from studies.models import Study

register = template.Library()

SETTING_LABELS = {
    "server_learning_rate": "Server learning rate",
    "trim_fraction": "Trimmed fraction",
    "byzantine_sites": "Byzantine sites tolerated",
    "dp_noise_multiplier": "DP noise multiplier",
    "dp_clip_norm": "DP clipping norm",
}


@register.inclusion_tag("aggregation/_rounds_summary.html")
def rounds_summary(study: Study, disclosure: Disclosure = FULL) -> dict[str, Any]:
    """The "Federated rounds" panel of the study page: a constant two queries."""
    return {"study": study, "summary": selectors.rounds_summary(study), "disclosure": disclosure}


@register.filter
def sees_site(disclosure: Disclosure | None, site_id: int) -> bool:
    """Whether the viewer may see this site's figures (`studies.disclosure`); no policy given: the full view."""
    return disclosure is None or disclosure.sees_site(site_id)


@register.filter
def sees_pool(disclosure: Disclosure | None, evaluation: dict[str, Any] | None) -> bool:
    """Whether the viewer may see a model version's pooled evaluation (over the sites that evaluated it)."""
    return disclosure is None or disclosure.sees_pool(((evaluation or {}).get("sites") or {}).keys())


@register.filter
def metric(value: Any, digits: int = 3) -> str:
    """A metric as people read it: a number to `digits` decimals, or a dash when it was not reported."""
    if isinstance(value, bool) or not isinstance(value, Real):
        return "—" if value in (None, "") else str(value)
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}"


@register.filter
def setting_label(name: str) -> str:
    """The human name of a strategy setting."""
    return SETTING_LABELS.get(name, name.replace("_", " ").capitalize())


@register.filter
def weight_applied(contributor: dict[str, Any] | None) -> str:
    """The weight a contributing update counted for, as a percentage of the model; a strategy that weights no
    update (median, trimmed mean) says so; a model aggregated before weights were recorded says that."""
    if not contributor:
        return "—"
    if "weight" not in contributor:
        return "not recorded"
    weight = contributor["weight"]
    return "not weighted" if weight is None else f"{weight:.1%}"


@register.filter
def filesize(size: int) -> str:
    """Bytes with their unit (kB, MB) and the exact count, so a hash check can be matched to the file."""
    for unit, scale in (("MB", 1_000_000), ("kB", 1_000)):
        if size >= scale:
            return f"{size / scale:.1f} {unit} ({size:,} bytes)"
    return f"{size:,} bytes"
