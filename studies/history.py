"""Governed records as they stood at a moment, from their history tables (django-simple-history).

Every governed model keeps a `history` of its saved states. `as_of(Model, at)` is the queryset the gate
reads: the current rows when `at` is None, else each row's last state saved at or before `at` (rows created
later are absent). The gate reads the same fields either way, so one function answers "now" and "then"."""

from datetime import datetime

from django.db import models
from django.utils import timezone


def as_of(model: type[models.Model], at: datetime | None) -> models.QuerySet:
    """`model`'s rows now (`at` None), or as they stood at `at`."""
    if at is None:
        return model.objects.all()
    if timezone.is_naive(at):
        raise ValueError("Governance as of a moment needs an aware moment.")
    return model.history.as_of(at)


def instance_as_of(instance: models.Model, at: datetime | None) -> models.Model | None:
    """`instance` as it stood at `at` (itself when `at` is None), or None if it did not exist yet."""
    if at is None:
        return instance
    try:
        return instance.history.as_of(at)
    except type(instance).DoesNotExist:
        return None
