"""Verify an audit export offline: `python -m consortium.verify BUNDLE --public-key FILE [--checkpoint FILE ...]`.

BUNDLE is the export's directory or .zip; FILE the coordinator's public key (PEM, or the raw 32 bytes
in hex or base64), as published at its well-known URL. Each `--checkpoint` is an earlier signed
checkpoint you hold (a site keeps the ones it has seen): the bundle must prove it extends that history.

Prints one line per check, then OK (exit 0); or, at the first problem, FAILED and what broke (exit 1).
Imports no Django, Celery or torch: only the standard library and `cryptography`.
"""

import argparse
import json
import sys
from pathlib import Path

from consortium.evidence.errors import EvidenceError
from consortium.evidence.signing import load_public_key
from consortium.evidence.verifier import verify_bundle


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m consortium.verify", description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", type=Path, help="the export: a directory or a .zip")
    parser.add_argument("--public-key", type=Path, required=True, metavar="FILE",
                        help="the coordinator's Ed25519 public key (PEM, or raw 32 bytes in hex or base64)")
    parser.add_argument("--checkpoint", type=Path, action="append", default=[], metavar="FILE",
                        help="an earlier signed checkpoint (JSON) the bundle must be consistent with; repeatable")
    return parser.parse_args(argv)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise EvidenceError(f"{what}: cannot read {path} ({exc.strerror})") from exc


def _held(paths: list[Path]) -> list[dict]:
    held = []
    for path in paths:
        try:
            held.append(json.loads(_read(path, "checkpoint")))
        except ValueError as exc:
            raise EvidenceError(f"checkpoint: {path} is not valid JSON ({exc})") from exc
    return held


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        key = load_public_key(_read(args.public_key, "public key"))
        verify_bundle(args.bundle, key, held_checkpoints=_held(args.checkpoint), report=print)
    except EvidenceError as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
