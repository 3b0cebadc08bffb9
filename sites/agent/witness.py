"""The site as a witness of the coordinator's audit log (docs/evidence.md).

At each poll the agent fetches the latest signed checkpoint, checks its signature against the pinned
public key (given on the command line, or fetched on first contact and kept), and asks for a consistency
proof from the newest checkpoint it holds to the new one. A checkpoint that does not extend the history the
site already saw (the log was rewritten, cut short or forked) is reported in the agent's output and recorded
in the witness file, which also keeps every checkpoint the site has seen: an auditor can pass them to
`python -m consortium.verify --checkpoint`. The rejected checkpoint is never adopted: later ones are
checked against the last good one.

Django-free: the standard library and `consortium.evidence` (which needs only `cryptography`).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from consortium.evidence import merkle, signing
from consortium.evidence.checkpoint import Checkpoint, verify_checkpoint
from consortium.evidence.errors import EvidenceError

from .client import AgentClient, AgentError

MAX_KEPT = 10_000  # checkpoints kept in the file; the oldest go first (the first one always stays)


class Witness:
    """One coordinator's checkpoints as this site saw them, kept in `path` (JSON)."""

    def __init__(self, client: AgentClient, path: Path | str, *, public_key_pem: bytes | None = None,
                 say: Callable[[str], None] = print, now: Callable[[], datetime] = lambda: datetime.now(UTC)):
        self.client, self.path, self.say, self.now = client, Path(path), say, now
        self.state = self._load()
        if public_key_pem is not None:
            pinned = signing.fingerprint(signing.load_public_key(public_key_pem))
            if self.state.get("fingerprint") not in (None, pinned):
                self.alert(f"the key given on the command line ({pinned}) is not the one pinned in {self.path} "
                           f"({self.state['fingerprint']}); the given key is used from now on")
            self.state.update(public_key=public_key_pem.decode("ascii"), fingerprint=pinned)
            self._save()

    # --- what the agent calls at each poll -----------------------------------------------------------------------

    def observe(self) -> str:
        """Check the latest checkpoint; returns what happened: "new", "same", "none", "alert" or "unreachable"."""
        try:
            key = self._key()
            page = self.client.request("GET", "/api/audit/checkpoints/?page_size=1").json()
        except (AgentError, EvidenceError, ValueError) as exc:
            self.say(f"Witness: cannot fetch the audit checkpoint ({exc}).")
            return "unreachable"
        results = page.get("results") if isinstance(page, dict) else None
        if not results:
            return "none"
        document = results[0].get("checkpoint") if isinstance(results[0], dict) else None
        held = self.latest()
        if held is not None and document == held:
            return "same"
        try:
            new = verify_checkpoint(document, key, name="the coordinator's latest checkpoint")
            self._check_extends(held, new)
        except EvidenceError as exc:
            self.alert(str(exc), document)
            return "alert"
        except AgentError as exc:
            self.say(f"Witness: cannot check checkpoint #{new.seq} ({exc}); will try again.")
            return "unreachable"
        self._keep(document)
        return "new"

    def _check_extends(self, held: Mapping[str, Any] | None, new: Checkpoint) -> None:
        if held is None:
            return
        old = Checkpoint(**{k: held[k] for k in Checkpoint.__dataclass_fields__})
        if old.log_id != new.log_id:
            raise EvidenceError(f"checkpoint #{new.seq} is of log {new.log_id!r}, not {old.log_id!r}")
        if new.seq < old.seq:
            raise EvidenceError(f"checkpoint #{new.seq} is older than #{old.seq}, which this site already holds: "
                                f"the log was cut short")
        if new.seq == old.seq:
            if new.root != old.root or new.chain_head != old.chain_head:
                raise EvidenceError(f"checkpoint #{new.seq} has another root than the one this site holds for the "
                                    f"same size: the history was rewritten")
            return
        answer = self.client.request("GET", f"/api/audit/consistency/?first={old.seq}&second={new.seq}").json()
        try:
            proof = [bytes.fromhex(h) for h in answer["proof"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise EvidenceError(f"the consistency proof from #{old.seq} to #{new.seq} is malformed") from exc
        if not merkle.verify_consistency(old.seq, new.seq, old.root, new.root, proof):
            raise EvidenceError(f"checkpoint #{new.seq} does not extend checkpoint #{old.seq} this site holds "
                                f"(issued {old.issued_at}): the history it vouched for was rewritten")

    # --- state ---------------------------------------------------------------------------------------------------

    def latest(self) -> dict[str, Any] | None:
        kept = self.state["checkpoints"]
        return kept[-1] if kept else None

    def alert(self, problem: str, document: Any = None) -> None:
        """Say it loudly and record it in the witness file, with the checkpoint that caused it."""
        self.say(f"WITNESS ALERT: {problem}")
        self.state["alerts"].append({"at": self.now().isoformat(), "problem": problem, "checkpoint": document})
        self._save()

    def _key(self) -> Any:
        if not self.state.get("public_key"):
            published = self.client.request("GET", "/api/audit/public-key/").json()
            pem = str(published.get("public_key_pem", "")).encode("ascii")
            fingerprint = signing.fingerprint(signing.load_public_key(pem))
            self.state.update(public_key=pem.decode("ascii"), fingerprint=fingerprint)
            self._save()
            self.say(f"Witness: pinned the coordinator's audit key {fingerprint} (compare it with the one the "
                     f"coordinator publishes).")
        return signing.load_public_key(self.state["public_key"])

    def _keep(self, document: dict[str, Any]) -> None:
        kept = self.state["checkpoints"]
        kept.append(document)
        if len(kept) > MAX_KEPT:
            del kept[1:len(kept) - MAX_KEPT + 1]
        self._save()
        self.say(f"Witness: checkpoint #{document['seq']} verified and kept (root {document['merkle_root'][:16]}…).")

    def _load(self) -> dict[str, Any]:
        try:
            state = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            state = {}
        except (OSError, ValueError) as exc:
            raise AgentError(f"The witness file {self.path} cannot be read ({exc}); move it aside to start "
                             f"afresh.") from exc
        state.setdefault("checkpoints", [])
        state.setdefault("alerts", [])
        return state

    def _save(self) -> None:
        """Write the whole file atomically: a crash mid-write must not lose the checkpoints already kept."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=self.path.name, suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(self.state, handle, indent=1, sort_keys=True)
        os.replace(temporary, self.path)
