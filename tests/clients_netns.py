"""Run inside a network namespace by tests/test_clients.py: a relay with its UDP/TCP 65001 on the
namespace's own 127.0.0.1, one viewer on tuner0, and SiliconDust's `hdhomerun_config` asking it
for every control item. Prints one JSON object: {"device_id", "viewer_port", "answers": {args: output}}.

Why a namespace: libhdhomerun always talks to port 65001, which the host (another relay, another
test) may hold; a fresh namespace has its own loopback and its own 65001, and nothing leaves it.

Usage: python -m tests.clients_netns TS_FILE WORKDIR
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import orjson

from tests.fake_provider import FakeProvider
from tests.harness import config_for, open_stream, running_relay

ASKS: list[list[str]] = [
    ["discover", "127.0.0.1"],
    *(
        ["127.0.0.1", "get", f"/tuner{n}/{item}"]
        for n in (0, 1)
        for item in ("status", "streaminfo", "channel", "vchannel", "program", "target", "lockkey")
    ),
    ["127.0.0.1", "get", "/tuner2/status"],  # the relay has two tuners
    ["127.0.0.1", "get", "/sys/features"],
    ["127.0.0.1", "get", "/sys/model"],
    ["127.0.0.1", "get", "/sys/hwmodel"],
    ["127.0.0.1", "get", "/sys/version"],
    ["127.0.0.1", "get", "/lineup/scan"],
    ["127.0.0.1", "get", "help"],
    ["127.0.0.1", "set", "/tuner0/channel", "auto:5"],
    ["127.0.0.1", "set", "/lineup/scan", "start"],
]


async def ask(args: list[str]) -> str:
    proc = await asyncio.create_subprocess_exec(
        "hdhomerun_config", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 10)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return "TIMEOUT"
    return f"rc={proc.returncode}\n{out.decode(errors='replace')}"


async def main(ts_file: Path, work: Path) -> None:
    async with FakeProvider(ts_file, rate_factor=1.0) as provider:
        cfg = config_for(work, provider, {"news": [("a", 1)], "film": [("a", 2)]}, accounts=("a",))
        cfg["discovery"] = {"udp": True}
        cfg["tuner"] = {"tuner_count": 2}
        async with running_relay(cfg, work) as relay:
            viewer = await open_stream(relay.port, "/auto/v100")
            try:
                await viewer.wait_bytes(200_000, timeout=15)
                answers = {" ".join(a): await ask(a) for a in ASKS}
                sockname = viewer.writer.get_extra_info("sockname")
            finally:
                await viewer.close()
            from relay.tuner.hdhomerun import device_id

            print(
                orjson.dumps(
                    {"device_id": device_id(relay.cfg), "viewer_port": sockname[1], "answers": answers}
                ).decode()
            )


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), Path(sys.argv[2])))
