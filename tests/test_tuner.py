"""Plex's view of the relay: the HDHomeRun calls in the order Plex makes them, then playback."""

from __future__ import annotations

import asyncio
import gzip
import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import orjson
import pytest

from relay.tuner.hdhomerun import is_valid_device_id
from tests import fake_provider as fp
from tests import netns
from tests.fake_provider import FakeProvider
from tests.harness import config_for, open_stream, request, running_relay


def body_of(raw: bytes) -> tuple[str, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    return lines[0], headers, body


async def get(
    port: int, path: str, *, method: str = "GET", host: str = "tv.local:5004", extra: str = ""
) -> tuple:
    raw = await request(
        port, f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n{extra}\r\n".encode()
    )
    return body_of(raw)


async def test_given_plex_setup_sequence_then_every_field_is_what_plex_needs_and_lineup_urls_play(
    provider: FakeProvider, tmp_path: Path
):
    chans = {"bbcone.uk": [("a", 1), ("b", 2)], "itv.uk": [("b", 3)], "film.uk": [("a", 4)]}
    cfg = config_for(tmp_path, provider, chans)
    cfg["channels"][2]["number"] = "5.1"  # sorts between 5 and 101 as a number, not as text
    cfg["tuner"] = {"friendly_name": "Living room relay", "tuner_count": 3}
    async with running_relay(cfg, tmp_path) as relay:
        port = relay.port
        status, headers, body = await get(port, "/discover.json")
        assert status.endswith("200 OK") and headers["content-type"] == "application/json"
        d = orjson.loads(body)
        for key in ("FriendlyName", "Manufacturer", "ModelNumber", "FirmwareName", "FirmwareVersion",
                    "DeviceID", "DeviceAuth", "BaseURL", "LineupURL", "TunerCount"):  # fmt: skip
            assert key in d, key
        assert d["TunerCount"] == 3 and isinstance(d["TunerCount"], int)
        assert d["FriendlyName"] == "Living room relay"
        assert d["BaseURL"] == "http://tv.local:5004" and d["LineupURL"] == "http://tv.local:5004/lineup.json"
        assert is_valid_device_id(d["DeviceID"])
        again = orjson.loads((await get(port, "/discover.json"))[2])
        assert again["DeviceID"] == d["DeviceID"]

        st = orjson.loads((await get(port, "/lineup_status.json"))[2])
        assert st == {"ScanInProgress": 0, "ScanPossible": 1, "Source": "Cable", "SourceList": ["Cable"]}

        lineup = orjson.loads((await get(port, "/lineup.json"))[2])
        assert [e["GuideNumber"] for e in lineup] == ["5.1", "100", "101"]
        assert [e["GuideName"] for e in lineup] == ["FILM.UK", "BBCONE.UK", "ITV.UK"]
        assert all(e["URL"] == f"http://tv.local:5004/auto/v{e['GuideNumber']}" for e in lineup)

        status, _, body = await get(port, "/lineup.post?scan=start&source=Cable", method="POST")
        assert status.endswith("200 OK") and body
        status, _, body = await get(port, "/lineup.post?scan=abort", method="POST")
        assert status.endswith("200 OK") and body

        status, headers, body = await get(port, "/device.xml")
        root = ET.fromstring(body)
        ns = {"u": "urn:schemas-upnp-org:device-1-0"}
        assert (
            root.findtext("u:device/u:deviceType", namespaces=ns)
            == "urn:schemas-upnp-org:device:MediaServer:1"
        )
        assert d["DeviceID"].lower() in (root.findtext("u:device/u:UDN", namespaces=ns) or "").lower()

        # Plex plays the lineup URL as it is
        for entry in lineup:
            c = await open_stream(port, entry["URL"].removeprefix("http://tv.local:5004"))
            assert c.status == 200 and c.header("content-type") == "video/mp2t"
            await c.wait_bytes(5_000)
            await c.close()
        status, _, _ = await get(port, "/auto/v999")
        assert " 404 " in status


async def test_given_all_tuners_busy_then_503_with_805(provider: FakeProvider, tmp_path: Path):
    cfg = config_for(tmp_path, provider, {"one": [("a", 1)], "two": [("b", 2)]})
    cfg["tuner"] = {"tuner_count": 1}
    async with running_relay(cfg, tmp_path) as relay:
        c = await open_stream(relay.port, "/stream/one")
        await c.wait_bytes(2_000)
        status, headers, _ = await get(relay.port, "/stream/two")
        assert " 503 " in status and headers["x-hdhomerun-error"] == "805 All Tuners In Use"
        await c.close()
        while relay.sessions:
            await asyncio.sleep(0.01)
        c2 = await open_stream(relay.port, "/stream/two")  # the tuner is free again
        assert c2.status == 200
        await c2.close()


async def test_given_every_stream_failing_then_503_with_807_and_opaque_body(
    provider: FakeProvider, tmp_path: Path
):
    provider.set(1, fp.status(500))
    cfg = config_for(tmp_path, provider, {"one": [("a", 1)]})
    async with running_relay(cfg, tmp_path) as relay:
        status, headers, body = await get(relay.port, "/auto/v100")
        assert " 503 " in status and headers["x-hdhomerun-error"] == "807 No Video Data"
        assert body == b"Stream unavailable\n"


async def test_given_guide_source_then_xmltv_is_rekeyed_to_relay_ids_and_gzipped_on_request(
    provider: FakeProvider, tmp_path: Path
):
    src = tmp_path / "source.xml"
    src.write_text(
        '<?xml version="1.0" encoding="UTF-8"?>\n<tv>'
        '<channel id="bbcone.uk"><display-name>BBC One HD</display-name></channel>'
        '<channel id="other.uk"><display-name>Other</display-name></channel>'
        '<programme start="20261125060000 +0000" stop="20261125070000 +0000" channel="bbcone.uk">'
        "<title>News</title></programme>"
        '<programme start="20261125060000 +0000" stop="20261125070000 +0000" channel="other.uk">'
        "<title>Elsewhere</title></programme></tv>"
    )
    cfg = config_for(tmp_path, provider, {"bbcone.uk": [("a", 1)]})
    cfg["guide"] = {"sources": [{"file": str(src)}]}
    async with running_relay(cfg, tmp_path) as relay:
        assert await relay.guide.refresh()
        status, headers, body = await get(relay.port, "/xmltv.xml")
        assert status.endswith("200 OK") and headers["content-type"].startswith("application/xml")
        tv = ET.fromstring(body)
        ch = tv.find("channel")
        assert ch is not None and ch.get("id") == "100.relay"
        assert [e.text for e in ch.findall("display-name")][:2] == ["100", "BBCONE.UK"]
        progs = tv.findall("programme")
        assert [(p.get("channel"), p.findtext("title")) for p in progs] == [("100.relay", "News")]
        status, headers, zbody = await get(relay.port, "/xmltv.xml", extra="Accept-Encoding: gzip\r\n")
        assert headers.get("content-encoding") == "gzip" and gzip.decompress(zbody) == body


async def test_hdhomerun_config_discovers_the_running_relay_by_unicast(
    provider: FakeProvider, tmp_path: Path, request: pytest.FixtureRequest
):
    """In its own network namespace (tests/netns.py): another relay holding 65001 on this machine
    would otherwise answer instead, and the DeviceID found would be that relay's."""
    if shutil.which("hdhomerun_config") is None:
        if netns.in_ci():
            pytest.fail("hdhomerun_config is not installed (Debian package hdhomerun-config)")
        pytest.skip("hdhomerun_config not installed")
    if not await netns.own_port(request, 65001):
        return  # it ran, and passed, in a network namespace of its own
    cfg = config_for(tmp_path, provider, {"one": [("a", 1)]})
    cfg["discovery"] = {"udp": True, "bind": "127.0.0.1"}
    async with running_relay(cfg, tmp_path) as relay:
        d = orjson.loads((await get(relay.port, "/discover.json"))[2])
        proc = await asyncio.create_subprocess_exec(
            "hdhomerun_config", "discover", "127.0.0.1", stdout=asyncio.subprocess.PIPE
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 10)
        assert d["DeviceID"] in out.decode(), out
        assert re.findall(r"hdhomerun device (\S+) found", out.decode()) == [d["DeviceID"]], out
