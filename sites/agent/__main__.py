"""Command line: `python -m sites.agent --server URL --token TOKEN --data PATH.csv [options]`, and
`python -m sites.agent reconcile --server URL --token TOKEN --study ID` (exit 0: the records agree; 1: they
differ, each difference printed)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from consortium.evidence.errors import EvidenceError

from .client import AgentClient, AgentError, Transport
from .data import DataError, load_table
from .policy import Policy, PolicyError
from .reconcile import differences
from .record import LocalRecord, RecordError, default_record_path
from .runner import Agent
from .witness import Witness


def _connection_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--server", required=True, help="coordinator address, e.g. https://consortium.example.org")
    p.add_argument("--token", default=os.environ.get("CONSORTIUM_AGENT_TOKEN"),
                   help="agent token a site admin created in the browser (or set CONSORTIUM_AGENT_TOKEN)")
    p.add_argument("--token-file", help="read the token from this file instead, and again whenever the coordinator "
                                        "refuses it: put a rotated token there and the agent picks it up")
    p.add_argument("--ca-bundle", help="PEM file of the certificate authorities to trust for the server")
    p.add_argument("--client-cert", help="PEM client certificate, for a server that requires mutual TLS")
    p.add_argument("--client-key", help="PEM private key of --client-cert (if not in the same file)")
    p.add_argument("--allow-insecure-http", action="store_true",
                   help="allow plain http to another machine (refused by default: the token would travel in clear)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for one HTTP answer (default 30)")
    p.add_argument("--record", help="this site's append-only record of what it sent and declined (default "
                                    "./consortium-agent-record-<site code>.jsonl)")


def _client(p: argparse.ArgumentParser, args: argparse.Namespace) -> AgentClient:
    if args.token_file:
        path = args.token_file

        def token() -> str:
            with open(path, encoding="utf-8") as handle:
                return handle.read().strip()
    elif args.token:
        token = args.token
    else:
        p.error("an agent token is required: pass --token or --token-file, or set CONSORTIUM_AGENT_TOKEN")
    transport = Transport(ca_bundle=args.ca_bundle, client_cert=args.client_cert, client_key=args.client_key,
                          allow_insecure_http=args.allow_insecure_http)
    return AgentClient(args.server, token, timeout=args.timeout, transport=transport)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m sites.agent",
        description="Consortium site agent: trains the study's model on this site's data and sends back only "
                    "weights, counts and metrics, never data rows.")
    _connection_options(p)
    p.add_argument("--data", required=True, help="CSV with a header row; every column but the label is a feature")
    p.add_argument("--label", help="label column (0/1); default: the study's label column")
    p.add_argument("--poll", type=float, default=2.0, help="seconds between polls (default 2)")
    p.add_argument("--once", action="store_true", help="do what is open now, then exit")
    p.add_argument("--val-fraction", type=float, default=0.2, help="share of rows kept for validation (default 0.2)")
    p.add_argument("--seed", type=int, default=0, help="seed for the split and the batch order (default 0)")
    p.add_argument("--study", type=int, action="append", default=[],
                   help="work only on this study id (repeatable; default: every study the site takes part in)")
    p.add_argument("--witness-file", help="where this site keeps the coordinator's audit checkpoints it has seen, and "
                   "any alert (default: next to --data, DATA.witness.json)")
    p.add_argument("--audit-public-key", metavar="FILE", help="the coordinator's audit key (PEM) to pin; default: "
                   "fetched on first contact and kept in the witness file")
    p.add_argument("--no-witness", action="store_true", help="do not check the coordinator's audit checkpoints")
    p.add_argument("--policy", help="TOML file of this site's own policy (studies, protocol hashes, secure "
                                    "aggregation, minimum DP noise, rounds a day); rounds outside it are declined")
    return p


def reconcile_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m sites.agent reconcile",
        description="Compare this site's own record of what it sent with the coordinator's ledger, and print "
                    "every difference. Exit 0 when they agree, 1 when they differ (or cannot be compared).")
    _connection_options(p)
    p.add_argument("--study", type=int, required=True, help="the study to reconcile")
    return p


def reconcile(argv: Sequence[str]) -> int:
    p = reconcile_parser()
    args = p.parse_args(argv)
    try:
        client = _client(p, args)
        site_code = client.me()["site"]["code"]
        local = LocalRecord(args.record or default_record_path(site_code)).updates(args.study)
        held = client.ledger(args.study)
    except (AgentError, RecordError) as exc:
        print(f"Cannot reconcile: {exc}", file=sys.stderr)
        return 1
    found = differences(local, held)
    for line in found:
        print(line)
    print(f"Study {args.study}: {len(local)} update(s) in this site's record, {len(held)} in the coordinator's; "
          + ("they agree." if not found else f"{len(found)} difference(s)."))
    return 1 if found else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Exit codes: 0 work done or nothing open; 1 a refusal, a data problem or an unreachable coordinator;
    2 wrong usage."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["reconcile"]:
        return reconcile(argv[1:])
    p = parser()
    args = p.parse_args(argv)
    if not 0 <= args.val_fraction < 1 or args.poll < 0:
        p.error("--val-fraction must be in [0, 1) and --poll must not be negative")
    try:
        table = load_table(args.data)
        client = _client(p, args)
        policy = Policy.load(args.policy) if args.policy else None
        if args.record:
            LocalRecord(args.record).entries()  # a broken chain is said now, before any work
    except (DataError, AgentError, PolicyError, RecordError) as exc:
        print(f"Cannot start: {exc}", file=sys.stderr)
        return 1
    say = lambda line: print(line, flush=True)  # noqa: E731
    try:
        witness = None if args.no_witness else _witness(args, client, say)
    except (OSError, AgentError, EvidenceError) as exc:
        print(f"Cannot start: {exc}", file=sys.stderr)
        return 1
    agent = Agent(client, table, label=args.label, val_fraction=args.val_fraction, seed=args.seed,
                  say=say, studies=args.study, witness=witness, policy=policy, keep_record=True,
                  record_path=args.record, data_path=args.data)
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
