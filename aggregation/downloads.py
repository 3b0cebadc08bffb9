"""The HTTP answer carrying a model file, shared by the agent API and the model version page."""

from django.http import HttpResponse

from aggregation.models import ModelVersion


def model_file_response(version: ModelVersion, data: bytes) -> HttpResponse:
    """The safetensors bytes with their SHA-256 and version in headers, as a file download."""
    response = HttpResponse(data, content_type="application/octet-stream")
    response["X-Model-SHA256"] = version.sha256
    response["X-Model-Version"] = str(version.number)
    response["Content-Disposition"] = f'attachment; filename="study{version.study_id}-v{version.number}.safetensors"'
    return response
