"""A full disk under the event log: the trouble is visible (/health degraded, /status, metrics, at most one
warning per sink per minute), and when space returns the events the sinks could not take are written
into them, so the JSON-lines file and SQLite `event_log` hold the same events again. Before, every batch
logged an ERROR, /health said ok, and the file (60 lines) and event_log (803 rows) diverged for good.

The storage lives on a small tmpfs this test mounts (root; it is unmounted at the end).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from tests import fake_provider as fp
from tests.fake_provider import FakeProvider
from tests.harness import config_for, recorder, request, running_relay, until


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs, so filling it takes a moment."""
    d = tmp_path / "fs"
    d.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(d)], capture_output=True, text=True
    )
    if r.returncode != 0:
        reason = f"cannot mount a tmpfs (needs root): {r.stderr.strip()}"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", str(d)], check=False)


def fill(fs: Path) -> Path:
    """Write a file until the filesystem is full; returns it."""
    filler = fs / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError as e:
            assert e.errno == errno.ENOSPC
    return filler


def file_ids(path: Path) -> list[str]:
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b"", "the file ends in a torn line"
    return [orjson.loads(line)["event_id"] for line in lines[:-1]]


def db_ids(path: Path) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        return [r[0] for r in conn.execute("SELECT event_id FROM event_log ORDER BY id")]
    finally:
        conn.close()


async def get(port: int, path: str) -> bytes:
    raw = await request(port, f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    return raw.split(b"\r\n\r\n", 1)[1]


async def test_given_full_disk_then_degraded_and_when_space_returns_both_sinks_agree_again(
    provider: FakeProvider, tmp_path: Path, small_fs: Path, caplog: pytest.LogCaptureFixture
):
    provider.set(9, fp.status(503))
    cfg = config_for(tmp_path, provider, {"dead": [("a", 9)]})
    cfg["storage"] = {"database": str(small_fs / "relay.db"), "events": str(small_fs / "events.jsonl")}
    # every event on its own, tunes never limited: as many writes as possible hit the full disk
    cfg["limits"] = {"coalesce_window_s": 0, "failing_tune_burst": 1000, "sink_retry_s": 0.2}
    caplog.set_level(logging.INFO, logger="relay.storage.eventlog")
    async with running_relay(cfg, tmp_path) as relay:
        emitted = recorder(relay)
        assert orjson.loads(await get(relay.port, "/health"))["status"] == "ok"
        filler = fill(small_fs)
        for _ in range(40):  # two events each (exhausted, session_end), batch after batch
            await request(relay.port, b"GET /stream/dead HTTP/1.1\r\nHost: x\r\n\r\n")
        await relay.events.flush()
        ev = relay.events
        await until(lambda: not ev.file_sink.ok, what="the file sink failing")

        health = orjson.loads(await get(relay.port, "/health"))
        assert health["status"] == "degraded"
        assert any(
            "events file events.jsonl" in p and "No space left on device" in p for p in health["problems"]
        )
        status = orjson.loads(await get(relay.port, "/status"))
        assert status["event_sinks"]["file"]["ok"] is False and status["event_sinks"]["file"]["pending"] > 0
        metrics = (await get(relay.port, "/metrics")).decode()
        assert 'relay_event_sink_ok{sink="file"} 0.0' in metrics
        assert ev.file_sink.failures > 3  # it was retried, batch after batch...
        warnings = [r for r in caplog.records if "cannot write to the" in r.getMessage()]
        assert 1 <= len(warnings) <= 2  # ...but said so once per sink (file, database)
        assert not any(r.levelno >= logging.ERROR and "cannot" in r.getMessage() for r in caplog.records)

        filler.unlink()  # space returns
        await until(lambda: ev.file_sink.ok and ev.db_sink.ok, timeout=5, what="both sinks writing again")
        await relay.events.flush()
        assert orjson.loads(await get(relay.port, "/health"))["status"] == "ok"
        assert any("takes events again" in r.getMessage() for r in caplog.records)
        ids = [e["event_id"] for e in emitted]
        assert len(ids) >= 80
    in_file = file_ids(small_fs / "events.jsonl")
    assert in_file == db_ids(small_fs / "relay.db")  # the same events, in the same order
    assert set(ids) <= set(in_file)  # every event emitted while the disk was full is in both
    assert ev.file_sink.lost == 0 and ev.db_sink.lost == 0


async def test_given_backlog_overflow_then_the_loss_is_counted_and_the_other_sink_keeps_them(
    tmp_path: Path, small_fs: Path
):
    from relay.core.events import SessionStart
    from relay.storage.eventlog import EventLog

    log = EventLog(small_fs / "events.jsonl", tmp_path / "relay.db", backlog=100, retry_s=0.05)
    await log.open()
    try:
        filler = fill(small_fs)
        for i in range(250):
            log.emit(SessionStart(channel=f"c{i}", ttfb_ms=1.0))
            if i % 50 == 0:
                await log.flush()
        await log.flush()
        assert not log.file_sink.ok and log.file_sink.lost >= 150 and len(log.file_sink.pending) == 100
        assert log.db_sink.ok  # the database is elsewhere: it has them all
        filler.unlink()
        await until(lambda: log.file_sink.ok, timeout=3, what="file sink writing again")
    finally:
        await log.close()
    assert len(db_ids(tmp_path / "relay.db")) == 250
    assert len(file_ids(small_fs / "events.jsonl")) == 250 - log.file_sink.lost
    await asyncio.sleep(0)
