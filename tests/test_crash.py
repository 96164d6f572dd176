"""Events survive crashes: kill -9 in the middle of a burst of failovers loses no acknowledged event.

An event is acknowledged once its JSON line is in the file (the writer appends and flushes it before the
SQLite insert). After a crash the file may end in one torn line, the event being written when the
process died; at the next start the relay ends that line, so the next append stands alone, and copies
every line SQLite lacks into it. Readers skip the one line that does not parse.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sqlite3
from pathlib import Path
from typing import Any

import orjson
import yaml

from relay.core.events import SessionStart
from relay.storage.eventlog import EventLog
from tests import fake_provider as fp
from tests.fake_provider import FakeProvider
from tests.harness import StreamClient, config_for, open_stream, serve_process, until

CHANNELS = 8


def parse_lines(path: Path) -> tuple[list[dict[str, Any]], list[bytes]]:
    """(events, lines that are not an event): what a reader of the file gets."""
    events, bad = [], []
    for line in path.read_bytes().split(b"\n"):
        if not line:
            continue
        try:
            events.append(orjson.loads(line))
        except orjson.JSONDecodeError:
            bad.append(line)
    return events, bad


def sqlite_ids(db: Path) -> list[str]:
    conn = sqlite3.connect(db)
    try:
        return [r[0] for r in conn.execute("SELECT event_id FROM event_log ORDER BY id")]
    finally:
        conn.close()


async def burst(provider: FakeProvider, stop: asyncio.Event) -> int:
    """Drop the current stream of a random channel every few milliseconds: a failover each time.

    Only a channel that streams from exactly one upstream is hit, so a backup is always there.
    """
    rng = random.Random(1)
    drops = 0
    while not stop.is_set():
        ch = rng.randrange(CHANNELS)
        live = [c for s in (100 + ch, 200 + ch, 300 + ch) for c in provider.live(s)]
        if len(live) == 1 and live[0].body_bytes > 0:
            await provider.drop(live[0].stream_id or 0)
            drops += 1
        await asyncio.sleep(0.002)
    return drops


async def test_given_kill_9_mid_burst_of_failovers_when_restarted_then_file_whole_and_sqlite_has_every_event(
    ts_file: Path, tmp_path: Path
):
    procs: list[asyncio.subprocess.Process] = []
    try:
        async with FakeProvider(ts_file, default=fp.ok(prebuffer=0.5)) as provider:  # backups answer at once
            await crash_mid_burst(provider, tmp_path, procs)
    finally:
        for proc in procs:  # a failed assertion must not leave a relay running
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


async def crash_mid_burst(
    provider: FakeProvider, tmp_path: Path, procs: list[asyncio.subprocess.Process]
) -> None:
    chans = {f"ch{i}": [("a", 100 + i), ("b", 200 + i), ("c", 300 + i)] for i in range(CHANNELS)}
    cfg = config_for(tmp_path, provider, chans, accounts=("a", "b", "c"), cooldown_s=0, upgrade_after_s=3600)
    for acc in cfg["accounts"]:
        acc["max_connections"] = CHANNELS + 2
    cfg["tuner"] = {"tuner_count": CHANNELS}
    (tmp_path / "guide.xml").write_text("<tv></tv>\n")
    cfg["guide"] = {"sources": [{"file": str(tmp_path / "guide.xml")}]}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    jsonl, db, log = tmp_path / "events.jsonl", tmp_path / "relay.db", tmp_path / "relay.log"

    # Given a relay in the middle of a burst of failovers on every channel
    proc, port = await serve_process(tmp_path / "config.yaml", log)
    procs.append(proc)
    clients: list[StreamClient] = [await open_stream(port, f"/stream/ch{i}") for i in range(CHANNELS)]
    stop = asyncio.Event()
    driver = asyncio.create_task(burst(provider, stop))
    await until(lambda: jsonl.exists() and jsonl.read_bytes().count(b"\n") >= 60, what="a burst of events")

    # When it is killed with SIGKILL, events still being written
    await asyncio.sleep(random.uniform(0, 0.05))  # anywhere in the writer's cycle
    os.kill(proc.pid, signal.SIGKILL)
    assert await asyncio.wait_for(proc.wait(), 5) == -signal.SIGKILL
    stop.set()
    drops = await driver
    for c in clients:
        await c.close()
    before, torn_before = parse_lines(jsonl)
    assert len(torn_before) <= 1  # at most the line being written when the process died
    in_db_before = set(sqlite_ids(db))
    assert in_db_before <= {e["event_id"] for e in before}  # SQLite never runs ahead of the file

    # And restarted
    proc, port = await serve_process(tmp_path / "config.yaml", log)
    procs.append(proc)
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(proc.wait(), 10) == 0

    # Then every line of the file is an event but at most one torn line, ended so appends stand alone
    after, torn = parse_lines(jsonl)
    assert jsonl.read_bytes().endswith(b"\n")
    assert torn == torn_before
    assert [e["event_id"] for e in after[: len(before)]] == [e["event_id"] for e in before]
    # and SQLite has every event the file has, each once, and nothing else
    ids = sqlite_ids(db)
    assert len(ids) == len(set(ids))
    assert set(ids) == {e["event_id"] for e in after}
    failovers = [e for e in after if e["event"] == "failover"]
    assert len(failovers) >= 40 and drops >= len(failovers)
    assert b"Traceback" not in log.read_bytes()


async def test_given_torn_tail_and_rows_missing_from_sqlite_when_log_opens_then_both_repaired(tmp_path: Path):
    jsonl, db = tmp_path / "events.jsonl", tmp_path / "relay.db"
    # Given what a crash can leave: the last whole line not yet in SQLite, and a torn line after it
    log = EventLog(jsonl, db)
    await log.open()
    first = [log.emit(SessionStart(channel=f"ch{i}", to_stream="a/1", ttfb_ms=1.0)) for i in range(3)]
    await log.close()
    conn = sqlite3.connect(db)
    conn.execute("DELETE FROM event_log WHERE event_id = ?", (first[-1]["event_id"],))
    conn.commit()
    conn.close()
    torn = orjson.dumps(first[0])[:37]
    with open(jsonl, "ab") as f:
        f.write(torn)

    # When the relay opens its event log at start, and writes a new event
    log = EventLog(jsonl, db)
    await log.open()
    new = log.emit(SessionStart(channel="ch9", to_stream="b/2", ttfb_ms=1.0))
    await log.close()

    # Then the torn line stands alone, the new event is whole, and SQLite has every event of the file
    lines = jsonl.read_bytes().split(b"\n")
    assert lines[3] == torn and lines[-1] == b""
    events, bad = parse_lines(jsonl)
    assert bad == [torn]
    assert [e["event_id"] for e in events] == [r["event_id"] for r in [*first, new]]
    assert sorted(sqlite_ids(db)) == sorted(e["event_id"] for e in events)
