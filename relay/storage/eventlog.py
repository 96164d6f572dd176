"""Failover, upgrade, exhaustion and session events: one JSON line each, and the same row in SQLite.

`emit` never blocks the event loop: it stamps the event and queues it; a writer task appends the
batch to the JSON-lines file (aiofiles), then inserts it into `event_log` from a worker thread.
`close` drains the queue, so a clean shutdown loses nothing. The JSON line is written and flushed
before the SQLite insert; at start the relay copies into SQLite any line the database lacks (a crash
between the two), so "an event in the file is an event in the database".
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiofiles
import orjson

from relay.storage.store import Store

log = logging.getLogger("relay.storage.eventlog")

CATEGORIES = {
    "failover": "failover",
    "upgrade": "failover",
    "upgrade_failed": "failover",
    "exhausted": "failover",
    "holding": "failover",
    "transcode": "failover",
    "session_start": "stream",
    "session_end": "stream",
    "account_inactive": "provider",
    "account_active": "provider",
    "tune_refused": "stream",  # the cluster's tuner ledger refused a session (relay/cluster)
    "ledger_unavailable": "cluster",
    "ledger_available": "cluster",
    "lease_lost": "cluster",
}


def rfc3339(ts: float) -> str:
    """UTC, millisecond precision, 'Z' suffix: what log shippers parse without configuration."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def message(event: str, f: dict[str, Any]) -> str:
    """The one human line for an event; names streams as account/stream_id, never a URL."""
    ch = f.get("channel")
    frm, to, why = f.get("from_stream"), f.get("to_stream"), f.get("reason")
    if event == "failover":
        return f"{ch}: failover {frm} -> {to} ({why}) in {f.get('switch_ms')} ms"
    if event == "exhausted":
        tried = ", ".join(f.get("attempted") or []) or "nothing"
        return f"{ch}: all streams failed after {frm or 'start'} ({why}); tried {tried}"
    if event == "upgrade":
        return f"{ch}: upgraded {frm} -> {to}"
    if event == "upgrade_failed":
        return f"{ch}: upgrade {frm} -> {to} failed ({why}); staying"
    if event == "holding":
        return f"{ch}: all streams failed after {frm} ({why}); holding the response, retrying"
    if event == "transcode":
        return f"{ch}: re-encoding {to} ({f.get('from_codecs')} -> {f.get('to_codecs')}): {why}"
    if event == "client_dropped":
        return f"{ch}: dropped a viewer that fell behind ({f.get('reason')})"
    if event == "session_start":
        return f"{ch}: session started on {to} in {f.get('ttfb_ms')} ms"
    if event == "session_end":
        return (
            f"{ch}: session ended ({why}) after {f.get('duration_ms')} ms, {f.get('failovers', 0)} failovers"
        )
    if event == "account_inactive":
        return f"account {f.get('account')}: {why}; not used until a sync finds it usable again"
    if event == "account_active":
        return f"account {f.get('account')}: usable again (was {f.get('was')})"
    if event == "tune_refused":
        return f"{ch}: tune refused ({why}): {f.get('detail')}"
    if event == "ledger_unavailable":
        return f"cluster ledger unavailable: {f.get('detail')}"
    if event == "ledger_available":
        return f"cluster ledger available again after {f.get('down_ms')} ms ({f.get('was')})"
    if event == "lease_lost":
        return f"lease {f.get('lease')} lost: {f.get('detail')}; its connection is closed"
    return f"{ch}: {event}"


class EventLog:
    """Both sinks of the event stream, fed without blocking the loop."""

    def __init__(self, jsonl_path: Path, db_path: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.jsonl_path = Path(jsonl_path)
        self.db_path = Path(db_path)
        self.clock = clock
        self._queue: list[dict[str, Any]] = []
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="relay-events")
        self._store: Store | None = None
        self._file: Any = None
        self.written = 0
        self.listeners: list[Callable[[dict[str, Any]], None]] = []
        # fields every record carries, after its own: {"relay_id": ...} in a cluster, else none,
        # so a single relay's lines stay byte-identical
        self.stamp: dict[str, Any] = {}

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        self.jsonl_path.parent.mkdir(parents=True, exist_ok=True)
        self._store = await loop.run_in_executor(self._executor, Store, self.db_path)
        await loop.run_in_executor(self._executor, self._reconcile)
        self._file = await aiofiles.open(self.jsonl_path, "ab")
        self._task = asyncio.create_task(self._writer(), name="relay-events-writer")

    def emit(self, event: str, level: str, fields: dict[str, Any]) -> dict[str, Any]:
        """Stamp and queue one event; returns the record as it will be written."""
        record: dict[str, Any] = {
            "timestamp": rfc3339(self.clock()),
            "level": level,
            "category": CATEGORIES.get(event, "stream"),
            "event": event,
            **fields,
        }
        if self.stamp:
            record.update(self.stamp)
        record["message"] = message(event, record)
        record["event_id"] = uuid.uuid4().hex
        log.log(
            logging.ERROR if level == "error" else logging.WARNING if level == "warn" else logging.INFO,
            "%s",
            record["message"],
        )
        if self._closing and self._task is None:
            raise RuntimeError("event log is closed")
        self._queue.append(record)
        self._idle.clear()
        self._wake.set()
        for listener in self.listeners:
            listener(record)
        return record

    async def flush(self) -> None:
        """Wait until every event emitted so far is in both sinks."""
        await self._idle.wait()

    async def close(self) -> None:
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
            self._task = None
        if self._file is not None:
            await self._file.close()
            self._file = None
        if self._store is not None:
            store, self._store = self._store, None
            await asyncio.get_running_loop().run_in_executor(self._executor, store.close)
        self._executor.shutdown(wait=True)

    async def _writer(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                batch, self._queue = self._queue, []
                data = b"".join(orjson.dumps(r) + b"\n" for r in batch)
                try:
                    await self._file.write(data)
                    await self._file.flush()
                except OSError as e:  # disk full etc.: keep the SQLite copy, say so once per batch
                    log.error("cannot append to %s: %s", self.jsonl_path, e.strerror)
                try:
                    await loop.run_in_executor(self._executor, self._insert, batch)
                except Exception as e:  # never lose the writer task to a database error
                    log.error("cannot write events to %s: %s", self.db_path, e)
                self.written += len(batch)
            self._idle.set()
            if self._closing and not self._queue:
                return

    def _insert(self, batch: list[dict[str, Any]]) -> None:
        assert self._store is not None
        self._store.insert_events(batch)

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
