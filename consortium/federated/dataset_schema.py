"""A site's data set summary against the schema its study's protocol declares, feature by feature. Shared by the
coordinator (the gate's `dataset_registered` check) and the site agent (which tells its staff the same report
in plain words before it sends anything). Imports no Django.

The summary (what the agent registers; never rows):
    {"rows": 245, "label_column": "target",
     "label": {"present": true, "positives": 150, "negatives": 95, "other": 0},
     "features": [{"name": "mean radius", "type": "float", "missing": 0}, ...]}
`features` are the data file's columns but the label, in file order; `label.other` counts label cells that are
neither 0 nor 1 (missing included); a label column absent from the file has every count 0.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

FEATURE_TYPES = ("binary", "integer", "float")


def summary_sha256(summary: Mapping[str, Any]) -> str:
    """A fingerprint of the summary (canonical JSON): the agent registers again only when it changes."""
    return hashlib.sha256(json.dumps(summary, sort_keys=True, separators=(",", ":")).encode("utf-8")).hexdigest()


def schema_mismatches(summary: Mapping[str, Any], *, feature_names: Sequence[str], num_features: int,
                      label_column: str) -> list[str]:
    """Every way the registered data set differs from the protocol's schema, one plain sentence each; empty when
    it matches. With `feature_names` declared, features are matched by name (the agent puts them in the
    protocol's order); without, only their count and the label column are checked."""
    problems: list[str] = []
    label = summary.get("label") or {}
    if summary.get("label_column") != label_column:
        problems.append(f"registered with label column {summary.get('label_column')!r}, but the protocol's label "
                        f"column is {label_column!r}")
    elif not label.get("present"):
        problems.append(f"label column {label_column!r} absent")
    elif label.get("other"):
        problems.append(f"label column {label_column!r} holds {label['other']} value(s) that are not 0 or 1 "
                        "(or are missing)")
    names = [str(feature.get("name")) for feature in summary.get("features") or []]
    if feature_names:
        have = set(names)
        problems += [f"missing feature {name!r}" for name in feature_names if name not in have]
        declared = set(feature_names)
        problems += [f"unexpected feature {name!r}" for name in names if name not in declared]
    if len(names) != num_features:
        problems.append(f"wrong count: {len(names)} feature column(s), the protocol expects {num_features}")
    return problems
