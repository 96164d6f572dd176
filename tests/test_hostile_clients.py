"""Hostile clients: slowloris, clients that never read, floods of idle connections, and clients that leave
in the middle of a failover. The relay bounds what each can hold (time, memory, sockets, provider slots)
and keeps serving everyone else.
"""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

import pytest

from relay.config import ServerConfig
from relay.shell.server import CLOSE_GRACE_S
from tests import fake_provider as fp
from tests.fake_provider import FakeProvider
from tests.harness import config_for, open_stream, recorder, request, running_relay, until, whole_packets

CH = {"ch1": [("a", 1), ("b", 2), ("c", 3)]}


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def silent_reader(port: int, path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A stream client with a small receive buffer that reads the head and then never reads again."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)  # or loopback autotuning hides it
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=1024)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await reader.readuntil(b"\r\n\r\n")
    writer.transport.pause_reading()
    return reader, writer


# ---- slowloris ------------------------------------------------------------------------------------


def test_header_timeout_defaults_to_10_s_and_client_limits_are_set():
    s = ServerConfig()
    assert (s.header_timeout_s, s.client_stall_s, s.max_clients) == (10.0, 30.0, 1024)


@pytest.mark.parametrize(
    "shape",
    ["head trickled a byte at a time", "body that never completes", "idle after a keep-alive answer"],
)
async def test_given_slowloris_shapes_then_each_is_closed_at_header_timeout(
    provider: FakeProvider, tmp_path: Path, shape: str
):
    cfg = config_for(tmp_path, provider, CH)
    cfg["server"]["header_timeout_s"] = 0.5
    async with running_relay(cfg, tmp_path) as relay:
        loop = asyncio.get_running_loop()
        reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
        t0 = loop.time()
        if shape == "body that never completes":
            writer.write(b"POST /lineup.post HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc")
        elif shape == "idle after a keep-alive answer":
            writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            await reader.readuntil(b"}")
            t0 = loop.time()

        async def trickle() -> None:
            for b in b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200:
                writer.write(bytes([b]))
                await asyncio.sleep(0.02)

        dribble = asyncio.create_task(trickle()) if shape.startswith("head") else None
        rest = await asyncio.wait_for(reader.read(), 3)
        assert b"HTTP/1.1 200" not in rest  # nothing answered the unfinished request
        assert 0.45 < loop.time() - t0 < 1.5
        if dribble is not None:
            dribble.cancel()
        writer.close()


async def test_given_200_slowloris_connections_then_all_closed_and_fds_back_while_a_stream_runs(
    provider: FakeProvider, tmp_path: Path
):
    cfg = config_for(tmp_path, provider, CH)
    cfg["server"]["header_timeout_s"] = 0.5
    async with running_relay(cfg, tmp_path) as relay:
        c = await open_stream(relay.port, "/stream/ch1")
        await c.wait_bytes(10_000)
        before = open_fds()
        conns = [await asyncio.open_connection("127.0.0.1", relay.port) for _ in range(200)]
        for _, w in conns:
            w.write(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # never finished
        await until(lambda: len(relay.connections) == 201, what="all accepted")
        n = len(c.body)
        reads = await asyncio.wait_for(asyncio.gather(*(r.read() for r, _ in conns)), 3)
        assert reads == [b""] * 200  # closed by the relay, without an answer
        for _, w in conns:
            w.close()
        await until(lambda: len(relay.connections) == 1, what="slowloris sockets released")
        await until(lambda: open_fds() <= before, what="fds back to where they were")
        await c.wait_bytes(n + 20_000)
        assert whole_packets(c.body) and not c.closed
        await c.close()


# ---- a client that never reads ---------------------------------------------------------------------


async def test_given_client_that_never_reads_then_dropped_after_client_stall_s_and_slot_and_socket_freed(
    ts_file: Path, tmp_path: Path
):
    async with FakeProvider(ts_file, rate_factor=20.0) as provider:
        cfg = config_for(tmp_path, provider, CH, stall_timeout_s=1.0)
        cfg["server"]["client_stall_s"] = 1.0
        async with running_relay(cfg, tmp_path) as relay:
            events = recorder(relay)
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            _, writer = await silent_reader(relay.port, "/stream/ch1")
            (proto,) = relay.connections
            most = 0
            while not any(e["event"] == "client_dropped" for e in events):
                most = max(most, proto.buffered())
                assert loop.time() - t0 < 8, "the silent client was never dropped"
                await asyncio.sleep(0.02)
            dropped = next(e for e in events if e["event"] == "client_dropped")
            assert dropped["reason"] == "ClientStalled"
            assert loop.time() - t0 >= 1.0  # not before client_stall_s of silence
            assert most <= relay.cfg.server.client_buffer_bytes  # memory bounded the whole time
            await until(lambda: provider.active_total() == 0, timeout=2, what="provider connection closed")
            assert sum(relay.shared.slots.held.values()) == 0 and not relay.sessions
            end = next(e for e in events if e["event"] == "session_end")
            assert end["reason"] == "ClientStalled"
            assert provider.connections[2] == 0  # a paused client is not a stalled upstream: no failover
            # the socket goes too, although the client never takes what is left in it
            await until(lambda: not relay.connections, timeout=CLOSE_GRACE_S + 2, what="socket released")
            writer.close()


# ---- floods of idle connections --------------------------------------------------------------------


async def test_given_2000_idle_connections_then_beyond_max_clients_503_and_fds_stay_bounded(
    provider: FakeProvider, tmp_path: Path
):
    cfg = config_for(tmp_path, provider, CH)
    cfg["server"].update(max_clients=100, header_timeout_s=4.0)
    async with running_relay(cfg, tmp_path) as relay:
        c = await open_stream(relay.port, "/stream/ch1")
        await c.wait_bytes(10_000)
        before = open_fds()
        conns = [await asyncio.open_connection("127.0.0.1", relay.port) for _ in range(2000)]
        reads = [asyncio.create_task(r.read()) for r, _ in conns]
        done, pending = await asyncio.wait(reads, timeout=1.0)
        answers = [t.result() for t in done]
        assert len(pending) == 99  # the stream plus 99 idle ones fill max_clients
        assert all(a.startswith(b"HTTP/1.1 503 ") and a.endswith(b"Too many connections\n") for a in answers)
        assert len(relay.connections) == 100
        # the relay side holds at most max_clients sockets: only our own 2000 client ends are extra
        assert open_fds() - before <= 2000 + 100
        n = len(c.body)
        await c.wait_bytes(n + 20_000)  # the stream never noticed
        # the idle ones are closed at header_timeout_s, and the relay serves new clients again
        await asyncio.wait_for(asyncio.gather(*pending), 6)
        assert (await request(relay.port, b"GET /health HTTP/1.1\r\nConnection: close\r\n\r\n"))[:12] == (
            b"HTTP/1.1 200"
        )
        for _, w in conns:
            w.close()
        await until(lambda: open_fds() <= before, what="fds back to where they were")
        assert whole_packets(c.body) and not c.closed
        await c.close()


# ---- a client that leaves in the middle of a failover --------------------------------------------------


PHASES = ["starting", "failing over", "failing over, lingering", "holding", "probing an upgrade"]


@pytest.mark.parametrize("phase", PHASES)
async def test_given_client_leaves_mid_failover_then_no_upstream_slot_or_session_is_left(
    provider: FakeProvider, tmp_path: Path, phase: str
):
    cfg = config_for(tmp_path, provider, CH, hold_s=10.0, upgrade_after_s=0.3)
    if phase.endswith("lingering"):
        cfg["server"]["linger_s"] = 0.5
    async with running_relay(cfg, tmp_path) as relay:
        events = recorder(relay)
        if phase == "starting":
            provider.set(1, fp.blackhole())
            _, writer = await asyncio.open_connection("127.0.0.1", relay.port)
            writer.write(b"GET /stream/ch1 HTTP/1.1\r\nHost: x\r\n\r\n")
            await until(lambda: provider.active(1) == 1, what="primary connecting")
            writer.close()
        else:
            if phase == "probing an upgrade":
                provider.set(1, fp.status(503))  # start on the backup
            c = await open_stream(relay.port, "/stream/ch1")
            await c.wait_bytes(10_000)
            if phase.startswith("failing over"):
                provider.set(2, fp.blackhole())
                provider.set(3, fp.blackhole())
                await provider.drop(1)
                await until(lambda: provider.active(3) == 1, what="both backups connecting")
            elif phase == "holding":
                provider.set(2, fp.status(503))
                provider.set(3, fp.refuse())
                await provider.drop(1)
                await until(lambda: any(e["event"] == "holding" for e in events), what="holding")
            else:
                provider.set(1, fp.blackhole())
                await until(lambda: provider.active(1) == 1, what="upgrade probe connecting")
            await c.close()
        await until(lambda: provider.active_total() == 0, timeout=3, what="every upstream closed")
        await until(lambda: not relay.sessions, what="session ended")
        assert sum(relay.shared.slots.held.values()) == 0 and not relay.by_channel
        end = next(e for e in events if e["event"] == "session_end")
        assert end["reason"] == "ClientGone"
        await asyncio.sleep(0.3)  # nothing comes back to life afterwards (a timer, a retry)
        assert provider.active_total() == 0
