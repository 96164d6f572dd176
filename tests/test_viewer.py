"""Issue 15 end to end: what a viewer sees of a failover (real sockets, the fake provider, the relay).

Tune-time failures reported as failovers; zombie upstreams (valid TS, no media) failed over; a
joiner of a running session served its last GOP at once; a slow upstream detected from its clock.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests import fake_provider as fp
from tests.fake_provider import FakeProvider
from tests.harness import config_for, open_stream, read_events, request, running_relay


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
