"""Event flood: clients that keep tuning a channel with no working stream (issue 16).

`relay serve` runs as a subprocess (from this checkout, or from another tree with --tree, e.g. an
export of the `layout` commit to compare), its one channel pointing at a closed port, so every tune
exhausts at once. N clients, each from a loopback address of its own (127.0.0.10, .11, ...), tune it
in a loop for --seconds. Measured from outside: events written (JSON lines, SQLite rows), bytes
written (event file, database with its WAL, log), log lines, webhooks POSTed to a local receiver,
and the tunes answered. Prints one JSON object.

    python -m bench.flood [--seconds 10] [--clients 3 30] [--tree DIR ...]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import socket
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import yaml

ROOT = Path(__file__).resolve().parent.parent


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Webhook:
    def __init__(self) -> None:
        self.posts = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/hook"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            m = re.search(rb"(?i)content-length:\s*(\d+)", head)
            await reader.readexactly(int(m.group(1)) if m else 0)
            self.posts += 1
            writer.write(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()


def sizes(d: Path) -> int:
    return sum(p.stat().st_size for p in d.glob("relay.db*")) + (d / "events.jsonl").stat().st_size


async def one_run(tree: Path, clients: int, seconds: float) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="flood-"))
    hook = Webhook()
    url = await hook.start()
    cfg = {
        "server": {"host": "127.0.0.1", "port": 0},
        "discovery": {"udp": False},
        "sync": {"on_start": False},
        "storage": {"database": str(work / "relay.db"), "events": str(work / "events.jsonl")},
        "notify": [{"url": url}],
        "accounts": [
            {"name": "a", "url": f"http://127.0.0.1:{closed_port()}", "username": "u", "password": "p"}
        ],
        "channels": [
            {"id": "dead", "name": "Dead", "number": "1", "streams": [{"account": "a", "stream_id": 1}]}
        ],
    }
    (work / "config.yaml").write_text(yaml.safe_dump(cfg))
    log = work / "relay.log"
    env = {**os.environ, "PYTHONPATH": str(tree)}
    with open(log, "wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "relay", "serve", "--config", str(work / "config.yaml"),
            stdout=out, stderr=out, cwd=tree, env=env,
        )  # fmt: skip
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while not (m := re.search(rb"listening on http://127\.0\.0\.1:(\d+)", log.read_bytes())):
        if proc.returncode is not None or loop.time() > deadline:
            raise SystemExit(f"relay did not start: {log.read_text()[-2000:]}")
        await asyncio.sleep(0.05)
    port = int(m.group(1))
    await asyncio.sleep(0.5)
    log0, store0, lines0 = log.stat().st_size, sizes(work), log.read_bytes().count(b"\n")
    statuses: dict[int, int] = {}
    end = loop.time() + seconds

    async def client(i: int) -> None:
        while loop.time() < end:
            try:
                r, w = await asyncio.open_connection("127.0.0.1", port, local_addr=(f"127.0.0.{10 + i}", 0))
                w.write(b"GET /stream/dead HTTP/1.1\r\nHost: x\r\n\r\n")
                data = await r.read()
                w.close()
                status = int(data.split(b" ", 2)[1]) if data else 0
            except (OSError, IndexError, ValueError):
                status = -1
            statuses[status] = statuses.get(status, 0) + 1

    t0 = time.monotonic()
    await asyncio.gather(*(client(i) for i in range(clients)))
    elapsed = time.monotonic() - t0
    await asyncio.sleep(1.0)  # what the relay still writes for the flood (its queue, webhooks)
    store1, log1, lines1 = sizes(work), log.stat().st_size, log.read_bytes().count(b"\n")
    posts = hook.posts
    proc.send_signal(signal.SIGTERM)
    await asyncio.wait_for(proc.wait(), 30)
    assert hook.server is not None
    hook.server.close()
    events = [orjson.loads(x) for x in (work / "events.jsonl").read_bytes().splitlines() if x.strip()]
    conn = sqlite3.connect(work / "relay.db")
    rows = conn.execute("SELECT count(*) FROM event_log").fetchone()[0]
    conn.close()
    occurrences = sum(e.get("repeated", 1) for e in events if e["event"] == "exhausted")
    return {
        "clients": clients,
        "seconds": round(elapsed, 2),
        "tunes_per_s": round(sum(statuses.values()) / elapsed, 1),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "events_per_s": round(len(events) / elapsed, 1),
        "event_rows_per_s": round(rows / elapsed, 1),
        "exhaustions_counted": occurrences,
        "bytes_per_s": round((store1 - store0 + log1 - log0) / elapsed),
        "event_store_bytes_per_s": round((store1 - store0) / elapsed),
        "log_bytes_per_s": round((log1 - log0) / elapsed),
        "log_lines_per_s": round((lines1 - lines0) / elapsed, 1),
        "webhooks_per_s": round(posts / elapsed, 2),
    }


async def main(trees: list[Path], clients: list[int], seconds: float) -> dict[str, Any]:
    out: dict[str, Any] = {"seconds": seconds, "runs": {}}
    for tree in trees:
        out["runs"][str(tree)] = [await one_run(tree, n, seconds) for n in clients]
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--clients", type=int, nargs="+", default=[3, 30])
    ap.add_argument("--tree", type=Path, nargs="+", default=[ROOT], help="checkouts to run the relay from")
    args = ap.parse_args()
    print(orjson.dumps(asyncio.run(main(args.tree, args.clients, args.seconds))).decode())
