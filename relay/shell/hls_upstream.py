"""One HLS upstream attempt, on the relay's own sockets: it looks to the session like an UpstreamAttempt.

Same constructor shape, same sink callbacks (`on_head`, `on_packets`, `on_failed`), same `close()`,
`pause_reading()` / `resume_reading()` and `pending` buffer, so the failover machine and the splice
cannot tell a playlist from a TS connection. What differs happens inside:

- The first GET is a probe: a playlist (an mpegurl content type, or a body that starts `#EXTM3U`,
  whatever the URL's extension) is followed as HLS; a body that starts with a TS sync byte is
  relayed as a plain TS stream, from that same response; anything else is a StreamError.
- Playlists, keys and segments go over keep-alive HTTP/1.1 connections (httptools parses), one
  request at a time, one connection per origin, reused; the decisions (variant, live edge, reload
  time, which segment, its key and IV, failures) are relay.core.hls's.
- Segments are fetched whole (AES-128 is decrypted then), at most `AHEAD` waiting, and released to
  the sink paced over their duration (the first at once, for a quick zap), so the client sees a
  steady stream and the failover machine's stall clock keeps its meaning. A paused sink stops the
  release; the fetching stops when `AHEAD` segments wait.
- A segment after EXT-X-DISCONTINUITY is announced with the sink's optional `on_discontinuity`
  before its first packet (the session splices it like a switch); skipped segments and a failure's
  detail go out through the optional `on_note` (the session makes events of them).

URLs carry credentials: none is ever logged or put in a detail.

Over 400 lines because the attempt carries its own small keep-alive HTTP client (requests, responses,
pacing); the decisions are in relay.core.hls.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin, urlsplit

import httptools

from relay.core.failover import Reason
from relay.core.hls import HlsFailure, PlaylistFollower, Segment, looks_like_playlist
from relay.core.hls_crypto import KEY_BYTES, DecryptError, decrypt_segment
from relay.shell.upstream import MAX_GARBAGE_BYTES, MAX_HEAD_BYTES, UpstreamSink
from relay.ts import PacketAligner

TS = 188
TICK_S = 0.05  # the release and deadline clock while an attempt is open
AHEAD = 3  # segments fetched and waiting to be released, at most
MAX_PLAYLIST_BYTES = 4 << 20
MAX_SEGMENT_BYTES = 64 << 20
_SCHEMES = ("http", "https")
_PLAYLIST_TYPES = (b"mpegurl",)  # application/vnd.apple.mpegurl, application/x-mpegurl, audio/mpegurl


@dataclass(eq=False)
class _Request:
    purpose: str  # probe | playlist | key | segment
    url: str
    began: float
    seg: Segment | None = None
    redirects: int = 0
    fresh_retry: bool = False  # already retried once on a new connection
    status: int = 0
    headers: dict[bytes, bytes] = field(default_factory=dict)
    body: bytearray = field(default_factory=bytearray)
    head_done: bool = False
    got_bytes: bool = False
    last_byte: float = 0.0
    mode: str = ""  # probe only: "", "playlist", "ts"
    conn: _Conn | None = None


class HlsUpstreamAttempt:
    """Probes, follows a live playlist (or relays plain TS), paces. `close()` is safe at any point."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        attempt: int,
        url: str,
        sink: UpstreamSink,
        *,
        user_agent: str,
        max_redirects: int = 3,
        ssl_context: Callable[[], ssl.SSLContext] = ssl.create_default_context,
        max_bandwidth: int | None = None,
        stall_s: float = 5.0,
        live_edge: float = 3.0,
    ) -> None:
        self.loop = loop
        self.id = attempt
        self.url = url
        self.sink = sink
        self.user_agent = user_agent
        self.max_redirects = max_redirects
        self._ssl_context = ssl_context
        self.stall_s = stall_s
        self.follower = PlaylistFollower(max_bandwidth=max_bandwidth, stall_s=stall_s, live_edge=live_edge)
        self.kind = "probe"  # then "hls" or "ts"
        self.bytes_in = 0
        self.pending: list[memoryview] = []
        self.pending_bytes = 0
        self.detail: str | None = None
        self._conns: dict[tuple[str, str, int], _Conn] = {}
        self._connecting: dict[tuple[str, str, int], asyncio.Task[None]] = {}
        self._req: _Request | None = None
        self._seg: Segment | None = None  # taken from the follower, not yet fetched
        self._keys: dict[str, bytes] = {}
        self._ready: deque[tuple[Segment, bytearray]] = deque()
        self._cur: list[Any] | None = None  # [segment, buffer, released offset, release start]
        self._release_end: float | None = None
        self._aligner = PacketAligner()
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False
        self._paused = False
        self._head_sent = False
        self._skipped_noted = 0
        self._releasing = False

    # ---- the UpstreamAttempt interface --------------------------------------------------------

    def start(self) -> None:
        self._get(self.url, "probe")
        self._timer = self.loop.call_later(TICK_S, self._tick)

    def close(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for task in self._connecting.values():
            task.cancel()
        self._connecting.clear()
        for conn in list(self._conns.values()):
            conn.abort()
        self._conns.clear()
        self._req = None
        self._ready.clear()
        self._cur = None
        self.pending = []

    def pause_reading(self) -> None:
        self._paused = True
        if self.kind == "ts" and self._req is not None and self._req.conn is not None:
            self._req.conn.pause()

    def resume_reading(self) -> None:
        self._paused = False
        if self.kind == "ts" and self._req is not None and self._req.conn is not None:
            self._req.conn.resume()
        elif self.kind == "hls" and not self._closed:
            self._release(self.loop.time())
            self._pump(self.loop.time())

    # ---- requests -----------------------------------------------------------------------------

    def _get(self, url: str, purpose: str, seg: Segment | None = None, redirects: int = 0) -> None:
        parts = urlsplit(url)
        if parts.scheme not in _SCHEMES or not parts.hostname:
            self._request_failed(_Request(purpose, url, self.loop.time(), seg), Reason.HTTP_ERROR, None)
            return
        req = _Request(purpose, url, self.loop.time(), seg, redirects)
        req.last_byte = req.began
        self._req = req
        key = (parts.scheme, parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
        conn = self._conns.get(key)
        if conn is not None and conn.idle:
            conn.send(req, self._head_for(parts))
            return
        if conn is not None:
            conn.abort()
        self._connecting[key] = self.loop.create_task(self._connect(key, req, self._head_for(parts)))

    def _head_for(self, parts: Any) -> bytes:
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        host = parts.netloc.rsplit("@", 1)[-1]
        return (
            f"GET {target} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {self.user_agent}\r\n"
            "Accept: */*\r\nAccept-Encoding: identity\r\nConnection: keep-alive\r\n\r\n"
        ).encode("latin-1", "replace")

    async def _connect(self, key: tuple[str, str, int], req: _Request, head: bytes) -> None:
        scheme, host, port = key
        tls = scheme == "https"
        conn = _Conn(self, key)
        try:
            await self.loop.create_connection(
                lambda: conn,
                host,
                port,
                ssl=self._ssl_context() if tls else None,
                server_hostname=host if tls else None,
            )
        except asyncio.CancelledError:
            conn.abort()
            raise
        except (OSError, ssl.SSLError, ValueError):
            self._connecting.pop(key, None)
            if self._req is req:
                self._request_failed(req, Reason.CONNECTION_ERROR, None)
            return
        self._connecting.pop(key, None)
        if self._closed or self._req is not req:
            conn.abort()
            return
        self._conns[key] = conn
        conn.send(req, head)

    # ---- what a connection reports --------------------------------------------------------------

    def _head(self, req: _Request) -> None:
        if req is not self._req:
            return
        status = req.status
        if 300 <= status < 400 and status != 304:
            location = req.headers.get(b"location", b"").decode("latin-1")
            target = urljoin(req.url, location)
            if req.conn is not None:
                req.conn.abort()
            if req.redirects >= self.max_redirects or not location or urlsplit(target).scheme not in _SCHEMES:
                self._request_failed(req, Reason.HTTP_ERROR, status)
                return
            self._get(target, req.purpose, req.seg, req.redirects + 1)
            return
        if not 200 <= status < 300:
            if req.conn is not None:
                req.conn.abort()
            self._request_failed(req, Reason.HTTP_ERROR, status)
            return
        if req.headers.get(b"content-encoding", b"identity").strip().lower() != b"identity":
            self._fail(Reason.STREAM_ERROR, None, "the upstream sent a compressed body")
            return
        if req.purpose == "probe":
            ctype = req.headers.get(b"content-type", b"").lower()
            if any(t in ctype for t in _PLAYLIST_TYPES):
                req.mode = "playlist"
            if not self._head_sent:
                self._head_sent = True
                self.sink.on_head(self.id)

    def _body(self, req: _Request, data: bytes) -> None:
        if req is not self._req or self._closed:
            return
        req.last_byte = self.loop.time()
        if req.purpose == "probe" and req.mode == "ts":
            self._ts(data)
            return
        req.body += data
        if req.purpose == "probe" and req.mode == "":  # no mpegurl type: the first bytes decide
            if looks_like_playlist(bytes(req.body[:64])):
                req.mode = "playlist"
            elif req.body[:1] == b"\x47":
                req.mode, self.kind = "ts", "ts"
                first, req.body = bytes(req.body), bytearray()
                self._ts(first)
                return
            elif len(req.body) > 1024 or req.body.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] not in (b"", b"#"):
                self._fail(Reason.STREAM_ERROR, None, "neither an HLS playlist nor MPEG-TS")
                return
            else:
                return
        limit = MAX_SEGMENT_BYTES if req.purpose == "segment" else MAX_PLAYLIST_BYTES
        if len(req.body) > limit:
            self._fail(Reason.STREAM_ERROR, None, f"{req.purpose} larger than {limit >> 20} MB")

    def _ts(self, data: bytes) -> None:
        """A plain TS stream behind the URL: relayed as it comes, like UpstreamAttempt does."""
        self.bytes_in += len(data)
        views = self._aligner.feed(data)
        if views:
            self.sink.on_packets(self.id, views)
        elif not self._aligner.synced and self._aligner.garbage_bytes > MAX_GARBAGE_BYTES:
            self._fail(Reason.STREAM_ERROR, None, "the stream lost MPEG-TS sync")

    def _done(self, req: _Request) -> None:
        if req is not self._req or self._closed:
            return
        self._req = None
        now = self.loop.time()
        if req.purpose == "probe" and req.mode == "ts":
            self._fail(Reason.STREAM_ERROR, None, None)  # a live stream that ends has failed
            return
        if req.purpose == "probe" and req.mode != "playlist":
            self._fail(Reason.STREAM_ERROR, None, "neither an HLS playlist nor MPEG-TS")
            return
        try:
            if req.purpose in ("probe", "playlist"):
                text = req.body.decode("utf-8", "replace")
                variant = self.follower.playlist(text, req.url, req.began, now)
                if req.purpose == "probe" or self.kind == "probe":
                    self.kind = "hls"
                if variant is not None:
                    self._get(variant, "playlist")
                    return
                self._note_skips()
            elif req.purpose == "key":
                if len(req.body) != KEY_BYTES:
                    raise HlsFailure(Reason.STREAM_ERROR, f"AES-128 key is {len(req.body)} bytes, not 16")
                assert req.seg is not None and req.seg.key_url is not None
                if len(self._keys) > 16:
                    self._keys.clear()
                self._keys[req.seg.key_url] = bytes(req.body)
            elif req.purpose == "segment":
                assert req.seg is not None
                self._segment(req.seg, req.body)
        except HlsFailure as e:
            self._fail(Reason(e.reason), None, e.detail)
            return
        self._release(now)
        self._pump(now)

    def _segment(self, seg: Segment, body: bytearray) -> None:
        data = body
        if seg.key_url is not None:
            assert seg.iv is not None
            try:
                data = bytearray(decrypt_segment(body, self._keys[seg.key_url], seg.iv))
            except DecryptError as e:
                raise HlsFailure(Reason.STREAM_ERROR, f"segment {seg.seq}: {e}") from None
        if len(data) < TS or data[0] != 0x47 or (len(data) >= 2 * TS and data[TS] != 0x47):
            raise HlsFailure(Reason.STREAM_ERROR, f"segment {seg.seq} is not MPEG-TS")
        del data[len(data) - len(data) % TS :]
        self.bytes_in += len(data)
        self.follower.segment_done(seg)
        self._seg = None
        self._ready.append((seg, data))

    def _lost(self, conn: _Conn, req: _Request | None, exc: Exception | None) -> None:
        """A connection closed; `req` was in flight on it (None: it was idle)."""
        for key, c in list(self._conns.items()):
            if c is conn:
                del self._conns[key]
        if req is None or req is not self._req or self._closed:
            return
        if (
            req.head_done
            and not req.headers.get(b"content-length")
            and b"chunked" not in req.headers.get(b"transfer-encoding", b"").lower()
            and exc is None
            and req.mode != "ts"
        ):
            self._done(req)  # a body delimited by the close
            return
        if not req.got_bytes and conn.reused and not req.fresh_retry:
            req.fresh_retry = True  # the server dropped an idle keep-alive connection: once more, anew
            parts = urlsplit(req.url)
            key = (parts.scheme, parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80))
            self._connecting[key] = self.loop.create_task(self._connect(key, req, self._head_for(parts)))
            return
        if req.purpose == "probe" and req.mode == "ts":
            self._fail(
                Reason.CONNECTION_ERROR if isinstance(exc, OSError) else Reason.STREAM_ERROR, None, None
            )
            return
        self._request_failed(req, Reason.CONNECTION_ERROR, None)

    def _broken(self, req: _Request) -> None:
        """The response could not be parsed."""
        if req is not self._req:
            return
        if req.conn is not None:
            req.conn.abort()
        if req.purpose == "probe" and not req.head_done:
            self._fail(Reason.HTTP_ERROR, None, "broken HTTP answer")
        elif req.purpose == "segment":
            self._request_failed(req, Reason.STREAM_ERROR, None)
        else:
            self._fail(Reason.STREAM_ERROR, None, f"broken HTTP answer to a {req.purpose} request")

    def _request_failed(self, req: _Request, reason: Reason, status: int | None) -> None:
        """One request failed: a probe fails the attempt, a variant moves on, a segment is retried once."""
        self._req = None
        if self._closed:
            return
        what = f"HTTP {status}" if status else str(reason)
        try:
            if req.purpose == "probe":
                self._fail(reason, status, None)
                return
            if req.purpose == "playlist":
                nxt = self.follower.variant_failed()
                if nxt is None:
                    self._fail(reason, status, f"playlist: {what}")
                    return
                self._get(nxt, "playlist")
                return
            if req.purpose == "key":
                self._fail(Reason.STREAM_ERROR, status, f"AES-128 key: {what}")
                return
            assert req.seg is not None
            self._seg = None
            self.follower.segment_failed(req.seg)
        except HlsFailure as e:
            self._fail(Reason(e.reason), status, f"{e.detail} ({what})")
            return
        self._pump(self.loop.time())

    def _fail(self, reason: Reason, status: int | None, detail: str | None) -> None:
        if self._closed:
            return
        self.detail = detail
        self.close()
        note = getattr(self.sink, "on_note", None)
        if detail and note is not None:
            note(self.id, "hls_error", {"reason": str(reason), "http_status": status, "detail": detail})
        self.sink.on_failed(self.id, reason, status)

    # ---- the schedule -------------------------------------------------------------------------

    def _pump(self, now: float) -> None:
        """Start the next request, if one is due: a playlist reload first, then a key, then a segment."""
        if self._closed or self.kind != "hls" or self._req is not None:
            return
        f = self.follower
        if f.reload_at is not None and now >= f.reload_at and f.media_url is not None:
            self._get(f.media_url, "playlist")
            return
        waiting = len(self._ready) + (self._cur is not None)
        if waiting >= AHEAD:
            return
        seg = self._seg = self._seg or f.next_segment()
        if seg is None:
            return
        if seg.key_url is not None and seg.key_url not in self._keys:
            self._get(seg.key_url, "key", seg)
        else:
            self._get(seg.url, "segment", seg)

    def _release(self, now: float) -> None:
        """Hand the sink what is due of the fetched segments: each one spread over its duration."""
        if self._releasing:
            return  # the sink resumed us from inside on_packets: the loop below goes on
        self._releasing = True
        try:
            self._release_due(now)
        finally:
            self._releasing = False

    def _release_due(self, now: float) -> None:
        while not self._closed and not self._paused:
            if self._cur is None:
                if not self._ready:
                    return
                seg, data = self._ready.popleft()
                if self._release_end is None:
                    t0 = now - seg.duration  # the first segment goes at once: a quick zap
                else:
                    t0 = max(self._release_end, now - seg.duration / 2)  # late: catch up, a little
                self._cur = [seg, data, 0, t0]
                if seg.discontinuity:
                    on_disc = getattr(self.sink, "on_discontinuity", None)
                    if on_disc is not None:
                        on_disc(self.id)
                    if self._closed:
                        return
            seg, data, off, t0 = self._cur
            share = 1.0 if seg.duration <= 0 else min(1.0, (now - t0) / seg.duration)
            upto = len(data) if share >= 1.0 else int(len(data) * share) // TS * TS
            if upto > off:
                self._cur[2] = upto
                self.sink.on_packets(self.id, [memoryview(data)[off:upto]], (data, off))
                if self._closed:
                    return
            if self._cur[2] < len(data):
                return
            self._release_end = t0 + seg.duration
            self._cur = None

    def _note_skips(self) -> None:
        new = self.follower.skipped - self._skipped_noted
        if new > 0:
            self._skipped_noted = self.follower.skipped
            note = getattr(self.sink, "on_note", None)
            if note is not None:
                note(self.id, "hls_skipped", {"skipped_segments": new, "reason": "LeftTheWindow"})

    def _tick(self) -> None:
        self._timer = None
        if self._closed:
            return
        now = self.loop.time()
        req = self._req
        try:
            if self.kind == "hls":
                self.follower.check(now)
        except HlsFailure as e:
            self._fail(Reason(e.reason), None, e.detail)
            return
        if req is not None and self.kind == "hls" and now - req.last_byte > self.stall_s:
            if req.conn is not None:
                req.conn.abort()
            self._request_failed(req, Reason.STREAM_STALL, None)
            if self._closed:
                return
        if self.kind == "hls":
            self._release(now)
            self._pump(now)
        if not self._closed:
            self._timer = self.loop.call_later(TICK_S, self._tick)


class _Conn(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection of an attempt; one request at a time."""

    def __init__(self, owner: HlsUpstreamAttempt, key: tuple[str, str, int]) -> None:
        self.owner = owner
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.req: _Request | None = None
        self.parser: Any = None
        self.reused = False
        self.used = False
        self.head_bytes = 0

    @property
    def idle(self) -> bool:
        return self.transport is not None and self.req is None

    def send(self, req: _Request, head: bytes) -> None:
        assert self.transport is not None
        self.reused, self.used = self.used, True
        self.req, req.conn = req, self
        self.parser = httptools.HttpResponseParser(self)
        self.head_bytes = 0
        self.transport.write(head)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        req = self.req
        if req is None:
            self.abort()  # bytes nobody asked for: the connection is no longer usable
            return
        req.got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.owner._broken(req)
            return
        if not req.head_done and self.req is req:
            self.head_bytes += len(data)
            if self.head_bytes > MAX_HEAD_BYTES:
                self.owner._broken(req)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        req, self.req = self.req, None
        self.owner._lost(self, req, exc)

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        if self.req is not None:
            self.req.headers[name.lower()] = value

    def on_headers_complete(self) -> None:
        req = self.req
        if req is None:
            return
        req.head_done = True
        req.status = self.parser.get_status_code()
        self.owner._head(req)

    def on_body(self, body: bytes) -> None:
        if self.req is not None:
            self.owner._body(self.req, body)

    def on_message_complete(self) -> None:
        req = self.req
        if req is None:
            return
        keep = self.parser.should_keep_alive()
        self.req = None
        if not keep:
            self.abort()
        # after the parser has returned: _done may send the next request on this connection
        asyncio.get_running_loop().call_soon(self.owner._done, req)

    def abort(self) -> None:
        self.req = None
        if self.transport is not None:
            t, self.transport = self.transport, None
            t.abort()

    def pause(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.transport is not None:
            self.transport.resume_reading()
