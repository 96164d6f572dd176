"""Issue 15 end to end: what a viewer sees of a failover (real sockets, the fake provider, the relay).

Tune-time failures reported as failovers; zombie upstreams (valid TS, no media) failed over; a
joiner of a running session served its last GOP at once; a slow upstream detected from its clock.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests import fake_provider as fp
from tests.fake_provider import FakeProvider
from tests.harness import config_for, open_stream, read_events, recorder, request, running_relay, until

TS = 188


def media_pes_starts(body: bytes | bytearray, after: int = 0) -> int:
    """Video/audio PES starts (payload_unit_start with a 00 00 01 E0-EF/C0-DF prefix) from `after` on."""
    n = 0
    for off in range(after - after % TS, len(body) - TS + 1, TS):
        if body[off] != 0x47 or not body[off + 1] & 0x40:
            continue
        p = off + 4 + (1 + body[off + 4] if body[off + 3] & 0x20 else 0)
        if body[p : p + 3] == b"\0\0\1" and 0xC0 <= body[p + 3] <= 0xEF:
            n += 1
    return n


async def scrape(port: int) -> dict[str, float]:
    raw = await request(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    out: dict[str, Any] = {}
    for fam in text_string_to_metric_families(raw.partition(b"\r\n\r\n")[2].decode()):
        for s in fam.samples:
            out[s.name + str(sorted(s.labels.items()))] = s.value
    return out


# ---- tune-time failures are failovers ----------------------------------------------------------


async def test_a_primary_that_fails_at_tune_is_a_warn_tune_failover_counted_with_phase_tune(
    provider: FakeProvider, tmp_path: Path
):
    provider.set(1, fp.status(503))
    cfg = config_for(tmp_path, provider, {"ch": [("a", 1), ("b", 2)]})
    async with running_relay(cfg, tmp_path) as relay:
        c = await open_stream(relay.port, "/stream/ch")
        assert c.status == 200
        await c.wait_bytes(20_000)
        await relay.events.flush()
        evs = read_events(tmp_path)
        (tf,) = [e for e in evs if e["event"] == "tune_failover"]
        assert tf["level"] == "warn" and tf["from_stream"] == "a/1" and tf["to_stream"] == "b/2"
        assert tf["reason"] == "HttpError" and tf["http_status"] == 503
        assert tf["failures"] == [{"stream": "a/1", "reason": "HttpError", "http_status": 503}]
        (start,) = [e for e in evs if e["event"] == "session_start"]
        assert start["level"] == "info" and start["to_stream"] == "b/2"  # as it always was
        m = await scrape(relay.port)
        assert m["relay_failovers_total[('phase', 'tune'), ('reason', 'HttpError')]"] == 1
        assert "relay_failovers_total[('phase', 'stream'), ('reason', 'HttpError')]" not in m
        await c.close()


# ---- zombie upstreams: valid TS, no media ------------------------------------------------------

NO_MEDIA_S = 1.5


@pytest.mark.parametrize(
    ("shape", "after"),
    [("null", 0), ("pat", 0), ("psi", 0), ("psi", 400_000), ("null", 400_000)],
    ids=["nulls-at-tune", "pat-without-pmt", "pmt-without-pids", "psi-only-midstream", "nulls-midstream"],
)
async def test_a_zombie_upstream_fails_over_nomedia_to_the_healthy_backup_within_no_media_s_plus_2(
    provider: FakeProvider, tmp_path: Path, shape: str, after: int
):
    provider.set(1, fp.zombie(shape, after))  # type: ignore[arg-type]
    cfg = config_for(tmp_path, provider, {"ch": [("a", 1), ("b", 2)]}, no_media_s=NO_MEDIA_S)
    async with running_relay(cfg, tmp_path) as relay:
        seen = recorder(relay)
        c = await open_stream(relay.port, "/stream/ch")
        assert c.status == 200
        t_zombie = time.monotonic()
        while after and provider.bytes_sent(1) < after:  # mid-stream: the clock starts at the zombie
            await asyncio.sleep(0.005)
            t_zombie = time.monotonic()
        await until(lambda: [e for e in seen if e["event"] == "failover"], timeout=NO_MEDIA_S + 4)
        took = time.monotonic() - t_zombie
        (fo,) = [e for e in seen if e["event"] == "failover"]
        assert fo["from_stream"] == "a/1" and fo["to_stream"] == "b/2" and fo["reason"] == "NoMedia"
        assert fo["level"] == "warn"
        assert NO_MEDIA_S - 0.3 <= took <= NO_MEDIA_S + 2, took
        n = len(c.body)
        await c.wait_bytes(n + 200_000)
        assert media_pes_starts(c.body, n) > 20  # the backup's program reaches the viewer
        await c.close()


@pytest.mark.parametrize("shape", ["null", "pat", "psi"])
async def test_the_fake_providers_zombie_shapes_send_valid_ts_without_media(
    provider: FakeProvider, shape: str
):
    provider.set(1, fp.zombie(shape, 100 * TS))  # type: ignore[arg-type]
    path = "/" + provider.stream_url(1).split("/", 3)[3]
    c = await open_stream(provider.port, path)
    await c.wait_bytes(300 * TS)
    body = bytes(c.body[: len(c.body) // TS * TS])
    await c.close()
    assert media_pes_starts(body[: 100 * TS]) > 0 and media_pes_starts(body, 100 * TS) == 0
    pids = {((body[o + 1] & 0x1F) << 8) | body[o + 2] for o in range(100 * TS, len(body), TS)}
    assert all(body[o] == 0x47 for o in range(0, len(body), TS))
    psi = pids - {0x1FFF}
    if shape == "psi":
        assert 0 in psi and len(psi) == 2  # the PAT and its PMT
    else:
        assert psi == ({0} if shape == "pat" else set())


# ---- instant zap: a joiner gets the session's last GOP at once ---------------------------------


def first_frame_at(c: Any, t_open: float, video_pid: int = 0x100) -> float | None:
    """Seconds from `t_open` until the joiner held a whole video frame (its second video PES start)."""
    starts = 0
    for off in range(0, len(c.body) - TS + 1, TS):
        b = c.body
        if b[off + 1] & 0x40 and ((b[off + 1] & 0x1F) << 8 | b[off + 2]) == video_pid:
            starts += 1
            if starts == 2:
                at = next(t for t, n in c.arrivals if n > off)
                return at - t_open
    return None


async def ffprobe_frames(data: bytes, tmp: Path) -> tuple[list[str], str]:
    """The video frames ffprobe decodes from `data` (key_frame flags), and its warnings."""
    f = tmp / "joiner.ts"
    f.write_bytes(data[: len(data) // TS * TS])
    proc = await asyncio.create_subprocess_exec(
        "ffprobe", "-v", "warning", "-select_streams", "v", "-show_entries", "frame=key_frame",
        "-of", "csv=p=0", str(f),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    return [ln.strip(",") for ln in out.decode().split() if ln.strip(",")], err.decode()


async def test_a_joiner_decodes_its_first_frame_at_once_from_the_sessions_last_gop(
    provider: FakeProvider, tmp_path: Path
):
    cfg = config_for(tmp_path, provider, {"ch": [("a", 1)]})
    async with running_relay(cfg, tmp_path) as relay:
        first = await open_stream(relay.port, "/stream/ch")
        await first.wait_bytes(150_000)  # ~2 s: the session runs, mid-GOP at any moment
        zaps = []
        for i in range(4):
            await asyncio.sleep(0.13 * i + 0.05)  # joins at various points of the 1 s GOP
            t_open = time.monotonic()
            c = await open_stream(relay.port, "/stream/ch")
            await asyncio.sleep(0.25)
            zap = first_frame_at(c, t_open)
            frames, warnings = await ffprobe_frames(bytes(c.body), tmp_path)
            await c.close()
            assert zap is not None and zap < 0.15, zap  # without the GOP: up to 1 s (the next keyframe)
            assert frames and frames[0] == "1", frames  # decodable from its first frame, a keyframe
            assert "continuity" not in warnings.lower() and "non-existing pps" not in warnings.lower(), (
                warnings
            )
            zaps.append(zap)
        await first.close()


# ---- a slow upstream, judged from its own clock -----------------------------------------------

SLOW_WINDOW_S = 6.0  # longer than one pass of the 4 s test file: the meter runs on across its loop


async def test_a_provider_at_07x_real_time_is_left_make_before_break_within_the_window_plus_2s(
    provider: FakeProvider, tmp_path: Path
):
    provider.set(1, fp.ok(rate_factor=0.7))
    cfg = config_for(
        tmp_path, provider, {"ch": [("a", 1), ("b", 2)]}, slow_window_s=SLOW_WINDOW_S, stall_timeout_s=5.0
    )
    async with running_relay(cfg, tmp_path) as relay:
        seen = recorder(relay)
        t0 = time.monotonic()
        c = await open_stream(relay.port, "/stream/ch")
        await until(lambda: [e for e in seen if e["event"] == "failover"], timeout=SLOW_WINDOW_S + 6)
        took = time.monotonic() - t0
        (fo,) = [e for e in seen if e["event"] == "failover"]
        assert fo["reason"] == "StreamSlow" and fo["from_stream"] == "a/1" and fo["to_stream"] == "b/2"
        assert SLOW_WINDOW_S <= took <= SLOW_WINDOW_S + 2, took
        assert provider.active(1) == 0 and provider.active(2) == 1
        n = len(c.body)
        await c.wait_bytes(n + 100_000)
        assert media_pes_starts(c.body, n) > 10
        await c.close()


async def test_a_real_time_provider_is_never_slow(provider: FakeProvider, tmp_path: Path):
    cfg = config_for(tmp_path, provider, {"ch": [("a", 1), ("b", 2)]}, slow_window_s=SLOW_WINDOW_S)
    async with running_relay(cfg, tmp_path) as relay:
        seen = recorder(relay)
        c = await open_stream(relay.port, "/stream/ch")
        await asyncio.sleep(3 * SLOW_WINDOW_S)  # three windows, the file looping twice
        assert [e for e in seen if e["event"] == "failover"] == []
        assert provider.active(1) == 1 and provider.active(2) == 0
        await c.close()
