"""Command line: `python -m sites.agent --server URL --token TOKEN --data PATH.csv [options]`."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from .client import AgentClient, AgentError
from .data import DataError, load_table
from .runner import Agent


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
    agent = Agent(client, table, label=args.label, val_fraction=args.val_fraction, seed=args.seed,
                  say=lambda line: print(line, flush=True), studies=args.study)
    try:
        return agent.run(once=args.once, poll=args.poll)
    except KeyboardInterrupt:
        print("Stopped.", flush=True)
        return 0


if __name__ == "__main__":
    sys.exit(main())
