"""The client-facing HTTP/1.1 server: an asyncio.Protocol parsing with httptools.

It stays small: callbacks collect one request at a time, a complete request goes to the
router (relay/app.py), and a stream response is an Output of a channel session. Bad input gets a
short error and a close, never an exception out of a callback: a malformed request (400), a head
over `server.max_head_bytes` (431), a body over it (413), a URL too long (414), a request (head and
body) that does not complete within `server.header_timeout_s` (close), a connection beyond
`server.max_clients` (503). A connection in one of the few slots past that (`health_only`) may ask for
/health and nothing else: it gets a short time to send its request, and a 503 for anything else or for
silence.
A connection we close is aborted if its client has not taken the rest of the response within
CLOSE_GRACE_S, so a client that never reads cannot keep a socket and its buffer forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, BinaryIO
from urllib.parse import unquote

import httptools

from relay.core import http11

if TYPE_CHECKING:
    from relay.shell.session import ChannelSession

log = logging.getLogger("relay.shell.server")

WRITE_HIGH_WATER = 256 * 1024  # per client: beyond this the session pauses its upstream
WRITE_LOW_WATER = 64 * 1024
FILE_SLICE = 64 * 1024
SOCKET_SNDBUF = 256 * 1024  # the kernel doubles it; about half a second of a 8 Mbit/s stream
CLOSE_GRACE_S = 2.0  # after close(), the time a client gets to read what is still buffered


@dataclass
class Request:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    http_version: str
    keep_alive: bool
    peer: str = ""
    body: bytearray = field(default_factory=bytearray)

    @property
    def head_only(self) -> bool:
        return self.method == "HEAD"


class HttpProtocol(asyncio.Protocol):
    """One client connection. Also the session's Output when it carries a stream."""

    def __init__(
        self,
        router: Callable[[HttpProtocol, Request], None],
        *,
        max_head_bytes: int,
        header_timeout_s: float,
        on_close: Callable[[HttpProtocol], None] | None = None,
        reject: bool = False,
        health_only: bool = False,
    ) -> None:
        self.router = router
        self.reject = reject  # over server.max_clients: answer 503 and close
        self.health_only = health_only  # a reserved slot: /health, else 503 (header_timeout_s is short)
        self.max_head_bytes = max_head_bytes
        self.header_timeout_s = header_timeout_s
        self.on_close = on_close
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.session: ChannelSession | None = None
        self.streaming = False  # a stream request has taken this connection over
        self.chunked = True
        self.peer = ""
        self.peer_port = 0  # with `peer`: where a stream goes (the HDHomeRun tuner's target)
        self._url = bytearray()
        self._headers: dict[str, str] = {}
        self._body = bytearray()  # a POST's body (the /ui API), bounded like the head
        self._head_bytes = 0
        self._raw_head_bytes = 0
        self._headers_done = False
        self._header_timer: asyncio.TimerHandle | None = None
        self._closed = False
        self._file: BinaryIO | None = None  # a file being sent (the guide), pumped as the socket drains
        self._writing_paused = False
        self.local_ip: str | None = None

    # ---- asyncio ------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not subclasses
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER, low=WRITE_LOW_WATER)
        sock = transport.get_extra_info("socket")
        if sock is not None:  # bound what the kernel buffers per client, so a lagging one shows up here
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_SNDBUF)
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if isinstance(peer, tuple) else ""
        self.peer_port = int(peer[1]) if isinstance(peer, tuple) and len(peer) > 1 else 0
        local = transport.get_extra_info("sockname")
        self.local_ip = local[0] if isinstance(local, tuple) else None
        if self.reject:
            self._error(503, "Too many connections")
            return
        self._arm_header_timer()

    def data_received(self, data: bytes) -> None:
        if self.streaming or self._closed:
            return  # a stream owns the connection; anything the client sends now is ignored
        if not self._headers_done:
            self._raw_head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._error(400, "Upgrade not supported")
        except httptools.HttpParserError:
            self._error(400, "Malformed request")
            return
        # httptools buffers a header line until it ends: bound what an endless one can cost us
        if not self._headers_done and self._raw_head_bytes > 4 * self.max_head_bytes:
            self._error(431, "Request header fields too large")

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._cancel_header_timer()
        self._close_file()
        self.transport = None
        if self.session is not None:
            session, self.session = self.session, None
            session.remove_output(self)
        if self.on_close is not None:
            self.on_close(self)

    def pause_writing(self) -> None:
        self._writing_paused = True
        if self.session is not None:
            self.session.output_paused(self)

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self.session is not None:
            self.session.output_resumed(self)
        if self._file is not None:
            self._pump_file()

    # ---- httptools ----------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._headers_done = False
        self._head_bytes = 0
        self._url = bytearray()
        self._headers = {}
        self._body = bytearray()

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_bytes += len(url)
        if len(self._url) > self.max_head_bytes:
            self._error(414, "URI too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value) + 4
        if self._head_bytes > self.max_head_bytes:
            self._error(431, "Request header fields too large")
            return
        key = name.decode("latin-1").lower()
        if key in self._headers and key in ("host", "content-length", "transfer-encoding"):
            self._error(400, f"Duplicate {key} header")
            return
        self._headers[key] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self._headers_done = True
        self._raw_head_bytes = 0  # the timer runs on: a body that never ends is a slowloris too

    def on_body(self, body: bytes) -> None:
        self._body += body
        if len(self._body) > self.max_head_bytes:  # only the /ui API takes a body, and a small one
            self._error(413, "Request body too large")

    def on_message_complete(self) -> None:
        if self._closed or self.streaming:
            return
        self._cancel_header_timer()
        try:
            parsed = httptools.parse_url(bytes(self._url))
        except httptools.HttpParserInvalidURLError:
            self._error(400, "Malformed URL")
            return
        path = unquote((parsed.path or b"/").decode("latin-1"))
        req = Request(
            method=self.parser.get_method().decode("latin-1"),
            path=path,
            query=(parsed.query or b"").decode("latin-1"),
            headers=self._headers,
            http_version=self.parser.get_http_version(),
            keep_alive=self.parser.should_keep_alive(),
            peer=self.peer,
            body=self._body,
        )
        if self.health_only:
            if req.path != "/health":
                self._error(503, "Too many connections")
                return
            req.keep_alive = False  # one answer, then the slot is free again
        self.chunked = req.http_version != "1.0"
        try:
            self.router(self, req)
        except Exception:  # a bug in a handler must not take the server down
            log.exception("error handling %s %s", req.method, req.path)
            self._error(500, "Internal error")
            return
        if not self.streaming and not self._closed:
            self._arm_header_timer()

    # ---- responses --------------------------------------------------------------------------

    def respond(self, data: bytes, *, keep_alive: bool = True) -> None:
        if self.transport is None or self._closed:
            return
        self.transport.write(data)
        if not keep_alive:
            self.close()

    def send_file(
        self, f: BinaryIO, content_type: str, headers: list[tuple[str, str]], *, head_only: bool = False
    ) -> None:
        """Send a file as the whole response, a slice at a time as the socket drains: never all in memory."""
        size = os.fstat(f.fileno()).st_size
        self.streaming = True  # the connection is busy until the file is out
        self.respond(
            http11.head(
                200,
                [
                    ("Content-Type", content_type),
                    ("Content-Length", str(size)),
                    *headers,
                    ("Connection", "close"),
                ],
            )
        )
        if head_only:
            f.close()
            self.close()
            return
        self._file = f
        self._pump_file()

    def _pump_file(self) -> None:
        while self._file is not None and not self._writing_paused and self.transport is not None:
            data = self._file.read(FILE_SLICE)
            if not data:
                self._close_file()
                self.close()
                return
            self.transport.write(data)

    def _close_file(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _error(self, status: int, text: str) -> None:
        if self._closed:
            return
        self.respond(http11.error(status, text), keep_alive=False)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._cancel_header_timer()
        t = self.transport
        if t is not None:
            t.close()
            if t.get_write_buffer_size():
                asyncio.get_running_loop().call_later(CLOSE_GRACE_S, self._abort_if_open, t)

    def _abort_if_open(self, t: asyncio.Transport) -> None:
        if self.transport is t:  # connection_lost has not come: the client is not reading
            t.abort()

    # ---- Output (what a channel session calls) ------------------------------------------------

    def buffered(self) -> int:
        """Bytes written to this client and not yet taken by its socket."""
        return self.transport.get_write_buffer_size() if self.transport is not None else 0

    def start_stream(self) -> None:
        if self.transport is not None:
            self.transport.write(http11.stream_head("video/mp2t", chunked=self.chunked))

    def send(
        self, views: list[bytes | memoryview], size: int, framed: list[http11.Buffer] | None = None
    ) -> None:
        """`framed`: the same views as one chunk, when the caller built it once for many clients."""
        t = self.transport
        if t is None:
            return
        if self.chunked:
            t.writelines(framed if framed is not None else http11.chunk(views, size))
        else:
            t.writelines(views)

    def unavailable(self) -> None:
        self.session = None
        self.respond(
            http11.error(503, "Stream unavailable", headers=[("X-HDHomeRun-Error", "807 No Video Data")]),
            keep_alive=False,
        )

    def abort(self) -> None:
        """Mid-stream exhaustion: end the response by closing, without the last chunk (it failed)."""
        self.session = None
        self.close()

    def finish(self) -> None:
        """A clean end (shutdown): the last chunk, then close."""
        self.session = None
        if self.transport is not None and self.chunked and not self._closed:
            self.transport.write(http11.LAST_CHUNK)
        self.close()

    # ---- slowloris guard ----------------------------------------------------------------------

    def _arm_header_timer(self) -> None:
        self._cancel_header_timer()
        loop = asyncio.get_running_loop()
        self._header_timer = loop.call_later(self.header_timeout_s, self._header_timeout)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self.health_only:
            self._error(503, "Too many connections")  # a reserved slot is not for waiting in
        elif not self.streaming and not self._closed:
            self.close()  # an idle keep-alive or a slowloris: either way, free the socket
