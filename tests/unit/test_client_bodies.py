"""What non-Plex clients read: status.json, lineup.xml, tuners.html, the M3U's attributes, the model,
the TCP control items in libhdhomerun's formats, and stable tuner numbers."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import orjson
import pytest

from relay.config import ConfigError, parse
from relay.tuner import control, hdhomerun
from relay.tuner.discovery import DeviceInfo, device_info
from relay.tuner.status import LiveView, Playing, TunerSlots, TunerState, idle_view

BASE = "http://10.0.0.5:5004"
CHANNELS = [
    {"id": "ten", "name": "Ten & <Co>", "number": "10"},
    {"id": "five.one", "name": "Five One", "number": "5.1", "hd": False},
]


def make_cfg(tmp_path: Path, **extra: Any) -> Any:
    return parse({"channels": CHANNELS, **extra}, base_dir=tmp_path)


def busy_view() -> LiveView:
    return LiveView(
        (TunerState(0, "5.1", "Five One", "192.0.2.7", 50123, 6_000_000), TunerState(1)), channels=2
    )


def test_the_default_model_claims_no_transcoding_and_its_firmware_matches(tmp_path: Path) -> None:
    body = orjson.loads(hdhomerun.discover_json(make_cfg(tmp_path), BASE))
    assert body["ModelNumber"] == "HDHR4-2US" and body["FirmwareName"] == "hdhomerun4_atsc"
    assert not hdhomerun.claims_transcoding(body["ModelNumber"])
    assert re.fullmatch(r"20\d{6}", body["FirmwareVersion"])
    extend = make_cfg(tmp_path, tuner={"model": "HDTC-2US"})
    assert hdhomerun.claims_transcoding(extend.tuner.model)
    root = ET.fromstring(hdhomerun.device_xml(extend, BASE))
    assert root.findtext(".//{urn:schemas-upnp-org:device-1-0}modelNumber") == "HDTC-2US"
    assert device_info(extend, 5004).model == "HDTC-2US"
    with pytest.raises(ConfigError, match=r"tuner\.model"):
        make_cfg(tmp_path, tuner={"model": 'bad "model"'})


def test_lineup_xml_has_the_lineup_json_entries(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path)
    as_json = orjson.loads(hdhomerun.lineup_json(cfg.channels, BASE))
    root = ET.fromstring(hdhomerun.lineup_xml(cfg.channels, BASE))
    assert root.tag == "Lineup"
    as_xml = [{k.tag: k.text for k in p} for p in root.findall("Program")]
    assert as_xml == [
        {"GuideNumber": e["GuideNumber"], "GuideName": e["GuideName"], "URL": e["URL"], "HD": str(e["HD"])}
        for e in as_json
    ]
    assert as_xml[1]["GuideName"] == "Ten & <Co>"


def test_status_json_lists_every_tuner_and_what_a_busy_one_streams() -> None:
    status = orjson.loads(hdhomerun.status_json(busy_view()))
    assert status[1] == {"Resource": "tuner1"}
    busy = status[0]
    assert busy["Resource"] == "tuner0" and busy["VctNumber"] == "5.1" and busy["VctName"] == "Five One"
    assert busy["TargetIP"] == "192.0.2.7" and busy["NetworkRate"] == 6_000_000
    assert all(busy[k] == 100 for k in ("SignalStrengthPercent", "SignalQualityPercent"))
    assert orjson.loads(hdhomerun.status_json(idle_view(3))) == [{"Resource": f"tuner{i}"} for i in range(3)]


def test_tuners_html_rows_name_each_tuner() -> None:
    page = hdhomerun.tuners_html(busy_view()).decode()
    rows = re.findall(r"<tr><td>([^<]+)</td><td>([^<]+)</td></tr>", page)
    assert rows == [("Tuner 0 Channel", "5.1 Five One"), ("Tuner 1 Channel", "none")]


def test_lineup_m3u_carries_logo_group_and_the_guide_url(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path)
    art = {"ten": hdhomerun.ChannelArt('http://img/ten".png', "News\nUK"), "five.one": hdhomerun.ChannelArt()}
    lines = hdhomerun.lineup_m3u(cfg.channels, BASE, art).decode().splitlines()
    assert lines[0] == f'#EXTM3U x-tvg-url="{BASE}/xmltv.xml" url-tvg="{BASE}/xmltv.xml"'
    assert lines[1] == '#EXTINF:-1 tvg-id="5.1.relay" tvg-chno="5.1" tvg-name="Five One",Five One'
    assert lines[3] == (
        '#EXTINF:-1 tvg-id="10.relay" tvg-chno="10" tvg-name="Ten & <Co>"'
        ' tvg-logo="http://img/ten.png" group-title="NewsUK",Ten & <Co>'
    )


# ---- the TCP control items ------------------------------------------------------------------------

DEVICE = DeviceInfo(device_id="10439EFD", tuner_count=2, base_url=BASE, device_auth="x" * 24)


def test_a_busy_tuner_reports_real_values_in_libhdhomerun_formats() -> None:
    view = busy_view()
    status = control.get("/tuner0/status", DEVICE, view)
    assert status is not None
    fields = dict(part.split("=", 1) for part in status.split())
    assert fields["ch"] == "auto:5.1" and fields["lock"] == "qam256"
    assert int(fields["ss"]) >= 35  # libhdhomerun: signal_present
    assert int(fields["bps"]) == 6_000_000 and int(fields["pps"]) == 6_000_000 // (1316 * 8)
    info = control.get("/tuner0/streaminfo", DEVICE, view)
    assert info is not None
    first, tsid = info.splitlines()
    assert re.fullmatch(r"\d+: 5\.1 Five One", first) and re.fullmatch(r"tsid=0x[0-9A-F]{4}", tsid)
    assert control.get("/tuner0/vchannel", DEVICE, view) == "5.1"
    assert control.get("/tuner0/channel", DEVICE, view) == "auto:5.1"
    assert control.get("/tuner0/target", DEVICE, view) == "tcp://192.0.2.7:50123"


def test_an_idle_tuner_says_none() -> None:
    view = busy_view()
    assert control.get("/tuner1/status", DEVICE, view) == "ch=none lock=none ss=0 snq=0 seq=0 bps=0 pps=0"
    for item in ("channel", "vchannel", "target"):
        assert control.get(f"/tuner1/{item}", DEVICE, view) == "none"
    assert control.get("/tuner1/streaminfo", DEVICE, view) == "none\n"


def test_sys_items_lineup_scan_help_and_refusals() -> None:
    view = busy_view()
    features = control.get("/sys/features", DEVICE, view)
    assert features is not None and features.startswith("channelmap: ")
    assert control.get("/lineup/scan", DEVICE, view) == "state=complete progress=100% found=2"
    helptext = control.get("help", DEVICE, view) or ""
    assert "/tuner<n>/status" in helptext and "/sys/features" in helptext
    assert control.answer("/tuner2/status", False, DEVICE, view) == (None, control.UNKNOWN)  # 2 tuners
    value, error = control.answer("/tuner0/channel", True, DEVICE, view)
    assert value is None and error is not None and error.startswith("ERROR: read only")


def test_tuner_numbers_stay_while_a_stream_plays() -> None:
    slots = TunerSlots(2)

    def play(*keys: str) -> LiveView:
        return slots.view([Playing(k, k, k.upper(), "127.0.0.1", 1, 8) for k in keys], 0)

    assert [t.number for t in play("a").tuners] == ["a", None]
    assert [t.number for t in play("a", "b").tuners] == ["a", "b"]
    assert [t.number for t in play("b").tuners] == [None, "b"]  # b keeps tuner1 when a ends
    assert [t.number for t in play("b", "c", "d").tuners] == ["c", "b"]  # more than 2: d is not shown
