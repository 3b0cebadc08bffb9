"""Input parsing for the study pages. Forms only parse and validate input; services do the writing."""

from typing import Any

from django import forms
from django.utils import timezone

from sites.models import Site
from studies.choices import ReviewDecision, RiskLevel
from studies.models import PROTOCOL_FIELDS, AgreementVersion, Participation, Study

LOCAL_DATETIME = forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M")


class FeatureNamesField(forms.CharField):
    """The protocol's declared features, one name per line, in the order the model takes them."""

    widget = forms.Textarea(attrs={"rows": 4})

    def prepare_value(self, value: Any) -> str:
        return "\n".join(value) if isinstance(value, list) else (value or "")

    def to_python(self, value: Any) -> list[str]:
        return [line.strip() for line in str(value or "").splitlines() if line.strip()]


class ProtocolForm(forms.ModelForm):
    """The title and protocol of a study. Never saved: its cleaned data goes to a service."""

    feature_names = FeatureNamesField(
        required=False, label="Feature names",
        help_text="One per line, in the order the model takes them; each site's registered data set is checked "
                  "against them, name by name. Leave empty to check only the number of features and the label.")

    class Meta:
        model = Study
        fields = ("title", *PROTOCOL_FIELDS)
        widgets = {"clinical_question": forms.Textarea(attrs={"rows": 3})}


class StudyCreateForm(ProtocolForm):
    agreement_text = forms.CharField(
        label="Data use agreement",
        widget=forms.Textarea(attrs={"rows": 8}),
        required=False,
        help_text="Becomes DUA v1. Sites sign exactly this text; you can also attach it later, before submitting.",
    )


class AgreementForm(forms.Form):
    text = forms.CharField(label="Agreement text", widget=forms.Textarea(attrs={"rows": 14}))


class DpiaForm(forms.Form):
    summary = forms.CharField(widget=forms.Textarea(attrs={"rows": 6}), required=False)
    risk_level = forms.ChoiceField(choices=RiskLevel.choices, initial=RiskLevel.MEDIUM)
    valid_until = forms.DateTimeField(
        required=False, widget=LOCAL_DATETIME, help_text=f"In {timezone.get_default_timezone_name()} time."
    )


class ActionForm(forms.Form):
    """Input of one action posted from a page; `target` is the study or participation acted on.

    `service_kwargs()` is what the service receives besides the actor and the target."""

    def __init__(self, data: Any = None, *, target: Study | Participation | None = None, **kwargs: Any) -> None:
        super().__init__(data, **kwargs)
        self.target = target

    def service_kwargs(self) -> dict[str, Any]:
        return dict(self.cleaned_data)


class NoInputForm(ActionForm):
    pass


class CommentForm(ActionForm):
    comment = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}), required=False)


class ReasonForm(ActionForm):
    reason = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}))


class OptionalReasonForm(ActionForm):
    reason = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}), required=False)


class JustificationForm(ActionForm):
    justification = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}))


class InviteForm(ActionForm):
    site = forms.ModelChoiceField(queryset=Site.objects.order_by("name"))


class SignForm(ActionForm):
    """The agreement version the signer was shown; the service refuses it if a newer one appeared since."""

    agreement = forms.ModelChoiceField(queryset=AgreementVersion.objects.none(), widget=forms.HiddenInput)

    def __init__(self, data: Any = None, *, target: Participation | None = None, **kwargs: Any) -> None:
        super().__init__(data, target=target, **kwargs)
        if target is not None:
            self.fields["agreement"].queryset = AgreementVersion.objects.filter(study_id=target.study_id)


class EthicsForm(ActionForm):
    """An ethics approval, with its dates read in the site's own time zone (`Site.tzinfo`).

    Validation runs with that zone active, so Django makes the entered local times aware in it
    (an approval valid until 23:59 in Amsterdam ends at 21:59 UTC in summer)."""

    reference = forms.CharField(max_length=200)
    valid_from = forms.DateTimeField(widget=LOCAL_DATETIME)
    valid_until = forms.DateTimeField(widget=LOCAL_DATETIME)

    def full_clean(self) -> None:
        if self.target is None:
            super().full_clean()
            return
        with timezone.override(self.target.site.tzinfo):
            super().full_clean()


class ProtocolReviewForm(forms.Form):
    decision = forms.ChoiceField(choices=ReviewDecision.choices, widget=forms.RadioSelect, label="Your site's decision")
    reason = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), required=False,
                             label="Reason (required to reject; the PI reads it)")
    # The hash the page showed: if the protocol changes meanwhile, the service refuses the review.
    protocol_sha256 = forms.CharField(widget=forms.HiddenInput, max_length=64)
