"""Open-file limits: with a soft limit smaller than `server.max_clients` needs, the relay raises it, and
if it still does not fit, serves fewer clients with one warning line; past that number a client gets
`503` (not a silent EOF), and /health keeps answering from its reserved slots.
"""

from __future__ import annotations

import asyncio
import re
import resource
import signal
import sys
from pathlib import Path

import yaml

from relay.shell.limits import client_budget
from tests.fake_provider import FakeProvider
from tests.harness import config_for, request, running_relay, until

ROOT = Path(__file__).resolve().parent.parent
LIMIT = 256


def test_client_budget_keeps_room_for_the_relay_and_never_goes_below_one():
    assert client_budget(1024, 1024, 20, 64, 2, 4) == 1024 - 20 - 64 - 8 - 4
    assert client_budget(100, 20_000, 20, 64, 2, 4) == 100
    assert client_budget(1024, 50, 20, 64, 2, 4) == 1


async def test_given_open_file_limit_below_max_clients_then_one_warning_503_past_it_and_health_answers(
    provider: FakeProvider, tmp_path: Path
):
    cfg = config_for(tmp_path, provider, {"ch1": [("a", 1)]})
    cfg["server"].update(max_clients=1024, header_timeout_s=30)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    log = tmp_path / "relay.log"

    def low_limit() -> None:  # soft and hard, so raising it cannot help
        resource.setrlimit(resource.RLIMIT_NOFILE, (LIMIT, LIMIT))

    with open(log, "wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "relay", "serve", "--config", str(tmp_path / "config.yaml"),
            stdout=out, stderr=out, cwd=ROOT, preexec_fn=low_limit,
        )  # fmt: skip
    conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        await until(lambda: b"listening on" in log.read_bytes(), timeout=20, what="relay listening")
        text = log.read_text()
        port = int(re.search(r"listening on http://127\.0\.0\.1:(\d+)", text).group(1))
        warnings = [ln for ln in text.splitlines() if "max_clients" in ln]
        assert len(warnings) == 1 and "WARN" in warnings[0], text
        served = int(re.search(r"serving at most (\d+) clients", warnings[0]).group(1))
        assert 50 < served < LIMIT - 64

        conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(served + 40)]
        reads = [asyncio.create_task(r.read()) for r, _ in conns]
        done, pending = await asyncio.wait(reads, timeout=3.0)
        answers = [t.result() for t in done]
        assert len(pending) == served  # the ones within the budget wait for their request
        assert len(answers) == 40 and all(a.startswith(b"HTTP/1.1 503 ") for a in answers), answers[:3]
        # full: /health still answers, from a reserved slot, and other paths there get 503
        health = await request(port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert health.startswith(b"HTTP/1.1 200 ") and b'"status"' in health
        other = await request(port, b"GET /lineup.json HTTP/1.1\r\nHost: x\r\n\r\n")
        assert other.startswith(b"HTTP/1.1 503 ")
        for t in pending:
            t.cancel()
        for _, w in conns:
            w.close()
        conns = []
        await asyncio.sleep(0.5)  # the closes reach the relay: its slots are free again
        again = await request(port, b"GET /lineup.json HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert again.startswith(b"HTTP/1.1 200 ")
        assert b"Traceback" not in log.read_bytes() and b"Too many open files" not in log.read_bytes()
    finally:
        for _, w in conns:
            w.close()
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0


async def test_given_max_clients_reached_then_health_is_answered_from_a_reserved_slot(
    provider: FakeProvider, tmp_path: Path
):
    cfg = config_for(tmp_path, provider, {"ch1": [("a", 1)]})
    cfg["server"].update(max_clients=5, header_timeout_s=10)
    async with running_relay(cfg, tmp_path) as relay:
        idle = [await asyncio.open_connection("127.0.0.1", relay.port) for _ in range(5)]
        await until(lambda: len(relay.connections) == 5, what="max_clients held")
        for _ in range(3):  # again and again while full
            health = await request(relay.port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            assert health.startswith(b"HTTP/1.1 200 ")
        # a silent connection in a reserved slot gets its 503 after limits.health_wait_s, not later
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        silent = await request(relay.port, b"", timeout=3)
        assert silent.startswith(b"HTTP/1.1 503 ") and loop.time() - t0 < 1.5
        # every reserved slot taken: the next one is answered 503 at once
        hold = [await asyncio.open_connection("127.0.0.1", relay.port) for _ in range(4)]
        await until(lambda: len(relay.health_conns) == 4, what="reserved slots held")
        assert (await request(relay.port, b"", timeout=0.2)).startswith(b"HTTP/1.1 503 ")
        for _, w in idle + hold:
            w.close()
