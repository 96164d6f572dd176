"""The fake HLS provider itself: ffmpeg plays it as a live channel, and each fault shows."""

from __future__ import annotations

import asyncio
import re

import pytest

from tests.fake_hls import FakeHls, make_hls
from tests.media import require_ffmpeg


@pytest.fixture(scope="session")
def hls_media():
    require_ffmpeg()
    return make_hls()


async def get(port: int, path: str) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    data = await reader.read()
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def ffmpeg_reads(url: str, seconds: float = 3) -> tuple[int, list[str]]:
    proc = await asyncio.create_subprocess_exec(
        "ffmpeg", "-nostdin", "-hide_banner", "-v", "error", "-i", url, "-t", str(seconds),
        "-f", "null", "-", stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, [ln for ln in err.decode().splitlines() if ln.strip()]


async def test_ffmpeg_plays_the_live_window_clear_and_encrypted(hls_media):
    for encrypt in (False, True):
        async with FakeHls(hls_media, encrypt=encrypt) as hls:
            rc, errors = await ffmpeg_reads(hls.url)
            assert rc == 0 and errors == []
            assert any(p.endswith(".ts") for p in hls.paths())
            if encrypt:
                assert "/key.bin" in hls.paths()


async def test_the_window_slides_and_each_fault_shows(hls_media):
    async with FakeHls(hls_media, restarted=make_hls(offset=500), variants=(800_000, 2_000_000)) as hls:
        _, pl = await get(hls.port, "/v1/index.m3u8")
        first = int(re.search(rb"MEDIA-SEQUENCE:(\d+)", pl).group(1))
        assert pl.count(b"#EXTINF") == hls.window
        _, master = await get(hls.port, "/master.m3u8")
        assert b"BANDWIDTH=2000000" in master and b"v1/index.m3u8" in master
        await asyncio.sleep(hls.seg_duration * 1.2)
        _, pl2 = await get(hls.port, "/index.m3u8")
        assert int(re.search(rb"MEDIA-SEQUENCE:(\d+)", pl2).group(1)) > first
        hls.freeze()
        _, a = await get(hls.port, "/index.m3u8")
        await asyncio.sleep(hls.seg_duration * 1.2)
        _, b = await get(hls.port, "/index.m3u8")
        assert a == b
        hls.heal()
        at = hls.restart()
        await asyncio.sleep(hls.seg_duration * 2.2)
        _, pl3 = await get(hls.port, "/index.m3u8")
        assert f"#EXT-X-DISCONTINUITY\n#EXTINF:1.000,\nseg{at}.ts".encode() in pl3
        hls.playlist_status(500, variant=0)
        assert (await get(hls.port, "/v0/index.m3u8"))[0] == 500
        assert (await get(hls.port, "/v1/index.m3u8"))[0] == 200
        hls.fail_segment(1)
        newest = hls.newest()
        assert (await get(hls.port, f"/seg{newest}.ts"))[0] == 404
        code, body = await get(hls.port, f"/seg{newest}.ts")
        assert code == 200 and body[0] == 0x47
        hls.endlist()
        assert (await get(hls.port, "/index.m3u8"))[1].endswith(b"#EXT-X-ENDLIST\n")
