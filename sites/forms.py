"""Input parsing for the agent token section of the site page. Forms parse; services write."""

from django import forms

from sites.models import AgentToken


class AgentTokenCreateForm(forms.Form):
    name = forms.CharField(
        max_length=AgentToken._meta.get_field("name").max_length,
        label="Name",
        help_text="Where the agent runs, e.g. 'GPU box in radiology'. Shown here and in the audit log.",
    )


class AgentTokenRevokeForm(forms.Form):
    # Blank passes parsing on purpose: the service says a reason is needed, and audits the refusal.
    reason = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}), required=False)


class FlowerNodeRegisterForm(forms.Form):
    name = forms.CharField(max_length=100, label="Name",
                           help_text="Where the SuperNode runs, e.g. 'Flower box in radiology'.")
    # Blank passes parsing on purpose: the service says what a key must be, and audits the refusal.
    public_key = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), required=False, label="Public key",
                                 help_text="The SuperNode's public key: the line of its .pub file "
                                           "(ecdsa-sha2-nistp384 ..., from ssh-keygen -t ecdsa -b 384) or PEM.")
