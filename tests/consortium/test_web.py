from django import forms
from django.core.exceptions import ValidationError

from consortium.web import call_or_form_error


def test_it_shows_a_models_own_refusal_as_a_form_error_instead_of_a_server_error():
    def service(**kwargs):
        raise ValidationError({"dp_noise_multiplier": "Differential privacy works with averaging strategies only."})

    form = forms.Form(data={})
    form.is_valid()
    assert call_or_form_error(form, service, actor=None) is None
    assert form.non_field_errors() == ["Differential privacy works with averaging strategies only."]
