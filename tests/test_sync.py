"""Account sync against a fake Xtream panel on 127.0.0.1: login states, failures, M3U, XMLTV, redaction."""

from __future__ import annotations

import gzip
import logging
import threading
import time
import tracemalloc
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from relay.config import Config, parse
from relay.shell.app import Relay
from relay.sources.m3u import parse_m3u
from relay.sources.sync import channel_list, import_guide, run_sync, sync_once
from relay.sources.xtream import parse_user_info
from relay.storage.eventlog import EventLog
from relay.storage.store import Store
from tests.fake_xtream import PASSWORD, Account, FakeXtream, Stream
from tests.harness import read_events, request, until

GUIDE_XML = """<?xml version="1.0" encoding="ISO-8859-1"?>
<!DOCTYPE tv SYSTEM "xmltv.dtd">
<tv>
  <channel id="bbcone.uk"><display-name>BBC One</display-name><display-name>101</display-name></channel>
  <channel id="channel4.uk"><display-name>Channel 4</display-name></channel>
  <channel id="arte.fr"><display-name>ARTE Télé</display-name><icon src="http://img/arte.png"/></channel>
  <channel id="tf1.fr"><display-name>TF1</display-name></channel>
  <programme start="20240101120000 +0000" channel="arte.fr"><title>Café crème</title></programme>
</tv>
""".encode("iso-8859-1")

STREAMS = [
    Stream(11, "UK: BBC One FHD", "bbcone.uk", "1"),
    Stream(12, "UK: BBC One SD", None, "1"),
    Stream(13, "UK | Channel 4 HD", None, "1"),
    Stream(14, "FR: Arte Tele HD", None, "2"),
    Stream(15, "FR: TF1 4K", "TF1.fr", "2"),
    Stream(16, "24/7 Movies", None, "1"),
]


def secret_forms(password: str = PASSWORD) -> list[str]:
    return [password, urllib.parse.quote(password, safe=""), urllib.parse.quote_plus(password)]


def assert_clean(*texts: str | bytes) -> None:
    """Zero hits of the test password, raw or URL-quoted, in everything we produced."""
    for text in texts:
        blob = text if isinstance(text, str) else text.decode("utf-8", "replace")
        for form in secret_forms():
            assert form not in blob, f"password leaked: ...{blob[max(0, blob.find(form) - 80) :][:160]}..."


def db_bytes(tmp: Path) -> bytes:
    return b"".join(p.read_bytes() for p in tmp.glob("relay.db*"))


@pytest.fixture
def xt() -> Iterator[FakeXtream]:
    with FakeXtream(streams=list(STREAMS), xmltv=GUIDE_XML) as fake:
        yield fake


@pytest.fixture(autouse=True)
def all_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)
    return caplog


def make_cfg(
    tmp: Path,
    *fakes: FakeXtream,
    accounts: list[dict[str, Any]] | None = None,
    m3u: str | None = None,
    **extra: Any,
) -> Config:
    """Accounts p0, p1... on `fakes` (the first with `m3u:` when given), or `accounts` as they are."""
    accs = accounts or [
        {"name": f"p{i}", "url": f.url, "username": f.username, "password": f.password}
        for i, f in enumerate(fakes)
    ]
    if m3u is not None:
        accs[0]["m3u"] = m3u
    data = {
        "storage": {"database": str(tmp / "relay.db"), "events": str(tmp / "events.jsonl")},
        "server": {"host": "127.0.0.1", "port": 0},
        "discovery": {"udp": False},
        "accounts": accs,
        **extra,
    }
    return parse(data, base_dir=tmp)


def open_store(cfg: Config) -> Store:
    store = Store(cfg.path(cfg.storage.database))
    store.sync_config(cfg)
    return store


def order(store: Store, channel: str) -> list[str]:
    return [c.ref for c in store.candidates(channel)]


async def synced(cfg: Config, events: EventLog | None = None) -> Any:
    report = await sync_once(cfg, cfg.path(cfg.storage.database), events)
    assert report is not None
    return report


async def open_events(cfg: Config) -> EventLog:
    ev = EventLog(cfg.path(cfg.storage.events), cfg.path(cfg.storage.database))
    await ev.open()
    return ev


# ---- a working account ---------------------------------------------------------------------------


async def test_given_a_working_panel_when_synced_then_streams_guide_channels_and_mappings_are_imported(
    tmp_path: Path, xt: FakeXtream, all_logs: pytest.LogCaptureFixture
) -> None:
    xt.account = Account(max_connections="3", exp_date=str(int(time.time()) + 86400 * 30))
    cfg = make_cfg(tmp_path, xt)
    store = open_store(cfg)
    report = await synced(cfg)
    (acc,) = report.accounts
    assert (acc.state, acc.streams, acc.via, acc.max_connections) == ("ok", 6, "player_api", 3)
    rows = {s.stream_id: s for s in store.streams()}
    assert rows[12].epg_channel_id is None and rows[15].category == "FR" and rows[14].category == "FR"
    assert store.account_limits() == {"p0": 3}  # the panel's max_connections: the config left it unset
    assert order(store, "bbcone.uk") == ["p0/11", "p0/12"]  # by epg id, then by name; FHD before SD
    assert order(store, "channel4.uk") == ["p0/13"]
    assert order(store, "arte.fr") == ["p0/14"]  # accents and the country prefix do not count
    assert order(store, "tf1.fr") == ["p0/15"]  # epg ids match whatever their case
    assert report.mapping.unmapped_streams == 1 and report.guide.channels == 4
    names = {c.id: (c.name, c.number) for c in channel_list(cfg, store)}
    assert names["arte.fr"] == ("ARTE Télé", "1000") and names["bbcone.uk"] == ("BBC One", "1001")
    assert xt.count("login") == 1 and xt.count("get_live_streams") == 1
    assert_clean(all_logs.text, db_bytes(tmp_path), repr(report))
    store.close()


@pytest.mark.parametrize(
    ("info", "expected"),
    [
        ({"auth": 1, "status": "Active", "exp_date": None, "max_connections": "3"}, (True, None, 3, None)),
        ({"auth": "1", "status": "Active", "exp_date": "", "max_connections": 2}, (True, None, 2, None)),
        ({"auth": True, "exp_date": "4102444800", "max_connections": "2.0"}, (True, 4102444800, 2, None)),
        ({"auth": 1, "status": "Active", "exp_date": 1537821177}, (True, 1537821177, None, "expired")),
        ({"auth": 1, "status": "Banned", "exp_date": "null"}, (True, None, None, "banned")),
        ({"auth": 1, "status": "Disabled"}, (True, None, None, "disabled")),
        ({"auth": False}, (False, None, None, "unauthorised")),
        ({"auth": "0", "status": "Active"}, (False, None, None, "unauthorised")),
    ],
)
def test_given_type_drift_in_user_info_then_it_is_read_the_same(
    info: dict[str, Any], expected: tuple[Any, ...]
) -> None:
    u = parse_user_info({"user_info": info})
    assert (u.auth, u.exp_date, u.max_connections, u.problem(time.time())) == expected


async def test_given_max_connections_in_the_config_then_the_panels_value_does_not_replace_it(
    tmp_path: Path, xt: FakeXtream
) -> None:
    xt.account = Account(max_connections="4")
    cfg = make_cfg(
        tmp_path,
        accounts=[
            {"name": "p0", "url": xt.url, "username": xt.username, "password": PASSWORD, "max_connections": 1}
        ],
    )
    store = open_store(cfg)
    await synced(cfg)
    store.sync_config(cfg)  # a restart
    assert store.account_limits() == {"p0": 1}
    store.close()


# ---- accounts the panel refuses ------------------------------------------------------------------


@pytest.mark.parametrize("auth", [0, "0", False])
async def test_given_auth_failure_then_account_inactive_with_one_event_and_never_retried_in_a_loop(
    tmp_path: Path, xt: FakeXtream, all_logs: pytest.LogCaptureFixture, auth: Any
) -> None:
    cfg = make_cfg(tmp_path, xt)
    store = open_store(cfg)
    events = await open_events(cfg)
    await synced(cfg, events)  # a good import first
    assert order(store, "bbcone.uk") == ["p0/11", "p0/12"]
    xt.account = Account(auth=auth)  # HTTP 200 with auth 0: how panels say "bad credentials"
    for _ in range(2):
        report = await synced(cfg, events)
        assert report.accounts[0].state == "inactive" and report.accounts[0].reason == "unauthorised"
    store.sync_config(cfg)  # a restart does not bring it back before a sync says so
    assert order(store, "bbcone.uk") == []  # sessions skip the account
    assert store.stream_count("p0") == 6  # its last import is kept for the day it comes back
    assert xt.count("login") == 3 and xt.count("get_live_streams") == 1  # one login per sync, no loop
    xt.account = Account()
    await synced(cfg, events)
    assert order(store, "bbcone.uk") == ["p0/11", "p0/12"]
    await events.close()
    got = [(e["event"], e["category"], e.get("reason")) for e in read_events(tmp_path)]
    assert got == [("account_inactive", "provider", "unauthorised"), ("account_active", "provider", None)]
    assert_clean(all_logs.text, (tmp_path / "events.jsonl").read_bytes(), db_bytes(tmp_path))
    store.close()


@pytest.mark.parametrize(
    "account",
    [Account(status="Expired", exp_date="1537821177"), Account(status="Active", exp_date="1537821177")],
    ids=["status Expired", "exp_date in the past"],
)
async def test_given_an_expired_account_then_inactive_with_a_clear_event(
    tmp_path: Path, xt: FakeXtream, account: Account
) -> None:
    xt.account = account
    cfg = make_cfg(tmp_path, xt)
    store = open_store(cfg)
    events = await open_events(cfg)
    report = await synced(cfg, events)
    await events.close()
    assert report.accounts[0].detail == "expired (2018-09-24)"
    (ev,) = read_events(tmp_path)
    assert ev["event"] == "account_inactive" and ev["level"] == "warn" and ev["exp_date"] == "2018-09-24"
    assert ev["message"] == "account p0: expired; not used until a sync finds it usable again"
    assert store.accounts()[0]["is_active"] == 0 and xt.count("get_live_streams") == 0
    store.close()


# ---- a panel that is down keeps the last good import ---------------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "fault"),
    [
        ("login", "5xx"),
        ("login", "garbage"),
        ("get_live_streams", "5xx"),
        ("get_live_streams", "garbage"),
        ("get_live_streams", "empty"),
    ],
)
async def test_given_api_failure_then_the_last_good_import_is_kept_and_the_account_stays_active(
    tmp_path: Path, xt: FakeXtream, all_logs: pytest.LogCaptureFixture, endpoint: str, fault: Any
) -> None:
    cfg = make_cfg(tmp_path, xt)
    store = open_store(cfg)
    await synced(cfg)
    before = (store.streams(), store.mapped_streams())
    xt.faults[endpoint] = fault
    xt.streams = xt.streams[:1]  # were it read, the import would shrink
    report = await synced(cfg)
    assert report.accounts[0].state == "down" and report.accounts[0].streams == 6
    assert (store.streams(), store.mapped_streams()) == before
    assert order(store, "bbcone.uk") == ["p0/11", "p0/12"]
    warned = [r.getMessage() for r in all_logs.records if r.levelno == logging.WARNING]
    assert any("p0: API unusable, keeping the last 6 streams" in w for w in warned), warned
    assert_clean(all_logs.text, repr(report))
    store.close()


async def test_given_a_panel_without_player_api_and_no_m3u_then_one_line_and_the_others_still_sync(
    tmp_path: Path, xt: FakeXtream, all_logs: pytest.LogCaptureFixture
) -> None:
    with FakeXtream(faults={"login": "404", "xmltv.php": "404"}) as bare:
        cfg = make_cfg(tmp_path, bare, xt)
        open_store(cfg).close()
        report = await synced(cfg)
    assert [a.state for a in report.accounts] == ["no_api", "ok"]
    lines = [r.getMessage() for r in all_logs.records if "account p0" in r.getMessage()]
    assert len(lines) == 1 and "nothing imported" in lines[0], lines
    assert bare.count("login") == 1
    assert_clean(all_logs.text)


# ---- M3U -----------------------------------------------------------------------------------------


async def test_given_an_m3u_only_panel_then_get_php_m3u_plus_is_imported(
    tmp_path: Path, xt: FakeXtream, all_logs: pytest.LogCaptureFixture
) -> None:
    xt.faults["login"] = "404"  # player_api.php absent: only get.php
    cfg = make_cfg(tmp_path, xt, m3u="get.php")
    store = open_store(cfg)
    report = await synced(cfg)
    assert (report.accounts[0].state, report.accounts[0].via, report.accounts[0].streams) == ("ok", "m3u", 6)
    rows = {s.stream_id: s for s in store.streams()}
    assert (
        rows[15].epg_channel_id == "TF1.fr"
        and rows[15].category == "FR"
        and rows[14].name == "FR: Arte Tele HD"
    )
    assert order(store, "bbcone.uk") == ["p0/11", "p0/12"]
    assert_clean(all_logs.text, db_bytes(tmp_path), repr(report))
    store.close()


ODD_M3U = (
    '\ufeff#EXTM3U x-tvg-url="http://example/epg.xml"\r\n'
    '#EXTINF:-1 tvg-id = "bbcone.uk" tvg-name = \'UK: BBC One HD\' group-title="UK, General",'
    "UK: BBC One HD\r\n"
    "http://panel:8080/live/bob/pw/501.ts\r\n"
    '#EXTINF:-1 tvg-id="" tvg-logo="http://img/x.png",Arte Télé\r\n'
    "#EXTGRP:FR\r\n"
    "http://panel:8080/bob/pw/502\r\n"
    "\r\n"
    "#EXTINF:-1,Some web stream\r\n"
    "https://cdn.example/hls/master.m3u8\r\n"
    "#EXTINF:-1 tvg-id=tf1.fr group-title=FR,TF1\r\n"
    "http://panel:8080/live/bob/pw/503.m3u8\r\n"
    "#EXTINF:-1,A film\r\n"
    "http://panel:8080/movie/bob/pw/9.mkv\r\n"
)


def test_given_an_odd_m3u_then_attributes_titles_groups_and_stream_ids_are_read() -> None:
    entries = list(parse_m3u(ODD_M3U.splitlines()))
    got = [(e.stream_id, e.tvg_id, e.name, e.group, e.logo) for e in entries]
    assert got == [
        (501, "bbcone.uk", "UK: BBC One HD", "UK, General", None),
        (502, None, "Arte Télé", "FR", "http://img/x.png"),
        (None, None, "Some web stream", None, None),  # not an Xtream live URL
        (503, "tf1.fr", "TF1", "FR", None),
        (None, None, "A film", None, None),  # VOD, not live
    ]


async def test_given_an_m3u_file_in_latin_1_then_it_is_imported_beside_the_api(
    tmp_path: Path, xt: FakeXtream
):
    (tmp_path / "extra.m3u").write_bytes(
        ODD_M3U.encode("utf-8").replace("Télé".encode(), "Télé".encode("latin-1"))
    )
    cfg = make_cfg(tmp_path, xt, m3u="extra.m3u")
    store = open_store(cfg)
    report = await synced(cfg)
    # 6 from player_api + 4 from the M3U: the web stream (an HLS URL) plays at its own URL (issue 13);
    # the film is left out, and counted
    assert report.accounts[0].via == "player_api+m3u" and report.accounts[0].streams == 6 + 4
    assert report.accounts[0].skipped == {"vod_series": 1}
    assert {s.stream_id: s.name for s in store.streams()}[502] == "Arte Télé"
    store.close()


# ---- XMLTV ---------------------------------------------------------------------------------------


async def test_given_guides_in_odd_encodings_then_names_are_read_right(
    tmp_path: Path, xt: FakeXtream
) -> None:
    cp1252 = GUIDE_XML.replace(b"ISO-8859-1", b"windows-1252").replace(b"bbcone.uk", b"bbc1.uk")
    (tmp_path / "g1.xml.gz").write_bytes(
        gzip.compress(cp1252.replace(b"ARTE T\xe9l\xe9", b"ARTE \x80 T\xe9l\xe9"))
    )
    utf16 = GUIDE_XML.decode("iso-8859-1").replace("ISO-8859-1", "UTF-16").replace("tf1.fr", "tf1.xx")
    (tmp_path / "g2.xml").write_bytes(utf16.encode("utf-16"))
    cfg = make_cfg(tmp_path, xt, guide=[{"file": "g1.xml.gz"}, {"file": "g2.xml"}, {"file": "missing.xml"}])
    store = open_store(cfg)
    report = await synced(cfg)
    assert (report.guide.sources_ok, report.guide.sources) == (2, 3) and "missing.xml" in report.guide.errors[
        0
    ]
    names = {r.id: r.names for r in store.guide_channels()}
    assert names["arte.fr"] == ("ARTE € Télé",)  # the first source names a channel
    assert names["bbc1.uk"] == ("BBC One", "101") and "bbcone.uk" in names and "tf1.xx" in names
    store.close()


def write_big_guide(path: Path, channels: int, programmes_per_channel: int) -> None:
    desc = "Une émission d'une heure, avec des invités et des reportages. " * 4
    with path.open("w", encoding="iso-8859-1") as f:
        f.write('<?xml version="1.0" encoding="ISO-8859-1"?>\n<tv>\n')
        for c in range(channels):
            f.write(f'<channel id="ch{c}.x"><display-name>Chaîne {c}</display-name></channel>\n')
        for p in range(programmes_per_channel):
            start = f"202401{1 + p // 24:02d}{p % 24:02d}0000 +0000"
            for c in range(channels):
                f.write(
                    f'<programme start="{start}" channel="ch{c}.x"><title>Émission {p}</title>'
                    f"<desc>{desc}</desc></programme>\n"
                )
        f.write("</tv>\n")


def test_given_a_large_guide_then_it_is_streamed_in_little_memory(tmp_path: Path) -> None:
    path = tmp_path / "big.xml"
    write_big_guide(path, channels=300, programmes_per_channel=120)
    size = path.stat().st_size
    assert size > 10 << 20
    cfg = make_cfg(tmp_path, accounts=[], guide=[{"file": "big.xml"}])
    store = open_store(cfg)

    tracemalloc.start()
    try:
        res = import_guide(store, cfg, skip_accounts=set(), cancel=threading.Event(), progress=None)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert res.channels == 300 and res.sources_ok == 1
    assert peak < size / 20, f"peak {peak} bytes for a {size}-byte guide"
    store.close()


# ---- in the running relay ------------------------------------------------------------------------


async def test_given_serve_then_the_sync_runs_at_start_in_the_background_and_stops_with_the_relay(
    tmp_path: Path, xt: FakeXtream, all_logs: pytest.LogCaptureFixture
) -> None:
    cfg = make_cfg(tmp_path, xt)
    relay = Relay(cfg)
    await relay.start()
    store = relay.store
    try:
        assert relay.sync_task is not None and store is not None
        await until(lambda: len(channel_list(cfg, store)) == 4, timeout=10, what="guide channels served")
        assert order(store, "bbcone.uk") == ["p0/11", "p0/12"]
    finally:
        await relay.stop()
    assert relay.sync_task.done()
    xt.faults["login"] = "slow"  # the next start's sync hangs in a worker thread: stop must not wait for it
    relay = Relay(cfg)
    await relay.start()
    await until(lambda: xt.count("login") == 2, what="the second login")
    t0 = time.monotonic()
    await relay.stop()
    assert time.monotonic() - t0 < 1.0
    assert_clean(all_logs.text, (tmp_path / "events.jsonl").read_bytes(), db_bytes(tmp_path))


def test_given_the_sync_in_a_thread_then_it_uses_its_own_connection(tmp_path: Path, xt: FakeXtream) -> None:
    cfg = make_cfg(tmp_path, xt)
    store = open_store(cfg)
    report = run_sync(cfg, cfg.path(cfg.storage.database))
    assert report.accounts[0].state == "ok"
    assert order(store, "tf1.fr") == ["p0/15"]  # visible at once to the relay's own connection
    store.close()


async def test_given_a_sync_then_plex_sees_the_guide_channels_in_the_lineup_guide_and_stream_urls(
    tmp_path: Path, xt: FakeXtream
) -> None:
    """The synced channels are servable: lineup, /xmltv.xml and /auto/v{number} all know them."""
    cfg = make_cfg(tmp_path, xt)
    relay = Relay(cfg)
    await relay.start()
    try:
        await until(lambda: len(relay.channels) == 4, timeout=10, what="synced channels in the lineup")
        raw = await request(
            relay.port, b"GET /lineup.json HTTP/1.1\r\nHost: tv:5004\r\nConnection: close\r\n\r\n"
        )
        lineup = orjson.loads(raw.partition(b"\r\n\r\n")[2])
        assert {e["GuideName"] for e in lineup} >= {"BBC One", "ARTE Télé"}
        bbc = next(e for e in lineup if e["GuideName"] == "BBC One")
        assert bbc["URL"] == "http://tv:5004/auto/v1001"
        await until(
            lambda: b"1001.relay" in (relay.guide.path() or Path("/dev/null")).read_bytes(), what="guide"
        )
        # the panel serves no live TS here: the channel is known (not 404), its streams fail (503 807)
        raw = await request(relay.port, b"GET /auto/v1001 HTTP/1.1\r\nHost: tv\r\n\r\n")
        assert raw.startswith(b"HTTP/1.1 503") and b"807 No Video Data" in raw
        assert xt.count("login") >= 1
    finally:
        await relay.stop()


async def test_given_the_panel_reports_connections_we_do_not_hold_then_those_slots_are_not_used(
    tmp_path: Path, xt: FakeXtream
) -> None:
    """Slots are reconciled with user_info.active_cons at each sync: another device on the line counts."""
    xt.account = Account(max_connections="2", active_cons="1")
    cfg = make_cfg(tmp_path, xt)
    relay = Relay(cfg)
    await relay.start()
    try:
        assert relay.shared is not None
        slots = relay.shared.slots
        await until(lambda: slots.external.get("p0") == 1, timeout=10, what="active_cons reconciled")
        assert slots.limits["p0"] == 2 and slots.free("p0") == 1
    finally:
        await relay.stop()
