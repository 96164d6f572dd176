"""Event admission under a flood, sans-IO (time is passed in): coalescing, and the tune limiter.

A request for a channel with no working stream costs two events (`exhausted`, `session_end`), an ERROR
line and a webhook; anyone who can reach the port could write ~1,300 events/s that way. Two bounds:

- `Coalescer`: events that say the same thing again (same channel, event and reason, of the kinds in
  `coalesce_key`) within `window_s` are written once at once, then once more at the end of the window
  with `repeated` = how many that record stands for; a flood that goes on is one record per window.
  Failovers, upgrades and session starts are never coalesced, held or delayed.
- `TuneLimiter`: per client address, tunes of a *failing* channel (its last tune found no working
  stream, within `failing_s`) get a burst, then one per `every_s`; past that the shell answers 429
  with Retry-After, without touching a provider. A working channel is never limited.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")

# what a flood repeats: a dead channel's exhaustion, viewers dropped, tunes refused; and the
# session_end of a tune that never played (a session that streamed ends once, with its own numbers)
COALESCED = frozenset({"exhausted", "client_dropped", "tune_refused"})


def coalesce_key(event: str, fields: Mapping[str, Any]) -> Hashable | None:
    """The key identical events share, or None for an event that is always written on its own."""
    reason = fields.get("reason")
    if event in COALESCED or (event == "session_end" and reason == "Exhausted"):
        return (fields.get("channel"), event, reason)
    return None


@dataclass
class _Window(Generic[T]):
    until: float
    count: int = 0  # held since the last record of this key was written
    last: T | None = None


class Coalescer(Generic[T]):
    """Identical events within `window_s`: the first is written, the rest held and counted."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._windows: dict[Hashable, _Window[T]] = {}
        self.held = 0  # events not written on their own so far (each is in some record's `repeated`)

    def offer(self, key: Hashable | None, item: T, now: float) -> list[tuple[T, int]]:
        """What to write now, as (item, how many events it stands for): a held record whose window
        ended comes first, then `item` unless it is held."""
        out = self.due(now)
        if key is None or self.window_s <= 0:
            out.append((item, 1))
            return out
        w = self._windows.get(key)
        if w is None:
            self._windows[key] = _Window(until=now + self.window_s)
            out.append((item, 1))
        else:
            w.count += 1
            w.last = item
            self.held += 1
        return out

    def due(self, now: float) -> list[tuple[T, int]]:
        """Records whose window ended: the last event held, standing for all held since."""
        out: list[tuple[T, int]] = []
        for key, w in list(self._windows.items()):
            if now < w.until:
                continue
            if w.count and w.last is not None:
                out.append((w.last, w.count))
                # the flood goes on: the next ones are held too, one record per window
                w.count, w.last, w.until = 0, None, now + self.window_s
            else:
                del self._windows[key]  # a quiet window: the next event is written at once again
        return out

    def next_deadline(self) -> float | None:
        """When due() has a record to give (None: nothing held)."""
        return min((w.until for w in self._windows.values() if w.count), default=None)

    def drain(self) -> list[tuple[T, int]]:
        """Everything held, now (a clean shutdown)."""
        out = [(w.last, w.count) for w in self._windows.values() if w.count and w.last is not None]
        self._windows.clear()
        return out


class TuneLimiter:
    """Per client address: a burst of tunes of failing channels, then one per `every_s`."""

    def __init__(self, burst: int, every_s: float, failing_s: float, max_peers: int) -> None:
        self.burst = burst
        self.every_s = every_s
        self.failing_s = failing_s
        self.max_peers = max_peers
        self._failed_at: dict[str, float] = {}  # channel -> when a tune of it last found nothing
        self._tokens: OrderedDict[str, tuple[float, float]] = OrderedDict()  # peer -> (tokens, at)

    def failed(self, channel: str, now: float) -> None:
        """A tune of `channel` found no working stream."""
        self._failed_at[channel] = now

    def recovered(self, channel: str) -> None:
        """`channel` streamed again."""
        self._failed_at.pop(channel, None)

    def failing(self, channel: str, now: float) -> bool:
        at = self._failed_at.get(channel)
        if at is None:
            return False
        if now - at >= self.failing_s:
            del self._failed_at[channel]
            return False
        return True

    def admit(self, channel: str, peer: str, now: float) -> float | None:
        """None: tune it. Else the seconds until `peer` may tune a failing channel again."""
        if not self.failing(channel, now):
            return None
        tokens, at = self._tokens.pop(peer, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - at) / self.every_s)
        wait = None
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) * self.every_s
        self._tokens[peer] = (tokens, now)  # most recent last
        while len(self._tokens) > self.max_peers:
            self._tokens.popitem(last=False)  # forgetting an address only gives it its burst again
        return wait
