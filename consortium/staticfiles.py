"""plotly.js as a static file, straight from the installed plotly package.

Dashboards must work offline (hospitals often are), so the script is served by us, never a CDN; taking
it from the package we already install keeps one copy, in step with the Python side. Only this one file
is published, not the package's other data (datasets, templates, the widget bundle)."""

import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from django.contrib.staticfiles.finders import BaseFinder
from django.core.files.storage import FileSystemStorage

PREFIX = "vendor/plotly"
FILENAME = "plotly.min.js"


def _bundle_dir() -> Path:
    return Path(importlib.util.find_spec("plotly").origin).parent / "package_data"


class PlotlyFinder(BaseFinder):
    """Finds `vendor/plotly/plotly.min.js` (for runserver, WhiteNoise and collectstatic)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.storage = FileSystemStorage(location=_bundle_dir())
        self.storage.prefix = PREFIX

    def check(self, **kwargs: Any) -> list:
        return []

    def find(self, path: str, find_all: bool = False, **kwargs: Any) -> str | list[str]:
        # Not found is [] either way, as Django's own finders answer (None would count as a match).
        found = [str(_bundle_dir() / FILENAME)] if path == f"{PREFIX}/{FILENAME}" else []
        return found if find_all or not found else found[0]

    def list(self, ignore_patterns: list[str] | None) -> Iterator[tuple[str, FileSystemStorage]]:
        yield FILENAME, self.storage
