"""The agent's own record: what this site sent, what it declined, and the coordinator's signed checkpoints it
saw. Append-only JSON lines, each carrying the SHA-256 of the line before it, so an edited or removed line is
found (`LocalRecord.entries` checks the chain). Imports no Django.

It is the site's evidence, kept at the site: `python -m sites.agent reconcile` compares it with the
coordinator's ledger.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

GENESIS = "0" * 64


class RecordError(Exception):
    """The local record is unreadable or its chain is broken: someone edited, removed or reordered a line."""


def default_record_path(site_code: str) -> str:
    """One record per site, in the directory the agent runs in."""
    return f"consortium-agent-record-{site_code}.jsonl"


def _line_hash(prev: str, body: Mapping[str, Any]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256((prev + canonical).encode("utf-8")).hexdigest()


class LocalRecord:
    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)

    def entries(self) -> list[dict[str, Any]]:
        """Every entry, oldest first, after checking the whole chain."""
        return list(self._checked())

    def _checked(self) -> Iterator[dict[str, Any]]:
        if not self.path.exists():
            return
        prev = GENESIS
        with self.path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                try:
                    entry = json.loads(line)
                    body = {k: v for k, v in entry.items() if k not in ("prev", "hash")}
                    valid = entry["prev"] == prev and entry["hash"] == _line_hash(prev, body)
                except (ValueError, KeyError, TypeError):
                    valid = False
                if not valid:
                    raise RecordError(f"{self.path}, line {number}: the record's chain is broken there (a line was "
                                      "edited, removed or reordered). It can no longer be trusted as evidence.")
                prev = entry["hash"]
                yield body

    def _last_hash(self) -> str:
        last = GENESIS
        for entry in self._raw_lines():
            last = entry
        return last

    def _raw_lines(self) -> Iterator[str]:
        if self.path.exists():
            with self.path.open(encoding="utf-8") as handle:
                for line in handle:
                    if line.strip():
                        yield json.loads(line)["hash"]

    def append(self, kind: str, **fields: Any) -> dict[str, Any]:
        body = {"kind": kind, "at": datetime.now(UTC).isoformat(timespec="seconds"), **fields}
        prev = self._last_hash()
        line = json.dumps({**body, "prev": prev, "hash": _line_hash(prev, body)}, sort_keys=True,
                          separators=(",", ":"), ensure_ascii=False)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(line + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        return body

    def updates(self, study_id: int | None = None) -> list[dict[str, Any]]:
        return [e for e in self.entries() if e["kind"] == "update" and (study_id is None or e["study_id"] == study_id)]

    def rounds_since(self, moment: datetime) -> int:
        return sum(1 for e in self.entries() if e["kind"] == "update" and datetime.fromisoformat(e["at"]) >= moment)

    def rounds_in_last_day(self) -> int:
        return self.rounds_since(datetime.now(UTC) - timedelta(days=1))
