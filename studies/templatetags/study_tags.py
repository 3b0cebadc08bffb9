"""Small presentation helpers for the study pages."""

from django import template

from studies.choices import GateCheck

register = template.Library()


@register.filter
def check_label(name: str) -> str:
    """The human name of a gate check."""
    return GateCheck(name).label if name in GateCheck.values else name.replace("_", " ").capitalize()


@register.filter
def truthy(value: object) -> str:
    """The string true or false, for data attributes that browser tests read."""
    return "true" if value else "false"
