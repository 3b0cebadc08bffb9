"""Input parsing for the consortium-wide pages."""

from django import forms


class AuditFilterForm(forms.Form):
    study = forms.IntegerField(required=False, min_value=1, label="Study id")
    action = forms.CharField(
        required=False,
        max_length=100,
        label="Action starts with",
        help_text="For example studies.participation or consortium.audit.",
    )
