"""The one lock order. Every write path takes its locks in this order, may skip a level, and never
goes back to an earlier level once it holds a later one:

1. the study row: `studies.locks.lock_study` (and `studies.services._common.lock_study`, the same lock
   scoped to what the actor may see). Every service that changes a study, its governance or its rounds
   takes it first: approvals, DUA, DPIA, ethics, participation (invite, grant, suspend, resume, revoke,
   withdraw), update and statistics submissions, opening, finishing and aggregating rounds.
2. the study's round row: `aggregation.locks.lock_round` (study first, then round).
3. any other row: a participation, the DPIA, a model version, a site, an agent token.
4. the audit chain's advisory lock (`consortium.audit.log.lock_chain`), taken by the first `record` or
   `studies.events.publish` and held until commit. After it a transaction only inserts (audit events,
   study events) and computes; it takes no row lock it does not already hold (re-taking one is free).

Row locks are FOR NO KEY UPDATE (`locked` below, never a bare `select_for_update()`). They serialise
the writers of a row, but they do not conflict with the FOR KEY SHARE lock that PostgreSQL's foreign-key
check takes on the row an insert refers to. Django declares foreign keys DEFERRABLE INITIALLY DEFERRED,
so those checks run at commit, after level 4: a study event inserted under the audit chain's lock checks
its study row when it commits. Were row locks FOR UPDATE, that check would wait for any transaction
holding the study row while waiting for the audit chain's lock: a deadlock, PostgreSQL kills one side
(issue #9: a revocation answered 500 and was lost, and the round counted the revoked site's update).
With FOR NO KEY UPDATE the check waits for nobody: only a DELETE, or a change of a key, takes the
stronger lock, and no service deletes studies, rounds or sites.

Claims (`try_lock`) stand outside the order: they never wait, so they cannot close a cycle. The
aggregation claims its round before anything else (`aggregation.services.recovery.aggregation_claim`, a
session-level claim), which tells a second worker and the scheduler that someone is on it, until the
aggregation ends or its connection does. It holds no row lock while the strategy computes: a short
transaction reads the gate and the inputs, and another asks the gate again and commits only if they
are unchanged (`aggregation.services.aggregate`).

Why level 1 for every governed write, even one that would be correct without it: it serialises
governance changes with the aggregation's second gate read. A revocation commits either before the
aggregation locks the study (so the gate sees it and the site's update is excluded) or after the
aggregation committed; the audit chain's order (sequence numbers, appended under level 4 until commit)
is therefore the order in which they took effect. `tests/integration/test_postgres_lock_order.py`
drives these paths concurrently on PostgreSQL (SQLite takes one write lock per transaction up front,
so there the order is trivially kept).
"""

from collections.abc import Sequence
from typing import TypeVar

from django.db import connection, models

M = TypeVar("M", bound=models.Model)


def locked(queryset: models.QuerySet[M], *, of: Sequence[str] = ()) -> models.QuerySet[M]:
    """The queryset's rows, row-locked until commit in the mode the lock order needs (FOR NO KEY UPDATE).

    `of` names the tables to lock when the query joins others (PostgreSQL cannot lock the nullable
    side of an outer join). A no-op on SQLite, whose transactions take the write lock up front."""
    return queryset.select_for_update(no_key=True, of=tuple(of))


def try_lock(namespace: int, key: int) -> bool:
    """Take the transaction-scoped lock named (`namespace`, `key`) if it is free, without waiting.

    A claim, not a level of the order: it never waits, so it cannot close a cycle. PostgreSQL releases
    it at commit or rollback, and at once when the holder's connection dies (a killed worker). On SQLite
    it is always granted: a transaction there holds the database's only write lock, which already
    excludes every other writer."""
    if connection.vendor != "postgresql":
        return True
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_xact_lock(%s, %s)", [namespace, key])
        return bool(cursor.fetchone()[0])
