"""Input parsing for the consortium-wide pages, and the rule every new username follows."""

from django import forms
from django.contrib.auth.forms import AdminUserCreationForm, UserChangeForm
from django.core.exceptions import ValidationError

from consortium.audit.exports import FORMULA_STARTS
from consortium.request_limits import MAX_ID

FORMULA_USERNAME = (
    "A username may not start with =, +, -, @, a tab or a carriage return: spreadsheets opening the "
    "audit log's CSV would read it as a formula. Start it with a letter or a digit."
)


def validate_username_start(username: str) -> None:
    """Refuse a new username a spreadsheet would run as a formula (the CSV export also neutralises them)."""
    if username.startswith(FORMULA_STARTS):
        raise ValidationError(FORMULA_USERNAME, code="formula_username")


class ConsortiumUserCreationForm(AdminUserCreationForm):
    def clean_username(self) -> str:
        username = super().clean_username()
        validate_username_start(username or "")
        return username


class ConsortiumUserChangeForm(UserChangeForm):
    def clean_username(self) -> str:
        username = self.cleaned_data.get("username") or ""
        if "username" in self.changed_data:  # existing names stay; a rename is a new name
            validate_username_start(username)
        return username


class AuditFilterForm(forms.Form):
    study = forms.IntegerField(required=False, min_value=1, max_value=MAX_ID, label="Study id")
    action = forms.CharField(
        required=False,
        max_length=100,
        label="Action starts with",
        help_text="For example studies.participation or consortium.audit.",
    )
