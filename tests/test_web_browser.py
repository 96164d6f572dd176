"""The web page in a real browser (headless Chromium): what an operator does, and what must not happen.

Log in; see a watched channel's current stream; watch it change during a real failover without a
reload; reorder a channel's streams and see the next tune try them in that order (the provider's
request log); a stream named `<img src=x onerror=alert(1)>` stays text; a change without the session
or the CSRF token is refused.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from tests import fake_provider as fp
from tests.browser import screenshot, wait_for
from tests.fake_provider import FakeProvider
from tests.harness import config_for, open_stream, running_relay, until
from tests.web_client import PASSWORD, with_ui

HOSTILE = "<img src=x onerror=alert(1)>"


def by_css(driver: Any, css: str) -> Any:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, css)


def all_css(driver: Any, css: str) -> list[Any]:
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, css)


def text_of(driver: Any, css: str) -> str | None:
    """The first match's text; None while there is none (or the live feed re-rendered it meanwhile)."""
    from selenium.common.exceptions import StaleElementReferenceException

    try:
        found = all_css(driver, css)
        return found[0].text if found else None
    except StaleElementReferenceException:
        return None


def log_in(driver: Any, port: int) -> None:
    driver.delete_all_cookies()
    driver.get(f"http://127.0.0.1:{port}/ui")
    wait_for(driver, lambda d: by_css(d, "#login").is_displayed(), what="the login form")
    by_css(driver, "#password").send_keys(PASSWORD)
    by_css(driver, "#login-button").click()
    wait_for(driver, lambda d: by_css(d, "#status").is_displayed(), what="the status tab")
    wait_for(driver, lambda d: text_of(d, "#live") == "live", what="the live feed")


def no_alert(driver: Any) -> bool:
    from selenium.common.exceptions import NoAlertPresentException

    try:
        driver.switch_to.alert  # noqa: B018 - raises when there is none
    except NoAlertPresentException:
        return True
    return False


async def test_log_in_see_the_current_stream_and_watch_a_failover_without_reloading(
    chromium: Any, provider: FakeProvider, tmp_path: Path
):
    d = chromium
    cfg = with_ui(config_for(tmp_path, provider, {"bbcone": [("a", 1), ("b", 2)]}, stall_timeout_s=1.0))
    async with running_relay(cfg, tmp_path) as relay:
        c = await open_stream(relay.port, "/stream/bbcone")
        await c.wait_bytes(50_000)
        await asyncio.to_thread(log_in, d, relay.port)
        row = 'tr[data-channel="bbcone"]'
        await asyncio.to_thread(
            wait_for, d, lambda d: text_of(d, f"{row} td.stream") == "a/1", 10, "the current stream a/1"
        )
        assert await asyncio.to_thread(text_of, d, f"{row} td.account") == "a"
        assert "1" in (await asyncio.to_thread(text_of, d, f"{row} td.viewers") or "")
        await asyncio.to_thread(d.execute_script, "window.__same_page = 'yes'")
        provider.stall(1)
        await asyncio.to_thread(
            wait_for, d, lambda d: text_of(d, f"{row} td.stream") == "b/2", 10, "the backup b/2, live"
        )
        assert await asyncio.to_thread(d.execute_script, "return window.__same_page") == "yes"  # no reload
        assert await asyncio.to_thread(text_of, d, f"{row} td.failovers") == "1"
        last = await asyncio.to_thread(text_of, d, f"{row} td.last-failover")
        assert last.startswith("a/1 → b/2, StreamStall")
        await asyncio.to_thread(screenshot, d, "ui-status.png", tmp_path)
        await asyncio.to_thread(by_css(d, '#tabs button[data-tab="timeline"]').click)
        what = await asyncio.to_thread(
            wait_for, d, lambda d: text_of(d, 'tr[data-event="failover"] td.what'), 10, "the timeline row"
        )
        assert what.startswith("a/1 → b/2, StreamStall,") and what.endswith(" ms")
        await asyncio.to_thread(screenshot, d, "ui-timeline.png", tmp_path)
        await c.close()


def reorder_in_page(d: Any, port: int) -> str:
    log_in(d, port)
    by_css(d, '#tabs button[data-tab="channels"]').click()
    wait_for(d, lambda d: all_css(d, '#channel-table tr[data-id="ch1"]'), what="the channel list")
    by_css(d, '#channel-table tr[data-id="ch1"]').click()
    wait_for(d, lambda d: len(all_css(d, "#d-streams li")) == 3, what="the channel's streams")
    order = [li.get_attribute("data-stream") for li in all_css(d, "#d-streams li")]
    assert order == ["a/1", "b/2", "c/3"], order
    by_css(d, '#d-streams li[data-stream="c/3"] button.up').click()  # c/3 before b/2
    by_css(d, '#d-streams li[data-stream="c/3"] button.up').click()  # and before a/1
    by_css(d, "#d-order-save").click()
    wait_for(d, lambda d: "Order saved" in (text_of(d, "#d-message") or ""), what="the saved order")
    wait_for(
        d,
        lambda d: (
            [li.get_attribute("data-stream") for li in all_css(d, "#d-streams li")] == ["c/3", "a/1", "b/2"]
        ),
        what="the order as the relay has it now",
    )
    by_css(d, "#d-find").send_keys("alpha")
    wait_for(d, lambda d: len(all_css(d, "#d-found li")) == 3, what="the stream search")
    return by_css(d, "#d-message").text


async def test_reorder_a_channels_streams_and_the_next_tune_tries_them_in_that_order(
    chromium: Any, provider: FakeProvider, tmp_path: Path
):
    cfg = with_ui(config_for(tmp_path, provider, {"ch1": []}))
    async with running_relay(cfg, tmp_path) as relay:
        for acc, sid, name in (("a", 1, "Alpha HD"), ("b", 2, "Alpha SD"), ("c", 3, "Alpha 4K")):
            relay.store.import_streams(acc, [(sid, name, None, "UK", None)])
            relay.store.map_manual("ch1", acc, sid, sid - 1)
        c = await open_stream(relay.port, "/stream/ch1")  # the tune before: a/1 first
        await c.wait_bytes(10_000)
        assert provider.requests[0][0].endswith("/1.ts")
        await c.close()
        await until(lambda: not relay.sessions, what="the first session to end")
        await asyncio.to_thread(reorder_in_page, chromium, relay.port)
        await asyncio.to_thread(screenshot, chromium, "ui-channels.png", tmp_path)
        assert [x.ref for x in relay.store.candidates("ch1")] == ["c/3", "a/1", "b/2"]
        before = len(provider.requests)
        provider.set(3, fp.status(503))  # c/3 fails
        c = await open_stream(relay.port, "/stream/ch1")
        await c.wait_bytes(10_000)
        tried = [target.rsplit("/", 1)[-1] for target, _ in provider.requests[before:]]
        assert tried[:2] == ["3.ts", "1.ts"], tried  # the new order: c/3, then a/1
        await c.close()


def hostile_checks(d: Any, port: int) -> list[str]:
    log_in(d, port)
    wait_for(d, lambda d: all_css(d, 'tr[data-channel="ch1"] td.channel'), what="the session row")
    seen = [by_css(d, 'tr[data-channel="ch1"] td.channel').text]
    by_css(d, '#tabs button[data-tab="channels"]').click()
    wait_for(d, lambda d: all_css(d, '#channel-table tr[data-id="ch1"]'), what="the channel list")
    seen.append(by_css(d, '#channel-table tr[data-id="ch1"]').text)
    by_css(d, '#channel-table tr[data-id="ch1"]').click()
    wait_for(d, lambda d: all_css(d, "#d-streams li .sname"), what="the streams")
    seen.append(by_css(d, "#d-streams li .sname").text)
    seen.append(by_css(d, "#d-name").text)
    by_css(d, "#d-find").send_keys("onerror")
    wait_for(d, lambda d: all_css(d, "#d-found li .sname"), what="the search result")
    seen.append(by_css(d, "#d-found li .sname").text)
    assert d.execute_script("return document.images.length") == 0  # no <img> was ever made
    assert d.execute_script("return document.querySelectorAll('[onerror]').length") == 0
    assert no_alert(d)
    return seen


async def test_a_hostile_stream_name_renders_as_text_and_runs_nothing(
    chromium: Any, provider: FakeProvider, tmp_path: Path
):
    cfg = with_ui(config_for(tmp_path, provider, {"ch1": []}))
    cfg["channels"][0]["name"] = HOSTILE
    async with running_relay(cfg, tmp_path) as relay:
        relay.store.import_streams("a", [(1, HOSTILE, None, HOSTILE, None)])
        relay.store.map_manual("ch1", "a", 1, 0)
        c = await open_stream(relay.port, "/stream/ch1")
        await c.wait_bytes(10_000)
        seen = await asyncio.to_thread(hostile_checks, chromium, relay.port)
        assert seen[0].startswith(HOSTILE) and HOSTILE in seen[1] and seen[2:] == [HOSTILE] * 3
        logs = await asyncio.to_thread(chromium.get_log, "browser")
        assert not [x for x in logs if "x" in x["message"] and "404" in x["message"]]  # src=x never loaded
        await c.close()


FETCH = """
const [path, body, csrf, done] = arguments;
const headers = {"Content-Type": "application/json"};
if (csrf) headers["X-CSRF-Token"] = csrf;
fetch(path, {method: "POST", headers, body: JSON.stringify(body), credentials: "same-origin"})
  .then((r) => done(r.status), (e) => done(String(e)));
"""


def forged_requests(d: Any, port: int) -> dict[str, int]:
    log_in(d, port)
    change = {"channel": "ch1", "stream": "a/1", "priority": 0}
    csrf = d.execute_async_script(
        "const done = arguments[0]; fetch('/ui/api/session').then((r) => r.json()).then((j) => done(j.csrf));"
    )
    out = {
        "no_csrf": d.execute_async_script(FETCH, "/ui/api/channels/map", change, None),
        "wrong_csrf": d.execute_async_script(FETCH, "/ui/api/channels/map", change, "not-the-token"),
        "with_csrf": d.execute_async_script(FETCH, "/ui/api/channels/map", change, csrf),
    }
    d.delete_all_cookies()
    out["no_session"] = d.execute_async_script(FETCH, "/ui/api/channels/unmap", change, csrf)
    return out


async def test_a_change_without_the_session_or_the_csrf_token_is_refused_in_the_browser(
    chromium: Any, provider: FakeProvider, tmp_path: Path
):
    cfg = with_ui(config_for(tmp_path, provider, {"ch1": []}))
    async with running_relay(cfg, tmp_path) as relay:
        relay.store.import_streams("a", [(1, "Alpha", None, None, None)])
        got = await asyncio.to_thread(forged_requests, chromium, relay.port)
        assert got == {"no_csrf": 403, "wrong_csrf": 403, "with_csrf": 200, "no_session": 401}
        assert [(s.account, s.stream_id) for s in relay.store.mapped_streams("ch1")] == [("a", 1)]
