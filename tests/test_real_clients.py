"""Real clients against the relay: ffmpeg decoding across failovers, curl for the HTTP surface."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from tests.fake_provider import FakeProvider
from tests.ffmpeg_client import FfmpegDecoder
from tests.harness import config_for, running_relay, whole_packets

CH = {"ch1": [("a", 1), ("b", 2), ("c", 3)]}


async def test_given_ffmpeg_reading_a_channel_when_two_failovers_happen_then_frames_keep_decoding(
    provider: FakeProvider, tmp_path: Path
):
    cfg = config_for(tmp_path, provider, CH)
    async with running_relay(cfg, tmp_path) as relay:
        ff = await FfmpegDecoder(f"http://127.0.0.1:{relay.port}/stream/ch1", 12).start()
        await ff.decoding(25)
        await asyncio.sleep(1.0)
        t1 = await provider.drop(1)
        await asyncio.sleep(3.0)
        t2 = await provider.drop(2)
        await ff.wait()
        assert ff.returncode == 0, ff.errors
        assert ff.total >= 25 * 9  # ~12 s at 25 fps, minus start-up
        assert ff.decoded_between(t1 + 0.5, t1 + 2.5) >= 25  # frames from the first backup
        assert ff.decoded_between(t2 + 0.5, t2 + 2.5) >= 25  # and from the second
        assert provider.connections[3] >= 1


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
async def test_curl_reads_whole_packets_and_sees_clean_errors(provider: FakeProvider, tmp_path: Path):
    cfg = config_for(tmp_path, provider, CH)
    async with running_relay(cfg, tmp_path) as relay:
        base = f"http://127.0.0.1:{relay.port}"
        out = tmp_path / "out.ts"
        curl = await asyncio.create_subprocess_exec(
            "curl", "-sS", "-N", "--max-time", "3", "-o", str(out), "-D", str(tmp_path / "h.txt"),
            f"{base}/stream/ch1",
        )  # fmt: skip
        await asyncio.sleep(1.5)
        await provider.drop(1)
        await curl.wait()  # curl exits 28 at --max-time: the stream never ended by itself
        assert curl.returncode == 28
        head = (tmp_path / "h.txt").read_text()
        assert "200 OK" in head and "video/mp2t" in head and "chunked" in head
        body = out.read_bytes()
        assert len(body) > 50_000
        assert whole_packets(body[: len(body) // 188 * 188])

        async def curl_status(*args: str) -> str:
            p = await asyncio.create_subprocess_exec(
                "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", *args, stdout=asyncio.subprocess.PIPE
            )
            stdout, _ = await p.communicate()
            return stdout.decode()

        assert await curl_status(f"{base}/stream/nope") == "404"
        assert await curl_status("-X", "DELETE", f"{base}/stream/ch1") == "405"
        assert await curl_status(f"{base}/health") == "200"
        assert await curl_status("-I", f"{base}/stream/ch1") == "200"
