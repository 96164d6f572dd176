"""The web page's two costs (issue 19): rendering 5,000 channels, and the live feed at 200 viewers.

Both run against `python -m relay serve` as a user runs it (its own process, 127.0.0.1, the fake
provider of tests/ in this process).

- ``render``: a relay with N channels (default 5,000) of 3 streams each, as a sync of a big provider
  leaves them (guide channels, automatic mappings, seeded into the database before the start).
  Headless Chromium (Debian's, through selenium, as in tests/test_web_browser.py) logs in, then
  loads ``/ui#channels`` R times; each figure is the time from the navigation's start to the first frame
  after the channel table was built (fetch + JSON + DOM + layout + paint; the page marks it in
  ``body.dataset.channelsPainted``). Target: median < 1000 ms.
- ``feed``: one channel streaming to one client, with a failover every few seconds (drop the current
  stream at the provider: an event, a status push), for T seconds without any live-feed viewer, then
  T seconds with V viewers (default 200) of ``/ui/api/live``, then T seconds without again. The
  relay's CPU (utime + stime from /proc) in each phase; the feed's cost is the phase with viewers
  minus the mean of the two without, as % of one core. Target: < 1 %. The viewers count the events
  and status messages they got, so the phase is known to have fed them.

    python -m bench.ui [--channels 5000] [--renders 5] [--viewers 200] [--seconds 30] [--only render|feed]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from relay.config import parse  # noqa: E402
from relay.storage.store import Store  # noqa: E402
from tests.browser import have_browser, start_chromium, wait_for  # noqa: E402
from tests.fake_provider import FakeProvider  # noqa: E402
from tests.harness import config_for, open_stream, serve_process  # noqa: E402
from tests.media import make_ts  # noqa: E402
from tests.web_client import PASSWORD, UiClient, with_ui  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


async def start(tmp: Path, cfg: dict[str, Any]) -> tuple[asyncio.subprocess.Process, int]:
    cfg["server"]["host"] = "127.0.0.1"
    (tmp / "config.yaml").write_text(yaml.safe_dump(cfg))
    return await serve_process(tmp / "config.yaml", tmp / "relay.log")


async def stop(proc: asyncio.subprocess.Process) -> None:
    proc.terminate()
    try:
        await asyncio.wait_for(proc.wait(), 20)
    except TimeoutError:
        proc.kill()
        await proc.wait()


# ---- render -----------------------------------------------------------------------------------------


def _renders(port: int, n: int, last: str) -> tuple[list[tuple[float, str]], float]:
    profile = Path(tempfile.mkdtemp(prefix="relay-bench-chromium-"))
    d = start_chromium(profile)
    try:
        from selenium.webdriver.common.by import By

        d.get(f"http://127.0.0.1:{port}/ui")
        wait_for(d, lambda d: d.find_element(By.ID, "login").is_displayed(), 30, "login form")
        d.find_element(By.ID, "password").send_keys(PASSWORD)
        d.find_element(By.ID, "login-button").click()
        wait_for(d, lambda d: d.find_element(By.ID, "status").is_displayed(), 30, "status tab")
        out = []
        for i in range(n + 1):  # the first load warms the caches: not counted
            d.get(f"http://127.0.0.1:{port}/ui?load={i}#channels")  # a new URL: a real page load
            wait_for(
                d, lambda d: d.execute_script("return document.body.dataset.channelsPainted"), 60, "render"
            )
            listed = d.find_element(By.ID, "ch-count").text  # "5000 of 5000 channels"
            out.append((float(d.execute_script("return document.body.dataset.channelsPainted")), listed))
        # the list draws the rows in view: scroll to the end and time the last channel's row
        t0 = d.execute_script(
            "const b = document.querySelector('#channels .list'); b.scrollTop = b.scrollHeight;"
            " return performance.now()"
        )
        wait_for(
            d, lambda d: d.find_elements(By.CSS_SELECTOR, f'#channel-table tr[data-id="{last}"]'), 10, "end"
        )
        scrolled = d.execute_script("return performance.now()") - t0
        return out[1:], scrolled
    finally:
        d.quit()
        shutil.rmtree(profile, ignore_errors=True)


def seed_guide_channels(cfg: dict[str, Any], tmp: Path, channels: int) -> None:
    """A database as a sync of a big provider leaves it: `channels` guide channels, 3 streams each."""
    store = Store(tmp / "relay.db")
    try:
        store.sync_config(parse(cfg, base_dir=tmp))
        for acc, quality in (("a", "FHD"), ("b", "HD"), ("c", "SD")):
            store.import_streams(
                acc, ((i, f"UK: Channel {i} {quality}", f"ch{i}.uk", "UK", None) for i in range(channels))
            )
        store.import_guide_channels(
            ((f"ch{i}.uk", (f"Channel {i}",), None) for i in range(channels)), complete=True
        )
        keys = {(acc, sid): key for key, acc, sid, *_ in store.streams()}
        store.write_auto_mappings(
            (
                (f"ch{i}.uk", keys[(acc, i)], p, p == 0)
                for i in range(channels)
                for p, acc in enumerate("abc")
            ),
            ((f"ch{i}.uk", str(1000 + i), True) for i in range(channels)),
        )
    finally:
        store.close()


async def bench_render(provider: FakeProvider, tmp: Path, channels: int, renders: int) -> dict[str, Any]:
    cfg = with_ui(config_for(tmp, provider, {}, accounts=("a", "b", "c")))
    seed_guide_channels(cfg, tmp, channels)
    proc, port = await start(tmp, cfg)
    try:
        ui = UiClient(port)
        await ui.login()
        t0 = time.perf_counter()
        body = (await ui.get("/ui/api/channels")).body
        api_ms = (time.perf_counter() - t0) * 1000
        got, scrolled = await asyncio.to_thread(_renders, port, renders, f"ch{channels - 1}.uk")
    finally:
        await stop(proc)
    ms = [m for m, _ in got]
    assert all(listed == f"{channels} of {channels} channels" for _, listed in got), got
    return {
        "channels": channels,
        "listed": got[0][1],
        "scroll_to_last_ms": round(scrolled, 1),  # rows are drawn as they come into view
        "api_channels_ms": round(api_ms, 1),
        "api_channels_bytes": len(body),
        "render_ms": [round(m, 1) for m in ms],
        "render_ms_median": round(statistics.median(ms), 1),
        "render_ms_max": round(max(ms), 1),
        "target_ms": 1000,
        "pass": statistics.median(ms) < 1000,
    }


# ---- feed -------------------------------------------------------------------------------------------


async def _viewer(port: int, cookie: str, counts: dict[str, int], stop_at: asyncio.Event) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"GET /ui/api/live HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: relay_ui={cookie}\r\n\r\n".encode()
    )
    try:
        await reader.readuntil(b"\r\n\r\n")
        while not stop_at.is_set():
            block = await reader.readuntil(b"\n\n")
            kind = block.split(b"\n", 1)[0].removeprefix(b"event: ").decode()
            counts[kind] = counts.get(kind, 0) + 1
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def _phase(pid: int, seconds: float) -> float:
    c0, t0 = cpu_s(pid), time.monotonic()
    await asyncio.sleep(seconds)
    return (cpu_s(pid) - c0) / (time.monotonic() - t0)


async def bench_feed(provider: FakeProvider, tmp: Path, viewers: int, seconds: float) -> dict[str, Any]:
    cfg = with_ui(config_for(tmp, provider, {"ch1": [("a", 1), ("b", 2)]}), max_viewers=max(500, viewers))
    proc, port = await start(tmp, cfg)
    failovers = 0
    stop_faults = asyncio.Event()

    async def faults() -> None:  # a failover every 3 s: a -> b, then b -> a
        nonlocal failovers
        current = 1
        while not stop_faults.is_set():
            await asyncio.sleep(3)
            if provider.live(current):
                await provider.drop(current)
                failovers += 1
                current = 3 - current

    try:
        client = await open_stream(port, "/stream/ch1")
        await client.wait_bytes(100_000)
        fault_task = asyncio.create_task(faults())
        ui = UiClient(port)
        await ui.login()
        await asyncio.sleep(2)
        before = await _phase(proc.pid, seconds)
        counts: dict[str, int] = {}
        stop_viewers = asyncio.Event()
        tasks = [
            asyncio.create_task(_viewer(port, ui.cookie or "", counts, stop_viewers)) for _ in range(viewers)
        ]
        await asyncio.sleep(2)  # all connected
        f0 = failovers
        with_viewers = await _phase(proc.pid, seconds)
        fed = dict(counts)
        fo_during = failovers - f0
        stop_viewers.set()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.sleep(2)
        after = await _phase(proc.pid, seconds)
        stop_faults.set()
        fault_task.cancel()
        await asyncio.gather(fault_task, return_exceptions=True)
        await client.close()
    finally:
        await stop(proc)
    base = (before + after) / 2
    cost = (with_viewers - base) * 100
    return {
        "viewers": viewers,
        "seconds_per_phase": seconds,
        "failovers_while_watched": fo_during,
        "messages_received": fed,  # over all viewers: event (every event), status (after events + every 2 s)
        "relay_cpu_pct_without_viewers": [round(before * 100, 2), round(after * 100, 2)],
        "relay_cpu_pct_with_viewers": round(with_viewers * 100, 2),
        "feed_cost_pct_of_a_core": round(cost, 2),
        "target_pct": 1.0,
        "pass": cost < 1.0,
    }


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"bench": "ui", "date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count()}
    ts = make_ts()
    with tempfile.TemporaryDirectory(prefix="relay-bench-ui-") as d:
        tmp = Path(d)
        async with FakeProvider(ts, rate_factor=1.0) as provider:
            if args.only in (None, "render"):
                if not have_browser():
                    raise SystemExit(
                        "bench.ui render needs chromium, chromium-driver and selenium (make system-deps)"
                    )
                (tmp / "render").mkdir()
                out["render"] = await bench_render(provider, tmp / "render", args.channels, args.renders)
            if args.only in (None, "feed"):
                (tmp / "feed").mkdir()
                out["feed"] = await bench_feed(provider, tmp / "feed", args.viewers, args.seconds)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--channels", type=int, default=5000)
    p.add_argument("--renders", type=int, default=5)
    p.add_argument("--viewers", type=int, default=200)
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--only", choices=("render", "feed"))
    args = p.parse_args()
    import uvloop

    print(json.dumps(uvloop.run(main_async(args)), indent=2))


if __name__ == "__main__":
    main()
