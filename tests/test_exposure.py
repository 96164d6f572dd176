"""Exposure: no provider secret reaches a response, an event, a log line or the database.

`relay serve` runs as a subprocess with a distinctive password and username. The provider makes it
log and record what it can (a redirect whose Location carries the credentials, a 401, failovers, an
upgrade, an exhausted channel, guide and sync fetches whose URLs carry them), every endpoint is
requested (GET and HEAD), and then every log line, every JSON line, every SQLite event row, every
response and the raw database files are searched for the password and the username.
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
from pathlib import Path

import yaml

from relay.config import parse
from relay.shell.app import Relay
from tests import fake_provider as fp
from tests.fake_provider import FakeProvider
from tests.harness import config_for, open_stream, request, serve_process, until

PASSWORD = "Pw-s3cr3t-XYZ"
USERNAME = "user-ID-4711"

# every route a client can reach, reviewed: none writes state or needs a token (POST /lineup.post is
# Plex's scan and answers {} without doing anything). A new route must be added here on purpose.
# /ui and /ui/... (the web page): every change needs a login and a CSRF token, reads a login unless
# ui.public_status, and no secret reaches it (tests/test_web_api.py).
ROUTES = {
    "/health", "/discover.json", "/lineup.json", "/lineup.m3u", "/lineup_status.json", "/lineup.post",
    "/device.xml", "/", "/xmltv.xml", "/metrics", "/status", "/ui",
    # what each tuner streams to whom (the viewer's address, as a real HDHomeRun shows it): read-only
    "/lineup.xml", "/status.json", "/tuners.html",
}  # fmt: skip
PREFIXES = {"/stream/", "/auto/v", "/ui/"}


def hits(blob: bytes) -> list[str]:
    low = blob.lower()
    return [s for s in (PASSWORD, USERNAME) if s.lower().encode() in low]


async def test_given_a_working_and_failing_relay_then_no_secret_in_any_response_event_log_or_database(
    ts_file: Path, tmp_path: Path
):
    async with FakeProvider(ts_file, username=USERNAME, password=PASSWORD) as provider:
        chans = {"ch1": [("a", 1), ("b", 2), ("c", 3)], "ch2": [("d", 4)]}
        cfg = config_for(tmp_path, provider, chans, upgrade_after_s=0.5)
        cfg["server"]["host"] = "127.0.0.1"
        (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
        relay = Relay(parse(cfg, base_dir=tmp_path))  # not started: only its route table
        assert set(relay.routes) == ROUTES, "a new endpoint: review it for exposure, then list it here"
        assert {p for p, _, _ in relay.prefixes} == PREFIXES

        # the provider: a redirect that carries the credentials, a 401, a channel that cannot play
        provider.set(1, fp.redirect("{url}/live/{username}/{password}/11.ts"))
        provider.set(2, fp.status(401))
        provider.set(4, fp.status(403))
        log = tmp_path / "relay.log"
        proc, port = await serve_process(tmp_path / "config.yaml", log)
        responses: list[bytes] = []
        try:
            c = await open_stream(port, "/stream/ch1")
            await c.wait_bytes(20_000)
            await provider.drop(11)  # failover past the 401 to c/3, then upgrade probes back
            await until(lambda: provider.active(3) == 1, what="failover to c/3")
            await until(lambda: provider.connections[1] >= 2, what="an upgrade probe")
            await c.wait_bytes(len(c.body) + 20_000)
            responses.append(c.raw_head + bytes(c.body[:4096]))
            for path in (*sorted(ROUTES), "/lineup.post?scan=start", "/stream/ch2", "/auto/v101", "/nope"):
                for method in ("GET", "HEAD"):
                    raw = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
                    responses.append(await request(port, raw.encode()))
            for raw in (b"BOGUS\r\n\r\n", b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n"):
                responses.append(await request(port, raw))
            await c.close()
        finally:
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 10) == 0

    assert any(r.startswith(b"HTTP/1.1 503") for r in responses)  # the exhausted channel answered
    assert any(b"<tv" in r for r in responses) and any(b"#EXTM3U" in r for r in responses)
    for r in responses:
        assert not hits(r), r[:300]
    log_text = log.read_bytes()
    assert b"failover" in log_text and b"xmltv.php" in log_text  # the log did talk about it all
    assert not hits(log_text), [ln for ln in log_text.splitlines() if hits(ln)][:5]
    jsonl = (tmp_path / "events.jsonl").read_bytes()
    assert b'"failover"' in jsonl and b'"exhausted"' in jsonl and b'"upgrade' in jsonl
    assert not hits(jsonl) and b"/live/" not in jsonl
    conn = sqlite3.connect(tmp_path / "relay.db")
    rows = conn.execute("SELECT message, details FROM event_log").fetchall()
    conn.close()
    assert len(rows) == jsonl.count(b"\n")
    for message, details in rows:
        assert not hits(f"{message}{details}".encode())
    # the password is nowhere in the database at all (the username is, in `accounts`, by design)
    for f in tmp_path.glob("relay.db*"):
        assert PASSWORD.encode() not in f.read_bytes(), f
