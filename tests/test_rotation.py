"""Files that grow: the JSON-lines event file rotates by size (keep K) and reopens on SIGHUP; event_log
rows expire after `storage.event_log_days`. No event is lost or written twice across a rotation."""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import yaml

from relay.core.events import Failover, SessionStart
from relay.storage.eventlog import EventLog
from relay.storage.rotating import rotated_paths
from relay.storage.store import Store
from tests.fake_provider import FakeProvider
from tests.harness import config_for, open_stream, recorder, running_relay, until

ROOT = Path(__file__).resolve().parent.parent


def lines_of(paths: list[Path]) -> list[dict[str, Any]]:
    """Every event in these files; a torn or partial line fails the test (rotation never cuts one)."""
    out = []
    for p in paths:
        data = p.read_bytes()
        assert not data or data.endswith(b"\n"), p
        out += [orjson.loads(line) for line in data.splitlines()]
    return out


def db_ids(db: Path) -> list[str]:
    with sqlite3.connect(db) as c:
        return [r[0] for r in c.execute("SELECT event_id FROM event_log")]


async def test_given_bursts_with_rotations_and_reopens_then_every_event_is_in_exactly_one_file(
    tmp_path: Path,
) -> None:
    jsonl, db = tmp_path / "events.jsonl", tmp_path / "relay.db"
    log = EventLog(jsonl, db, max_bytes=6000, keep=1000)
    await log.open()
    rng = random.Random(14)
    emitted: list[str] = []
    moved: list[tuple[Path, int]] = []  # (where logrotate put the file, events emitted by then)
    for burst in range(120):
        for _ in range(rng.randint(1, 25)):
            rec = log.emit(Failover(channel=f"ch{burst}", from_stream="a/1", to_stream="b/2"))
            emitted.append(rec["event_id"])
        if burst % 40 == 20:  # logrotate: rename the live file away, then SIGHUP
            moved.append((jsonl.with_name(f"events.jsonl.logrotate-{burst}"), len(emitted)))
            jsonl.rename(moved[-1][0])
            log.reopen()
        if rng.random() < 0.5:
            await log.flush()
        else:
            await asyncio.sleep(0)
    await log.close()
    files = [jsonl, *(m for m, _ in moved), *(p for p in rotated_paths(jsonl, 1000) if p.exists())]
    assert len(files) > 10  # it did rotate, many times
    ids = [e["event_id"] for e in lines_of(files)]
    assert sorted(ids) == sorted(emitted) and len(set(ids)) == len(ids)  # each once, none lost
    assert sorted(db_ids(db)) == sorted(emitted)
    for m, by_then in moved:  # after the reopen nothing more went to the file logrotate moved
        assert {e["event_id"] for e in lines_of([m])} <= set(emitted[:by_then])


async def test_given_keep_3_then_only_three_rotated_files_remain_newest_first(tmp_path: Path) -> None:
    jsonl = tmp_path / "events.jsonl"
    log = EventLog(jsonl, tmp_path / "relay.db", max_bytes=2000, keep=3)
    await log.open()
    for i in range(200):
        log.emit(SessionStart(channel=f"n{i:03d}", to_stream="a/1", ttfb_ms=1.0))
        await log.flush()
    await log.close()
    assert sorted(p.name for p in tmp_path.glob("events.jsonl*")) == [
        "events.jsonl",
        "events.jsonl.1",
        "events.jsonl.2",
        "events.jsonl.3",
    ]
    assert all(0 < p.stat().st_size <= 2000 for p in rotated_paths(jsonl, 3))  # one event a batch here
    order = [jsonl.with_name(f"events.jsonl.{i}") for i in (3, 2, 1)] + [jsonl]
    channels = [e["channel"] for e in lines_of(order)]
    assert channels == sorted(channels) and channels[-1] == "n199"  # .3 oldest ... the live file newest
    assert len(db_ids(tmp_path / "relay.db")) == 200  # rotation bounds the files, not the database


async def test_given_event_log_days_then_older_rows_are_deleted_at_open_and_hourly(tmp_path: Path) -> None:
    db = tmp_path / "relay.db"
    now = [time.time()]
    store = Store(db)
    old = {"timestamp": "2001-01-01T00:00:00.000Z", "level": "info", "category": "stream", "message": "old"}
    store.insert_events([{**old, "event": "session_start", "event_id": "old-1"}])
    store.close()
    log = EventLog(tmp_path / "events.jsonl", db, clock=lambda: now[0], retention_days=30)
    await log.open()
    assert db_ids(db) == []  # at open: older than 30 days
    log.emit(SessionStart(channel="x", to_stream="a/1", ttfb_ms=1.0))
    await log.flush()
    assert len(db_ids(db)) == 1
    now[0] += 31 * 86400  # a month on, the first event is past the retention; the hourly look drops it
    log.emit(SessionStart(channel="y", to_stream="a/1", ttfb_ms=1.0))
    await log.flush()
    await log.close()
    with sqlite3.connect(db) as c:
        assert [r[0] for r in c.execute("SELECT json_extract(details, '$.channel') FROM event_log")] == ["y"]
    kept = EventLog(tmp_path / "events2.jsonl", db, retention_days=0)  # 0 = forever
    await kept.open()
    await kept.close()
    assert len(db_ids(db)) == 1


async def test_given_a_failover_burst_while_rotating_then_no_event_is_lost_or_duplicated(
    provider: FakeProvider, tmp_path: Path
) -> None:
    cfg = config_for(tmp_path, provider, {"ch1": [("a", 1), ("b", 2), ("c", 3)]}, cooldown_s=0)
    cfg["storage"] |= {"events_max_bytes": 800, "events_keep": 100}  # a failover event or two a file
    jsonl = tmp_path / "events.jsonl"
    async with running_relay(cfg, tmp_path) as relay:
        seen = recorder(relay)
        c = await open_stream(relay.port, "/stream/ch1")
        await c.wait_bytes(20_000)
        for i in range(12):
            live = [sid for sid in (1, 2, 3) if provider.active(sid)]
            assert live, "no upstream"
            await provider.drop(live[0])
            await c.wait_bytes(len(c.body) + 20_000)
            if i == 6:
                jsonl.rename(tmp_path / "events.jsonl.logrotated")
                relay.reopen()
        await c.close()
        await until(lambda: not relay.sessions, what="session ended")
    failovers = [e for e in seen if e["event"] == "failover"]
    assert len(failovers) >= 12
    files = [
        jsonl,
        tmp_path / "events.jsonl.logrotated",
        *(p for p in rotated_paths(jsonl, 100) if p.exists()),
    ]
    assert len(files) > 4
    ids = [e["event_id"] for e in lines_of(files)]
    assert sorted(ids) == sorted(e["event_id"] for e in seen)
    assert len(set(ids)) == len(ids)
    assert sorted(db_ids(tmp_path / "relay.db")) == sorted(ids)


async def test_given_a_serving_relay_when_sighup_then_the_event_file_is_reopened(
    provider: FakeProvider, tmp_path: Path
) -> None:
    cfg = config_for(tmp_path, provider, {"ch1": [("a", 1), ("b", 2)]})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relay", "serve", "--config", str(path),
        stderr=asyncio.subprocess.PIPE, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert proc.stderr is not None
    port = 0
    try:
        async with asyncio.timeout(20):
            while not port:
                line = (await proc.stderr.readline()).decode()
                assert line, "relay exited"
                if m := re.search(r"listening on http://127\.0\.0\.1:(\d+)", line):
                    port = int(m.group(1))
        cfg["server"]["port"] = port  # `relay health` (the container's HEALTHCHECK) asks this relay
        (tmp_path / "health.yaml").write_text(yaml.safe_dump(cfg))
        health = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "relay", "health", "--config", str(tmp_path / "health.yaml"),
            stdout=asyncio.subprocess.PIPE, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        )  # fmt: skip
        out, _ = await health.communicate()
        assert health.returncode == 0 and out.decode().strip().endswith("/health: ok")
        c = await open_stream(port, "/stream/ch1")
        await c.wait_bytes(20_000)
        jsonl = tmp_path / "events.jsonl"
        await until(lambda: jsonl.exists() and jsonl.stat().st_size > 0, what="session_start written")
        jsonl.rename(tmp_path / "events.jsonl.old")
        proc.send_signal(signal.SIGHUP)
        async with asyncio.timeout(10):
            while b"reopening" not in await proc.stderr.readline():
                pass
        await provider.drop(1)
        await until(
            lambda: jsonl.exists() and b'"failover"' in jsonl.read_bytes(), what="failover in new file"
        )
        await c.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(15):
            assert await proc.wait() == 0
    old = [e["event"] for e in lines_of([tmp_path / "events.jsonl.old"])]
    new = [e["event"] for e in lines_of([tmp_path / "events.jsonl"])]
    assert old == ["session_start"] and new[0] == "failover" and "session_end" in new
