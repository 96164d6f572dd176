"""A scriptable fake Xtream-Codes provider for testing the relay's upstream handling and failover.

Real providers misbehave in specific ways (see docs/protocols.md §2.4): they redirect through load
balancers, answer odd status codes, stall, drop, or kill the oldest connection of a line. This server
reproduces each on demand, on 127.0.0.1 only, so tests can assert exactly how the relay reacts.

Behaviour is configured per stream id with :meth:`FakeProvider.set` and applies to *new* requests; the
live-connection controls (:meth:`~FakeProvider.drop`, :meth:`~FakeProvider.stall`,
:meth:`~FakeProvider.reset`) act on connections already streaming. Plain asyncio streams are used, so the
server runs under both the default event loop and uvloop.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import os
import re
import secrets
import socket
import ssl
import struct
import subprocess
import zlib
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from types import TracebackType
from typing import Any, Literal
from urllib.parse import urlsplit

TS_PACKET = 188
HOST = "127.0.0.1"

# ---------------------------------------------------------------------------------------------------------
# Behaviours


@dataclass(frozen=True)
class Ok:
    """200 ``video/mp2t`` without Content-Length, the TS file looped and paced near real time.

    ``rate_factor`` multiplies real time (None = the provider's default) so tests can run faster.
    ``drop_after``/``stall_after`` end or freeze the body after that many body bytes (framing excluded).
    ``loop=False`` plays the file once and ends cleanly, like a panel's short "channel offline" clip.
    ``prebuffer`` seconds of media are sent immediately, like providers that burst on connect.
    ``offset`` starts that many bytes into the file (rounded down to a packet), i.e. joining mid-stream.
    ``zombie`` keeps the pace and the bytes but no media from body byte ``zombie_after`` on: "null"
    sends only null packets, "pat" only the PAT (its PMT never comes), "psi" only PAT and PMT (the
    PMT's PIDs never arrive); every other packet becomes a null packet. A valid TS with nothing in it.
    """

    chunked: bool = False
    rate_factor: float | None = None
    drop_after: int | None = None
    stall_after: int | None = None
    loop: bool = True
    prebuffer: float = 0.0
    offset: int = 0
    content_type: str = "video/mp2t"
    zombie: Literal["null", "pat", "psi"] | None = None
    zombie_after: int = 0


@dataclass(frozen=True)
class Refuse:
    """Read the request, then close without any response (RST by default, FIN with ``rst=False``)."""

    rst: bool = True


@dataclass(frozen=True)
class Blackhole:
    """Read the request and never answer; the socket stays open until the client, a control or close()."""


@dataclass(frozen=True)
class Status:
    """A complete non-streaming response: any code (even non-standard ones like 884), small body."""

    code: int
    body: bytes | None = None  # None: "<code> <reason>\n"
    content_type: str = "text/plain"
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Redirect:
    """302 like an XC load balancer.

    With ``location`` set, that exact Location is sent (``{url}``, ``{stream_id}``, ``{username}``,
    ``{password}`` are substituted) and nothing else happens. Otherwise the client is sent through
    ``times`` hops of ``/lb/{token}/{stream_id}.ts`` on this server and the last hop serves ``then``.
    ``loop=True`` sends the last hop back to the original ``/live/`` URL: an endless redirect loop.
    ``token_ttl`` (seconds) makes a stale ``/lb/`` token answer 403, as real tokens live ~6 s.
    """

    location: str | None = None
    times: int = 1
    loop: bool = False
    then: Behaviour = Ok()
    code: int = 302
    token_ttl: float | None = None


Behaviour = Ok | Refuse | Blackhole | Status | Redirect

OK = Ok()


def ok(**kw: Any) -> Ok:
    """Shorthand for :class:`Ok`."""
    return Ok(**kw)


def refuse(*, rst: bool = True) -> Refuse:
    """Shorthand for :class:`Refuse`."""
    return Refuse(rst=rst)


def blackhole() -> Blackhole:
    """Shorthand for :class:`Blackhole`."""
    return Blackhole()


def status(code: int, body: bytes | None = None, content_type: str = "text/plain") -> Status:
    """Shorthand for :class:`Status`."""
    return Status(code, body, content_type)


def garbage_200() -> Status:
    """A 200 that is an HTML page, not a stream (captive portals, panel error pages)."""
    return Status(200, b"<html><body><h1>Too many connections</h1></body></html>\n", "text/html")


def redirect(
    location: str | None = None, times: int = 1, *, loop: bool = False, then: Behaviour = OK
) -> Redirect:
    """Shorthand for :class:`Redirect`."""
    return Redirect(location=location, times=times, loop=loop, then=then)


def drop_after(n_bytes: int, **kw: Any) -> Ok:
    """Stream normally, then close the TCP connection (FIN) after ``n_bytes`` of body."""
    return Ok(drop_after=n_bytes, **kw)


def zombie(shape: Literal["null", "pat", "psi"], after: int = 0, **kw: Any) -> Ok:
    """Valid TS at the stream's pace with no media in it (see :class:`Ok`), from body byte ``after``."""
    return Ok(zombie=shape, zombie_after=after, **kw)


NULL_TS = b"\x47\x1f\xff\x10" + b"\xff" * 184


def _pmt_pid(data: bytes | memoryview) -> int | None:
    """The first program's PMT PID in the file's first PAT."""
    for off in range(0, len(data) - TS_PACKET + 1, TS_PACKET):
        if data[off + 1] & 0x5F == 0x40 and data[off + 2] == 0:
            p = off + 4 + (1 + data[off + 4] if data[off + 3] & 0x20 else 0)
            p += 1 + data[p]  # pointer_field
            return ((data[p + 10] & 0x1F) << 8) | data[p + 11]
    return None


def _zombify(chunk: bytearray, shape: str, first: int, after: int, pmt_pid: int | None) -> None:
    """In place: the packets of ``chunk`` from body byte ``after`` on (it starts at ``first``)."""
    keep = {"null": set(), "pat": {0}, "psi": {0, pmt_pid}}[shape]
    start = max(0, after - first)
    for off in range(start + -start % TS_PACKET, len(chunk) - TS_PACKET + 1, TS_PACKET):
        if ((chunk[off + 1] & 0x1F) << 8 | chunk[off + 2]) not in keep:
            chunk[off : off + TS_PACKET] = NULL_TS


def stall_after(n_bytes: int, **kw: Any) -> Ok:
    """Stream normally, then stop sending (connection kept open) after ``n_bytes`` of body."""
    return Ok(stall_after=n_bytes, **kw)


# ---------------------------------------------------------------------------------------------------------
# Helpers

_reserved: list[socket.socket] = []


def closed_port() -> int:
    """A 127.0.0.1 port where connecting gives ECONNREFUSED.

    The socket is bound but never listens and is kept for the life of the process, so no other test can
    grab the port in between (unlike bind-then-close).
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((HOST, 0))
    _reserved.append(sock)
    return sock.getsockname()[1]


@functools.lru_cache(maxsize=32)
def _probe_duration(path: str, _mtime_ns: int, _size: int) -> float:
    proc = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", path],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return float(proc.stdout.strip())


def probe_duration(path: Path) -> float:
    """Container duration in seconds (cached per file version); pacing uses size / duration."""
    st = path.stat()
    return _probe_duration(str(path), st.st_mtime_ns, st.st_size)


class Headers(dict[str, str]):
    """Request headers with lowercase keys but case-insensitive lookup, so ``h["User-Agent"]`` works."""

    def __getitem__(self, key: str) -> str:
        return super().__getitem__(key.lower())

    def __setitem__(self, key: str, value: str) -> None:
        super().__setitem__(key.lower(), value)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and super().__contains__(key.lower())

    def get(self, key: str, default: str | None = None) -> str | None:  # type: ignore[override]
        return super().get(key.lower(), default)


KillMode = Literal["drop", "reset", "close", "evict", "peer"]


@dataclass(eq=False)
class Conn:
    """One accepted TCP connection, kept after it closes so tests can inspect history."""

    id: int
    opened_at: float
    path: str = ""
    headers: Headers = field(default_factory=Headers)
    stream_id: int | None = None
    behaviour: Behaviour | None = None
    status: int | None = None
    body_bytes: int = 0
    stalled: bool = False
    closed_at: float | None = None
    killed: KillMode | None = None  # set when the connection was aborted rather than ended normally
    _task: asyncio.Task[None] | None = field(default=None, repr=False)
    _writer: asyncio.StreamWriter | None = field(default=None, repr=False)
    _resume: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    _finishing: bool = field(default=False, repr=False)

    @property
    def open(self) -> bool:
        return self.closed_at is None


@dataclass
class _Hop:
    stream_id: int
    remaining: int
    redirect: Redirect
    expires: float | None


_LB_RE = re.compile(r"/lb/([^/]+)/(\d+)\.ts")
_LIVE_RE = re.compile(r"/(?:live/)?([^/]+)/([^/]+)/(\d+)(?:\.ts)?")


def _reason(code: int) -> str:
    try:
        return HTTPStatus(code).phrase
    except ValueError:
        return "Unknown"


# ---------------------------------------------------------------------------------------------------------
# Server


class FakeProvider:
    """Xtream-Codes-like live TS server on ``127.0.0.1:<ephemeral>``.

    Routes: ``/live/{user}/{pass}/{id}.ts`` (query string ignored; the short ``/{user}/{pass}/{id}`` too),
    ``/lb/{token}/{id}.ts`` (redirect hops). Wrong credentials give 401, unknown paths 404. Every
    response carries ``Connection: close``. Streams without an explicit behaviour get ``default``.
    With ``max_connections`` set, a new stream on the line evicts the oldest one (XC's real policy), or
    with ``on_limit="refuse"`` is itself refused (``403``, as some panels do). ``peak_streaming`` is the
    most streams the line ever had at once, counted as each new one starts (before any eviction), and
    ``evictions`` how many were killed for it: a client that respects the limit keeps both in bounds.
    """

    def __init__(
        self,
        ts_path: Path | str,
        *,
        username: str = "alice",
        password: str = "s3cret",
        rate_factor: float = 1.0,
        duration: float | None = None,
        default: Behaviour = OK,
        max_connections: int | None = None,
        on_limit: Literal["evict", "refuse"] = "evict",
        tick: float = 0.02,
    ) -> None:
        self.ts_path = Path(ts_path)
        self.username = username
        self.password = password
        self.rate_factor = rate_factor
        self.default: Behaviour = default
        self.max_connections = max_connections
        self.on_limit = on_limit
        self.peak_streaming = 0
        self.over_limit_refused = 0
        self.tick = tick
        self.connections: Counter[int] = Counter()  # requests per stream id, incl. 401s and /lb/ hops
        self.requests: list[tuple[str, Headers]] = []  # (request target, headers) of every request
        self.conns: list[Conn] = []  # every accepted connection, in order
        self.port = 0
        self._duration = duration
        self._data = b""
        self._behaviours: dict[int, Behaviour] = {}
        self._tokens: dict[str, _Hop] = {}
        self._live: set[Conn] = set()
        self._server: asyncio.Server | None = None
        self._closing = False
        self._ids = itertools.count(1)

    # -- lifecycle ------------------------------------------------------------------------------------

    async def start(self) -> FakeProvider:
        """Load the media and listen on an ephemeral 127.0.0.1 port."""
        data = self.ts_path.read_bytes()
        self._data = data[: len(data) - len(data) % TS_PACKET]
        if not self._data or self._data[0] != 0x47:
            raise ValueError(f"{self.ts_path} is not an MPEG-TS file")
        if self._duration is None:
            self._duration = probe_duration(self.ts_path)
        self._server = await asyncio.start_server(self._handle, HOST, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        """Abort every live connection, stop listening, and wait until all handler tasks are done."""
        if self._server is None:
            return
        self._closing = True
        self._server.close()
        await asyncio.sleep(0)  # let handlers of just-accepted sockets register (they exit at once)
        while self._live:
            live = list(self._live)
            for conn in live:
                self._kill(conn, "close")
            await asyncio.gather(*(c._task for c in live if c._task), return_exceptions=True)
        await self._server.wait_closed()
        self._server = None

    async def __aenter__(self) -> FakeProvider:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # -- configuration and introspection ----------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def duration(self) -> float:
        """Duration of one pass of the media file in seconds."""
        assert self._duration is not None, "start() first"
        return self._duration

    @property
    def byte_rate(self) -> float:
        """Body bytes per second at rate_factor 1.0."""
        return len(self._data) / self.duration

    def stream_url(self, stream_id: int, *, username: str | None = None, password: str | None = None) -> str:
        """The live URL a relay would be configured with (defaults to the right credentials)."""
        user = self.username if username is None else username
        pw = self.password if password is None else password
        return f"{self.url}/live/{user}/{pw}/{stream_id}.ts"

    def set(self, stream_id: int, behaviour: Behaviour) -> None:
        """Behaviour for *new* requests on ``stream_id``; live connections keep theirs."""
        self._behaviours[stream_id] = behaviour

    def behaviour(self, stream_id: int) -> Behaviour:
        return self._behaviours.get(stream_id, self.default)

    def conns_for(self, stream_id: int) -> list[Conn]:
        """All connections (open and closed) that requested ``stream_id``."""
        return [c for c in self.conns if c.stream_id == stream_id]

    def live(self, stream_id: int) -> list[Conn]:
        return [c for c in self.conns if c.open and c.stream_id == stream_id]

    def active(self, stream_id: int) -> int:
        """Open connections for ``stream_id`` (streaming, stalled or blackholed)."""
        return len(self.live(stream_id))

    @property
    def evictions(self) -> int:
        return sum(c.killed == "evict" for c in self.conns)

    def active_total(self) -> int:
        return len(self._live)

    def bytes_sent(self, stream_id: int) -> int:
        """Body bytes sent on ``stream_id`` over all its connections."""
        return sum(c.body_bytes for c in self.conns_for(stream_id))

    # -- live-connection controls -------------------------------------------------------------------------

    async def drop(self, stream_id: int) -> float:
        """Abruptly close (FIN, unsent buffer discarded) every open connection of ``stream_id``.

        Returns the loop time at which it happened; waits until the sockets are closed.
        """
        return await self._kill_stream(stream_id, "drop")

    async def reset(self, stream_id: int) -> float:
        """Like :meth:`drop` but with a TCP RST (SO_LINGER 0), so the client reads ECONNRESET."""
        return await self._kill_stream(stream_id, "reset")

    def stall(self, stream_id: int) -> float:
        """Stop sending on every open connection of ``stream_id`` (they stay open); returns loop time."""
        now = asyncio.get_running_loop().time()
        for conn in self.live(stream_id):
            conn.stalled = True
            conn._resume.clear()
        return now

    def resume(self, stream_id: int) -> float:
        """Undo :meth:`stall` (or a ``stall_after``) on the open connections of ``stream_id``."""
        now = asyncio.get_running_loop().time()
        for conn in self.live(stream_id):
            conn.stalled = False
            conn._resume.set()
        return now

    async def _kill_stream(self, stream_id: int, mode: KillMode) -> float:
        now = asyncio.get_running_loop().time()
        victims = self.live(stream_id)
        for conn in victims:
            self._kill(conn, mode)
        await asyncio.gather(*(c._task for c in victims if c._task), return_exceptions=True)
        return now

    def _kill(self, conn: Conn, mode: KillMode) -> None:
        if conn._finishing:
            # Already closing its socket; cancelling now could leave it half-closed. close() must not wait
            # out a graceful flush to a client that stopped reading, so abort that instead.
            if mode == "close" and conn._writer is not None:
                conn._writer.transport.abort()
            return
        if conn.killed is None:
            conn.killed = mode
        if conn._task is not None:
            conn._task.cancel()

    # -- request handling ---------------------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        conn = Conn(id=next(self._ids), opened_at=loop.time(), _task=asyncio.current_task(), _writer=writer)
        self.conns.append(conn)
        self._live.add(conn)
        watcher: asyncio.Task[None] | None = None
        try:
            if self._closing:
                conn.killed = "close"
                return
            behaviour = await self._route(conn, reader, writer)
            if isinstance(behaviour, Ok | Blackhole):
                # A peer that hangs up must end the connection even while we are stalled or silent.
                watcher = asyncio.create_task(self._watch_eof(conn, reader))
            await self._act(conn, reader, writer, behaviour)
        except asyncio.CancelledError:
            if conn.killed is None:
                raise
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            conn._finishing = True
            if watcher is not None:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
            await self._finish(conn, writer)
            conn.closed_at = loop.time()
            self._live.discard(conn)

    async def _watch_eof(self, conn: Conn, reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(ConnectionError):
            while await reader.read(65536):
                pass
        self._kill(conn, "peer")

    async def _finish(self, conn: Conn, writer: asyncio.StreamWriter) -> None:
        """Close the socket: abort (unsent data discarded) if killed, RST for "reset", else flush + FIN."""
        if conn.killed is not None:
            if conn.killed == "reset":
                sock = writer.get_extra_info("socket")
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return
        writer.close()
        try:
            await asyncio.wait_for(writer.wait_closed(), 2.0)
        except (TimeoutError, ConnectionError):
            writer.transport.abort()

    async def _route(
        self, conn: Conn, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> Behaviour:
        """Parse the request and decide which behaviour answers it."""
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        request_line, *header_lines = head.split("\r\n")
        try:
            method, target, _version = request_line.split(" ", 2)
        except ValueError:
            return Status(400)
        headers = Headers()
        for line in header_lines:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip()] = value.strip()
        conn.path, conn.headers = target, headers
        self.requests.append((target, headers))
        path = urlsplit(target).path

        if m := _LB_RE.fullmatch(path):
            token, stream_id = m.group(1), int(m.group(2))
            conn.stream_id = stream_id
            self.connections[stream_id] += 1
            hop = self._tokens.get(token)
            now = asyncio.get_running_loop().time()
            if hop is None or hop.stream_id != stream_id or (hop.expires is not None and now > hop.expires):
                return Status(403, b"invalid or expired token\n")
            if hop.remaining > 0:
                return self._hop(stream_id, hop.redirect, hop.remaining - 1)
            if hop.redirect.loop:
                return Status(hop.redirect.code, b"", headers=(("Location", self.stream_url(stream_id)),))
            return hop.redirect.then
        if m := _LIVE_RE.fullmatch(path):
            user, pw, stream_id = m.group(1), m.group(2), int(m.group(3))
            conn.stream_id = stream_id
            self.connections[stream_id] += 1
            if method != "GET":
                return Status(405)
            if (user, pw) != (self.username, self.password):
                return Status(401)
            behaviour = self.behaviour(stream_id)
            if isinstance(behaviour, Redirect):
                return self._redirect(stream_id, behaviour)
            return behaviour
        return Status(404)

    def _redirect(self, stream_id: int, rd: Redirect) -> Status:
        """First response of a Redirect: the literal Location, or the first load-balancer hop."""
        if rd.location is not None:
            loc = rd.location.format(
                url=self.url, stream_id=stream_id, username=self.username, password=self.password
            )
            return Status(rd.code, b"", headers=(("Location", loc),))
        return self._hop(stream_id, rd, rd.times - 1)

    def _hop(self, stream_id: int, rd: Redirect, remaining: int) -> Status:
        token = secrets.token_hex(8)
        ttl = rd.token_ttl
        expires = None if ttl is None else asyncio.get_running_loop().time() + ttl
        self._tokens[token] = _Hop(stream_id, remaining, rd, expires)
        return Status(rd.code, b"", headers=(("Location", f"{self.url}/lb/{token}/{stream_id}.ts"),))

    async def _act(
        self, conn: Conn, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, behaviour: Behaviour
    ) -> None:
        conn.behaviour = behaviour
        match behaviour:
            case Status():
                await self._respond(conn, writer, behaviour)
            case Ok():
                await self._stream(conn, writer, behaviour)
            case Blackhole():
                await asyncio.get_running_loop().create_future()  # until killed or the peer hangs up
            case Refuse(rst=rst):
                conn.killed = "reset" if rst else "drop"
            case Redirect():  # only reachable as a Redirect's ``then``: start a fresh chain
                if conn.stream_id is not None:
                    await self._respond(conn, writer, self._redirect(conn.stream_id, behaviour))

    async def _respond(self, conn: Conn, writer: asyncio.StreamWriter, st: Status) -> None:
        reason = _reason(st.code)
        body = st.body if st.body is not None else f"{st.code} {reason}\n".encode()
        lines = [
            f"HTTP/1.1 {st.code} {reason}",
            "Server: nginx",
            f"Content-Type: {st.content_type}",
            f"Content-Length: {len(body)}",
            "Connection: close",
            *(f"{k}: {v}" for k, v in st.headers),
        ]
        conn.status = st.code
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        await writer.drain()

    def _evict_for(self, conn: Conn) -> bool:
        """XC closes the line's oldest stream(s) when a new one would exceed max_connections; with
        on_limit="refuse" the new one is refused instead (False)."""
        streaming = sorted(
            (c for c in self._live if c is not conn and c.killed is None and isinstance(c.behaviour, Ok)),
            key=lambda c: c.opened_at,
        )
        self.peak_streaming = max(self.peak_streaming, len(streaming) + 1)
        if self.max_connections is None:
            return True
        if self.on_limit == "refuse" and len(streaming) >= self.max_connections:
            self.over_limit_refused += 1
            return False
        while streaming and len(streaming) >= self.max_connections:
            self._kill(streaming.pop(0), "evict")
        return True

    async def _stream(self, conn: Conn, writer: asyncio.StreamWriter, ok: Ok) -> None:
        if not self._evict_for(conn):
            conn.behaviour = Status(403)
            await self._respond(conn, writer, Status(403, b"max connections reached\n"))
            return
        lines = ["HTTP/1.1 200 OK", "Server: nginx", f"Content-Type: {ok.content_type}", "Connection: close"]
        if ok.chunked:
            lines.append("Transfer-Encoding: chunked")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        conn.status = 200

        loop = asyncio.get_running_loop()
        data = memoryview(self._data)
        size = len(data)
        rate = self.byte_rate * (ok.rate_factor if ok.rate_factor is not None else self.rate_factor)
        pos = (ok.offset - ok.offset % TS_PACKET) % size
        once_total = size - pos  # body length when loop=False
        base_t, base_bytes, credit = loop.time(), 0, int(ok.prebuffer * rate)
        stall_done = False
        while True:
            if conn.stalled:
                await conn._resume.wait()
                base_t, base_bytes, credit = loop.time(), conn.body_bytes, 0  # no catch-up burst
            due = credit + int((loop.time() - base_t) * rate) - (conn.body_bytes - base_bytes)
            n = due - due % TS_PACKET
            for limit in (ok.drop_after, None if stall_done else ok.stall_after):
                if limit is not None:
                    n = min(n, limit - conn.body_bytes)
            if not ok.loop:
                n = min(n, once_total - conn.body_bytes)
            if n > 0:
                chunk = bytearray()
                while len(chunk) < n:
                    take = min(n - len(chunk), size - pos)
                    chunk += data[pos : pos + take]
                    pos = (pos + take) % size
                if ok.zombie is not None and conn.body_bytes + n > ok.zombie_after:
                    _zombify(chunk, ok.zombie, conn.body_bytes, ok.zombie_after, _pmt_pid(data))
                if ok.chunked:
                    writer.write(b"%x\r\n%s\r\n" % (n, bytes(chunk)))
                else:
                    writer.write(chunk)
                conn.body_bytes += n
                await writer.drain()
            if ok.drop_after is not None and conn.body_bytes >= ok.drop_after:
                return  # graceful close: the client gets exactly drop_after bytes, then EOF
            if not stall_done and ok.stall_after is not None and conn.body_bytes >= ok.stall_after:
                stall_done = True
                conn.stalled = True
                conn._resume.clear()
                continue
            if not ok.loop and conn.body_bytes >= once_total:
                if ok.chunked:
                    writer.write(b"0\r\n\r\n")
                    await writer.drain()
                return
            await asyncio.sleep(self.tick)


# ---------------------------------------------------------------------------------------------------------
# Hostile upstreams beyond what FakeProvider's behaviours can say: raw bytes on the wire, and TLS

Responder = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class RawProvider:
    """A 127.0.0.1 server that reads one request head, then lets ``responder`` write anything at all.

    For upstream input no well-behaved server sends (endless headers, broken chunk framing, a gzip'd
    body). ``requests`` counts the requests seen, ``live`` the connections still open (a leak check).
    """

    def __init__(self, responder: Responder) -> None:
        self.responder = responder
        self.requests = 0
        self.live = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    async def __aenter__(self) -> RawProvider:
        self._server = await asyncio.start_server(self._handle, HOST, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        self._closing = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.live += 1
        try:
            await reader.readuntil(b"\r\n\r\n")
            self.requests += 1
            await self.responder(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        except asyncio.CancelledError:
            if not self._closing:
                raise
            task.uncancel()  # our own close: end quietly (the stream callback reports a cancelled task)
        finally:
            writer.transport.abort()
            self.live -= 1
            self._tasks.discard(task)


async def _until_peer_closes(reader: asyncio.StreamReader) -> None:
    while await reader.read(65536):
        pass


def endless_headers() -> Responder:
    """``200 OK`` and then header lines forever: the head never ends."""

    async def respond(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: video/mp2t\r\n")
        for i in itertools.count():
            writer.write(b"X-Filler-%d: %s\r\n" % (i, b"a" * 200))
            if i % 32 == 0:
                await writer.drain()
                await asyncio.sleep(0.001)

    return respond


def noise_200(chunk: int = 16384, interval: float = 0.005) -> Responder:
    """``200 video/mp2t`` and then random bytes, never a TS packet, until the peer goes."""

    async def respond(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: video/mp2t\r\nConnection: close\r\n\r\n")
        while True:
            writer.write(os.urandom(chunk).replace(b"\x47", b"\x48"))
            await writer.drain()
            await asyncio.sleep(interval)

    return respond


def raw_200(body: bytes, headers: bytes = b"Content-Type: text/html\r\n") -> Responder:
    """``200`` with ``body`` and no length, then silence with the connection left open."""

    async def respond(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\n" + headers + b"\r\n" + body)
        await writer.drain()
        await _until_peer_closes(reader)

    return respond


def raw_bytes(data: bytes) -> Responder:
    """Exactly ``data`` (status line and all), then silence with the connection left open."""

    async def respond(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(data)
        await writer.drain()
        await _until_peer_closes(reader)

    return respond


def chunked_bad_framing(data: bytes, good_chunks: int = 4, bad: bytes = b"zz\r\n") -> Responder:
    """Chunked ``200``: ``good_chunks`` well-framed chunks of ``data``, then ``bad`` for a size line."""

    async def respond(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: video/mp2t\r\nTransfer-Encoding: chunked\r\n\r\n")
        step = 188 * 50
        for i in range(good_chunks):
            part = data[i * step : (i + 1) * step]
            writer.write(b"%x\r\n%s\r\n" % (len(part), part))
            await writer.drain()
            await asyncio.sleep(0.02)
        writer.write(bad)
        await writer.drain()
        await _until_peer_closes(reader)

    return respond


def gzip_stream(data: bytes) -> Responder:
    """``200`` with ``Content-Encoding: gzip`` though we asked for identity: a small gzip'd TS burst."""

    async def respond(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: video/mp2t\r\nContent-Encoding: gzip\r\n"
            b"Connection: close\r\n\r\n"
        )
        z = zlib.compressobj(wbits=31)  # gzip framing
        writer.write(z.compress(data[: 188 * 40]) + z.flush(zlib.Z_SYNC_FLUSH))  # a small first burst
        await writer.drain()
        await _until_peer_closes(reader)

    return respond


def self_signed_cert(folder: Path) -> tuple[Path, Path]:
    """A fresh self-signed certificate for 127.0.0.1 (P-256), made with the openssl CLI: (cert, key)."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    return cert, key


class TlsFakeProvider(FakeProvider):
    """FakeProvider behind TLS (``https://``) with the given certificate; every behaviour works the same."""

    def __init__(self, ts_path: Path | str, *, certfile: Path, keyfile: Path, **kw: Any) -> None:
        super().__init__(ts_path, **kw)
        self._tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._tls.load_cert_chain(certfile, keyfile)

    async def start(self) -> FakeProvider:
        await super().start()  # loads the media and listens in plain HTTP: replace the listener
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()
        self._server = await asyncio.start_server(self._handle, HOST, 0, ssl=self._tls)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"https://{HOST}:{self.port}"
