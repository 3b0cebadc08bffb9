"""The code version recorded in every model version's provenance."""

import functools
import os
import subprocess
from pathlib import Path


@functools.cache
def code_version() -> str:
    """CONSORTIUM_VERSION if set (releases), else the git commit of this checkout, else 'unknown'."""
    if os.environ.get("CONSORTIUM_VERSION"):
        return os.environ["CONSORTIUM_VERSION"]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True,
                             text=True, timeout=5, check=True)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"
