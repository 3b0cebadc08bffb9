"""`python -m sites.agent reconcile`: the site's own record beside the coordinator's, difference by difference.
Imports no Django."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

# What must agree for a round the site sent an update for.
COMPARED = (("update_sha256", "update SHA-256"), ("num_examples", "examples declared"),
            ("base_version", "base model version"), ("base_sha256", "base model SHA-256"))


def differences(local: Iterable[Mapping[str, Any]], coordinator: Iterable[Mapping[str, Any]]) -> list[str]:
    """Every way the two records disagree, one sentence each, by round; empty when they agree."""
    ours = {int(e["round"]): e for e in local}
    theirs = {int(r["round"]): r for r in coordinator}
    found = []
    for number in sorted(ours.keys() | theirs.keys()):
        mine, held = ours.get(number), theirs.get(number)
        if held is None:
            found.append(f"round {number}: this site sent an update (SHA-256 {mine['update_sha256'][:12]}...) that "
                         "the coordinator does not list")
        elif mine is None:
            found.append(f"round {number}: the coordinator lists an update from this site (SHA-256 "
                         f"{str(held.get('update_sha256'))[:12]}...) that this site's record does not hold")
        else:
            found.extend(f"round {number}: {label} differs: this site recorded {mine.get(key)!r}, the coordinator "
                         f"holds {held.get(key)!r}" for key, label in COMPARED if mine.get(key) != held.get(key))
    return found
