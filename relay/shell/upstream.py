"""One upstream attempt: an HTTP GET of a provider's live TS URL, as an asyncio Protocol.

It follows up to `max_redirects` redirects, always starting from the original URL on a new
attempt (a load balancer's token lives a few seconds), parses the response head with httptools,
and then hands the body on as whole 188-byte TS packets. It classifies how it ended and reports
to its sink; it never decides anything: timeouts and what to do next belong to the failover
machine. The URL carries the account's password, so it is never logged or reported.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import Protocol
from urllib.parse import urljoin, urlsplit

import httptools

from relay.core.buffers import ReadBuffer
from relay.core.failover import Reason
from relay.sources.tls import tls_context
from relay.ts import PacketAligner

MAX_HEAD_BYTES = 64 * 1024  # an upstream that sends endless headers is broken, not slow
MAX_GARBAGE_BYTES = 64 * 1024  # this much without MPEG-TS sync: an HTML page, a gzip body, ...
_SCHEMES = ("http", "https")


class UpstreamSink(Protocol):
    def on_head(self, attempt: int) -> None: ...
    def on_packets(
        self, attempt: int, views: list[memoryview], region: tuple[bytearray, int] | None = None
    ) -> None: ...
    def on_failed(self, attempt: int, reason: Reason, status: int | None) -> None: ...


class UpstreamAttempt:
    """Connects, follows redirects, streams. `close()` is safe at any point and idempotent."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        attempt: int,
        url: str,
        sink: UpstreamSink,
        *,
        user_agent: str,
        max_redirects: int = 3,
        ssl_context: Callable[[], ssl.SSLContext] = tls_context,
    ) -> None:
        self.loop = loop
        self.id = attempt
        self.url = url
        self.sink = sink
        self.user_agent = user_agent
        self.max_redirects = max_redirects
        self._ssl_context = ssl_context
        self._task: asyncio.Task[None] | None = None
        self._proto: _ResponseProtocol | None = None
        self._redirects = 0
        self._closed = False
        self._paused = False
        self.bytes_in = 0
        self.pending: list[memoryview] = []  # packets received before this attempt was switched to
        self.pending_bytes = 0

    def start(self) -> None:
        self._connect(self.url)

    def close(self) -> None:
        self._closed = True
        if self._task is not None and not self._task.done():
            self._task.cancel()
        if self._proto is not None:
            self._proto.abort()
            self._proto = None
        self.pending = []

    def pause_reading(self) -> None:
        self._paused = True
        if self._proto is not None:
            self._proto.pause()

    def resume_reading(self) -> None:
        self._paused = False
        if self._proto is not None:
            self._proto.resume()

    # ---- connection ---------------------------------------------------------------------------

    def _connect(self, url: str) -> None:
        self._task = self.loop.create_task(self._open(url))

    async def _open(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in _SCHEMES or not parts.hostname:
            self._fail(Reason.HTTP_ERROR, None)
            return
        tls = parts.scheme == "https"
        port = parts.port or (443 if tls else 80)
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        host_header = parts.netloc.rsplit("@", 1)[-1]
        request = (
            f"GET {target} HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: {self.user_agent}\r\n"
            "Accept: */*\r\nAccept-Encoding: identity\r\nConnection: close\r\n\r\n"
        ).encode("latin-1", "replace")
        proto = _ResponseProtocol(self, request)
        try:
            await self.loop.create_connection(
                lambda: proto,
                parts.hostname,
                port,
                ssl=self._ssl_context() if tls else None,
                server_hostname=parts.hostname if tls else None,
            )
        except asyncio.CancelledError:
            proto.abort()
            raise
        except (OSError, ssl.SSLError, ValueError):
            self._fail(Reason.CONNECTION_ERROR, None)
            return
        if self._closed:
            proto.abort()
            return
        self._proto = proto
        if self._paused:
            proto.pause()

    def _redirect(self, location: str, status: int, current_url: str) -> None:
        self._proto = None
        self._redirects += 1
        target = urljoin(current_url, location)
        if self._redirects > self.max_redirects or not location or urlsplit(target).scheme not in _SCHEMES:
            self._fail(Reason.HTTP_ERROR, status)  # a loop, or a hop to ftp:// etc.: the redirect failed
            return
        self._connect(target)

    def _fail(self, reason: Reason, status: int | None) -> None:
        if self._closed:
            return
        self.close()
        self.sink.on_failed(self.id, reason, status)


class _ResponseProtocol(asyncio.BufferedProtocol):
    """The socket side of an attempt: head via httptools, then the body straight to the aligner.

    Reads land in a ReadBuffer; an identity body (a live stream) goes on from there in place: whole
    packets as one view of the buffer, which the splice may rewrite (``region``), without a copy.
    """

    def __init__(self, attempt: UpstreamAttempt, request: bytes) -> None:
        self.attempt = attempt
        self.request = request
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.headers: dict[bytes, bytes] = {}
        self.head_done = False
        self.head_bytes = 0
        self.passthrough = False  # identity body until close: skip the parser, no copies
        self.aligner = PacketAligner()
        self.reads = ReadBuffer()
        self.finished = False
        self.url = attempt.url

    # asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not subclasses
        transport.write(self.request)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.reads.region()

    def buffer_updated(self, nbytes: int) -> None:
        reads = self.reads
        begin = reads.end
        reads.filled(nbytes)
        if self.passthrough and not self.finished:
            self._body_in_place(nbytes)
            return
        data = bytes(reads.buf[begin : reads.end])  # head, chunked or sized body: the parser copies
        reads.consume(reads.end)
        self.data_received(data)

    def data_received(self, data: bytes) -> None:
        if self.finished:
            return
        if self.passthrough:
            self._body(data)
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._end(Reason.STREAM_ERROR if self.head_done else Reason.HTTP_ERROR, None)
            return
        if not self.head_done and not self.finished:
            # only a head still incomplete counts: a burst of body in the head's read is welcome
            self.head_bytes += len(data)
            if self.head_bytes > MAX_HEAD_BYTES:
                self._end(Reason.HTTP_ERROR, None)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.finished:
            self.reads.release()
            return
        if not self.head_done or isinstance(exc, OSError):
            self._end(Reason.CONNECTION_ERROR, None)  # refused before the head, or reset mid-stream
        else:
            self._end(Reason.STREAM_ERROR, None)  # the provider ended the stream

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.lower()] = value

    def on_headers_complete(self) -> None:
        self.head_done = True
        status = self.parser.get_status_code()
        att = self.attempt
        if 300 <= status < 400 and status != 304:
            location = self.headers.get(b"location", b"").decode("latin-1")
            self.finished = True
            self.abort()
            att._redirect(location, status, self.url)
            return
        if not 200 <= status < 300:
            self._end(Reason.HTTP_ERROR, status)
            return
        if self.headers.get(b"content-encoding", b"identity").strip().lower() != b"identity":
            self._end(Reason.STREAM_ERROR, None)  # we asked for identity: a gzip'd body is no TS stream
            return
        te = self.headers.get(b"transfer-encoding", b"").lower()
        if b"chunked" not in te and b"content-length" not in self.headers:
            self.passthrough = True
        att.sink.on_head(att.id)

    def on_body(self, body: bytes) -> None:
        if not self.finished:
            self._body(body)

    def on_message_complete(self) -> None:
        if self.head_done and not self.finished:
            self._end(Reason.STREAM_ERROR, None)  # a live stream that ends has failed

    # internals
    def _body_in_place(self, nbytes: int) -> None:
        att = self.attempt
        att.bytes_in += nbytes
        reads = self.reads
        buf, start = reads.buf, reads.start
        views, consumed, in_place = self.aligner.feed_region(buf, start, reads.end)
        reads.consume(consumed)
        if views:
            att.sink.on_packets(att.id, views, (buf, start) if in_place else None)
        elif not self.aligner.synced and self.aligner.garbage_bytes > MAX_GARBAGE_BYTES:
            self._end(Reason.STREAM_ERROR, None)

    def _body(self, data: bytes) -> None:
        att = self.attempt
        att.bytes_in += len(data)
        views = self.aligner.feed(data)
        if views:
            att.sink.on_packets(att.id, views)
        elif not self.aligner.synced and self.aligner.garbage_bytes > MAX_GARBAGE_BYTES:
            self._end(Reason.STREAM_ERROR, None)

    def _end(self, reason: Reason, status: int | None) -> None:
        if self.finished:
            return
        self.finished = True
        self.abort()
        self.attempt._fail(reason, status)

    def abort(self) -> None:
        self.finished = True
        if self.transport is not None:
            self.transport.abort()
            self.transport = None
        # let go of the read buffers now: a closed protocol can sit in a reference cycle until a
        # full GC, and each holds up to three buffers (views already handed on keep theirs alive)
        self.reads.release()

    def pause(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.transport is not None:
            self.transport.resume_reading()
