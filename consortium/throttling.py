"""Who is knocking, and how long they must wait: the client's address, the end of a login lockout
(django-axes keeps the failures), and the per-address throttle on bad agent tokens (kept in the cache)."""

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from axes.helpers import get_cool_off
from axes.models import AccessAttempt
from django.conf import settings
from django.core.cache import cache
from django.db.models import Q
from django.http import HttpRequest
from django.utils import timezone


def client_ip(request: HttpRequest) -> str:
    """The client's address: the peer, or behind PROXY_COUNT reverse proxies (each appending to
    X-Forwarded-For) the address the outermost of them saw. Entries further left came from the client
    itself and could be anything, so they are never read."""
    count = settings.PROXY_COUNT
    if count:
        hops = [hop.strip() for hop in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if hop.strip()]
        if len(hops) >= count:
            return hops[-count]
    return request.META.get("REMOTE_ADDR", "")


def lockout_ends(username: str | None, address: str, *, now: datetime | None = None) -> datetime | None:
    """When the login lockout of this username or address lifts; None if neither is locked out.

    axes locks while the failures counted for the username (or the address) within the cool-off reach the
    limit; each stored attempt stops counting one cool-off after its last failure. So the lock lifts when
    enough of the oldest attempts have aged out to fall below the limit."""
    now = now or timezone.now()
    cool_off = get_cool_off()
    recent = AccessAttempt.objects.filter(attempt_time__gte=now - cool_off)
    matches = ([Q(username=username)] if username else []) + ([Q(ip_address=address)] if address else [])
    ends = [_lifts_at(recent.filter(match).values_list("attempt_time", "failures_since_start"), cool_off)
            for match in matches]
    return max((end for end in ends if end is not None), default=None)


def _lifts_at(attempts: Iterable[tuple[datetime, int]], cool_off: timedelta) -> datetime | None:
    rows = sorted(attempts)
    counted = sum(failures for _, failures in rows)
    lifts = None
    for last_failure, failures in rows:
        if counted < settings.AXES_FAILURE_LIMIT:
            break
        counted -= failures
        lifts = last_failure + cool_off
    return lifts


def seconds_until(moment: datetime, *, now: datetime | None = None) -> int:
    """Whole seconds to wait (at least 1), as a Retry-After header gives them."""
    return max(1, math.ceil((moment - (now or timezone.now())).total_seconds()))


@dataclass(frozen=True)
class AddressThrottle:
    """At most `limit` failures per address in a window that starts at the first one; then the address
    waits for the window's end. Counters live in the cache (Redis when configured, so every process
    shares them); a lost counter only forgets some failures."""

    name: str
    limit_setting: str
    minutes_setting: str

    def _key(self, address: str) -> str:
        return f"throttle:{self.name}:{address}"

    def retry_after(self, address: str) -> int | None:
        """Seconds until the address may try again, or None if it may now."""
        state = cache.get(self._key(address))
        if not state or state["count"] < getattr(settings, self.limit_setting):
            return None
        left = math.ceil(state["until"] - time.time())
        return left if left > 0 else None

    def failed(self, address: str) -> int | None:
        """Count one failure; the wait it brings if it reached the limit, else None."""
        key, now = self._key(address), time.time()
        state = cache.get(key)
        if not state or state["until"] <= now:
            state = {"count": 0, "until": now + 60 * getattr(settings, self.minutes_setting)}
        state["count"] += 1
        cache.set(key, state, timeout=max(1, math.ceil(state["until"] - now)))
        return self.retry_after(address)


AGENT_TOKENS = AddressThrottle("agent-token", "AGENT_TOKEN_FAILURE_LIMIT", "AGENT_TOKEN_LOCKOUT_MINUTES")
