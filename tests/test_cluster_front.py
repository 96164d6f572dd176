"""The generated fronts route by channel: through nginx (and HAProxy, in test_cluster.py), both URLs
of a channel reach the relay that already streams it, for every channel."""

from __future__ import annotations

from pathlib import Path

from relay.cluster import routing
from tests.fake_provider import FakeProvider
from tests.harness import config_for, open_stream, running_relay, until
from tests.servers import Nginx, free_port


async def test_nginx_keeps_auto_and_stream_urls_of_a_channel_on_one_relay(
    provider: FakeProvider, tmp_path: Path
) -> None:
    chans = {f"ch{i}": [("a", i)] for i in range(1, 7)}
    configs = []
    for name in ("r1", "r2"):
        (tmp_path / name).mkdir()
        cfg = config_for(tmp_path / name, provider, chans, accounts=("a",), max_connections={"a": 10})
        cfg["tuner"] = {"tuner_count": 10}
        configs.append(cfg)
    async with (
        running_relay(configs[0], tmp_path / "r1") as r1,
        running_relay(configs[1], tmp_path / "r2") as r2,
    ):
        port = free_port()
        map_path = tmp_path / "front" / "channels.nginx.map"
        map_path.parent.mkdir()
        map_path.write_text(routing.nginx_map(r1.channels))
        backends = [routing.Backend("r1", "127.0.0.1", r1.port), routing.Backend("r2", "127.0.0.1", r2.port)]
        front = Nginx(tmp_path / "front", routing.nginx_config(backends, f"127.0.0.1:{port}", str(map_path)))
        front.start(port)
        try:
            placed = {}
            for ch in r1.channels:
                auto = await open_stream(port, f"/auto/v{ch.number}")
                assert auto.status == 200
                await auto.wait_bytes(188 * 20)
                by = [r for r in (r1, r2) if ch.id in r.by_channel]
                assert len(by) == 1
                direct = await open_stream(port, f"/stream/{ch.id}")
                assert direct.status == 200
                await direct.wait_bytes(188 * 20)
                assert len(by[0].by_channel[ch.id].outputs) == 2  # joined, not a second upstream
                assert provider.active(int(ch.id[2:])) == 1
                placed[ch.id] = by[0]
                await auto.close()
                await direct.close()
                await until(lambda: not r1.sessions and not r2.sessions, 5, "sessions ended")
            assert {id(r) for r in placed.values()} == {id(r1), id(r2)}  # both relays got channels
        finally:
            front.stop()
