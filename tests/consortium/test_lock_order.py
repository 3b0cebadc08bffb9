"""The one lock order (`consortium.locks`) holds only if every row lock is taken in its mode: a bare
`select_for_update()` (FOR UPDATE) blocks the foreign-key checks other transactions run at commit
under the audit chain's lock, and brings back the deadlock of issue #9."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
APPS = ("consortium", "sites", "studies", "aggregation")


def test_it_takes_every_row_lock_through_the_lock_order_helper():
    offenders = [
        f"{path.relative_to(ROOT)}:{number}"
        for app in APPS
        for path in sorted((ROOT / app).rglob("*.py"))
        if path != ROOT / "consortium" / "locks.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"\.select_for_update\(", line)
    ]
    assert offenders == [], "lock rows with consortium.locks.locked(...), not select_for_update(): " + str(offenders)
