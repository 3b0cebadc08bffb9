"""THE filter of the audit log: one definition for the audit page, the API (list and exports) and
`manage.py audit_export`.

`AuditFilterForm` parses what a person picks on the page, an API query string or the command's options
(study, site, person, time window, object, action prefix, outcome); an unknown value is an error, never
ignored. Its `audit_filter()` is an `AuditFilter`, which narrows a queryset (`apply`) and states the same
condition as an export bundle's filter (`spec`, `consortium.evidence.filters`), so the rows a page lists,
an API export streams and a bundle proves complete are the same.
"""

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from django import forms
from django.apps import apps
from django.contrib.auth import get_user_model
from django.db.models import QuerySet
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from consortium.audit.models import AuditOutcome
from consortium.evidence.canonical import format_timestamp

FILTER_FIELDS = ("study", "site", "actor", "since", "until", "object_type", "object_id", "action", "outcome")
PICKER = forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M")
OUTCOMES = {"ok": AuditOutcome.OK, "done": AuditOutcome.OK, "denied": AuditOutcome.DENIED}


@dataclass(frozen=True)
class AuditFilter:
    """What a reader asked for; every condition must hold. `since` is inclusive, `until` exclusive."""

    study_id: int | None = None
    site_id: int | None = None
    actor_user_id: int | None = None
    since: datetime | None = None
    until: datetime | None = None
    object_type: str = ""
    object_id: str = ""
    action_prefix: str = ""
    outcome: str = ""

    def apply(self, events: QuerySet) -> QuerySet:
        conditions: dict[str, Any] = {}
        for name in ("study_id", "site_id", "actor_user_id"):
            if getattr(self, name) is not None:
                conditions[name] = getattr(self, name)
        for name in ("object_type", "object_id", "outcome"):
            if getattr(self, name):
                conditions[name] = getattr(self, name)
        if self.since is not None:
            conditions["created_at__gte"] = self.since
        if self.until is not None:
            conditions["created_at__lt"] = self.until
        if self.action_prefix:
            conditions["action__startswith"] = self.action_prefix
        return events.filter(**conditions)

    def spec(self) -> dict[str, Any]:
        """The same condition as an export bundle's filter (`consortium.evidence.filters.EventFilter`)."""
        spec: dict[str, Any] = {}
        for name in ("study_id", "site_id", "actor_user_id"):
            if getattr(self, name) is not None:
                spec[name] = getattr(self, name)
        for name in ("object_type", "object_id", "outcome"):
            if getattr(self, name):
                spec[name] = getattr(self, name)
        window = {}
        if self.since is not None:
            window["gte"] = format_timestamp(self.since)
        if self.until is not None:
            window["lt"] = format_timestamp(self.until)
        if window:
            spec["created_at"] = window
        if self.action_prefix:
            spec["action"] = {"prefix": self.action_prefix}
        return spec

    def details(self) -> dict[str, Any]:
        """The filter as the audit event of a read records it (only what was set)."""
        values = {name: value for name, value in asdict(self).items() if value not in (None, "")}
        for name in ("since", "until"):
            if name in values:
                values[name] = format_timestamp(values[name])
        return values


class AwareDateTimeField(forms.DateTimeField):
    """An ISO 8601 moment. With `require_offset` (API, command) a moment without its UTC offset is refused,
    never guessed; the page's date-time picker gives local times, read in the server's time zone."""

    def __init__(self, *, require_offset: bool = False, **kwargs: Any) -> None:
        self.require_offset = require_offset
        super().__init__(**kwargs)

    def to_python(self, value: Any) -> datetime | None:
        if isinstance(value, str) and value.strip():
            try:
                parsed = parse_datetime(value.strip())
            except ValueError:
                parsed = None
            if parsed is None:
                raise forms.ValidationError("Give an ISO 8601 date and time, e.g. 2026-06-30T14:00:00+02:00.",
                                            code="invalid")
            if timezone.is_naive(parsed):
                if self.require_offset:
                    raise forms.ValidationError("Give the UTC offset too (e.g. +02:00 or Z).", code="naive")
                parsed = timezone.make_aware(parsed)
            return parsed
        return super().to_python(value)


class AuditFilterForm(forms.Form):
    """The audit log's filters as a person picks them: a study by its title, a site, a person, a date range."""

    study = forms.TypedChoiceField(required=False, coerce=int, empty_value=None, label="Study")
    site = forms.ChoiceField(required=False, label="Site")
    actor = forms.ChoiceField(required=False, label="Person")
    since = AwareDateTimeField(required=False, label="From", widget=PICKER)
    until = AwareDateTimeField(required=False, label="Until", widget=PICKER)
    object_type = forms.CharField(required=False, max_length=100, label="Object type",
                                  help_text="e.g. aggregation.modelversion")
    object_id = forms.CharField(required=False, max_length=64, label="Object id")
    action = forms.CharField(required=False, max_length=100, label="Action starts with",
                             help_text="For example studies.participation or consortium.audit.")
    outcome = forms.ChoiceField(required=False, label="Outcome",
                                choices=[("", "Any"), ("ok", "Done"), ("denied", "Denied"), ("done", "Done")])

    def __init__(self, *args: Any, require_offset: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        study_model, site_model = apps.get_model("studies", "Study"), apps.get_model("sites", "Site")
        self.fields["study"].choices = [("", "Any study"), *study_model.objects.order_by("title", "pk")
                                        .values_list("pk", "title")]
        self.fields["site"].choices = [("", "Any site"), *site_model.objects.order_by("name")
                                       .values_list("code", "name")]
        self.fields["actor"].choices = [("", "Anyone"), *((name, name) for name in get_user_model().objects
                                        .order_by("username").values_list("username", flat=True))]
        for name in ("since", "until"):
            self.fields[name].require_offset = require_offset
        self.order_fields(FILTER_FIELDS)

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        since, until = data.get("since"), data.get("until")
        if since and until and since >= until:
            raise forms.ValidationError("'From' must be before 'Until'.", code="empty_window")
        return data

    def audit_filter(self) -> AuditFilter:
        """The filter, once the form is valid."""
        data = self.cleaned_data
        site_id = (apps.get_model("sites", "Site").objects.filter(code=data["site"]).values_list("pk", flat=True)
                   .first() if data.get("site") else None)
        user_id = (get_user_model().objects.filter(username=data["actor"]).values_list("pk", flat=True).first()
                   if data.get("actor") else None)
        return AuditFilter(study_id=data.get("study"), site_id=site_id, actor_user_id=user_id,
                           since=data.get("since"), until=data.get("until"), object_type=data.get("object_type", ""),
                           object_id=data.get("object_id", ""), action_prefix=data.get("action", ""),
                           outcome=OUTCOMES.get(data.get("outcome") or "", ""))

    def error_text(self) -> str:
        """The errors as one sentence per field, for a 400 or a command's message."""
        return " ".join(f"{name}: {' '.join(messages)}" if name != "__all__" else " ".join(messages)
                        for name, messages in self.errors.items())


def parse_filter(data: dict[str, Any], *, require_offset: bool = True) -> tuple[AuditFilterForm, AuditFilter | None]:
    """Parse filters given as text (API query, command options): the form (with its errors) and the filter."""
    unknown = sorted(set(data) - set(FILTER_FIELDS))
    if unknown:
        raise ValueError(f"Unknown filter: {', '.join(unknown)} (known: {', '.join(FILTER_FIELDS)}).")
    form = AuditFilterForm(data={k: v for k, v in data.items() if v not in (None, "")}, require_offset=require_offset)
    return form, (form.audit_filter() if form.is_valid() else None)
