"""Small presentation helpers for the study pages."""

from django import template

register = template.Library()

CHECK_LABELS = {
    "study_active": "Study active",
    "approvals": "Approvals (PI and DPO)",
    "dpia": "DPIA",
    "privacy_budget": "Privacy budget (ε)",
    "quorum": "Quorum",
    "participation": "Participation",
    "agreement_signed": "Current DUA signed",
    "ethics": "Ethics approval",
}


@register.filter
def check_label(name: str) -> str:
    """The human name of a gate check."""
    return CHECK_LABELS.get(name, name.replace("_", " ").capitalize())


@register.filter
def truthy(value: object) -> str:
    """The string true or false, for data attributes that browser tests read."""
    return "true" if value else "false"
