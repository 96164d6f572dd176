"""The web page's API on a real relay over real sockets: login, CSRF, the channel editor, sync, live feed."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import orjson

from relay.sources.sync import remap
from tests.fake_provider import FakeProvider
from tests.fake_xtream import PASSWORD as XT_PASSWORD
from tests.fake_xtream import FakeXtream, Stream
from tests.harness import config_for, open_stream, running_relay, until
from tests.web_client import PASSWORD, TOKEN, UiClient, http, with_ui

NAMED = [
    (1, "Alpha HD", None, "UK", None),
    (2, "Alpha SD", None, "UK", None),
    (3, "Alpha 4K", None, "UK", None),
]


def seed(relay, streams=NAMED, accounts=("a", "b", "c")) -> None:
    """Named provider streams, as a sync would have imported them (a/1, b/2, c/3 by default)."""
    for acc, row in zip(accounts, streams, strict=False):
        relay.store.import_streams(acc, [row])


def no_secrets(bodies, *secrets: str) -> None:
    for b in bodies:
        text = b.decode("utf-8", "replace")
        for s in (*secrets, "/live/"):
            assert s not in text, f"{s!r} reached the page: {text[:300]}"


async def test_the_page_and_its_files_are_served_with_a_strict_policy(provider: FakeProvider, tmp_path: Path):
    cfg = with_ui(config_for(tmp_path, provider, {"ch1": [("a", 1)]}))
    async with running_relay(cfg, tmp_path) as relay:
        page = await http(relay.port, "GET", "/ui")
        assert page.status == 200 and b'<script src="/ui/static/app.js"' in page.body
        csp = page.header("content-security-policy") or ""
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
        assert page.header("x-content-type-options") == "nosniff"
        js = await http(relay.port, "GET", "/ui/static/app.js")
        assert js.status == 200 and js.header("content-type").startswith("text/javascript")
        assert (
            b"innerHTML" not in js.body
            and b"outerHTML" not in js.body
            and b"insertAdjacentHTML" not in js.body
        )
        for bad in ("/ui/static/../api.py", "/ui/static/index.htm", "/ui/nothing", "/ui/api/nothing"):
            assert (await http(relay.port, "GET", bad)).status in (401, 404), bad
        assert (await http(relay.port, "DELETE", "/ui/api/status")).status == 405


async def test_reads_need_a_login_unless_public_status_and_then_without_addresses(
    provider: FakeProvider, tmp_path: Path
):
    base = config_for(tmp_path, provider, {"ch1": [("a", 1)]})
    async with running_relay(with_ui(base), tmp_path) as relay:
        for path in ("status", "events", "channels", "streams", "sync", "live"):
            assert (await http(relay.port, "GET", f"/ui/api/{path}")).status == 401, path
        info = (await http(relay.port, "GET", "/ui/api/session")).json()
        assert info == {"logged_in": False, "csrf": None, "public_status": False, "login_configured": True}
    async with running_relay(with_ui(base, public_status=True), tmp_path) as relay:
        c = await open_stream(relay.port, "/stream/ch1")
        await c.wait_bytes(10_000)
        st = await http(relay.port, "GET", "/ui/api/status")
        assert st.status == 200
        (s,) = st.json()["sessions"]
        assert s["stream"] == "a/1" and s["viewers"] == 1 and s["addresses"] is None
        assert (await http(relay.port, "GET", "/ui/api/events")).status == 200
        assert (await http(relay.port, "GET", "/ui/api/channels")).status == 401  # the editor stays closed
        ui = UiClient(relay.port)
        await ui.login()
        (s,) = (await ui.get("/ui/api/status")).json()["sessions"]
        assert s["addresses"] == ["127.0.0.1"]
        await c.close()


async def test_login_sets_a_strict_cookie_and_failed_logins_are_rate_limited(
    provider: FakeProvider, tmp_path: Path
):
    cfg = with_ui(config_for(tmp_path, provider, {"ch1": [("a", 1)]}), login_attempts=3)
    async with running_relay(cfg, tmp_path) as relay:
        ui = UiClient(relay.port)
        r = await ui.login()
        assert r.status == 200
        cookie = r.header("set-cookie")
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/ui" in cookie
        assert PASSWORD not in r.body.decode()
        info = (await ui.get("/ui/api/session")).json()
        assert info["logged_in"] and info["csrf"] == ui.csrf
        assert (await UiClient(relay.port).login(TOKEN)).status == 200  # the API token logs in too
        bad = UiClient(relay.port)
        assert [(await bad.login("wrong")).status for _ in range(3)] == [401, 401, 401]
        limited = await bad.login(PASSWORD)  # even the right one, until the window passes
        assert limited.status == 429 and int(limited.header("retry-after")) > 0
        # the session already made still works; logging out ends it
        assert (await ui.get("/ui/api/status")).status == 200
        assert (await ui.post("/ui/api/logout", {})).status == 200
        assert (await ui.get("/ui/api/status")).status == 401


async def test_a_change_without_the_session_or_the_csrf_token_is_refused(
    provider: FakeProvider, tmp_path: Path
):
    cfg = with_ui(config_for(tmp_path, provider, {"ch1": []}))
    async with running_relay(cfg, tmp_path) as relay:
        seed(relay)
        change = {"channel": "ch1", "stream": "a/1", "priority": 0}
        anon = UiClient(relay.port)
        assert (await anon.post("/ui/api/channels/map", change)).status == 401
        ui = UiClient(relay.port)
        await ui.login()
        assert (await ui.post("/ui/api/channels/map", change, csrf=False)).status == 403
        ui_wrong = UiClient(relay.port, cookie=ui.cookie, csrf="forged")
        assert (await ui_wrong.post("/ui/api/channels/map", change)).status == 403
        form = await http(
            relay.port,
            "POST",
            "/ui/api/channels/map",
            raw_body=b"channel=ch1&stream=a/1",
            headers={"Cookie": f"relay_ui={ui.cookie}", "X-CSRF-Token": ui.csrf,
                     "Content-Type": "application/x-www-form-urlencoded"},
        )  # fmt: skip
        assert form.status == 415
        cross = await http(
            relay.port,
            "POST",
            "/ui/api/channels/map",
            body=change,
            headers={
                "Cookie": f"relay_ui={ui.cookie}",
                "X-CSRF-Token": ui.csrf,
                "Origin": "http://evil.example",
            },
        )
        assert cross.status == 403
        assert relay.store.mapped_streams("ch1") == []  # none of those changed anything
        bearer = await http(
            relay.port,
            "POST",
            "/ui/api/channels/map",
            body=change,
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        assert bearer.status == 200
        wrong = await http(
            relay.port, "POST", "/ui/api/channels/map", body=change, headers={"Authorization": "Bearer nope"}
        )
        assert wrong.status == 401
        assert (await ui.post("/ui/api/channels/map", change)).status == 200
        assert [(s.account, s.stream_id, s.source) for s in relay.store.mapped_streams("ch1")] == [
            ("a", 1, "manual")
        ]
        big = await http(relay.port, "POST", "/ui/api/login", raw_body=b"{" + b" " * 20000 + b"}",
                         headers={"Content-Type": "application/json"})  # fmt: skip
        assert big.status == 413


async def test_map_reorder_unmap_follow_relay_maps_rules_and_the_next_tune_uses_the_order(
    provider: FakeProvider, tmp_path: Path
):
    cfg = with_ui(config_for(tmp_path, provider, {"ch1": [], "cfg": [("a", 9)]}))
    async with running_relay(cfg, tmp_path) as relay:
        seed(relay)
        ui = UiClient(relay.port)
        await ui.login()
        for prio, ref in enumerate(["a/1", "b/2", "c/3"]):
            r = await ui.post("/ui/api/channels/map", {"channel": "ch1", "stream": ref, "priority": prio})
            assert r.status == 200, r.body
        for bad, why in [
            ({"channel": "ch1", "stream": "zz/1"}, "unknown account"),
            ({"channel": "nope", "stream": "a/1"}, "unknown channel"),
            ({"channel": "ch1", "stream": "a/x"}, "ACCOUNT/STREAM_ID"),
            ({"channel": "ch1", "stream": "a/1", "priority": -1}, "priority"),
            ({"channel": "cfg", "stream": "a/9"}, "config file"),
        ]:
            r = await ui.post("/ui/api/channels/map", bad)
            assert r.status == 400 and why in r.json()["error"], (bad, r.body)
        chans = {c["id"]: c for c in (await ui.get("/ui/api/channels")).json()["channels"]}
        assert chans["ch1"]["streams"] == 3 and chans["cfg"]["from"] == "config"
        one = (await ui.get("/ui/api/channel?id=ch1")).json()["streams"]
        assert [s["stream"] for s in one] == ["a/1", "b/2", "c/3"]
        assert (one[0]["name"], one[0]["quality"], one[0]["source"]) == ("Alpha HD", "HD", "manual")
        assert (await ui.get("/ui/api/channel?id=nope")).status == 400

        r = await ui.post("/ui/api/channels/order", {"channel": "ch1", "streams": ["c/3", "a/1", "b/2"]})
        assert r.status == 200 and r.json()["streams"] == ["c/3", "a/1", "b/2"]
        assert [c.ref for c in relay.store.candidates("ch1")] == ["c/3", "a/1", "b/2"]
        remap(relay.store, relay.cfg)  # a sync's mapping step keeps manual mappings as they are
        assert [c.ref for c in relay.store.candidates("ch1")] == ["c/3", "a/1", "b/2"]
        r = await ui.post("/ui/api/channels/order", {"channel": "ch1", "streams": ["c/3", "a/1"]})
        assert r.status == 400 and "exactly once" in r.json()["error"]

        before = len(provider.requests)
        c = await open_stream(relay.port, "/stream/ch1")
        await c.wait_bytes(10_000)
        first = provider.requests[before][0]
        assert first.endswith("/3.ts"), provider.requests[before:]
        await c.close()

        r = await ui.post("/ui/api/channels/unmap", {"channel": "ch1", "stream": "c/3"})
        assert r.status == 200 and r.json()["removed"] == "manual"
        assert [c.ref for c in relay.store.candidates("ch1")] == ["a/1", "b/2"]
        assert ("ch1", "c", 3) in relay.store.blocks()  # a sync will not map it again
        r = await ui.post("/ui/api/channels/unmap", {"channel": "cfg", "stream": "a/9"})
        assert r.status == 400 and "config file" in r.json()["error"]
        no_secrets(ui.seen, provider.password, provider.username)


async def test_disable_and_number_change_the_lineup(provider: FakeProvider, tmp_path: Path):
    cfg = with_ui(config_for(tmp_path, provider, {"ch1": [("a", 1)]}))
    async with running_relay(cfg, tmp_path) as relay:
        relay.store.conn.execute(
            "INSERT INTO xmltv_channels (id, display_name, number, served)"
            " VALUES ('bbc.uk', 'BBC One', '1000', 1)"
        )
        relay._load_channels()
        ui = UiClient(relay.port)
        await ui.login()

        async def lineup() -> dict[str, str]:
            return {
                c["GuideName"]: c["GuideNumber"]
                for c in (await http(relay.port, "GET", "/lineup.json")).json()
            }

        assert await lineup() == {"CH1": "100", "BBC One": "1000"}
        assert (
            await ui.post("/ui/api/channels/number", {"channel": "bbc.uk", "number": "1001"})
        ).status == 200
        assert (await lineup())["BBC One"] == "1001"
        r = await ui.post("/ui/api/channels/number", {"channel": "bbc.uk", "number": "100"})
        assert r.status == 400 and "taken by ch1" in r.json()["error"]
        r = await ui.post("/ui/api/channels/number", {"channel": "ch1", "number": "5"})
        assert r.status == 400 and "config file" in r.json()["error"]
        assert (await ui.post("/ui/api/channels/number", {"channel": "bbc.uk", "number": "x1"})).status == 400

        assert (await ui.post("/ui/api/channels/enabled", {"channel": "ch1", "enabled": False})).status == 200
        assert await lineup() == {"BBC One": "1001"}
        assert (await http(relay.port, "GET", "/stream/ch1")).status == 404
        chans = {c["id"]: c for c in (await ui.get("/ui/api/channels")).json()["channels"]}
        assert chans["ch1"]["enabled"] is False  # the page still lists it, to turn it back on
        assert (await ui.post("/ui/api/channels/enabled", {"channel": "ch1", "enabled": True})).status == 200
        assert "CH1" in await lineup()
        assert (await ui.post("/ui/api/channels/enabled", {"channel": "ch1", "enabled": "yes"})).status == 400


async def test_stream_search_over_20000_streams_is_paged_and_fast(provider: FakeProvider, tmp_path: Path):
    cfg = with_ui(config_for(tmp_path, provider, {"ch1": [("a", 1)]}))
    async with running_relay(cfg, tmp_path) as relay:
        rows = [(i, f"{'UK' if i % 2 else 'FR'}: Channel {i} HD", None, "Group", None) for i in range(20_000)]
        relay.store.import_streams("a", rows)
        ui = UiClient(relay.port)
        await ui.login()
        t0 = time.perf_counter()
        r = (await ui.get("/ui/api/streams?q=uk%3A+channel+1&limit=50")).json()
        took = time.perf_counter() - t0
        assert r["total"] == sum(1 for i in range(1, 20_000, 2) if str(i).startswith("1"))
        assert len(r["streams"]) == 50 and all(s["name"].startswith("UK: Channel 1") for s in r["streams"])
        assert took < 1.0, took  # ~20 ms alone; generous for a loaded machine
        page2 = (await ui.get("/ui/api/streams?q=uk%3A+channel+1&limit=50&offset=50")).json()["streams"]
        assert not {s["stream"] for s in page2} & {s["stream"] for s in r["streams"]}
        assert (await ui.get("/ui/api/streams?q=100%25")).json()["total"] == 0  # % is literal
        assert (await ui.get("/ui/api/streams?q=a/1234")).json()["streams"][0]["stream"] == "a/1234"


async def test_a_sync_from_the_page_reports_accounts_and_skipped_streams_without_secrets(
    provider: FakeProvider, tmp_path: Path
):
    streams = [Stream(11, "UK: BBC One FHD", "bbcone.uk"), Stream(16, "24/7 Movies", None)]
    guide = b'<tv><channel id="bbcone.uk"><display-name>BBC One</display-name></channel></tv>'
    with FakeXtream(streams=streams, xmltv=guide) as xt:
        cfg = with_ui(config_for(tmp_path, provider, {"ch1": [("a", 1)]}))
        cfg["accounts"].append(
            {"name": "xt", "url": xt.url, "username": xt.username, "password": xt.password}
        )
        async with running_relay(cfg, tmp_path) as relay:
            ui = UiClient(relay.port)
            await ui.login()
            assert (await ui.get("/ui/api/sync")).json() == {"running": False, "report": None}
            assert (await ui.post("/ui/api/sync", {})).json()["running"] is True

            async def report():
                return (await ui.get("/ui/api/sync")).json()

            for _ in range(200):
                r = await report()
                if r["report"] is not None and not r["running"]:
                    break
                await asyncio.sleep(0.05)
            rep = r["report"]
            assert rep["by"] == "page"
            states = {a["name"]: a["state"] for a in rep["accounts"]}
            assert states["xt"] == "ok"
            assert rep["mapping"]["served"] == 1  # BBC One, from the guide
            assert [s["stream"] for s in rep["unmapped"]["streams"]] == ["xt/16"]  # the skipped one
            st = (await ui.get("/ui/api/status")).json()
            assert st["last_sync"]["accounts"]["xt"] == "ok"
            acc = {a["name"]: a for a in st["accounts"]}["xt"]
            assert acc["active"] and acc["max_connections"] == 2  # the panel's, the config sets none
            assert any(c["id"] == "bbcone.uk" for c in (await ui.get("/ui/api/channels")).json()["channels"])
            no_secrets(ui.seen, XT_PASSWORD, xt.username, provider.password)


async def test_the_live_feed_pushes_events_and_status_to_every_viewer(provider: FakeProvider, tmp_path: Path):
    cfg = with_ui(config_for(tmp_path, provider, {"ch1": [("a", 1), ("b", 2)]}, stall_timeout_s=1.0))
    async with running_relay(cfg, tmp_path) as relay:
        ui = UiClient(relay.port)
        await ui.login()
        feeds = []
        for _ in range(3):
            reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
            writer.write(
                f"GET /ui/api/live HTTP/1.1\r\nHost: x\r\nCookie: relay_ui={ui.cookie}\r\n\r\n".encode()
            )
            head = await reader.readuntil(b"\r\n\r\n")
            assert b"200 OK" in head and b"text/event-stream" in head
            feeds.append((reader, writer))
        await until(lambda: len(relay.ui.feed.viewers) == 3, what="viewers")

        async def next_message(reader, kind: str) -> dict:
            while True:
                block = (await asyncio.wait_for(reader.readuntil(b"\n\n"), 10)).decode()
                lines = dict(line.split(": ", 1) for line in block.strip().split("\n") if ": " in line)
                if lines.get("event") == kind:
                    return orjson.loads(lines["data"])

        for reader, _ in feeds:
            assert (await next_message(reader, "status"))["sessions"] == []
        c = await open_stream(relay.port, "/stream/ch1")
        await c.wait_bytes(50_000)
        provider.stall(1)  # a real failover, a/1 -> b/2
        for reader, _ in feeds:
            e = await next_message(reader, "event")
            while e["event"] != "failover":
                e = await next_message(reader, "event")
            assert (e["from_stream"], e["to_stream"], e["reason"]) == ("a/1", "b/2", "StreamStall")
            st = await next_message(reader, "status")
            assert st["sessions"][0]["stream"] == "b/2" and st["sessions"][0]["failovers"] == 1
        built = relay.ui.feed.pushed
        await asyncio.sleep(relay.cfg.ui.status_interval_s * 1.5)
        assert relay.ui.feed.pushed - built <= 2  # one snapshot per interval for all viewers, not one each
        for _, writer in feeds:
            writer.close()
        await until(lambda: not relay.ui.feed.viewers, what="viewers gone")
        await c.close()


def test_relay_ui_hash_prints_a_hash_the_config_takes_and_never_the_secret(tmp_path: Path):
    import subprocess
    import sys

    from relay.config import parse
    from relay.web.auth import verify_secret

    root = Path(__file__).resolve().parent.parent
    r = subprocess.run([sys.executable, "-m", "relay", "ui-hash"], input="s3cret pass\n", capture_output=True,
                       text=True, cwd=root, timeout=60)  # fmt: skip
    assert r.returncode == 0 and "s3cret" not in r.stdout + r.stderr
    h = r.stdout.strip()
    assert verify_secret("s3cret pass", h) and parse({"ui": {"password": h}}).ui.password == h
    t = subprocess.run([sys.executable, "-m", "relay", "ui-hash", "--token"], capture_output=True, text=True,
                       cwd=root, timeout=60)  # fmt: skip
    token = t.stderr.rsplit(": ", 1)[1].strip()
    assert len(token) >= 40 and verify_secret(token, t.stdout.strip()) and token not in t.stdout
    empty = subprocess.run([sys.executable, "-m", "relay", "ui-hash"], input="\n", capture_output=True,
                           text=True, cwd=root, timeout=60)  # fmt: skip
    assert empty.returncode == 2 and "give a password" in empty.stderr
