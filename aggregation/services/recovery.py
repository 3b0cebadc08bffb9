"""Recovering from a worker that died: claiming a round for aggregation, sending a lost aggregation
again, and removing the temporary files a killed worker left in the model store.

The claim is the lease. A worker aggregating a round first takes the round's claim (a session-level
advisory lock, never waiting: `aggregation_claim`) and holds it across the aggregation's short
transactions and the computation between them: while it lives, the claim says "a worker is on it";
when the worker dies, PostgreSQL ends its connection and the claim is gone at once (no heartbeat has
to lapse). SQLite has no such lock: there a round sent again while a worker computes it is computed
twice, and the second commit finds the round closed (one model version either way). The shards of a
large model's aggregation (`sharding`) refresh `aggregation_dispatched_at` as they start and finish,
so the scheduler leaves a chord at work alone. What no lock can show is a task sent
but not yet started, or lost with a worker that had taken it from the queue (kombu's filesystem
transport deletes a message when it hands it out, so `acks_late` cannot bring it back): the round's
`aggregation_dispatched_at` covers that. The scheduler's beat (`rounds_tick`, every few seconds) sends
the task again for an aggregating round that nobody has claimed and that was last sent more than
`AGGREGATION_REDISPATCH_AFTER` ago. A round sent twice is aggregated once: the second task finds the
claim taken, or the round closed.
"""

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Q

from aggregation.choices import RoundStatus
from aggregation.dispatch import aggregation_send_on_commit
from aggregation.models import Round
from consortium.locks import try_lock

logger = logging.getLogger(__name__)

# A task not claimed this long after it was sent is presumed lost with its worker. Short: sending it
# again costs a message that finds the round claimed or closed.
AGGREGATION_REDISPATCH_AFTER = timedelta(seconds=6)
# A temporary file nobody has written to for this long belongs to a writer that died (a model file is
# written in well under a second; the margin covers a slow disk).
TEMPORARY_FILE_MAX_AGE = timedelta(minutes=5)
_CLAIM_NAMESPACE = 0x0A66  # names the aggregation claims among PostgreSQL's advisory locks


def claim_aggregation(round_id: int) -> bool:
    """Claim the round for this transaction; False while another worker aggregates it (the scheduler's test)."""
    return try_lock(_CLAIM_NAMESPACE, round_id)


@contextmanager
def aggregation_claim(round_id: int) -> Iterator[bool]:
    """Claim the round for a whole aggregation, across its transactions (prepare, compute, commit): yields
    False while another worker holds it. On PostgreSQL a session-level advisory lock, released on exit or
    at once when the worker's connection dies; on SQLite always granted (a second worker computes in vain:
    its commit finds the round closed)."""
    if connection.vendor != "postgresql":
        yield True
        return
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s, %s)", [_CLAIM_NAMESPACE, round_id])
        claimed = bool(cursor.fetchone()[0])
    try:
        yield claimed
    finally:
        if claimed and connection.connection is not None:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s, %s)", [_CLAIM_NAMESPACE, round_id])


def aggregations_redispatch(*, moment: datetime) -> list[int]:
    """Send the aggregation task again for each aggregating round that no worker has claimed and that
    was last sent before `moment - AGGREGATION_REDISPATCH_AFTER`. Returns the rounds sent."""
    # A Flower round is aggregated by the Flower coordinator, never by our task.
    stale = moment - AGGREGATION_REDISPATCH_AFTER
    due = Q(status=RoundStatus.AGGREGATING, flower__isnull=True) & (Q(aggregation_dispatched_at__isnull=True)
                                                                    | Q(aggregation_dispatched_at__lte=stale))
    sent = []
    for round_id in Round.objects.filter(due).values_list("pk", flat=True):
        with transaction.atomic():
            if not claim_aggregation(round_id):
                continue  # a worker is aggregating it right now
            # Conditional: of two schedulers looking at once, one sends it.
            if Round.objects.filter(due, pk=round_id).update(aggregation_dispatched_at=moment):
                aggregation_send_on_commit(round_id)
                sent.append(round_id)
    if sent:
        logger.warning("No worker was aggregating rounds %s (a worker died?): their aggregation was sent again", sent)
    return sent


def sweep_temporary_files(*, max_age: timedelta = TEMPORARY_FILE_MAX_AGE) -> int:
    """Delete the model store's temporary files (`codec.write_file` writes `.<sha256>.*.tmp`, then renames
    it) that nobody has written to for `max_age`: what a worker killed mid-write left. Returns how many."""
    root = Path(settings.MODEL_STORE)
    cutoff = time.time() - max_age.total_seconds()
    removed = 0
    for path in root.rglob(".*.tmp") if root.is_dir() else ():
        try:
            if path.stat().st_mtime < cutoff:
                path.unlink()
                removed += 1
        except FileNotFoundError:
            continue  # renamed by its writer, or removed by another sweep, meanwhile
    if removed:
        logger.warning("Removed %s temporary files left in the model store by a writer that died", removed)
    return removed
