"""Every event the relay records, one frozen dataclass per kind: its fields, level, category, message.

Pure values, built where the thing happened (the failover machine, the session, the sync) and
handed to relay/storage/eventlog.py, which only stamps (timestamp, event_id), serialises and writes
them. The written record is `timestamp, level, category, event, <fields in declaration order>,
message, event_id`; monitoring reads that JSON line and the same row in SQLite, so the order and
names of the fields below are a format: tests/unit/test_events.py pins the JSON of each kind.

Rules of the fields: a field marked `_optional` is left out of the record when it is None or empty
(as before the types existed, when such keys were only added when set); every other field is always
written, None as null. Tuples are written as JSON arrays. Events name streams as account/stream_id,
never a URL, never a credential.

Over 400 lines because it is the catalogue: one short frozen dataclass per kind, and a reader (or a
monitoring rule) finds every event the relay writes in this one file.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from functools import cache
from typing import Any, ClassVar, Self


def _optional(default: Any = None) -> Any:
    """A field written only when set (not None, not empty)."""
    return field(default=default, metadata={"optional": True})


@dataclass(frozen=True, slots=True)
class Failure:
    """One candidate a round tried that failed, and why."""

    stream: str
    reason: str
    http_status: int | None


@dataclass(frozen=True, kw_only=True)
class Event:
    """An event of some kind; the subclasses are the kinds."""

    kind: ClassVar[str]
    level: ClassVar[str]  # info, warn, error
    category: ClassVar[str]  # failover, stream, provider

    def fields(self) -> dict[str, Any]:
        """The event's own fields as the record carries them, in their written order."""
        out: dict[str, Any] = {}
        for name, optional in _layout(type(self)):
            v = getattr(self, name)
            if optional and (v is None or v == ()):
                continue
            out[name] = _plain(v)
        return out

    def message(self) -> str:
        """The one human line for the event."""
        raise NotImplementedError


@cache
def _layout(cls: type[Event]) -> tuple[tuple[str, bool], ...]:
    return tuple((f.name, bool(f.metadata.get("optional"))) for f in dataclasses.fields(cls))


def _plain(v: Any) -> Any:
    if isinstance(v, tuple):
        return [_plain(x) for x in v]
    if isinstance(v, Failure):
        return {"stream": v.stream, "reason": v.reason, "http_status": v.http_status}
    return v


# ---- the failover machine's events ---------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class StreamEvent(Event):
    """The fields every event of the failover machine carries, in this order, None when not known."""

    channel: str
    from_stream: str | None = None
    to_stream: str | None = None
    reason: str | None = None
    attempted: tuple[str, ...] = ()
    http_status: int | None = None
    switch_ms: float | None = None


@dataclass(frozen=True, kw_only=True)
class SessionStart(StreamEvent):
    kind = "session_start"
    level = "info"
    category = "stream"
    ttfb_ms: float
    skipped: tuple[str, ...] = _optional(())
    failures: tuple[Failure, ...] = _optional(())

    def message(self) -> str:
        return f"{self.channel}: session started on {self.to_stream} in {self.ttfb_ms} ms"


@dataclass(frozen=True, kw_only=True)
class SessionEnd(StreamEvent):
    kind = "session_end"
    level = "info"
    category = "stream"
    duration_ms: float
    failovers: int
    upgrades: int

    def message(self) -> str:
        return (
            f"{self.channel}: session ended ({self.reason}) after {self.duration_ms} ms,"
            f" {self.failovers} failovers"
        )


@dataclass(frozen=True, kw_only=True)
class SwitchEvent(StreamEvent):
    """A switch to another stream mid-session: finished once the new stream's entry keyframe went out
    whole to the viewers (`entered`), so switch_ms is what a viewer waited. Each kind declares
    `keyframe_wait_ms` as its last field (a field declared here would be written before theirs)."""

    def entered(self, keyframe_wait_ms: float) -> Self:
        """This event once the entry went out `keyframe_wait_ms` after the switch: the wait counts."""
        switch_ms = None if self.switch_ms is None else round(self.switch_ms + keyframe_wait_ms, 1)
        return dataclasses.replace(self, switch_ms=switch_ms, keyframe_wait_ms=keyframe_wait_ms)


@dataclass(frozen=True, kw_only=True)
class Failover(SwitchEvent):
    kind = "failover"
    level = "warn"
    category = "failover"
    held_retries: int | None = _optional()
    skipped: tuple[str, ...] = _optional(())
    failures: tuple[Failure, ...] = _optional(())
    keyframe_wait_ms: float | None = _optional()

    def message(self) -> str:
        return (
            f"{self.channel}: failover {self.from_stream} -> {self.to_stream} ({self.reason})"
            f" in {self.switch_ms} ms"
        )


@dataclass(frozen=True, kw_only=True)
class TuneFailover(StreamEvent):
    """A session started on a lower candidate because better ones failed at tune (or were slower):
    a failover before the first byte, at warn so a dead primary is alerted on. `from_stream` is the
    best candidate, `reason` its failure; `failures` names every better one (Slower: it had not
    answered when a lower one won)."""

    kind = "tune_failover"
    level = "warn"
    category = "failover"
    ttfb_ms: float
    skipped: tuple[str, ...] = _optional(())
    failures: tuple[Failure, ...] = ()

    def message(self) -> str:
        return (
            f"{self.channel}: tuned {self.to_stream} instead of {self.from_stream} ({self.reason})"
            f" in {self.ttfb_ms} ms"
        )


@dataclass(frozen=True, kw_only=True)
class Upgrade(SwitchEvent):
    kind = "upgrade"
    level = "info"
    category = "failover"
    probe_ms: float | None = _optional()  # make-before-break: how long the probe took to deliver
    mode: str  # make_before_break | break_before_make
    skipped: tuple[str, ...] = _optional(())
    failures: tuple[Failure, ...] = _optional(())
    keyframe_wait_ms: float | None = _optional()

    def message(self) -> str:
        return f"{self.channel}: upgraded {self.from_stream} -> {self.to_stream}"


@dataclass(frozen=True, kw_only=True)
class UpgradeFailed(StreamEvent):
    kind = "upgrade_failed"
    level = "info"
    category = "failover"
    mode: str | None = _optional()  # set for break_before_make (a probe has none)
    skipped: tuple[str, ...] = _optional(())
    failures: tuple[Failure, ...] = _optional(())

    def message(self) -> str:
        return (
            f"{self.channel}: upgrade {self.from_stream} -> {self.to_stream} failed ({self.reason}); staying"
        )


@dataclass(frozen=True, kw_only=True)
class Exhausted(StreamEvent):
    kind = "exhausted"
    level = "error"
    category = "failover"
    skipped: tuple[str, ...] = ()
    failures: tuple[Failure, ...] = ()
    waited_ms: float

    def message(self) -> str:
        tried = ", ".join(self.attempted) or "nothing"
        after = self.from_stream or "start"
        return f"{self.channel}: all streams failed after {after} ({self.reason}); tried {tried}"


@dataclass(frozen=True, kw_only=True)
class Holding(StreamEvent):
    kind = "holding"
    level = "warn"
    category = "failover"
    hold_s: float

    def message(self) -> str:
        return (
            f"{self.channel}: all streams failed after {self.from_stream} ({self.reason});"
            " holding the response, retrying"
        )


# ---- the session's events -------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Transcode(Event):
    """A backup in other codecs than the viewers started with is re-encoded while it is current."""

    kind = "transcode"
    level = "info"
    category = "failover"
    channel: str
    to_stream: str | None
    reason: str = "CodecChange"
    from_codecs: str
    to_codecs: str

    def message(self) -> str:
        return (
            f"{self.channel}: re-encoding {self.to_stream} ({self.from_codecs} -> {self.to_codecs}):"
            f" {self.reason}"
        )


@dataclass(frozen=True, kw_only=True)
class ClientDropped(Event):
    """A viewer fell too far behind the others (SlowClient) or read nothing too long (ClientStalled)."""

    kind = "client_dropped"
    level = "warn"
    category = "stream"
    channel: str
    peer: str
    reason: str
    buffered_bytes: int

    def message(self) -> str:
        return f"{self.channel}: dropped a viewer that fell behind ({self.reason})"


@dataclass(frozen=True, kw_only=True)
class HlsSkipped(Event):
    """Segments of an HLS stream left the provider's live window before they could be fetched."""

    kind = "hls_skipped"
    level = "warn"
    category = "stream"
    channel: str
    stream: str | None
    skipped_segments: int
    reason: str

    def message(self) -> str:
        return f"{self.channel}: {self.stream} skipped {self.skipped_segments} HLS segment(s) ({self.reason})"


@dataclass(frozen=True, kw_only=True)
class HlsError(Event):
    """Why an HLS stream failed, in a short detail (never a URL); the failover event follows."""

    kind = "hls_error"
    level = "warn"
    category = "stream"
    channel: str
    stream: str | None
    reason: str
    http_status: int | None
    detail: str

    def message(self) -> str:
        return f"{self.channel}: {self.stream} failed ({self.reason}): {self.detail}"


@dataclass(frozen=True, kw_only=True)
class TuneRefused(Event):
    """A tune answered without a session: a client tuning a failing channel too often (429, with
    `peer` and `retry_after_s`), or a cluster with no tuner free (805, with `detail`)."""

    kind = "tune_refused"
    level = "info"
    category = "stream"
    channel: str
    peer: str | None = _optional()
    reason: str
    retry_after_s: int | None = _optional()
    detail: str | None = _optional()

    def message(self) -> str:
        if self.peer is not None:
            return f"{self.channel}: refused a tune from {self.peer}: the channel is failing ({self.reason})"
        return f"{self.channel}: tune refused ({self.reason}): {self.detail}"


@dataclass(frozen=True, kw_only=True)
class ClusterTuneRefused(TuneRefused):
    """The cluster's tuner ledger refused a session: a warning, not a client's retry storm."""

    level = "warn"


# ---- the cluster's events (relay/cluster) ------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class LedgerUnavailable(Event):
    """The cluster's Redis ledger cannot be asked: open streams go on, new tunes on limited accounts
    are refused (never a limit exceeded silently)."""

    kind = "ledger_unavailable"
    level = "error"
    category = "cluster"
    reason: str
    detail: str

    def message(self) -> str:
        return f"cluster ledger unavailable: {self.detail}"


@dataclass(frozen=True, kw_only=True)
class LedgerAvailable(Event):
    kind = "ledger_available"
    level = "info"
    category = "cluster"
    was: str | None
    down_ms: float

    def message(self) -> str:
        return f"cluster ledger available again after {self.down_ms} ms ({self.was})"


@dataclass(frozen=True, kw_only=True)
class LeaseLost(Event):
    """A provider-connection lease expired while this relay could not renew it and its slot was
    taken meanwhile: the connection is closed rather than exceed the account's limit."""

    kind = "lease_lost"
    level = "warn"
    category = "cluster"
    reason: str
    lease: str
    detail: str

    def message(self) -> str:
        return f"lease {self.lease} lost: {self.detail}; its connection is closed"


# ---- the sync's events ----------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class AccountInactive(Event):
    """The panel calls a line unauthorised, expired, banned or disabled: it is not used until a sync
    finds it usable again."""

    kind = "account_inactive"
    level = "warn"
    category = "provider"
    account: str
    reason: str | None
    exp_date: str | None = _optional()  # YYYY-MM-DD, when the panel said

    def message(self) -> str:
        return f"account {self.account}: {self.reason}; not used until a sync finds it usable again"


@dataclass(frozen=True, kw_only=True)
class AccountActive(Event):
    kind = "account_active"
    level = "info"
    category = "provider"
    account: str
    was: str | None  # the inactive reason it had

    def message(self) -> str:
        return f"account {self.account}: usable again (was {self.was})"


KINDS: tuple[type[Event], ...] = (
    SessionStart,
    SessionEnd,
    Failover,
    TuneFailover,
    Upgrade,
    UpgradeFailed,
    Exhausted,
    Holding,
    Transcode,
    ClientDropped,
    AccountInactive,
    AccountActive,
)
