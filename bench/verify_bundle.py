"""Audit evidence costs: the offline verifier's events/s and peak memory on a synthetic 1,000,000-event
export, checkpoint signing and checking, and Merkle root and proof costs. Django-free throughout.

The log is synthetic but real: a genuine hash chain (each event's hash over its canonical fields and
the previous hash) with varied actors, studies, sites and details. Two bundles are written (every
event; and one study's events, about a quarter, with the rest as skipped leaves), then each is
verified by `python -m consortium.verify` in a fresh process: its CPU time (wall time depends on what else
the machine runs) and the growth of its peak RSS over a verifier run on an empty bundle (imports excluded).

    .venv/bin/python bench/verify_bundle.py                  # 1,000,000 events (a few minutes)
    .venv/bin/python bench/verify_bundle.py --events 100000  # quicker
"""

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from consortium.evidence import merkle, signing  # noqa: E402
from consortium.evidence.bundle import write_bundle  # noqa: E402
from consortium.evidence.canonical import (  # noqa: E402
    GENESIS_HASH,
    LEAF_FIELDS,
    event_hash,
    event_leaf_hash,
    format_timestamp,
)
from consortium.evidence.checkpoint import sign_checkpoint, verify_checkpoint  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
START = datetime(2025, 1, 1, tzinfo=UTC)
ACTIONS = ["studies.study.viewed", "aggregation.update.submitted", "aggregation.model.downloaded",
           "studies.dpia.approved", "sites.agent.polled"]


class SyntheticLog:
    """A LogSource that regenerates the same chain on demand instead of holding it in memory."""

    def __init__(self, size: int) -> None:
        self.size = size

    def events(self, first_seq: int = 1, last_seq: int | None = None) -> Iterator[dict[str, Any]]:
        rng, previous = random.Random(7), GENESIS_HASH  # a fixed seed: the same log every run (bench only)
        last = self.size if last_seq is None else last_seq
        for seq in range(1, last + 1):
            event = {
                "seq": seq, "created_at": format_timestamp(START + timedelta(seconds=seq, microseconds=seq % 997)),
                "actor_kind": ("user", "agent", "system")[seq % 3], "actor_user_id": (seq % 50) or None,
                "actor_label": f"user{seq % 50}", "action": ACTIONS[seq % len(ACTIONS)], "outcome": "ok",
                "object_type": "aggregation.round", "object_id": str(seq // 20),
                "object_repr": f"Round {seq // 20} of study {seq % 4}", "study_id": seq % 4 or None,
                "site_id": rng.choice((1, 2, 3, 4, None)),
                "details": {"round": seq // 20, "bytes": rng.randrange(10**6), "reason": "scheduled"},
                "prev_hash": previous,
            }
            event["hash"] = previous = event_hash(event)
            if seq >= first_seq:
                yield event

    def leaf(self, seq: int) -> dict[str, Any]:
        event = next(self.events(seq, seq))
        return {name: event[name] for name in LEAF_FIELDS}

    def subtree_hash(self, start: int, end: int) -> bytes:
        raise NotImplementedError("the bench exports whole logs: no prefix or suffix is needed")


def checkpoint_of(log: SyntheticLog, key) -> dict:
    tree, head = merkle.CompactRange(), GENESIS_HASH
    for event in log.events():
        tree.append(event_leaf_hash(event))
        head = event["hash"]
    return sign_checkpoint(key, log_id="bench", seq=log.size, chain_head=head, merkle_root=tree.root())


# `python -m consortium.verify`, reporting its own peak RSS (VmHWM) on exit: a child's ru_maxrss on Linux
# would include this process's memory at fork time.
VERIFY_REPORTING_PEAK = """
import atexit, runpy, sys
def peak():
    with open("/proc/self/status") as status:
        print("VmHWM", next(line.split()[1] for line in status if line.startswith("VmHWM")), file=sys.stderr)
atexit.register(peak)
sys.argv[0] = "consortium.verify"
runpy.run_module("consortium.verify", run_name="__main__", alter_sys=True)
"""


def run_verifier(bundle: Path, public_key: Path) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds and peak RSS (KiB) of the CLI verifier in a fresh process."""
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-c", VERIFY_REPORTING_PEAK, str(bundle), "--public-key",
                                str(public_key)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    errors = process.stderr.read().decode()
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"verification failed:\n{errors}")
    peak = int(errors.rsplit("VmHWM", 1)[1])
    return elapsed, usage.ru_utime + usage.ru_stime, peak


def bench_bundles(size: int, scratch: Path) -> None:
    key = signing.generate_private_key()
    public_key = scratch / "key.pem"
    public_key.write_bytes(signing.public_key_pem(key.public_key()))
    log = SyntheticLog(size)
    started = time.perf_counter()
    checkpoint = checkpoint_of(log, key)
    print(f"log: {size:,} events generated, chained and folded into a Merkle root in "
          f"{time.perf_counter() - started:.1f} s")
    _, _, baseline = run_verifier(_empty_bundle(scratch, key), public_key)
    for name, filters in [("all events", {}), ("one study (study_id 1)", {"study_id": 1})]:
        bundle = scratch / name.split()[0]
        started = time.process_time()
        manifest = write_bundle(bundle, log, key=key, checkpoint=checkpoint, filters=filters)
        written = time.process_time() - started
        size_mb = sum(f["bytes"] for f in manifest["files"].values()) / 2**20
        elapsed, cpu, peak = run_verifier(bundle, public_key)
        print(f"bundle of {name}: {manifest['counts']['included']:,} included, {manifest['counts']['skipped']:,} "
              f"skipped, {size_mb:,.0f} MiB; written at {size / written:,.0f} events/s of CPU (generation included)")
        print(f"  verify: {size / cpu:,.0f} events/s of CPU ({cpu:.1f} s; {elapsed:.1f} s wall on this machine), "
              f"peak RSS {peak / 1024:,.0f} MiB (+{(peak - baseline) / 1024:,.1f} MiB over an empty bundle's)")


def _empty_bundle(scratch: Path, key) -> Path:
    empty = SyntheticLog(0)
    bundle = scratch / "empty"
    write_bundle(bundle, empty, key=key, checkpoint=checkpoint_of(empty, key))
    return bundle


def per_call(fn, repeat: int) -> float:
    started = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - started) / repeat


def bench_checkpoints() -> None:
    key = signing.generate_private_key()
    public, root = key.public_key(), bytes(32)
    signed = sign_checkpoint(key, log_id="bench", seq=10**6, chain_head="ab" * 32, merkle_root=root)
    sign_cost = per_call(lambda: sign_checkpoint(key, log_id="bench", seq=10**6, chain_head="ab" * 32,
                                                 merkle_root=root), 2000)
    verify_cost = per_call(lambda: verify_checkpoint(signed, public), 2000)
    print(f"checkpoint: sign {sign_cost * 1e6:,.0f} us, verify {verify_cost * 1e6:,.0f} us (Ed25519, canonical JSON)")


def bench_merkle(size: int) -> None:
    rng = random.Random(3)
    leaves = [merkle.leaf_hash(rng.randbytes(200)) for _ in range(size)]
    started = time.perf_counter()
    root = merkle.root_of(leaves)
    streaming = time.perf_counter() - started
    started = time.perf_counter()
    tree = merkle.MerkleTree(leaves)
    stored = time.perf_counter() - started
    assert tree.root() == root
    print(f"merkle: root over {size:,} leaf hashes streaming in {streaming:.2f} s ({size / streaming:,.0f} leaves/s, "
          f"O(log n) memory); every perfect node kept in {stored:.2f} s")
    indexes = [rng.randrange(size) for _ in range(2000)]
    proofs = [merkle.inclusion_proof(i, size, tree.subtree_hash) for i in indexes]
    make = per_call(lambda: merkle.inclusion_proof(indexes[0], size, tree.subtree_hash), 2000)
    check = per_call(lambda: [merkle.verify_inclusion(i, size, leaves[i], p, root) for i, p in zip(indexes, proofs,
                                                                                                  strict=True)], 1)
    print(f"  inclusion proof ({len(proofs[0])} hashes): build {make * 1e6:,.0f} us, verify "
          f"{check / len(indexes) * 1e6:,.0f} us")
    old = size * 2 // 3 + 1
    proof = merkle.consistency_proof(old, size, tree.subtree_hash)
    make = per_call(lambda: merkle.consistency_proof(old, size, tree.subtree_hash), 500)
    old_root = tree.root(old)
    check = per_call(lambda: merkle.verify_consistency(old, size, old_root, root, proof), 2000)
    print(f"  consistency proof {old:,} -> {size:,} ({len(proof)} hashes): build {make * 1e6:,.0f} us, "
          f"verify {check * 1e6:,.0f} us")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    args = parser.parse_args()
    bench_checkpoints()
    bench_merkle(args.events)
    with tempfile.TemporaryDirectory() as scratch:
        bench_bundles(args.events, Path(scratch))


if __name__ == "__main__":
    main()
