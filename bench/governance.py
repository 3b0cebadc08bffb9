"""Measures the governance core: the gate's latency and query count as sites grow, the cost of
appending audit events, and `verify_audit` throughput. Prints a table; asserts nothing.

    .venv/bin/python bench/governance.py                       # a throwaway SQLite file
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/consortium_bench .venv/bin/python bench/governance.py
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

from django.contrib.auth import get_user_model  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection, transaction  # noqa: E402
from django.test.utils import CaptureQueriesContext  # noqa: E402
from django.utils import timezone  # noqa: E402

from consortium.audit.log import SYSTEM, record, verify_chain  # noqa: E402
from consortium.audit.models import AuditEvent  # noqa: E402
from consortium.audit.services import user_roles_add  # noqa: E402
from consortium.roles import Role  # noqa: E402
from sites.models import Site  # noqa: E402
from studies import services  # noqa: E402
from studies.demo import approve_and_activate  # noqa: E402
from studies.governance import evaluate  # noqa: E402
from studies.models import AgreementSignature, EthicsApproval, Participation  # noqa: E402

User = get_user_model()


def _user(name: str, role: Role):
    user, _ = User.objects.get_or_create(username=name)
    user_roles_add(actor=SYSTEM, user=user, roles=[role.value], via="bench")
    return user


def _study_with_sites(n: int):
    """An active study with n granted, signed, ethics-approved sites (bulk rows for the sites)."""
    pi, dpo = _user("bench_pi", Role.PI), _user("bench_dpo", Role.DPO)
    study = services.study_create(actor=pi, title=f"bench {n}", clinical_question="q", agreement_text="DUA",
                                  quorum=max(1, n // 2))
    now = timezone.now()
    sites = Site.objects.bulk_create(Site(name=f"bench-{n}-{i}", code=f"b{n}-{i}") for i in range(n))
    Participation.objects.bulk_create(
        Participation(study=study, site=s, status="granted", invited_by=pi, invited_at=now) for s in sites)
    agreement = study.agreement_versions.get()
    AgreementSignature.objects.bulk_create(
        AgreementSignature(agreement=agreement, site=s, signed_by=pi, signed_at=now, agreement_sha256=agreement.sha256)
        for s in sites)
    EthicsApproval.objects.bulk_create(
        EthicsApproval(study=study, site=s, reference="IRB", valid_from=now - timedelta(days=1),
                       valid_until=now + timedelta(days=300), recorded_by=pi, recorded_at=now) for s in sites)
    return approve_and_activate(pi, dpo, study, dpia_reviewer=_user("bench_dpo2", Role.DPO), summary="bench",
                                dpia_days=300)


def bench_gate() -> None:
    print(f"{'sites':>6} {'queries':>8} {'median ms':>10} {'p95 ms':>8} {'eligible':>9}")
    for n in (4, 30, 100, 300):
        study = _study_with_sites(n)
        with CaptureQueriesContext(connection) as ctx:
            result = evaluate(study, "aggregate")
        timings = []
        for _ in range(30):
            start = time.perf_counter()
            evaluate(study, "aggregate")
            timings.append((time.perf_counter() - start) * 1000)
        timings.sort()
        print(f"{n:>6} {len(ctx.captured_queries):>8} {statistics.median(timings):>10.2f} "
              f"{timings[int(len(timings) * 0.95) - 1]:>8.2f} {len(result.eligible_sites):>9}")


def bench_audit(count: int = 5000) -> None:
    actor = _user("bench_pi", Role.PI)
    start = time.perf_counter()
    for i in range(count):
        with transaction.atomic():
            record(actor=actor, action="bench.event", details={"i": i})
    append = time.perf_counter() - start
    total = AuditEvent.objects.count()
    start = time.perf_counter()
    report = verify_chain()
    verify = time.perf_counter() - start
    print(f"audit append: {count} events in {append:.2f} s = {count / append:,.0f} events/s "
          f"({append / count * 1e3:.2f} ms each, one transaction each)")
    print(f"verify_audit: {total} events in {verify:.2f} s = {total / verify:,.0f} events/s, intact={report.intact}")


if __name__ == "__main__":
    call_command("migrate", verbosity=0)
    print(f"database: {connection.vendor}")
    bench_gate()
    bench_audit()
