"""Notifications end to end: a real failover reaches a raw JSON webhook and, in words, an apprise target.

The apprise target is apprise's own `json://` plugin pointed at a receiver on 127.0.0.1, so the
message goes through the real apprise package exactly as a Discord or ntfy one would.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest

from relay.sources.sync import SyncReport
from tests.fake_provider import FakeProvider
from tests.harness import config_for, open_stream, running_relay, until


@pytest.fixture
def receiver() -> Iterator[tuple[int, list[tuple[str, Any]]]]:
    got: list[tuple[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            got.append((self.path, orjson.loads(body)))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    yield server.server_address[1], got
    server.shutdown()
    server.server_close()


async def test_a_failover_and_an_expiring_account_in_words_beside_the_raw_webhook(
    provider: FakeProvider, tmp_path: Path, receiver: tuple[int, list[tuple[str, Any]]]
):
    port, got = receiver
    cfg = config_for(tmp_path, provider, {"bbcone": [("main", 1), ("backup", 2)]},
                     accounts=("main", "backup"), stall_timeout_s=1.0)  # fmt: skip
    cfg["channels"][0]["name"] = "BBC One"
    cfg["notify"] = [
        {"url": f"http://127.0.0.1:{port}/raw"},
        {"apprise": f"json://127.0.0.1:{port}/words", "expiry_days": 7},
    ]
    async with running_relay(cfg, tmp_path) as relay:
        c = await open_stream(relay.port, "/stream/bbcone")
        await c.wait_bytes(50_000)
        provider.stall(1)
        await until(lambda: len([p for p, _ in got if p == "/words"]) >= 1, 20, "the apprise message")
        await until(lambda: any(p == "/raw" for p, _ in got), 10, "the raw webhook")
        raw = next(b for p, b in got if p == "/raw")
        assert raw["event"] == "failover" and raw["from_stream"] == "main/1"  # the JSON event, as before
        words = next(b for p, b in got if p == "/words")["message"]
        assert words.startswith("BBC One: main → backup, StreamStall, ") and words.endswith(" ms"), words
        await c.close()

        relay.store.set_account_state(
            "main", inactive_reason=None, exp_date=int(time.time()) + 3 * 86400 + 600
        )
        relay._synced(SyncReport())
        relay._synced(SyncReport())  # a second sync the same day says nothing new
        await until(
            lambda: any("expires" in b.get("message", "") for p, b in got if p == "/words"), 10, "expiry"
        )
        await asyncio.sleep(0.5)  # room for a duplicate to arrive, if one were sent
        expiring = [b["message"] for p, b in got if p == "/words" and "expires" in b["message"]]
        assert expiring == ["account main expires in 3 days"]
        assert provider.password not in orjson.dumps(got).decode()
