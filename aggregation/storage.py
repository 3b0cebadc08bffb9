"""The model store: safetensors files of updates and model versions under `settings.MODEL_STORE`, named by
their SHA-256 (`consortium.federated.codec.write_file`), and read back with that hash checked."""

from pathlib import Path

import torch
from django.conf import settings

from aggregation.models import ModelVersion
from consortium.federated import codec


def store(data: bytes, kind: str, study_id: int) -> tuple[str, str]:
    """Write safetensors bytes under the model store; returns (path relative to the store, SHA-256)."""
    path, digest = codec.write_file(data, Path(settings.MODEL_STORE) / kind / str(study_id))
    return str(path.relative_to(settings.MODEL_STORE)), digest


def stored_path(kind: str, study_id: int, digest: str) -> str:
    """Where `store` puts bytes of this SHA-256 (relative to the store), known before anything is written."""
    return str(Path(kind) / str(study_id) / codec.file_name(digest))


def load_bytes(relative: str) -> bytes:
    return (Path(settings.MODEL_STORE) / relative).read_bytes()


def absolute(relative: str) -> Path:
    return Path(settings.MODEL_STORE) / relative


def verified_bytes(version: ModelVersion) -> bytes:
    """A stored model version's file, after checking it still matches its recorded SHA-256."""
    data = load_bytes(version.path)
    if codec.sha256_hex(data) != version.sha256:
        raise RuntimeError(f"Stored model v{version.number} of study {version.study_id} does not match its SHA-256.")
    return data


def version_tensors(version: ModelVersion) -> dict[str, torch.Tensor]:
    """A stored model version's tensors (SHA-256 checked)."""
    data = verified_bytes(version)
    return codec.decode(data, expected=spec(version), max_bytes=len(data))


def spec(version: ModelVersion) -> codec.TensorSpec:
    return {name: (tuple(shape), dtype) for name, (shape, dtype) in version.spec.items()}
