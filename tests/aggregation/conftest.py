from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _temporary_model_store(model_store: Path) -> Path:
    """Every aggregation test keeps its tensors in a temporary folder (`model_store`, tests/conftest.py)."""
    return model_store
