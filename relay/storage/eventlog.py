"""Failover, upgrade, exhaustion and session events: one JSON line each, and the same row in SQLite.

The events themselves (fields, level, category, message) are types in relay/core/events.py; this
module stamps them (`record`: timestamp, event_id) and writes them.

`emit` never blocks the event loop: it stamps the event and queues it; a writer task appends the
batch to the JSON-lines file, then inserts it into `event_log`, both from a worker thread. Identical
events of a flood are coalesced before they are queued (relay/core/admission.py: the first at once,
then one record per window carrying `repeated`). A sink that cannot write (a full disk) keeps what it
could not take and gets it again until it does (relay/storage/sinks.py); a batch is appended to the
file whole or not at all, so a full disk never leaves a torn line.
`close` drains the queue, so a clean shutdown loses nothing. The JSON line is written and flushed
before the SQLite insert; at start the relay copies into SQLite any line the database lacks (a crash
between the two), so "an event in the file is an event in the database". The file rotates by size
and reopens on SIGHUP (relay.storage.rotating); old `event_log` rows expire (relay.storage.retention).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from relay.core.admission import Coalescer, coalesce_key
from relay.core.events import Event
from relay.storage.retention import Retention
from relay.storage.rotating import RotatingFile
from relay.storage.sinks import SinkState
from relay.storage.store import Store

log = logging.getLogger("relay.storage.eventlog")


def rfc3339(ts: float) -> str:
    """UTC, millisecond precision, 'Z' suffix: what log shippers parse without configuration."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def record(
    event: Event, timestamp: float, event_id: str, stamp: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The event as it is written (JSON line, SQLite details) and as listeners get it: this order.

    `stamp`: fields every event of this relay carries after its own (a cluster's `relay_id`); none
    on a single relay, whose records are exactly the event's."""
    out: dict[str, Any] = {
        "timestamp": rfc3339(timestamp),
        "level": event.level,
        "category": event.category,
        "event": event.kind,
        **event.fields(),
    }
    if stamp:
        out.update(stamp)
    out["message"] = event.message()
    out["event_id"] = event_id
    return out


class EventLog:
    """Both sinks of the event stream, fed without blocking the loop."""

    def __init__(
        self,
        jsonl_path: Path,
        db_path: Path,
        *,
        clock: Callable[[], float] = time.time,
        max_bytes: int = 0,
        keep: int = 5,
        retention_days: float = 0,
        gid: int | None = None,
        coalesce_window_s: float = 0.0,
        retry_s: float = 5.0,
        warn_every_s: float = 60.0,
        backlog: int = 50_000,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.jsonl_path = Path(jsonl_path)
        self.db_path = Path(db_path)
        self.clock = clock
        self.gid = gid  # storage.group: the files this creates are 0640 for it, else 0600
        # the JSON lines: rotate past max_bytes (0 = never), keep this many old files
        self._file = RotatingFile(self.jsonl_path, max_bytes=max_bytes, keep=keep, gid=gid)
        self.retention = Retention(retention_days, clock)  # event_log rows: deleted after this many days
        self.monotonic = monotonic
        self.coalescer: Coalescer[dict[str, Any]] = Coalescer(coalesce_window_s)
        self._coalesce_timer: asyncio.TimerHandle | None = None
        self.retry_s = retry_s
        self.file_sink = SinkState("file", backlog, warn_every_s)
        self.db_sink = SinkState("database", backlog, warn_every_s)
        self._queue: list[dict[str, Any]] = []
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="relay-events")
        self._store: Store | None = None
        self.written = 0
        self.listeners: list[Callable[[dict[str, Any]], None]] = []
        # fields every record carries, after its own: {"relay_id": ...} in a cluster, else none,
        # so a single relay's lines stay byte-identical
        self.stamp: dict[str, Any] = {}

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        self.jsonl_path.parent.mkdir(parents=True, exist_ok=True)
        self._store = await loop.run_in_executor(self._executor, lambda: Store(self.db_path, gid=self.gid))
        await loop.run_in_executor(self._executor, self._reconcile)
        await loop.run_in_executor(self._executor, self.retention.prune, self._store)
        await loop.run_in_executor(self._executor, self._file.open)
        self._task = asyncio.create_task(self._writer(), name="relay-events-writer")

    def emit(self, event: Event) -> dict[str, Any]:
        """Stamp and queue one event; returns the record as it will be written."""
        rec = record(event, self.clock(), uuid.uuid4().hex, self.stamp)
        if self._closing and self._task is None:
            raise RuntimeError("event log is closed")
        for r, n in self.coalescer.offer(coalesce_key(event.kind, rec), rec, self.monotonic()):
            self._accept(r, n)
        self._arm_coalesce()
        return rec

    def reopen(self) -> None:
        """SIGHUP: an outside logrotate moved the JSON-lines file; the next batch goes to a new one."""
        self._file.request_reopen()

    def _accept(self, record: dict[str, Any], repeated: int) -> None:
        """Log, queue and announce one record; `repeated` > 1: it stands for that many events."""
        if repeated > 1:
            record["repeated"] = repeated
            record["message"] += f" (repeated {repeated} times)"
        level = record["level"]
        log.log(
            logging.ERROR if level == "error" else logging.WARNING if level == "warn" else logging.INFO,
            "%s",
            record["message"],
        )
        self._queue.append(record)
        self._idle.clear()
        self._wake.set()
        for listener in self.listeners:
            listener(record)

    def _arm_coalesce(self) -> None:
        when = self.coalescer.next_deadline()
        if when is None or self._coalesce_timer is not None:
            return
        with contextlib.suppress(RuntimeError):  # no loop running: what is held goes out at close
            loop = asyncio.get_running_loop()
            self._coalesce_timer = loop.call_later(max(0.0, when - self.monotonic()), self._coalesce_due)

    def _coalesce_due(self) -> None:
        self._coalesce_timer = None
        for rec, n in self.coalescer.due(self.monotonic()):
            self._accept(rec, n)
        self._arm_coalesce()

    @property
    def degraded(self) -> list[str]:
        """One line per sink that cannot write now (empty: all is well)."""
        where = {"file": self.jsonl_path.name, "database": self.db_path.name}
        return [
            f"events {s.name} {where[s.name]}: {s.error} ({len(s.pending)} events kept to retry)"
            for s in (self.file_sink, self.db_sink)
            if not s.ok
        ]

    async def flush(self) -> None:
        """Wait until every event emitted so far is in both sinks."""
        await self._idle.wait()

    async def close(self) -> None:
        if self._coalesce_timer is not None:
            self._coalesce_timer.cancel()
            self._coalesce_timer = None
        for rec, n in self.coalescer.drain():  # a clean shutdown writes what a window still held
            self._accept(rec, n)
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
            self._task = None
        for s, other in ((self.file_sink, self.db_path), (self.db_sink, self.jsonl_path)):
            if s.pending:
                log.error(
                    "%d events could not be written to the %s; they are in %s", len(s.pending), s.name, other
                )
        await asyncio.get_running_loop().run_in_executor(self._executor, self._file.close)
        if self._store is not None:
            store, self._store = self._store, None
            await asyncio.get_running_loop().run_in_executor(self._executor, store.close)
        self._executor.shutdown(wait=True)

    async def _writer(self) -> None:
        while True:
            retry = self.retry_s if (self.file_sink.pending or self.db_sink.pending) else None
            with contextlib.suppress(TimeoutError):  # a failing sink is retried even when all is quiet
                await asyncio.wait_for(self._wake.wait(), retry)
            self._wake.clear()
            while True:
                batch, self._queue = self._queue, []
                await self._deliver(self.file_sink, batch, self._append)
                await self._deliver(self.db_sink, batch, self._insert)
                self.written += len(batch)
                if not self._queue:
                    break
            self._idle.set()
            if self._closing and not self._queue:
                return

    async def _deliver(
        self, sink: SinkState, batch: list[dict[str, Any]], write: Callable[[list[dict[str, Any]]], None]
    ) -> None:
        """Write the sink's kept events and the batch, in order; on failure keep them for the next try."""
        records = sink.take(batch)
        if not records:
            return
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, write, records)
        except Exception as e:  # never lose the writer task (or an event) to a disk or database error
            error = e.strerror if isinstance(e, OSError) and e.strerror else str(e) or type(e).__name__
            if sink.failed(records, error, self.monotonic()):
                log.warning(
                    "events: cannot write to the %s (%s); %d events kept to retry every %g s%s",
                    sink.name,
                    error,
                    len(sink.pending),
                    self.retry_s,
                    f", {sink.lost} lost" if sink.lost else "",
                )
            return
        down_s = sink.succeeded(self.monotonic())
        if down_s is not None:
            log.info(
                "events: the %s takes events again after %.0f s; %d kept events written",
                sink.name,
                down_s,
                len(records) - len(batch),
            )

    def _append(self, records: list[dict[str, Any]]) -> None:
        """Append whole lines or nothing (relay.storage.rotating), rotating or reopening first if due."""
        self._file.append(b"".join(orjson.dumps(r) + b"\n" for r in records))

    def _insert(self, batch: list[dict[str, Any]]) -> None:
        assert self._store is not None
        try:
            self._store.insert_events(batch)
            self.retention.prune_if_due(self._store)
        except Exception:
            conn = self._store.conn
            if conn.in_transaction:  # a failed COMMIT leaves it open; the retry needs a fresh BEGIN
                with contextlib.suppress(Exception):
                    conn.execute("ROLLBACK")
            raise

    def _reconcile(self) -> None:
        """Copy into SQLite the JSON lines it lacks (a crash between the two writes); skip a torn tail."""
        assert self._store is not None
        if not self.jsonl_path.exists():
            return
        with open(self.jsonl_path, "rb+") as f:  # end a torn last line so the next append stands alone
            if f.seek(0, 2) > 0:
                f.seek(-1, 2)
                if f.read(1) != b"\n":
                    f.write(b"\n")
        rows: list[dict[str, Any]] = []
        with open(self.jsonl_path, "rb") as f:
            for line in f:
                try:
                    rec = orjson.loads(line)
                except orjson.JSONDecodeError:
                    continue  # a line torn by a crash mid-write: never acknowledged, so not an event
                if isinstance(rec, dict) and "event_id" in rec:
                    rows.append(rec)
                if len(rows) >= 5000:
                    self._store.insert_events(rows)
                    rows = []
        if rows:
            self._store.insert_events(rows)
