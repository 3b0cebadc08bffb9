"""The audit log's exports at scale, through Django: 1,000,000 events in a throwaway SQLite database, then

- the first checkpoint (the Merkle tree over every event, stored) and an incremental one, and the cost of
  signing and checking a checkpoint alone;
- the streamed CSV and JSONL exports (what the API and the page send), without and with filters;
- the signed bundle (`manage.py audit_export`), without and with a filter;
- the offline verifier (`python -m consortium.verify`) on those bundles.

Each export and verification runs in a fresh process: events/s (per CPU second: the machine's other load
does not count), and its peak RSS above the process's own baseline (after Django's set-up), which must stay
flat (goal: < 100 MB) whatever the number of events.

    .venv/bin/python bench/audit_export.py            # 1,000,000 events (several minutes)
    .venv/bin/python bench/audit_export.py --quick    # 100,000 events
"""

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
START = datetime(2025, 1, 1, tzinfo=UTC)
ACTIONS = ["studies.study.viewed", "aggregation.update.submitted", "aggregation.model.downloaded",
           "studies.dpia.approved", "sites.agent.polled"]
FILTERS = {"none": {}, "study": {"study_id": 2}, "denied+action": {"outcome": "denied", "action_prefix": "studies."}}


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def setup_django(folder: Path) -> None:
    os.environ.update(CONSORTIUM_DATA_DIR=str(folder), DATABASE_URL=f"sqlite:///{folder / 'bench.sqlite3'}",
                      DJANGO_SETTINGS_MODULE="consortium.settings", LOG_LEVEL="WARNING")
    os.environ.setdefault("AUDIT_SIGNING_KEY_FILE", str(folder / "key.pem"))
    import django

    django.setup()


def fill(count: int) -> float:
    """Insert `count` events with a genuine precomputed chain (executemany, in batches); returns events/s."""
    from django.db import connection, transaction

    from consortium.audit.models import AuditEvent
    from consortium.evidence.canonical import GENESIS_HASH, HASHED_FIELDS, canonical_json, event_hash
    from consortium.evidence.canonical import format_timestamp as stamp

    columns = [*HASHED_FIELDS, "hash"]
    sql = (f"INSERT INTO {AuditEvent._meta.db_table} ({', '.join(columns)}) "
           f"VALUES ({', '.join(['%s'] * len(columns))})")
    rng, previous, batch, began = random.Random(7), GENESIS_HASH, [], time.process_time()
    for seq in range(1, count + 1):
        moment = START + timedelta(seconds=seq, microseconds=seq % 997)
        fields = {
            "seq": seq, "created_at": stamp(moment), "actor_kind": ("user", "agent", "system")[seq % 3],
            "actor_user_id": None, "actor_label": f"user{seq % 50}", "action": ACTIONS[seq % len(ACTIONS)],
            "outcome": "denied" if seq % 11 == 0 else "ok", "object_type": "aggregation.round",
            "object_id": str(seq // 20), "object_repr": f"Round {seq // 20} of study {seq % 4}",
            "study_id": seq % 4 or None, "site_id": seq % 5 or None,
            "details": {"n": seq, "bytes": rng.randrange(1 << 20), "note": "=formula?" if seq % 9 == 0 else "ok"},
            "prev_hash": previous,
        }
        fields["hash"] = previous = event_hash(fields)
        # As Django stores them in SQLite: UTC datetimes as text, JSON as text.
        row = {**fields, "created_at": str(moment.replace(tzinfo=None)),
               "details": canonical_json(fields["details"]).decode()}
        batch.append([row[name] for name in columns])
        if len(batch) == 20_000:
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.executemany(sql, batch)
            batch = []
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.executemany(sql, batch)
    return count / (time.process_time() - began)


def prepare(folder: Path, count: int) -> dict:
    from django.core.management import call_command

    from consortium.audit.checkpoints import checkpoint_sign
    from consortium.audit.log import record
    from consortium.evidence import signing
    from consortium.evidence.checkpoint import sign_checkpoint, verify_checkpoint

    (folder / "key.pem").write_bytes(signing.private_key_pem(signing.generate_private_key()))
    call_command("migrate", verbosity=0)
    figures = {"insert_events_per_s": fill(count)}
    began = time.process_time()
    checkpoint_sign(reason="manual")
    figures["first_checkpoint_s"] = time.process_time() - began
    for n in range(1000):
        record(actor=None, action="bench.tick", details={"n": n})
    began = time.process_time()
    checkpoint_sign(reason="manual")
    figures["incremental_checkpoint_1000_events_s"] = time.process_time() - began
    key = signing.load_private_key((folder / "key.pem").read_bytes())
    runs = 2000
    began = time.process_time()
    documents = [sign_checkpoint(key, log_id="bench", seq=n, chain_head="a" * 64, merkle_root="b" * 64)
                 for n in range(runs)]
    figures["checkpoint_sign_us"] = (time.process_time() - began) / runs * 1e6
    began = time.process_time()
    for document in documents:
        verify_checkpoint(document, key.public_key())
    figures["checkpoint_check_us"] = (time.process_time() - began) / runs * 1e6
    (folder / "pub.pem").write_bytes(signing.public_key_pem(key.public_key()))
    return figures


def worker(folder: Path, task: str, name: str) -> dict:
    """One measurement in this (fresh) process: events/s and peak RSS growth over the post-setup baseline."""
    setup_django(folder)
    from consortium.audit.bundle import COMMAND_ACTOR, audit_bundle_export
    from consortium.audit.checkpoints import latest_checkpoint
    from consortium.audit.filters import AuditFilter
    from consortium.audit.models import AuditEvent
    from consortium.audit.streams import csv_chunks, export_rows, jsonl_chunks

    audit_filter = AuditFilter(**FILTERS[name])
    baseline = current_rss_mb()
    began, cpu = time.perf_counter(), time.process_time()
    if task in ("csv", "jsonl"):
        size = latest_checkpoint().tree_size
        rows = export_rows(audit_filter.apply(AuditEvent.objects.all()), size)
        chunks = csv_chunks(rows) if task == "csv" else jsonl_chunks(rows)
        sent = sum(len(chunk) for chunk in chunks)
        events = AuditEvent.objects.filter(seq__lte=size).count()
    elif task == "bundle":
        manifest = audit_bundle_export(actor=COMMAND_ACTOR, out=folder / f"bundle-{name}", audit_filter=audit_filter)
        events = manifest["range"]["last_seq"]
        sent = sum(entry["bytes"] for entry in manifest["files"].values())
    else:
        raise SystemExit(f"unknown task {task}")
    elapsed, cpu = time.perf_counter() - began, time.process_time() - cpu
    return {"events": events, "seconds": elapsed, "cpu_seconds": cpu, "events_per_s": events / cpu,
            "mb_out": sent / 2**20, "peak_rss_growth_mb": rss_mb() - baseline}


def verifier(folder: Path, name: str) -> dict:
    bundle = folder / f"bundle-{name}"
    script = ("import resource,sys,time,runpy;"
              "b=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss;"
              "import consortium.evidence.verifier, consortium.verify;"
              "b=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss;t=time.process_time();"
              "from consortium.verify import main;"
              f"code=main([{str(bundle)!r},'--public-key',{str(folder / 'pub.pem')!r}]);"
              "print('BENCH',code,time.process_time()-t,(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss-b)/1024)")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=False)
    line = next((x for x in done.stdout.splitlines() if x.startswith("BENCH")), None)
    if line is None:
        raise SystemExit(f"verifier failed: {done.stdout[-500:]} {done.stderr[-500:]}")
    _, code, seconds, growth = line.split()
    manifest = json.loads((bundle / "manifest.json").read_text())
    events = manifest["range"]["last_seq"]
    return {"ok": code == "0", "events": events, "seconds": float(seconds), "events_per_s": events / float(seconds),
            "peak_rss_growth_mb": float(growth), "included": manifest["counts"]["included"]}


def run_worker(folder: Path, task: str, name: str) -> dict:
    done = subprocess.run([sys.executable, __file__, "--worker", task, name, "--folder", str(folder)], cwd=ROOT,
                          capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"{task} {name} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--quick", action="store_true", help="100,000 events")
    parser.add_argument("--worker", nargs=2, metavar=("TASK", "FILTER"), help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.folder, *args.worker)))
        return
    count = 100_000 if args.quick else args.events
    with tempfile.TemporaryDirectory(prefix="audit-bench-") as scratch:
        folder = Path(scratch)
        setup_django(folder)
        print(f"== {count:,} audit events in a throwaway SQLite database ({folder})")
        figures = prepare(folder, count)
        print(f"insert (precomputed chain, executemany): {figures['insert_events_per_s']:,.0f} events/s")
        first, extra = figures["first_checkpoint_s"], figures["incremental_checkpoint_1000_events_s"]
        print(f"first checkpoint (Merkle tree over {count:,} events, nodes stored): {first:.1f} s "
              f"({count / first:,.0f} events/s)")
        print(f"incremental checkpoint (+1,000 events): {extra * 1000:.0f} ms")
        print(f"checkpoint signature alone: sign {figures['checkpoint_sign_us']:.0f} µs, "
              f"check {figures['checkpoint_check_us']:.0f} µs")
        print("streamed exports (what the API and the page send); peak RSS growth in a fresh process:")
        for task in ("csv", "jsonl"):
            for name in FILTERS:
                r = run_worker(folder, task, name)
                print(f"  {task:5} filter={name:14} {r['events_per_s']:>9,.0f} events/s  {r['mb_out']:7.1f} MB out  "
                      f"peak +{r['peak_rss_growth_mb']:.1f} MB")
        print("signed bundles (manage.py audit_export: fresh checkpoint, every event as row or proven leaf):")
        for name in ("none", "study"):
            r = run_worker(folder, "bundle", name)
            print(f"  bundle filter={name:14} {r['events_per_s']:>9,.0f} events/s  {r['mb_out']:7.1f} MB  "
                  f"peak +{r['peak_rss_growth_mb']:.1f} MB")
        print("offline verifier (python -m consortium.verify, no Django):")
        for name in ("none", "study"):
            r = verifier(folder, name)
            print(f"  verify filter={name:14} {'OK' if r['ok'] else 'FAILED'}  {r['events_per_s']:>9,.0f} events/s  "
                  f"({r['included']:,} included)  peak +{r['peak_rss_growth_mb']:.1f} MB")


if __name__ == "__main__":
    main()
