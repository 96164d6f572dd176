"""The state of one event sink (the JSON-lines file, the SQLite `event_log`) that may fail to write.

On a full disk the event writer used to log one ERROR per batch (331 lines), /health still said ok,
and the two sinks diverged for good. Now each sink keeps the events it could not take, in order, and
they are retried into it (every `limits.sink_retry_s`, and with every new batch) until it takes them,
so both sinks agree again once space returns. Meanwhile /health says degraded, /status and the
metrics name the sink, and a warning is logged at most every `limits.sink_warn_every_s`. Only past
`limits.sink_backlog` kept events are the oldest lost to that sink; they are counted (`lost`, and
the metric `relay_event_sink_lost`), and still in the other sink.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class SinkState:
    name: str  # "file" or "database"
    backlog: int  # events kept at most while failing
    warn_every_s: float
    pending: list[dict[str, Any]] = field(default_factory=list)  # not yet taken, in emit order
    error: str | None = None  # the last failure, while failing
    failing_since: float | None = None
    last_warned: float | None = None
    failures: int = 0  # writes that failed, in all
    lost: int = 0  # events dropped from a full backlog, in all

    @property
    def ok(self) -> bool:
        return self.failing_since is None

    def take(self, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """What to write now: the kept events first, then the batch (kept until the write succeeds)."""
        return self.pending + batch if self.pending else batch

    def failed(self, records: list[dict[str, Any]], error: str, now: float) -> bool:
        """The write of `records` failed: keep them. True if a warning is due now."""
        self.failures += 1
        self.error = error
        if self.failing_since is None:
            self.failing_since = now
        over = len(records) - self.backlog
        if over > 0:
            self.lost += over
            records = records[over:]
        self.pending = records
        if self.last_warned is None or now - self.last_warned >= self.warn_every_s:
            self.last_warned = now
            return True
        return False

    def succeeded(self, now: float) -> float | None:
        """A write went through; if the sink was failing, for how long (then it is ok again)."""
        self.pending = []
        if self.failing_since is None:
            return None
        began, self.failing_since, self.error, self.last_warned = self.failing_since, None, None, None
        return now - began

    def status(self) -> dict[str, Any]:
        return {"ok": self.ok, "error": self.error, "pending": len(self.pending), "lost": self.lost}
