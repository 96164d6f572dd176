"""Real clients other than Plex: SiliconDust's hdhomerun_config over TCP 65001, xmllint with the XMLTV
DTD, a Jellyfin-like walk, and parsers from other projects (hdhrhttpapi for status.json, ipytv for
the M3U).

Network hygiene: HTTP goes to the relay on 127.0.0.1; the 65001 test runs in a network namespace of
its own (`unshare -n`, its loopback only), so it neither needs the host's 65001 nor reaches a LAN.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from relay.shell.app import Relay
from tests.fake_provider import FakeProvider
from tests.fake_xtream import PASSWORD, FakeXtream, Stream
from tests.harness import config_for, open_stream, request, running_relay, until

ROOT = Path(__file__).resolve().parent.parent


def _need(tool: str, package: str) -> None:
    if shutil.which(tool) is None:
        pytest.fail(f"{tool} is not installed (Debian package {package}; `make system-deps` installs it)")


# ---- hdhomerun_config against the TCP control channel ----------------------------------------------


@pytest.fixture(scope="module")
def control_answers(ts_file: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Every `hdhomerun_config 127.0.0.1 get/set ...` answer, with one viewer on tuner0 (see
    tests/clients_netns.py), from a relay inside a fresh network namespace."""
    for tool, package in (("hdhomerun_config", "hdhomerun-config"), ("unshare", "util-linux")):
        _need(tool, package)
    _need("ip", "iproute2")
    work = tmp_path_factory.mktemp("netns")
    script = f'ip link set lo up && exec "{sys.executable}" -m tests.clients_netns "{ts_file}" "{work}"'
    proc = subprocess.run(
        ["unshare", "--net", "sh", "-c", script], capture_output=True, text=True, timeout=90, cwd=ROOT
    )
    if proc.returncode != 0 and "unshare failed" in proc.stderr:
        pytest.fail(f"cannot make a network namespace (run as root): {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return orjson.loads(proc.stdout.strip().splitlines()[-1])


def answer(answers: dict[str, Any], *args: str) -> str:
    out: str = answers["answers"][" ".join(args)]
    rc, _, text = out.partition("\n")
    assert rc == "rc=0" or text.startswith("ERROR"), out  # hdhomerun_config: 0 = the device answered
    return text.rstrip("\n")


def test_hdhomerun_config_finds_the_device_and_reads_a_streaming_tuner(control_answers: dict[str, Any]):
    a = control_answers
    assert f"hdhomerun device {a['device_id']} found at 127.0.0.1" in answer(a, "discover", "127.0.0.1")
    status = answer(a, "127.0.0.1", "get", "/tuner0/status")
    fields = dict(part.split("=", 1) for part in status.split())
    assert set(fields) == {"ch", "lock", "ss", "snq", "seq", "bps", "pps"}
    assert fields["ch"] == "auto:100" and fields["lock"] != "none"
    # the fake provider paces a ~1 Mbit/s test stream in real time; the rate is the relay's own count
    assert 100_000 < int(fields["bps"]) < 20_000_000, status
    info = answer(a, "127.0.0.1", "get", "/tuner0/streaminfo").splitlines()
    assert info[0] == "1: 100 NEWS" and info[1].startswith("tsid=0x")
    assert answer(a, "127.0.0.1", "get", "/tuner0/channel") == "auto:100"
    assert answer(a, "127.0.0.1", "get", "/tuner0/vchannel") == "100"
    assert answer(a, "127.0.0.1", "get", "/tuner0/program") == "1"
    assert answer(a, "127.0.0.1", "get", "/tuner0/target") == f"tcp://127.0.0.1:{a['viewer_port']}"
    assert answer(a, "127.0.0.1", "get", "/tuner0/lockkey") == "none"


def test_hdhomerun_config_reads_an_idle_tuner_and_the_device_items(control_answers: dict[str, Any]):
    a = control_answers
    assert answer(a, "127.0.0.1", "get", "/tuner1/status") == "ch=none lock=none ss=0 snq=0 seq=0 bps=0 pps=0"
    for item in ("channel", "vchannel", "target", "streaminfo"):
        assert answer(a, "127.0.0.1", "get", f"/tuner1/{item}") == "none", item
    assert answer(a, "127.0.0.1", "get", "/tuner2/status") == "ERROR: unknown getset variable"
    assert answer(a, "127.0.0.1", "get", "/sys/features").startswith("channelmap: us-cable")
    assert answer(a, "127.0.0.1", "get", "/sys/hwmodel") == "HDHR4-2US"
    assert answer(a, "127.0.0.1", "get", "/sys/model") == "hdhomerun4_atsc"
    assert answer(a, "127.0.0.1", "get", "/sys/version").isdigit()
    assert answer(a, "127.0.0.1", "get", "/lineup/scan") == "state=complete progress=100% found=2"
    assert "/tuner<n>/streaminfo" in answer(a, "127.0.0.1", "get", "help")


def test_hdhomerun_config_set_gets_a_clear_read_only_error(control_answers: dict[str, Any]):
    for args in (
        ("127.0.0.1", "set", "/tuner0/channel", "auto:5"),
        ("127.0.0.1", "set", "/lineup/scan", "start"),
    ):
        out = answer(control_answers, *args)
        assert out.startswith("ERROR: read only") and "config file" in out, out


# ---- the guide against the XMLTV DTD, and the M3U through another project's parser ----------------

XMLTV_DTD = Path("/usr/share/xmltv/xmltv.dtd")  # Debian's xmltv-util
MESSY_GUIDE = b"""<?xml version="1.0" encoding="UTF-8"?>
<tv generator-info-name="some panel">
  <channel id="news.uk"><display-name>News</display-name><lcn>3</lcn><icon src="http://img/guide-news.png"/></channel>
  <channel id="film.uk"><display-name>Film</display-name></channel>
  <channel id="radio.uk"><display-name>Radio</display-name></channel>
  <programme start="20240101120000 +0000" stop="20240101130000 +0000" channel="news.uk" foo="bar">
    <category>News</category><title lang="en">Morning</title><lcn>3</lcn><desc>Headlines <b>now</b></desc>
    <length>30</length><rating><value>PG</value></rating><rating system="x"/>
    <star-rating><value>3/5</value></star-rating><video><quality>HDTV</quality><present>yes</present></video>
    <new/><episode-num system="xmltv_ns">1.2.</episode-num>
  </programme>
  <programme start="20240101130000 +0000" channel="news.uk"><desc>No title at all</desc></programme>
</tv>
"""


@pytest.fixture
def synced(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A relay config whose account has logos and groups, synced once: news has guide data, film none."""
    from relay.config import parse
    from relay.sources.sync import run_sync
    from relay.storage.store import Store

    (tmp_path / "guide.xml").write_bytes(MESSY_GUIDE)
    streams = [
        Stream(1, "UK: News HD", "news.uk", "1", icon="http://img/news.png"),
        Stream(2, "Film", "film.uk", "2", icon="http://img/film.png"),
        Stream(3, "Radio", "radio.uk", "2", icon="http://panel/logo.php?username=alice&id=3"),  # a secret
    ]
    with FakeXtream(streams=streams, categories={"1": "UK News", "2": "Movies"}) as panel:
        cfg = {
            "server": {"host": "127.0.0.1", "port": 0},
            "storage": {"database": str(tmp_path / "relay.db"), "events": str(tmp_path / "events.jsonl")},
            "discovery": {"udp": False},
            "sync": {"on_start": False},
            "guide": [{"file": "guide.xml"}],
            "accounts": [{"name": "a", "url": panel.url, "username": panel.username, "password": PASSWORD}],
        }
        config = parse(cfg, base_dir=tmp_path)
        store = Store(tmp_path / "relay.db")
        store.sync_config(config)  # what `relay sync` and `serve` do first
        store.close()
        report = run_sync(config, tmp_path / "relay.db")
        assert report.mapping.served == 3
        yield cfg


async def _served_guide(relay: Relay, tmp_path: Path) -> Path:
    await until(lambda: relay.guide.last_report is not None, 20, "the first guide build")
    raw = await request(
        relay.port, b"GET /xmltv.xml HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    path = tmp_path / "served.xml"
    path.write_bytes(body)
    return path


async def test_the_served_guide_is_valid_xmltv_with_logos_and_placeholder_programmes(
    synced: dict[str, Any], tmp_path: Path
) -> None:
    _need("xmllint", "libxml2-utils")
    _need("tv_validate_file", "xmltv-util")
    assert XMLTV_DTD.exists(), "xmltv-util ships /usr/share/xmltv/xmltv.dtd"
    async with running_relay(synced, tmp_path) as relay:
        path = await _served_guide(relay, tmp_path)
    lint = subprocess.run(
        ["xmllint", "--noout", "--dtdvalid", str(XMLTV_DTD), str(path)], capture_output=True, text=True
    )
    assert lint.returncode == 0, lint.stderr
    validate = subprocess.run(  # XMLTV_SUPPLEMENT: its DTD from the package, never fetched
        ["tv_validate_file", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "XMLTV_SUPPLEMENT": str(XMLTV_DTD.parent)},
    )
    assert validate.returncode == 0, validate.stdout + validate.stderr
    root = ET.parse(path).getroot()
    chans = {c.findtext("display-name"): c for c in root.iter("channel")}
    assert set(chans) == {"1000", "1001", "1002"} and all(c.find("lcn") is None for c in chans.values())
    by_name = {c.findall("display-name")[1].text: c for c in chans.values()}
    assert by_name["News"].find("icon").get("src") == "http://img/guide-news.png"  # the guide's own
    assert by_name["Film"].find("icon").get("src") == "http://img/film.png"  # the provider's logo
    assert by_name["Radio"].find("icon") is None  # its logo URL carries the line's username
    assert b"alice" not in path.read_bytes()
    film, news = by_name["Film"].get("id"), by_name["News"].get("id")
    progs = list(root.iter("programme"))
    kept = [p for p in progs if p.get("channel") == news]
    assert [p.findtext("title") for p in kept] == ["Morning"]  # the untitled one is dropped
    assert [c.tag for c in kept[0]][:3] == ["title", "desc", "category"] and kept[0].find("lcn") is None
    dummies = [p for p in progs if p.get("channel") == film]
    assert len(dummies) == 36 and {p.findtext("title") for p in dummies} == {"Film"}  # 3 days of 2 h
    assert all(a.get("stop") == b.get("start") for a, b in itertools.pairwise(dummies))


async def test_lineup_m3u_parses_with_ipytv_with_logos_groups_and_the_guide_url(
    synced: dict[str, Any], tmp_path: Path
) -> None:
    from ipytv import playlist  # m3u-ipytv, the M3U library other IPTV tools use

    async with running_relay(synced, tmp_path) as relay:
        raw = await request(
            relay.port, b"GET /lineup.m3u HTTP/1.1\r\nHost: tv.lan:5004\r\nConnection: close\r\n\r\n"
        )
        lineup = orjson.loads((await request(relay.port, GET_LINEUP)).partition(b"\r\n\r\n")[2])
    pl = playlist.loads(raw.partition(b"\r\n\r\n")[2].decode())
    assert pl.get_attributes()["x-tvg-url"] == "http://tv.lan:5004/xmltv.xml"
    assert pl.length() == len(lineup) == 3
    assert b"alice" not in raw
    got = {c.name: (c.url, c.attributes) for c in pl.get_channels()}
    url, attrs = got["News"]
    assert url.startswith("http://tv.lan:5004/auto/v")
    assert attrs["tvg-chno"] == url.rsplit("v", 1)[1] and attrs["tvg-id"] == f"{attrs['tvg-chno']}.relay"
    assert attrs["tvg-logo"] == "http://img/guide-news.png" and attrs["group-title"] == "UK News"
    assert got["Film"][1]["tvg-logo"] == "http://img/film.png" and got["Film"][1]["group-title"] == "Movies"


# ---- a Jellyfin-like walk, and status.json read by hdhrhttpapi ---------------------------------------

GET_LINEUP = b"GET /lineup.json HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"


async def test_a_jellyfin_like_walk_plays_a_lineup_url_with_transcode_and_duration(
    provider: FakeProvider, tmp_path: Path
) -> None:
    """Jellyfin: discover.json, then LineupURL, then the channel's URL (with ?transcode= when it
    believes the tuner is an EXTEND); the relay ignores both parameters and streams the channel."""
    cfg = config_for(tmp_path, provider, {"news": [("a", 1)]}, accounts=("a",))
    async with running_relay(cfg, tmp_path) as relay:
        raw = await request(relay.port, b"GET /discover.json HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", timeout=1)
        discover = orjson.loads(raw.partition(b"\r\n\r\n")[2])
        assert "hdtc" not in discover["ModelNumber"].lower()  # Jellyfin offers no transcode profiles
        lineup_path = discover["LineupURL"].removeprefix(discover["BaseURL"])
        raw = await request(
            relay.port, f"GET {lineup_path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode(), timeout=1
        )
        url = orjson.loads(raw.partition(b"\r\n\r\n")[2])[0]["URL"]
        path = url.removeprefix(discover["BaseURL"])
        viewer = await open_stream(relay.port, f"{path}?transcode=internet540&duration=7200")
        try:
            assert viewer.status == 200 and viewer.header("content-type") == "video/mp2t"
            await viewer.wait_bytes(50 * 188)
            assert viewer.body[0] == 0x47
        finally:
            await viewer.close()


async def test_hdhrhttpapi_reads_the_tuners_from_status_json(provider: FakeProvider, tmp_path: Path) -> None:
    import hdhrhttpapi  # a PyPI client of the HDHomeRun HTTP API (discover.json + status.json)

    cfg = config_for(tmp_path, provider, {"news": [("a", 1)]}, accounts=("a",))
    cfg["tuner"] = {"tuner_count": 3}
    async with running_relay(cfg, tmp_path) as relay:
        viewer = await open_stream(relay.port, "/auto/v100")
        try:
            await viewer.wait_bytes(100_000)
            devices = await asyncio.to_thread(hdhrhttpapi.HdHrDevices, f"127.0.0.1:{relay.port}")
            raw = await request(
                relay.port, b"GET /status.json HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", timeout=1
            )
        finally:
            await viewer.close()
    (device,) = devices
    assert device.tunerCount == 3 and len(device.tuner) == 3
    assert device.modelNumber == "HDHR4-2US" and device.firmwareName == "hdhomerun4_atsc"
    first, idle = device.tuner[0], device.tuner[1]
    assert (first.vctNumber, first.vctName, first.signalStrength) == ("100", "NEWS", 100)
    assert idle.vctNumber == "None"  # the library's word for a tuner without a channel
    status = orjson.loads(raw.partition(b"\r\n\r\n")[2])
    assert status[0]["TargetIP"] == "127.0.0.1" and status[0]["NetworkRate"] > 100_000
