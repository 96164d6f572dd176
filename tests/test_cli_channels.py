"""The operator's commands as a person runs them: `relay sync`, `channels`, `map`, `unmap`, `events`."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import orjson
import pytest
import yaml

from tests.fake_xtream import PASSWORD, Account, FakeXtream, Stream
from tests.test_sync import GUIDE_XML, STREAMS, assert_clean, db_bytes

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def panels() -> Iterator[tuple[FakeXtream, FakeXtream]]:
    backup = [Stream(77, "BBC One HD", "bbcone.uk"), Stream(78, "UK: Channel 4 SD"), Stream(79, "Radio Gaga")]
    with (
        FakeXtream(streams=list(STREAMS), xmltv=GUIDE_XML) as main,
        FakeXtream(username="bob", streams=backup, xmltv=GUIDE_XML) as other,
    ):
        yield main, other


@pytest.fixture
def config(tmp_path: Path, panels: tuple[FakeXtream, FakeXtream]) -> Path:
    main, other = panels
    data = {
        "storage": {"database": "relay.db", "events": "events.jsonl"},
        "accounts": [
            {"name": "main", "url": main.url, "username": main.username, "password": PASSWORD},
            {"name": "backup", "url": other.url, "username": other.username, "password": PASSWORD},
        ],
        "guide": [{"url": f"{main.url}/xmltv.php?username=alice&password={quote(PASSWORD, safe='')}"}],
        "channels": [
            {"id": "news.x", "name": "News", "number": "7"},  # no streams: the sync may fill them in
            {
                "id": "tf1.fr",
                "name": "TF1 (mine)",
                "number": "1",
                "streams": [{"account": "backup", "stream_id": 5}],
            },
        ],
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    return path


OUTPUTS: list[str] = []  # every CLI output of this module, for the redaction check


def relay(config: Path, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(
        [sys.executable, "-m", "relay", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    OUTPUTS.extend((r.stdout, r.stderr))
    assert_clean(r.stdout, r.stderr)
    if ok:
        assert r.returncode == 0, r.stderr
    return r


def table(out: str) -> list[dict[str, str]]:
    """`relay channels` rows as dicts by header; a continuation row inherits its channel."""
    lines = out.splitlines()
    starts = [(m.start(), m.group()) for m in re.finditer(r"\S+(?: \S+)*", lines[0])]
    rows: list[dict[str, str]] = []
    for line in lines[1:-1]:  # the last line is the count
        row = {
            name: line[at : starts[i + 1][0] if i + 1 < len(starts) else None].strip()
            for i, (at, name) in enumerate(starts)
        }
        if not row["CHANNEL"] and rows:
            row |= {k: rows[-1][k] for k in ("NUMBER", "CHANNEL", "NAME")}
        rows.append(row)
    return rows


def streams_of(out: str, channel: str) -> list[str]:
    return [r["STREAM"] for r in table(out) if r["CHANNEL"] == channel and r["#"] != "-"]


def test_given_two_accounts_when_relay_sync_then_a_summary_without_progress_noise(config: Path) -> None:
    r = relay(config, "sync")
    out = r.stdout
    assert out.splitlines()[0].split() == ["ACCOUNT", "STATE", "STREAMS", "NOTES"]
    assert "main     ok     6        player_api; max_connections 2" in out
    assert "backup   ok     3" in out
    assert "guide: 4 channels from 1/1 source(s)" in out
    assert "(relay channels --unmapped lists them)" in out
    assert "\x1b[" not in out + r.stderr and "\r" not in out + r.stderr  # not a TTY: no progress line
    assert_clean(db_bytes(config.parent), (config.parent / "events.jsonl").read_bytes())


def test_given_a_sync_when_relay_channels_then_streams_in_priority_order_with_account_and_quality(
    config: Path,
) -> None:
    relay(config, "sync")
    out = relay(config, "channels").stdout
    head = out.splitlines()[0].split()
    assert head[:5] == ["NUMBER", "CHANNEL", "NAME", "#", "STREAM"]
    rows = table(out)
    assert streams_of(out, "bbcone.uk") == ["main/11", "main/12", "backup/77"]  # account order, then quality
    first = next(r for r in rows if r["CHANNEL"] == "bbcone.uk")
    assert first == {
        "NUMBER": "1001",
        "CHANNEL": "bbcone.uk",
        "NAME": "BBC One",
        "#": "1",
        "STREAM": "main/11",
        "QUALITY": "FHD",
        "SOURCE": "auto",
        "STREAM NAME": "UK: BBC One FHD",
    }
    assert streams_of(out, "channel4.uk") == ["main/13", "backup/78"]
    tf1 = [r for r in rows if r["CHANNEL"] == "tf1.fr"]  # the config's mapping, not main/15: config wins
    assert [(r["NAME"], r["STREAM"], r["SOURCE"]) for r in tf1] == [("TF1 (mine)", "backup/5", "config")]
    assert [r["STREAM"] for r in rows if r["CHANNEL"] == "news.x"] == ["(no stream)"]
    assert out.splitlines()[-1].startswith("5 channel(s), 7 stream(s)")


def test_given_unmapped_streams_when_relay_channels_unmapped_then_they_are_listed(config: Path) -> None:
    relay(config, "sync")
    out = relay(config, "channels", "--unmapped").stdout
    assert "Channels without a stream: 1" in out and "news.x" in out
    assert "Streams on no channel: 3" in out
    for ref, name in (("main/16", "24/7 Movies"), ("backup/79", "Radio Gaga"), ("main/15", "FR: TF1 4K")):
        assert any(ref in line and name in line for line in out.splitlines()), (ref, out)


def test_given_manual_map_and_unmap_then_syncs_keep_them_and_config_wins(config: Path) -> None:
    relay(config, "sync")
    r = relay(config, "map", "1001", "backup/77", "--priority", "0")  # by number
    assert r.stdout.strip() == "bbcone.uk: backup/77 at priority 0 (manual: a sync keeps it)"
    relay(config, "unmap", "bbcone.uk", "main/12")
    relay(config, "sync")
    out = relay(config, "channels").stdout
    assert streams_of(out, "bbcone.uk") == ["backup/77", "main/11"]
    assert [r["SOURCE"] for r in table(out) if r["CHANNEL"] == "bbcone.uk"] == ["manual", "auto"]
    bad = relay(config, "unmap", "tf1.fr", "backup/5", ok=False)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.strip().splitlines() == [
        "relay: tf1.fr <- backup/5 is set in the config file, which wins over relay map/unmap; edit it there"
    ]
    bad = relay(config, "map", "nope.x", "main/1", ok=False)
    assert bad.returncode == 2 and "unknown channel 'nope.x'" in bad.stderr
    bad = relay(config, "map", "bbcone.uk", "main:1", ok=False)
    assert bad.returncode == 2 and "ACCOUNT/STREAM_ID" in bad.stderr


async def test_given_events_when_relay_events_then_filtered_and_followed(
    config: Path, panels: tuple[FakeXtream, FakeXtream]
) -> None:
    panels[1].account = Account(status="Banned")
    await asyncio.to_thread(relay, config, "sync")
    events = config.parent / "events.jsonl"
    with events.open("ab") as f:
        for i, (level, channel) in enumerate((("info", "a.x"), ("warn", "b.x"), ("error", "b.x"))):
            rec = {"timestamp": f"2026-11-25T06:00:0{i}.000Z", "level": level, "category": "failover"}
            rec |= {
                "event": "failover",
                "channel": channel,
                "message": f"{channel}: message {i}",
                "event_id": str(i),
            }
            f.write(orjson.dumps(rec) + b"\n")
    r = await asyncio.to_thread(relay, config, "events", "--level", "warn")
    lines = r.stdout.splitlines()
    assert (
        len(lines) == 3 and "account backup: banned; not used until a sync finds it usable again" in lines[0]
    )
    assert lines[0].split()[2:4] == ["WARN", "provider"]
    assert lines[2] == "2026-11-25 06:00:02Z ERROR failover  b.x: message 2"
    r = await asyncio.to_thread(relay, config, "events", "--channel", "b.x", "--limit", "1")
    assert r.stdout.splitlines() == ["2026-11-25 06:00:02Z ERROR failover  b.x: message 2"]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relay", "events", "--follow", "--channel", "c.x", "--config", str(config),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    try:
        # the follower starts at the end of the file once it is up (how long that takes depends on the
        # machine's load): append the late event until it shows one
        rec = {"timestamp": "2026-11-25T07:00:00.000Z", "level": "warn", "category": "failover"}
        pending = asyncio.ensure_future(proc.stdout.readline())
        for i in range(40):
            with events.open("ab") as f:
                late = rec | {"channel": "c.x", "message": "c.x: late", "event_id": f"9{i}"}
                f.write(orjson.dumps(late) + b"\n")
            done, _ = await asyncio.wait({pending}, timeout=0.5)
            if done:
                break
        line = await asyncio.wait_for(pending, 10)
        assert line.decode().strip() == "2026-11-25 07:00:00Z WARN  failover  c.x: late"
    finally:
        proc.send_signal(signal.SIGINT)
        rc = await asyncio.wait_for(proc.wait(), 10)
    err = (await proc.stderr.read()).decode()
    assert rc == 0 and "Traceback" not in err
    assert_clean(err, *OUTPUTS)


def test_given_a_terminal_when_relay_sync_then_progress_is_shown_and_cleared(config: Path) -> None:
    import pty

    master, slave = pty.openpty()
    try:
        r = subprocess.run(
            [sys.executable, "-m", "relay", "sync", "--config", str(config)],
            stdout=subprocess.PIPE, stderr=slave, text=True, timeout=30, cwd=ROOT,
        )  # fmt: skip
        os.close(slave)
        seen = b""
        with contextlib.suppress(OSError):  # EIO once the child's side is closed
            while chunk := os.read(master, 65536):
                seen += chunk
    finally:
        os.close(master)
    assert r.returncode == 0
    progress = seen.decode()
    assert "account main ..." in progress and "mapping ..." in progress and progress.endswith("\r\x1b[K")
    assert "\x1b[" not in r.stdout
    assert_clean(progress, r.stdout)
