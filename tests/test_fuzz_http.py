"""Client-side input fuzzing: whatever a client sends, it gets a 4xx or a close, never a 5xx or a crash.

Two levels. The parser level feeds `HttpProtocol` directly (no sockets), thousands of times, and also
checks that how the bytes are split into reads never changes what the server does. The socket level
sends hypothesis-made input to one real relay, running in a background thread for the whole module,
while a stream from the fake provider runs alongside; the last test checks that the stream's bytes
are exactly what the provider sent (splice off, so the relay passes packets through unchanged; the
relay's own null-packet keepalive is the only thing allowed in between).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import uvloop
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.core import http11
from relay.shell.server import HttpProtocol, Request
from tests.fake_provider import FakeProvider
from tests.harness import StreamClient, config_for, open_stream, running_relay

MAX_HEAD = 8192
FUZZ = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

# ---- what every answer must look like -------------------------------------------------------------

KNOWN_503 = {
    b"All tuners in use\n",
    b"Guide not built yet\n",
    b"Stream unavailable\n",
    b"Too many connections\n",
}


@dataclass
class Answer:
    status: int
    head: bytes
    body: bytes


def parse_answers(out: bytes) -> list[Answer]:
    """Split what the server sent into responses; every one must be well framed, with a length."""
    answers: list[Answer] = []
    rest = out
    while rest:
        head, sep, rest = rest.partition(b"\r\n\r\n")
        assert sep, f"a response head that never ends: {head[:200]!r}"
        m = re.match(rb"HTTP/1\.1 (\d{3}) ", head)
        assert m, f"not an HTTP/1.1 status line: {head[:200]!r}"
        length = re.search(rb"\r\nContent-Length: (\d+)", head)
        assert length, f"a response without Content-Length: {head[:300]!r}"
        n = int(length.group(1))
        if rest.startswith(b"HTTP/1.1 ") or not rest:
            n = 0  # the answer to a HEAD: its Content-Length is the GET's, and no body follows
        body, rest = rest[:n], rest[n:]
        answers.append(Answer(int(m.group(1)), head, body))
    return answers


def assert_no_server_error(answers: list[Answer]) -> None:
    for a in answers:
        assert a.status < 500 or (a.status == 503 and a.body in KNOWN_503), (a.status, a.head, a.body)
        assert b"Traceback" not in a.body and b"s3cret" not in a.body


# ---- parser level: HttpProtocol on a fake transport ------------------------------------------------


class FakeTransport:
    """Just enough of a transport for HttpProtocol: records writes and closes."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.closed = False

    def write(self, data: bytes) -> None:
        assert not self.closed, "write after close"
        self.out += data

    def writelines(self, parts: list[bytes]) -> None:
        for p in parts:
            self.write(p)

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str) -> Any:
        return {"peername": ("127.0.0.1", 5555), "sockname": ("127.0.0.1", 5004)}.get(name)

    def set_write_buffer_limits(self, high: int, low: int) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0


def echo_router(proto: HttpProtocol, req: Request) -> None:
    """Answers with what the parser made of the request, so any difference shows in the bytes."""
    seen = repr((req.method, req.path, req.query, sorted(req.headers.items()), req.http_version))
    proto.respond(http11.response(200, seen.encode(), keep_alive=req.keep_alive), keep_alive=req.keep_alive)


LOOP = uvloop.new_event_loop()


def feed(pieces: list[bytes]) -> tuple[bytes, bool]:
    """Feed `pieces` as separate reads; return what was written and whether the server closed."""

    async def run() -> tuple[bytes, bool]:
        t = FakeTransport()
        p = HttpProtocol(echo_router, max_head_bytes=MAX_HEAD, header_timeout_s=30)
        p.connection_made(t)  # type: ignore[arg-type]
        for piece in pieces:
            if t.closed:
                break  # a closed transport reads no more
            p.data_received(piece)
        p.connection_lost(None)
        return bytes(t.out), t.closed

    return LOOP.run_until_complete(run())


def outcome(fed: tuple[bytes, bool]) -> tuple[list[tuple[int, bytes]], bool]:
    """What must not depend on how the input was cut into reads: each answer's status, what the
    parser made of each accepted request (the echo), and whether the server closed. An error's text
    may differ (httptools reports a header at a read boundary before the error after it)."""
    answers = parse_answers(fed[0])
    return [(a.status, a.body if a.status < 400 else b"") for a in answers], fed[1]


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


# ---- strategies -----------------------------------------------------------------------------------

SAFE_PATHS = [
    "/health",
    "/discover.json",
    "/lineup.json",
    "/lineup.m3u",
    "/lineup_status.json",
    "/device.xml",
    "/",
    "/nope",
    "/stream/unknown.channel",
    "/auto/v999",
    "/lineup.post?scan=start",
]
TRAVERSAL_PARTS = ["..", ".", "%2e", "%2E", "%2f", "%2F", "%5c", "%00", "%25", "%252e", "%c0%af", "%ff"]
TRAVERSAL_PARTS += ["/", "\\", "etc", "passwd", "~", "%0d%0a", "%20", "..;", "%u002e"]

tokens = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ-_", min_size=1, max_size=12)
methods = st.one_of(st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"]), tokens)
header_names = st.one_of(
    st.sampled_from(["Host", "Content-Length", "Transfer-Encoding", "Connection", "Expect", "Upgrade"]),
    st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=30),
)
header_values = st.one_of(
    st.sampled_from(["chunked", "0", "5", "-1", "close", "keep-alive", "x", "chunked, chunked", "1e3", ""]),
    st.binary(max_size=100).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"").decode("latin-1")),
)
versions = st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/1.x", "HTTP/0.9", "", "HTTP/1.1 extra"])
targets = st.one_of(
    st.sampled_from(SAFE_PATHS),
    st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=60).map(lambda s: "/" + s),
    st.lists(st.sampled_from(TRAVERSAL_PARTS), max_size=8).map(lambda p: "/stream/" + "".join(p)),
)


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    """A request-shaped input: any method, target, version, headers (duplicates too), maybe a body."""
    method, target, version = draw(methods), draw(targets), draw(versions)
    headers = draw(st.lists(st.tuples(header_names, header_values), max_size=8))
    if draw(st.booleans()):
        headers.append(("Host", "relay.test"))
    head = f"{method} {target} {version}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
    return head.encode("latin-1", "replace") + draw(st.binary(max_size=64))


@st.composite
def smuggling(draw: st.DrawFn) -> bytes:
    """Content-Length and Transfer-Encoding together, odd TE values, and bad chunk sizes."""
    te = draw(
        st.sampled_from(["chunked", "Chunked", "chunked, identity", "gzip, chunked", " chunked", "xchunked"])
    )
    size = draw(
        st.one_of(
            st.sampled_from(["zz", "-1", "ffffffffffffffffffff", "5;ext=1", "0x5", " 5", "5 ", "", "+5"]),
            st.integers(0, 1 << 70).map(lambda n: f"{n:x}"),
        )
    )
    both = draw(st.booleans())
    head = "POST /health HTTP/1.1\r\nHost: x\r\n" + f"Transfer-Encoding: {te}\r\n"
    if both:
        head += f"Content-Length: {draw(st.integers(0, 99))}\r\n"
    body = f"{size}\r\nhello\r\n0\r\n\r\n"
    follow = "GET /nope HTTP/1.1\r\nHost: x\r\n\r\n"
    return (head + "\r\n" + body + follow).encode()


# ---- parser-level tests -----------------------------------------------------------------------------


@settings(FUZZ, max_examples=2000)
@given(data=st.one_of(st.binary(max_size=4096), requests(), smuggling()), cuts=st.lists(st.integers(0, 5000)))
def test_given_any_input_in_any_reads_then_parser_answers_4xx_or_closes_and_split_changes_nothing(
    data: bytes, cuts: list[int]
):
    whole = feed([data])
    assert_no_server_error(parse_answers(whole[0]))
    assert outcome(feed(split(data, cuts))) == outcome(whole)


@settings(FUZZ, max_examples=500)
@given(data=smuggling())
def test_given_smuggling_shapes_then_request_boundaries_are_never_ambiguous(data: bytes):
    out, _ = feed([data])
    answers = parse_answers(out)
    assert_no_server_error(answers)
    if b"Content-Length" in data:
        # both framings at once: refused, and nothing behind it is read as a request
        assert [a.status for a in answers] == [400], answers
        return
    # either the chunked body is read whole and the GET behind it is the next request, or a 400 ends
    # the connection: never a request made of body bytes
    seen = [a.body.split(b"'")[1:4:2] for a in answers if a.status == 200]
    assert seen in ([], [[b"POST", b"/health"]], [[b"POST", b"/health"], [b"GET", b"/nope"]]), answers
    assert all(a.status == 200 for a in answers[:-1]), answers  # a chunk size beyond the data: no answer
    assert not answers or answers[-1].status in (200, 400), answers


# ---- socket level: one relay in a background thread, a stream alongside ------------------------------


@dataclass
class Background:
    """The fake provider, the relay and one stream client, on a uvloop in a thread of their own."""

    ts_file: Path
    tmp: Path
    port: int = 0
    provider: FakeProvider | None = None
    stream: StreamClient | None = None
    errors: list[logging.LogRecord] = field(default_factory=list)
    _loop: asyncio.AbstractEventLoop | None = None
    _stop: asyncio.Event | None = None
    _ready: threading.Event = field(default_factory=threading.Event)
    _done: Future[None] = field(default_factory=Future)

    def start(self) -> None:
        threading.Thread(target=self._thread, name="fuzz-relay", daemon=True).start()
        assert self._ready.wait(20), "relay did not start"

    def stop(self) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._done.result(20)

    def call(self, coro: Any) -> Any:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(20)

    def _thread(self) -> None:
        loop = uvloop.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
            self._done.set_result(None)
        except BaseException as e:
            self._done.set_exception(e)
            self._ready.set()
        finally:
            loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        async with FakeProvider(self.ts_file) as provider:
            self.provider = provider
            cfg = config_for(self.tmp, provider, {"ch1": [("a", 1), ("b", 2)]}, splice=False)
            (self.tmp / "guide.xml").write_text("<tv></tv>\n")
            cfg["guide"] = {"sources": [{"file": str(self.tmp / "guide.xml")}]}
            async with running_relay(cfg, self.tmp) as relay:
                self.port = relay.port
                self.stream = await open_stream(relay.port, "/stream/ch1")
                self._ready.set()
                await self._stop.wait()
                await self.stream.close()


class _Errors(logging.Handler):
    def __init__(self, sink: list[logging.LogRecord]) -> None:
        super().__init__(logging.ERROR)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith("relay"):
            self.sink.append(record)


@pytest.fixture(scope="module")
def bg(ts_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Background]:
    b = Background(ts_file, tmp_path_factory.mktemp("fuzz"))
    handler = _Errors(b.errors)
    logging.getLogger().addHandler(handler)
    b.start()
    try:
        yield b
    finally:
        b.stop()
        logging.getLogger().removeHandler(handler)


def exchange(port: int, data: bytes, *, timeout: float = 3.0) -> bytes:
    """Send `data`, end our side, and read until the server closes (a reset counts as a close)."""
    out = bytearray()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server answered and closed before taking everything: fine
        try:
            while chunk := s.recv(65536):
                out += chunk
        except ConnectionResetError:
            pass
    return bytes(out)


@settings(FUZZ, max_examples=800)
@given(data=st.one_of(st.binary(max_size=2048), requests()))
def test_given_random_or_request_shaped_input_over_tcp_then_4xx_or_close(bg: Background, data: bytes):
    assert_no_server_error(parse_answers(exchange(bg.port, data)))


@FUZZ
@given(parts=st.lists(st.sampled_from(TRAVERSAL_PARTS), min_size=1, max_size=10), prefix=st.sampled_from(
    ["/stream/", "/auto/v", "/", "/stream/ch1/"]
))  # fmt: skip
def test_given_percent_encoded_traversal_in_channel_id_then_404_and_nothing_leaks(
    bg: Background, parts: list[str], prefix: str
):
    target = (prefix + "".join(parts)).encode()
    out = exchange(bg.port, b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    answers = parse_answers(out)
    assert_no_server_error(answers)
    assert [a.status for a in answers] in ([400], [404]), (target, answers)
    assert b"root:" not in out


@settings(FUZZ, max_examples=200)
@given(
    extra=st.integers(1, 3 * MAX_HEAD),
    shape=st.sampled_from(["one header", "many headers", "url"]),
)
def test_given_head_or_url_over_the_limit_then_431_or_414(bg: Background, extra: int, shape: str):
    if shape == "url":
        raw = b"GET /" + b"a" * (MAX_HEAD + extra) + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    elif shape == "one header":
        raw = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * (MAX_HEAD + extra) + b"\r\n\r\n"
    else:
        n = (MAX_HEAD + extra) // 12 + 1
        raw = b"GET /health HTTP/1.1\r\n" + b"".join(b"X-%06d: v\r\n" % i for i in range(n)) + b"\r\n"
    answers = parse_answers(exchange(bg.port, raw))
    assert [a.status for a in answers] == ([414] if shape == "url" else [431]), answers


EXPECTED = {
    "/health": 200,
    "/discover.json": 200,
    "/lineup.json": 200,
    "/lineup.m3u": 200,
    "/lineup_status.json": 200,
    "/device.xml": 200,
    "/": 200,
    "/lineup.post?scan=start": 200,
    "/nope": 404,
    "/stream/unknown.channel": 404,
}


@settings(FUZZ, max_examples=60)
@given(paths=st.lists(st.sampled_from(sorted(EXPECTED)), min_size=1, max_size=8), http10=st.booleans())
def test_given_pipelined_requests_then_answered_in_order_until_one_closes(
    bg: Background, paths: list[str], http10: bool
):
    version = b"HTTP/1.0" if http10 else b"HTTP/1.1"
    keep = b"Connection: keep-alive\r\n" if http10 else b""
    raw = b"".join(b"GET %s %s\r\nHost: x\r\n%s\r\n" % (p.encode(), version, keep) for p in paths)
    answers = parse_answers(exchange(bg.port, raw))
    expected: list[int] = []
    for p in paths:
        expected.append(EXPECTED[p])
        if EXPECTED[p] != 200:
            break  # an error answer closes the connection
    assert [a.status for a in answers] == expected


def test_given_all_fuzzing_above_then_stream_alongside_is_byte_exact_and_relay_logged_no_error(
    bg: Background,
):
    assert bg.stream is not None and bg.provider is not None
    c, provider = bg.stream, bg.provider
    n = len(c.body)
    bg.call(c.wait_bytes(n + 20_000))
    assert not c.closed and c.status == 200
    body = bytes(c.body)
    data = bg.ts_file.read_bytes()
    sent = data[: len(data) - len(data) % 188]  # the file the provider loops, from its first byte
    packets = [body[i : i + 188] for i in range(0, len(body) - len(body) % 188, 188)]
    relayed = b"".join(p for p in packets if p[1:3] != b"\x1f\xff")  # the relay's keepalive null packets
    reference = (sent * (len(relayed) // len(sent) + 1))[: len(relayed)]
    assert relayed == reference
    assert provider.connections[2] == 0  # never failed over: the stream was never disturbed
    assert not bg.errors, [r.getMessage() for r in bg.errors]
