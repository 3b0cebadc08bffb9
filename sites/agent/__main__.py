"""Command line: `python -m sites.agent --server URL --token TOKEN --data PATH.csv [options]`."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from consortium.evidence.errors import EvidenceError

from .client import AgentClient, AgentError
from .data import DataError, load_table
from .runner import Agent
from .witness import Witness


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m sites.agent",
        description="Consortium site agent: trains the study's model on this site's data and sends back only "
                    "weights, counts and metrics, never data rows.")
    p.add_argument("--server", required=True, help="coordinator address, e.g. https://consortium.example.org")
    p.add_argument("--token", default=os.environ.get("CONSORTIUM_AGENT_TOKEN"),
                   help="agent token a site admin created in the browser (or set CONSORTIUM_AGENT_TOKEN)")
    p.add_argument("--data", required=True, help="CSV with a header row; every column but the label is a feature")
    p.add_argument("--label", help="label column (0/1); default: the study's label column")
    p.add_argument("--poll", type=float, default=2.0, help="seconds between polls (default 2)")
    p.add_argument("--once", action="store_true", help="do what is open now, then exit")
    p.add_argument("--val-fraction", type=float, default=0.2, help="share of rows kept for validation (default 0.2)")
    p.add_argument("--seed", type=int, default=0, help="seed for the split and the batch order (default 0)")
    p.add_argument("--study", type=int, action="append", default=[],
                   help="work only on this study id (repeatable; default: every study the site takes part in)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for one HTTP answer (default 30)")
    p.add_argument("--witness-file", help="where this site keeps the coordinator's audit checkpoints it has seen, and "
                   "any alert (default: next to --data, DATA.witness.json)")
    p.add_argument("--audit-public-key", metavar="FILE", help="the coordinator's audit key (PEM) to pin; default: "
                   "fetched on first contact and kept in the witness file")
    p.add_argument("--no-witness", action="store_true", help="do not check the coordinator's audit checkpoints")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Exit codes: 0 work done or nothing open; 1 a refusal, a data problem or an unreachable coordinator;
    2 wrong usage."""
    args = parser().parse_args(argv)
    if not args.token:
        parser().error("an agent token is required: pass --token or set CONSORTIUM_AGENT_TOKEN")
    if not 0 <= args.val_fraction < 1 or args.poll < 0:
        parser().error("--val-fraction must be in [0, 1) and --poll must not be negative")
    try:
        table = load_table(args.data)
        client = AgentClient(args.server, args.token, timeout=args.timeout)
    except (DataError, AgentError) as exc:
        print(f"Cannot start: {exc}", file=sys.stderr)
        return 1
    say = lambda line: print(line, flush=True)  # noqa: E731
    try:
        witness = None if args.no_witness else _witness(args, client, say)
    except (OSError, AgentError, EvidenceError) as exc:
        print(f"Cannot start: {exc}", file=sys.stderr)
        return 1
    agent = Agent(client, table, label=args.label, val_fraction=args.val_fraction, seed=args.seed,
                  say=say, studies=args.study, witness=witness)
    try:
        return agent.run(once=args.once, poll=args.poll)
    except KeyboardInterrupt:
        print("Stopped.", flush=True)
        return 0


def _witness(args: argparse.Namespace, client: AgentClient, say: Callable[[str], None]) -> Witness:
    key = Path(args.audit_public_key).read_bytes() if args.audit_public_key else None
    return Witness(client, Path(args.witness_file or f"{args.data}.witness.json"), public_key_pem=key, say=say)


if __name__ == "__main__":
    sys.exit(main())
