"""Measures the gate as of a moment (read from the governed records' history) beside the gate now, and the
contribution ledger as rounds and sites grow: latency and query counts. Prints a table; asserts nothing.

    .venv/bin/python bench/ledger.py                       # a throwaway SQLite file
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/consortium_bench .venv/bin/python bench/ledger.py
"""

import os
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DATABASE_URL", f"sqlite:///{tempfile.mkdtemp(prefix='consortium-bench-')}/bench.sqlite3")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "consortium.settings")

import django  # noqa: E402

django.setup()

from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402
from django.test.utils import CaptureQueriesContext  # noqa: E402
from django.utils import timezone  # noqa: E402
from simple_history.utils import bulk_create_with_history  # noqa: E402

from aggregation import ledger  # noqa: E402
from aggregation.models import ModelVersion, Round, Update  # noqa: E402
from bench.governance import _user  # noqa: E402
from consortium.audit.log import SYSTEM, record  # noqa: E402
from consortium.roles import Role  # noqa: E402
from sites.models import Site  # noqa: E402
from studies import services  # noqa: E402
from studies.demo import approve_and_activate  # noqa: E402
from studies.governance import evaluate  # noqa: E402
from studies.models import AgreementSignature, EthicsApproval, Participation  # noqa: E402


def _study(n: int, tag: str):
    """An active study with n governed sites; the bulk rows get their history too (as services would)."""
    pi, dpo = _user("bench_pi", Role.PI), _user("bench_dpo", Role.DPO)
    study = services.study_create(actor=pi, title=f"bench {tag}", clinical_question="q", agreement_text="DUA",
                                  quorum=max(1, n // 2))
    now = timezone.now()
    sites = Site.objects.bulk_create(Site(name=f"bench-{tag}-{i}", code=f"{tag}-{i}") for i in range(n))
    bulk_create_with_history([Participation(study=study, site=s, status="granted", invited_by=pi, invited_at=now)
                              for s in sites], Participation)
    agreement = study.agreement_versions.get()
    bulk_create_with_history([AgreementSignature(agreement=agreement, site=s, signed_by=pi, signed_at=now,
                                                 agreement_sha256=agreement.sha256) for s in sites],
                             AgreementSignature)
    bulk_create_with_history([EthicsApproval(study=study, site=s, reference="IRB", valid_from=now - timedelta(days=1),
                                             valid_until=now + timedelta(days=300), recorded_by=pi, recorded_at=now)
                              for s in sites], EthicsApproval)
    return approve_and_activate(pi, dpo, study, dpia_reviewer=_user("bench_dpo2", Role.DPO), summary="bench",
                                dpia_days=300), sites


def _timed(call, repeat: int = 20) -> tuple[int, float]:
    with CaptureQueriesContext(connection) as ctx:
        call()
    timings = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        timings.append((time.perf_counter() - start) * 1000)
    return len(ctx.captured_queries), statistics.median(timings)


def bench_gate_as_of() -> None:
    print(f"{'sites':>6} {'now: queries':>13} {'ms':>7} {'as of: queries':>15} {'ms':>7} {'eligible then':>14}")
    for n in (4, 30, 100, 300):
        study, _ = _study(n, f"g{n}")
        then = timezone.now()
        queries_now, ms_now = _timed(lambda study=study: evaluate(study))
        queries_then, ms_then = _timed(lambda study=study, then=then: evaluate(study, at=then))
        eligible = len(evaluate(study, at=then).eligible_sites)
        print(f"{n:>6} {queries_now:>13} {ms_now:>7.2f} {queries_then:>15} {ms_then:>7.2f} {eligible:>14}")


def _rounds(study, sites, rounds: int) -> None:
    """`rounds` closed training rounds, every site included, each with its audit events (as the services write)."""
    now = timezone.now()
    base = ModelVersion.objects.create(study=study, number=0, path="v0", sha256="0" * 64, size_bytes=1, spec={})
    for number in range(1, rounds + 1):
        round_ = Round.objects.create(study=study, number=number, kind="training", status="closed", base_version=base,
                                      opened_at=now, deadline=now, aggregation_started_at=now, closed_at=now)
        record(actor=SYSTEM, action="aggregation.round.opened", target=round_, study=study,
               details={"round": number, "eligible_site_ids": [s.pk for s in sites]})
        updates = Update.objects.bulk_create(
            Update(round=round_, site=s, base_version=base, status="included", path="u", sha256=f"{s.pk:064d}",
                   size_bytes=1, num_examples=10, weight_norm=1, delta_norm=1, idempotency_key=f"{number}-{s.pk}",
                   submitted_by="bench", received_at=now) for s in sites)
        for update in updates:
            record(actor=SYSTEM, action="aggregation.update.accepted", target=update, study=study, site=update.site_id)
        contributors = [{"site_id": s.pk, "site": s.name, "num_examples": 10, "weight": 1 / len(sites),
                         "update_sha256": f"{s.pk:064d}"} for s in sites]
        base = ModelVersion.objects.create(study=study, number=number, round=round_, path=f"v{number}",
                                           sha256=f"{number:064d}", size_bytes=1, spec={},
                                           provenance={"contributors": contributors,
                                                       "protocol_sha256": study.protocol_sha256()})
        record(actor=SYSTEM, action="aggregation.model_version.created", target=base, study=study,
               details={"included": contributors})


def bench_ledger() -> None:
    print(f"{'rounds':>7} {'sites':>6} {'rows':>6} {'queries':>8} {'median ms':>10} {'rows/s':>9}")
    for rounds, n in ((10, 4), (50, 10), (100, 30)):
        study, sites = _study(n, f"l{rounds}-{n}")
        _rounds(study, sites, rounds)
        rows = len(ledger.study_ledger(study))
        queries, ms = _timed(lambda study=study: ledger.study_ledger(study), repeat=5)
        print(f"{rounds:>7} {n:>6} {rows:>6} {queries:>8} {ms:>10.1f} {rows / ms * 1000:>9,.0f}")


if __name__ == "__main__":
    call_command("migrate", verbosity=0)
    print(f"database: {connection.vendor}")
    bench_gate_as_of()
    bench_ledger()
