"""The XMLTV guide the relay serves: re-keyed, normalised, streamed, cached, and credential-safe."""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import subprocess
import sys
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from relay.config import Config, parse
from relay.sources.guide import GuideBuildError, GuideCache, normalise_time, redact_url

SMALL_XMLTV = """<?xml version="1.0" encoding="ISO-8859-1"?>
<!DOCTYPE tv SYSTEM "xmltv.dtd">
<tv source-info-name="fixture">
  <channel id="tf1.fr"><display-name>TF1</display-name><icon src="http://img.example/tf1.png"/></channel>
  <channel id="zdf.de"><display-name>ZDF</display-name></channel>
  <channel id="unknown.xx"><display-name>Not configured</display-name></channel>
  <programme start="20240101120000 +0530" stop="20240101130000 +0530" channel="tf1.fr">
    <title lang="fr">Le Journal de 13 h \xe0 Z\xfcrich</title>
    <desc lang="fr">Caf\xe9, cr\xe8me &amp; &lt;d\xe9j\xe0 vu&gt;</desc>
    <category lang="fr">Info</category>
  </programme>
  <programme start="20240101130000 -0330" stop="20240101140000-0330" channel="tf1.fr">
    <title>Newfoundland hour</title>
  </programme>
  <programme start="20240101140000" stop="202401011500" channel="zdf.de">
    <title>Keine Zeitzone</title>
  </programme>
  <programme start="20240101150000 +05:45" channel="zdf.de"><title>Kathmandu</title></programme>
  <programme start="tomorrow" channel="zdf.de"><title>Unreadable time</title></programme>
  <programme start="20240101120000 +0000" stop="20240101130000 +0000" channel="unknown.xx">
    <title>Dropped</title>
  </programme>
</tv>
"""


def write_small(folder: Path, name: str = "guide.xml") -> Path:
    path = folder / name
    path.write_bytes(SMALL_XMLTV.encode("iso-8859-1"))
    return path


CHANNELS = [
    {"id": "zdf.de", "name": "ZDF", "number": "10"},
    {"id": "tf1.fr", "name": "TF1 Télé", "number": "5.1"},
    {"id": "absent", "name": "Nowhere", "number": "7"},
]


def make_cfg(folder: Path, **extra: Any) -> Config:
    return parse({"channels": CHANNELS, **extra}, base_dir=folder)


def channels_of(root: ET.Element) -> dict[str, ET.Element]:
    return {c.get("id", ""): c for c in root.iter("channel")}


def programmes_of(root: ET.Element) -> list[ET.Element]:
    return list(root.iter("programme"))


async def test_given_an_iso_8859_1_guide_then_the_output_is_valid_and_rekeyed(tmp_path: Path) -> None:
    write_small(tmp_path)
    # placeholders off: this test is about what the source brings (test_xmltv_dtd covers them)
    cfg = make_cfg(tmp_path, guide={"sources": [{"file": "guide.xml"}], "dummy": {"enabled": False}})
    cache = GuideCache(cfg, cache_dir=tmp_path / "cache")
    assert cache.current() is None
    assert await cache.refresh()
    files = cache.current()
    assert files is not None and files.xml.exists() and files.gz.exists()

    raw = files.xml.read_bytes()
    assert raw.startswith(b'<?xml version="1.0" encoding="UTF-8"?>')
    assert gzip.decompress(files.gz.read_bytes()) == raw
    root = ET.fromstring(raw)
    assert root.tag == "tv"

    chans = channels_of(root)
    assert list(chans) == ["5.1.relay", "7.relay", "10.relay"]  # numeric order, every configured channel
    for ch in cfg.channels:
        el = chans[f"{ch.number}.relay"]
        names = [d.text for d in el.findall("display-name")]
        assert names == [ch.number, ch.name]
        assert el.find("lcn") is None  # not in the XMLTV DTD: the number is the first display-name
    icon = chans["5.1.relay"].find("icon")
    assert icon is not None and icon.get("src") == "http://img.example/tf1.png"

    progs = programmes_of(root)
    assert {p.get("channel") for p in progs} == {"5.1.relay", "10.relay"}
    assert all(p.findtext("title") != "Dropped" for p in progs)
    by_title = {p.findtext("title"): p for p in progs}
    assert "Unreadable time" not in by_title
    first = by_title["Le Journal de 13 h à Zürich"]
    assert first.get("start") == "20240101120000 +0530" and first.get("stop") == "20240101130000 +0530"
    assert first.findtext("desc") == "Café, crème & <déjà vu>"
    assert first.findtext("category") == "Info"
    assert by_title["Newfoundland hour"].get("stop") == "20240101140000 -0330"
    assert by_title["Keine Zeitzone"].get("start") == "20240101140000 +0000"
    assert by_title["Keine Zeitzone"].get("stop") == "20240101150000 +0000"
    assert by_title["Kathmandu"].get("start") == "20240101150000 +0545"
    assert cache.last_report is not None and cache.last_report.channels_without_programmes == ("absent",)
    assert cache.last_report.bad_times == 1


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("20181231203500 +0000", "20181231203500 +0000"),
        ("20181231203500", "20181231203500 +0000"),
        ("20181231203500+0530", "20181231203500 +0530"),
        ("20181231203500 -03:30", "20181231203500 -0330"),
        ("20181231203500 Z", "20181231203500 +0000"),
        ("201812312035", "20181231203500 +0000"),
        ("2018", "20180101000000 +0000"),
        ("2018123", None),
        ("soon", None),
        ("", None),
    ],
)
def test_normalise_time(value: str, expected: str | None) -> None:
    assert normalise_time(value) == expected


def test_redact_url_hides_credentials() -> None:
    url = "http://me:secret@iptv.example:8080/xmltv.php?username=alice&password=p%40ss&days=2"
    red = redact_url(url)
    assert "secret" not in red and "alice" not in red and "p%40ss" not in red and "p@ss" not in red
    assert "iptv.example:8080/xmltv.php" in red and "days=2" in red
    assert redact_url("http://p.example/live/alice/s3cret/1234.ts") == "http://p.example/live/***/***/1234.ts"


class _Provider(BaseHTTPRequestHandler):
    guide_body: bytes = b""
    seen: list[tuple[str, str]] = []

    def do_GET(self) -> None:
        type(self).seen.append((self.path, self.headers.get("User-Agent", "")))
        if "password=right" not in self.path:
            self.send_response(401)
            self.end_headers()
            return
        body = self.guide_body
        if self.headers.get("Accept-Encoding", "").find("gzip") >= 0:
            body = gzip.compress(body)
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def provider_url() -> Iterator[str]:
    _Provider.guide_body = SMALL_XMLTV.encode("iso-8859-1")
    _Provider.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Provider)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def account(name: str, url: str, password: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "url": url, "username": "alice", "password": password, **extra}


async def test_given_no_guide_config_then_each_active_account_xmltv_is_used_once(
    tmp_path: Path, provider_url: str
) -> None:
    """Two accounts serving the same guide do not double the programmes; inactive ones are not asked."""
    cfg = make_cfg(
        tmp_path,
        accounts=[
            account("a", provider_url, "right", user_agent="UA-a"),
            account("b", provider_url, "right"),
            account("off", provider_url, "right", active=False),
        ],
        guide={"dummy": {"enabled": False}},  # only the sources' programmes are counted here
    )
    cache = GuideCache(cfg, cache_dir=tmp_path)
    assert await cache.refresh()
    assert [p for p, _ in _Provider.seen] == ["/xmltv.php?username=alice&password=right"] * 2
    assert _Provider.seen[0][1] == "UA-a"
    root = ET.parse(tmp_path / "xmltv.xml").getroot()
    titles = [p.findtext("title") for p in programmes_of(root)]
    assert len(titles) == len(set(titles)) == 4


async def test_given_a_failing_source_then_the_old_guide_stays_and_no_password_is_logged(
    tmp_path: Path, provider_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    write_small(tmp_path)
    good = GuideCache(make_cfg(tmp_path, guide=[{"file": "guide.xml"}]), cache_dir=tmp_path / "c")
    assert await good.refresh()
    before = (tmp_path / "c" / "xmltv.xml").read_bytes()

    secret = "s3cr%t&pw"
    cfg = make_cfg(
        tmp_path, accounts=[account("a", provider_url, secret), account("b", "http://127.0.0.1:9", secret)]
    )
    bad = GuideCache(cfg, cache_dir=tmp_path / "c")
    with caplog.at_level(logging.DEBUG, logger="relay.sources.guide"):
        assert not await bad.refresh()
    assert (tmp_path / "c" / "xmltv.xml").read_bytes() == before
    assert bad.last_error and "401" in bad.last_error
    logged = caplog.text + (bad.last_error or "")
    assert "s3cr" not in logged and "s3cr%25t%26pw" not in logged and "alice" not in logged
    assert "password=***" in logged
    assert not list((tmp_path / "c").glob(".xmltv-*"))  # no temp files left behind


async def test_placeholder_guide_lists_the_channels_before_the_first_build(tmp_path: Path) -> None:
    cache = GuideCache(make_cfg(tmp_path), cache_dir=tmp_path)
    cache.ensure_placeholder()
    files = cache.current()
    assert files is not None
    root = ET.parse(files.xml).getroot()
    assert list(channels_of(root)) == ["5.1.relay", "7.relay", "10.relay"] and not programmes_of(root)


async def test_start_and_stop_run_the_background_refresh(tmp_path: Path) -> None:
    write_small(tmp_path)
    cache = GuideCache(make_cfg(tmp_path, guide=[{"file": "guide.xml"}]), cache_dir=tmp_path, refresh_h=1)
    task = cache.start()
    assert cache.current() is not None  # at once: the placeholder
    for _ in range(200):
        if cache.last_report is not None:
            break
        await asyncio.sleep(0.01)
    assert cache.last_report is not None and cache.last_report.programmes == 4
    await cache.stop()
    assert task.done()


# ---------------------------------------------------------------------------------------------
# A large guide: memory must stay flat

BIG_CHANNELS = 60
BIG_TARGET_BYTES = 50_000_000


def write_big_guide(path: Path) -> int:
    """Write a ~50 MB ISO-8859-1 XMLTV file in batches; returns the number of programmes."""
    n = 0
    with path.open("w", encoding="iso-8859-1") as f:
        f.write('<?xml version="1.0" encoding="ISO-8859-1"?>\n<tv>\n')
        for c in range(BIG_CHANNELS):
            f.write(f'<channel id="src{c}"><display-name>Chaîne {c}</display-name></channel>\n')
        zones = ("+0100", "+0530", "-0330", "")
        while f.tell() < BIG_TARGET_BYTES:
            batch = []
            for _ in range(2000):
                c, h, tz = n % BIG_CHANNELS, n % 24, zones[n % 4]
                batch.append(
                    f'<programme start="20240101{h:02d}0000 {tz}" stop="20240101{h:02d}3000 {tz}" '
                    f'channel="src{c}"><title lang="fr">Émission {n}</title><desc lang="fr">Une '
                    f"description assez longue: café, crème, déjà vu, à la carte, Zürich. {n}</desc>"
                    "</programme>\n"
                )
                n += 1
            f.write("".join(batch))
        f.write("</tv>\n")
    return n


_MEASURE = """
import json, sys
from pathlib import Path
from relay.config import load
from relay.sources import guide

def status_kb(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))

cfg = load(sys.argv[1])
resident_kb = status_kb("VmRSS")
report = guide.build_guide(cfg.channels, guide.guide_sources(cfg), Path(sys.argv[2]), Path(sys.argv[3]))
print(json.dumps({"growth_kb": status_kb("VmHWM") - resident_kb, "programmes": report.programmes}))
"""


def test_given_a_50_mb_guide_then_the_build_memory_stays_flat(tmp_path: Path) -> None:
    """Built in a fresh interpreter: its peak RSS (VmHWM, which unlike ru_maxrss starts afresh at exec)
    after the build minus its resident memory before is an upper bound on what the build needed."""
    src = tmp_path / "big.xml"
    total = write_big_guide(src)
    size = src.stat().st_size
    assert size >= BIG_TARGET_BYTES
    channels = [
        {"id": f"src{c}", "name": f"Chaîne {c}", "number": str(100 + c)} for c in range(0, BIG_CHANNELS, 2)
    ]
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps({"guide": [{"file": "big.xml"}], "channels": channels}), encoding="utf-8")
    out_xml, out_gz = tmp_path / "out.xml", tmp_path / "out.xml.gz"
    proc = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(config), str(out_xml), str(out_gz)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["programmes"] == total // 2  # every other channel is configured
    growth = result["growth_kb"] * 1024
    assert growth < size / 5, (
        f"peak RSS grew {growth / 1e6:.1f} MB while building from a {size / 1e6:.0f} MB guide"
    )

    # The output is valid XML with the relay's ids: stream-parse it, with flat memory too.
    seen_channels: set[str] = set()
    programmes = 0
    for _, el in ET.iterparse(out_xml):
        if el.tag == "channel":
            seen_channels.add(el.get("id", ""))
            assert el.find("lcn") is None
            names = [d.text for d in el.findall("display-name")]
            assert names[0] == el.get("id", "").removesuffix(".relay") and len(names) == 2
        elif el.tag == "programme":
            programmes += 1
            assert el.get("channel") in seen_channels
            start = el.get("start", "")
            assert len(start) == 20 and start[15] in "+-"
            el.clear()
    assert programmes == total // 2
    assert seen_channels == {f"{100 + c}.relay" for c in range(0, BIG_CHANNELS, 2)}


async def test_given_a_50_mb_guide_then_serving_it_keeps_memory_flat_and_other_requests_quick(
    tmp_path: Path,
) -> None:
    """/xmltv.xml is streamed from the cached file a slice at a time as the socket drains: serving it
    to a slow reader holds far less than the file in memory and delays no other request."""
    import tracemalloc

    from relay.shell.app import Relay
    from tests.harness import request

    src = tmp_path / "big.xml"
    write_big_guide(src)
    channels = [{"id": f"src{c}", "name": f"Chaîne {c}", "number": str(100 + c)} for c in range(BIG_CHANNELS)]
    cfg = parse(
        {
            "server": {"host": "127.0.0.1", "port": 0},
            "discovery": {"udp": False},
            "sync": {"on_start": False},  # no background import running beside the measurement
            "guide": [{"file": "big.xml"}],
            "channels": channels,
        },
        base_dir=tmp_path,
    )
    relay = Relay(cfg)
    await relay.start()
    loop = asyncio.get_running_loop()

    async def fetch(slow_s: float) -> int:
        reader, writer = await asyncio.open_connection("127.0.0.1", relay.port, limit=65536)
        writer.write(b"GET /xmltv.xml HTTP/1.1\r\nHost: x\r\n\r\n")
        got, slow_until = 0, loop.time() + slow_s
        while chunk := await reader.read(65536):
            got += len(chunk)
            if loop.time() < slow_until:  # a slow reader for a while; meanwhile others are served
                await asyncio.sleep(0.01)
                t0 = loop.time()
                health = await request(
                    relay.port, b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                )
                assert health.startswith(b"HTTP/1.1 200") and loop.time() - t0 < 0.5
        writer.close()
        return got

    try:
        # the build (in a child process) never stalls the relay's loop: other requests stay quick
        build = asyncio.create_task(relay.guide.refresh())
        waits = []
        while not build.done():
            t0 = loop.time()
            await request(relay.port, b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            waits.append(loop.time() - t0)
            await asyncio.sleep(0.01)
        assert await build
        waits.sort()
        assert len(waits) > 50 and waits[int(len(waits) * 0.99)] < 0.05, (
            f"p99 {waits[int(len(waits) * 0.99)]}"
        )
        size = (relay.guide.path() or src).stat().st_size
        assert size > 40_000_000
        assert await fetch(slow_s=1.0) > size  # the head and the whole file
        tracemalloc.start()
        got = await fetch(slow_s=0.0)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert got > size
        assert peak < 8_000_000, f"{peak / 1e6:.1f} MB held while serving a {size / 1e6:.0f} MB guide"
    finally:
        await relay.stop()


def test_given_an_https_account_with_its_own_ca_then_its_xmltv_is_fetched_with_that_trust(
    tmp_path: Path,
) -> None:
    """The account's tls_verify / ca_file apply to its xmltv.php, not only to its streams."""
    import http.server
    import ssl
    import threading

    from relay.sources.guide import build_guide, guide_sources
    from tests.fake_provider import self_signed_cert

    cert, key = self_signed_cert(tmp_path)
    body = (
        b'<?xml version="1.0"?><tv><channel id="a.tv"><display-name>A</display-name></channel>'
        b'<programme start="20260101000000 +0000" channel="a.tv"><title>T</title></programme></tv>'
    )

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"https://127.0.0.1:{server.server_address[1]}"
        channels = [{"id": "a.tv", "name": "A", "number": "1"}]

        def build(**account: Any) -> Any:
            acc = {"name": "p", "url": url, "username": "u", "password": "pw", **account}
            cfg = parse({"accounts": [acc], "channels": channels}, base_dir=tmp_path)
            return build_guide(cfg.channels, guide_sources(cfg), tmp_path / "g.xml", tmp_path / "g.xml.gz")

        assert build(ca_file=str(cert)).programmes == 1
        assert build(tls_verify=False).programmes == 1
        with pytest.raises(GuideBuildError):
            build()  # the default: verify against the system's CAs, which do not know this one
    finally:
        server.shutdown()


def test_a_guide_build_child_whose_parent_is_gone_ends_quietly(tmp_path: Path) -> None:
    """Given the relay died mid-build (its pipe end closed), Then the child ends without a traceback."""
    import multiprocessing

    from relay.sources.guide import _build_in_child

    reader, writer = multiprocessing.Pipe(duplex=False)
    reader.close()
    _build_in_child([], [], tmp_path / "g.xml", tmp_path / "g.xml.gz", writer)  # must not raise
    assert writer.closed
