"""Synthetic audit logs, bundles written from them, and a tamperer that (like a dishonest coordinator
holding the key) can re-sign the manifest after editing a file."""

import json
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from consortium.evidence import bundle as fmt
from consortium.evidence import signing
from consortium.evidence.memory import MemoryLog
from consortium.evidence.verifier import verify_bundle

START = datetime(2025, 1, 6, 9, 0, tzinfo=UTC)
ACTIONS = ["studies.study.viewed", "studies.dpia.approved", "aggregation.update.submitted", "sites.site.viewed"]


def synthetic_log(count: int, *, log: MemoryLog | None = None) -> MemoryLog:
    """A chain of `count` varied events: studies 1-3 (and none), sites 1-2 (and none), users and agents."""
    log = log or MemoryLog()
    for _ in range(count):
        n = len(log.rows)
        log.append(
            created_at=START + timedelta(minutes=n),
            actor_kind=["user", "agent", "system"][n % 3],
            actor_user_id=(n % 4) or None,
            actor_label=["pi", "=HYPERLINK(\"x\")", "-agent a", "'quoted"][n % 4],
            action=ACTIONS[n % len(ACTIONS)],
            outcome="denied" if n % 7 == 0 else "ok",
            object_type="studies.study",
            object_id=str(n % 5),
            object_repr=f"Study «{n % 5}»\nline two, \"quoted\"",
            study_id=[1, 2, 3, None][n % 4],
            site_id=[1, 2, None][n % 3],
            details={"n": n, "reason": "+1 formula?" if n % 2 else "ok", "nested": {"b": [1, 2.5, None]}},
        )
    return log


def write(tmp_path: Path, log: MemoryLog, key, name: str = "bundle", **options: Any) -> Path:
    """A bundle of `log` signed with `key` (checkpoint of the whole log unless one is given)."""
    checkpoint = options.pop("checkpoint", None) or log.checkpoint(key)
    destination = tmp_path / name
    fmt.write_bundle(destination, log, key=key, checkpoint=checkpoint, **options)
    return destination


def verify(path: Path, key, **options: Any) -> list[str]:
    lines: list[str] = []
    verify_bundle(path, key.public_key(), report=lines.append, **options)
    return lines


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def write_lines(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")


def edit_jsonl(bundle: Path, name: str, change: Callable[[list[dict]], list[dict] | None]) -> None:
    rows = read_lines(bundle / name)
    write_lines(bundle / name, change(rows) or rows)


def edit_manifest(bundle: Path, change: Callable[[dict], None]) -> None:
    manifest = json.loads((bundle / fmt.MANIFEST).read_text())
    change(manifest)
    (bundle / fmt.MANIFEST).write_text(json.dumps(manifest))


def resign(bundle: Path, key) -> None:
    """What a coordinator holding the key could do after editing files: list their new hashes and sign again."""
    manifest = json.loads((bundle / fmt.MANIFEST).read_text())
    for name in manifest["files"]:
        manifest["files"][name] = asdict(fmt.file_entry(bundle / name))
    manifest.pop("signature")
    manifest["signature"] = signing.sign(key, fmt.MANIFEST_DOMAIN, manifest)
    (bundle / fmt.MANIFEST).write_text(json.dumps(manifest))
