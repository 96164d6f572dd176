"""The HDHomeRun HTTP bodies Plex reads: discover.json, lineup, lineup_status, device.xml, DeviceID."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import orjson
import pytest

from relay.config import parse
from relay.tuner import hdhomerun

BASE = "http://10.0.0.5:5004"
UPNP = "{urn:schemas-upnp-org:device-1-0}"


def make_cfg(tmp_path: Path, **extra: Any) -> Any:
    data: dict[str, Any] = {
        "tuner": {"friendly_name": "Living room relay", "tuner_count": 3},
        "channels": [
            {"id": "six", "name": "Six", "number": "6"},
            {"id": "ten", "name": "Ten", "number": "10"},
            {"id": "five.one", "name": "Five One", "number": "5.1", "hd": False},
            {"id": "five", "name": 'Five "Quoted" & <Co>', "number": "5"},
            {"id": "five.two", "name": "Five Two", "number": "5.2"},
        ],
    }
    data.update(extra)
    return parse(data, base_dir=tmp_path)


def test_given_a_config_when_discover_json_then_every_field_has_the_type_plex_needs(tmp_path: Path) -> None:
    cfg = make_cfg(
        tmp_path, tuner={"friendly_name": "Living room relay", "tuner_count": 3, "model": "HDTC-2US"}
    )
    body = orjson.loads(hdhomerun.discover_json(cfg, BASE))
    assert body == {
        "FriendlyName": "Living room relay",
        "Manufacturer": "Silicondust",
        "ModelNumber": "HDTC-2US",
        "FirmwareName": "hdhomeruntc_atsc",
        "FirmwareVersion": "20200101",
        "DeviceID": hdhomerun.device_id(cfg),
        "DeviceAuth": body["DeviceAuth"],
        "BaseURL": BASE,
        "LineupURL": f"{BASE}/lineup.json",
        "TunerCount": 3,
    }
    assert isinstance(body["TunerCount"], int)
    assert isinstance(body["DeviceAuth"], str) and len(body["DeviceAuth"]) == 24
    assert len(body["DeviceID"]) == 8 and int(body["DeviceID"], 16) >= 0


def test_given_no_configured_id_then_device_id_is_valid_and_stable(tmp_path: Path) -> None:
    a = hdhomerun.device_id(make_cfg(tmp_path))
    b = hdhomerun.device_id(make_cfg(tmp_path))
    other = hdhomerun.device_id(make_cfg(tmp_path / "elsewhere"))
    assert a == b
    assert a != other
    assert hdhomerun.is_valid_device_id(a) and hdhomerun.is_valid_device_id(other)
    assert a == a.upper() and len(a) == 8


def test_derived_ids_always_pass_the_libhdhomerun_checksum(tmp_path: Path) -> None:
    ids = {hdhomerun.device_id(make_cfg(tmp_path / str(n))) for n in range(500)}
    assert len(ids) == 500
    for dev_id in ids:
        assert hdhomerun.is_valid_device_id(dev_id), dev_id
        assert int(dev_id, 16) >> 20 not in {0x100, 0x101, 0x102, 0x103, 0x111, 0x120, 0x121, 0x122}


def test_checksum_matches_libhdhomerun_on_known_ids() -> None:
    assert hdhomerun.is_valid_device_id("10439EFD")  # SiliconDust's own documented example
    assert not hdhomerun.is_valid_device_id("12345678")  # the emulators' favourite fails
    assert not hdhomerun.is_valid_device_id("FFFFFFFF")  # wildcard passes the XOR but is not an id
    assert not hdhomerun.is_valid_device_id("00000000")
    assert not hdhomerun.is_valid_device_id("1043 EFD")


def test_given_a_valid_configured_id_then_it_is_used(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, tuner={"device_id": "10439efd"})
    assert hdhomerun.device_id(cfg) == "10439EFD"


@pytest.mark.parametrize("bad", ["12345678", "FFFFFFFF", "XYZ", "10439EFD0"])
def test_given_an_invalid_configured_id_then_value_error(tmp_path: Path, bad: str) -> None:
    cfg = make_cfg(tmp_path, tuner={"device_id": bad})
    with pytest.raises(ValueError, match=r"tuner\.device_id"):
        hdhomerun.device_id(cfg)


def test_lineup_is_sorted_numerically_with_auto_urls(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path)
    lineup = orjson.loads(hdhomerun.lineup_json(cfg.channels, BASE))
    assert [e["GuideNumber"] for e in lineup] == ["5", "5.1", "5.2", "6", "10"]
    for entry in lineup:
        assert set(entry) == {"GuideNumber", "GuideName", "URL", "HD"}
        assert entry["URL"] == f"{BASE}/auto/v{entry['GuideNumber']}"
        assert isinstance(entry["GuideNumber"], str)
    assert lineup[0]["GuideName"] == 'Five "Quoted" & <Co>'
    assert lineup[1]["HD"] == 0 and lineup[0]["HD"] == 1


def test_lineup_m3u_carries_the_relay_guide_ids(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path)
    text = hdhomerun.lineup_m3u(cfg.channels, BASE).decode()
    lines = text.splitlines()
    assert lines[0].startswith("#EXTM3U")
    assert (
        lines[1]
        == '#EXTINF:-1 tvg-id="5.relay" tvg-chno="5" tvg-name="Five Quoted & <Co>",Five Quoted & <Co>'
    )
    assert lines[2] == f"{BASE}/auto/v5"
    assert lines[-1] == f"{BASE}/auto/v10"
    assert len(lines) == 1 + 2 * len(cfg.channels)


def test_guide_id_is_not_purely_numeric(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path)
    ids = [hdhomerun.guide_id(ch) for ch in cfg.channels]
    assert "10.relay" in ids and "5.1.relay" in ids
    assert all(not i.replace(".", "").isdigit() for i in ids)


def test_lineup_status_and_post_bodies() -> None:
    assert orjson.loads(hdhomerun.lineup_status_json()) == {
        "ScanInProgress": 0,
        "ScanPossible": 1,
        "Source": "Cable",
        "SourceList": ["Cable"],
    }
    body = hdhomerun.lineup_post_body()
    assert body and orjson.loads(body) == {}


def test_device_xml_is_a_upnp_media_server_with_a_udn_from_the_device_id(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, tuner={"friendly_name": "Tom & Jerry's <relay>"})
    root = ET.fromstring(hdhomerun.device_xml(cfg, BASE))
    assert root.tag == f"{UPNP}root"
    assert root.findtext(f"{UPNP}URLBase") == BASE
    assert root.findtext(f"{UPNP}specVersion/{UPNP}major") == "1"
    dev = root.find(f"{UPNP}device")
    assert dev is not None
    assert dev.findtext(f"{UPNP}deviceType") == "urn:schemas-upnp-org:device:MediaServer:1"
    assert dev.findtext(f"{UPNP}friendlyName") == "Tom & Jerry's <relay>"
    dev_id = hdhomerun.device_id(cfg)
    udn = dev.findtext(f"{UPNP}UDN") or ""
    assert udn == hdhomerun.udn(dev_id)
    assert udn.startswith(f"uuid:{dev_id.lower()}-") and len(udn) == len("uuid:") + 36
    assert dev.findtext(f"{UPNP}serialNumber") == dev_id


class TestBaseURL:
    def test_configured_base_url_wins(self, tmp_path: Path) -> None:
        cfg = make_cfg(tmp_path, tuner={"base_url": "http://tv.lan:8080/"})
        assert hdhomerun.base_url(cfg, "whatever:1", 5004) == "http://tv.lan:8080"

    def test_host_header_is_used(self, tmp_path: Path) -> None:
        cfg = make_cfg(tmp_path)
        assert hdhomerun.base_url(cfg, "192.168.1.9:5004", 5004) == "http://192.168.1.9:5004"
        assert hdhomerun.base_url(cfg, "[fe80::1]:5004", 5004) == "http://[fe80::1]:5004"

    @pytest.mark.parametrize("host", [None, "", "0.0.0.0:5004", "0.0.0.0", "[::]:5004", 'x"><script>', "a b"])
    def test_never_unspecified_nor_unchecked(self, tmp_path: Path, host: str | None) -> None:
        cfg = make_cfg(tmp_path)
        url = hdhomerun.base_url(cfg, host, 5004, local_ip="192.168.1.9")
        assert url == "http://192.168.1.9:5004"
        fallback = hdhomerun.base_url(cfg, host, 5004)
        assert "0.0.0.0" not in fallback and "[::]" not in fallback and '"' not in fallback
        assert fallback.endswith(":5004")

    def test_specific_server_host_is_a_fallback(self, tmp_path: Path) -> None:
        cfg = make_cfg(tmp_path, server={"host": "10.1.2.3"})
        assert hdhomerun.base_url(cfg, None, 5004) == "http://10.1.2.3:5004"


def test_error_headers_read_like_a_real_tuner() -> None:
    assert hdhomerun.TunerError.ALL_TUNERS_IN_USE.header() == ("X-HDHomeRun-Error", "805 All Tuners In Use")
    assert hdhomerun.TunerError.NO_VIDEO_DATA.header() == ("X-HDHomeRun-Error", "807 No Video Data")
