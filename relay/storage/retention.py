"""How long `event_log` keeps an event: rows older than `storage.event_log_days` are deleted.

The JSON lines are bounded by rotation (relay.storage.rotating); without this the table would grow
forever. It runs on the event writer's thread, with its Store, at open and then at most hourly.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from relay.storage.store import Store


def _rfc3339(ts: float) -> str:
    """The event_log's own timestamp form, so the comparison is a plain string one on its index."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Retention:
    """`event_log` rows older than `days` (0 = kept forever) are deleted at open and hourly after.

    Runs on the writer's thread, with its Store. The JSON lines are bounded by rotation instead."""

    EVERY_S = 3600.0  # how often to look: rows expire by days, an hour late is nothing

    def __init__(self, days: float, clock: Callable[[], float]) -> None:
        self.days = days
        self.clock = clock
        self.last = float("-inf")
        self.deleted = 0

    def prune(self, store: Store) -> None:
        if self.days > 0:
            self.last = now = self.clock()
            self.deleted += store.prune_events(_rfc3339(now - self.days * 86400))

    def prune_if_due(self, store: Store) -> None:
        if self.days > 0 and self.clock() - self.last >= self.EVERY_S:
            self.prune(store)
