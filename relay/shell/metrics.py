"""What monitoring reads: Prometheus metrics (/metrics) and a JSON status of every session (/status).

Counters follow the event stream (one listener on the EventLog), gauges are read from the live
sessions at scrape time, so nothing on the data path touches a metric.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from relay.core.failover import Slots
    from relay.shell.session import ChannelSession

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
SWITCH_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0)


class Metrics:
    def __init__(
        self,
        sessions: Callable[[], Iterable[ChannelSession]],
        slots: Callable[[], Slots | None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._sessions = sessions
        self._slots = slots
        self._clock = clock
        self.ended_bytes = 0
        self.recovered = 0
        self.exhausted = 0
        self.last_failover: dict[str, dict[str, Any]] = {}
        r = self.registry
        self.failovers = Counter("relay_failovers", "Recovered failovers by reason", ["reason"], registry=r)
        self.exhaustions = Counter("relay_exhaustions", "Channels whose every stream failed", registry=r)
        self.upgrades = Counter("relay_upgrades", "Returns to a better stream", registry=r)
        self.upgrade_failures = Counter("relay_upgrade_failures", "Upgrade probes that failed", registry=r)
        self.dropped_clients = Counter("relay_dropped_clients", "Clients dropped for lagging", registry=r)
        self.transcodes = Counter("relay_transcodes", "Backups re-encoded to the client's codecs", registry=r)
        self.tunes_refused = Counter(
            "relay_tunes_refused",
            "Tunes of a failing channel refused (429) by the per-address limit",
            registry=r,
        )
        self.switch_seconds = Histogram(
            "relay_switch_seconds", "Detection to first backup byte", buckets=SWITCH_BUCKETS, registry=r
        )
        r.register(_LiveCollector(self))

    def on_event(self, e: dict[str, Any]) -> None:
        """EventLog listener: count what happened (a coalesced record counts as its `repeated`)."""
        name = e.get("event")
        n = e.get("repeated", 1)
        if name == "failover":
            self.recovered += 1
            self.failovers.labels(reason=e.get("reason") or "unknown").inc()
            if isinstance(e.get("switch_ms"), int | float):
                self.switch_seconds.observe(e["switch_ms"] / 1000)
            self.last_failover[e.get("channel") or ""] = {
                k: e.get(k) for k in ("timestamp", "from_stream", "to_stream", "reason", "switch_ms")
            }
        elif name == "exhausted":
            self.exhausted += n
            self.exhaustions.inc(n)
        elif name == "upgrade":
            self.upgrades.inc()
        elif name == "upgrade_failed":
            self.upgrade_failures.inc()
        elif name == "client_dropped":
            self.dropped_clients.inc(n)
        elif name == "tune_refused":
            self.tunes_refused.inc(n)
        elif name == "transcode":
            self.transcodes.inc()

    def session_ended(self, s: ChannelSession) -> None:
        self.ended_bytes += s.bytes_out

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def status(self) -> dict[str, Any]:
        now = self._clock()
        out = []
        for s in sorted(self._sessions(), key=lambda s: s.channel):
            cur = s.machine.current_candidate
            up = max(now - s.started_at, 1e-6)
            out.append(
                {
                    "channel": s.channel,
                    "stream": cur.ref if cur else None,
                    "account": cur.account if cur else None,
                    "priority": cur.priority if cur else None,
                    "state": s.machine.state.value,
                    "uptime_s": round(up, 1),
                    "clients": len(s.outputs),
                    "lingering": s.lingering,
                    "bitrate_kbps": round(s.bytes_out * 8 / up / 1000, 1),
                    "bytes": s.bytes_out,
                    "lag_ms": round(s.splicer.lag_s * 1000, 1),  # the frame hold's delay behind the provider
                    "failovers": s.machine.failovers,
                    "last_failover": self.last_failover.get(s.channel),
                }
            )
        slots = self._slots()
        return {
            "sessions": out,
            "provider_connections": dict(slots.held) if slots else {},
            "recovery_ratio": self.recovery_ratio(),
        }

    def recovery_ratio(self) -> float:
        """NFR11: the share of failures that a failover recovered (1.0 when nothing failed yet)."""
        ok, bad = self.recovered, self.exhausted
        return 1.0 if ok + bad == 0 else ok / (ok + bad)


class _LiveCollector(Collector):
    """Gauges read from the sessions at scrape time."""

    def __init__(self, m: Metrics) -> None:
        self.m = m

    def collect(self) -> Iterator[Any]:
        sessions = list(self.m._sessions())
        g = GaugeMetricFamily("relay_sessions", "Channel sessions (upstreams) open")
        g.add_metric([], len(sessions))
        yield g
        g = GaugeMetricFamily("relay_clients", "Clients being streamed to")
        g.add_metric([], sum(len(s.outputs) for s in sessions))
        yield g
        c = CounterMetricFamily("relay_bytes_relayed", "Bytes sent to clients (per session, not per client)")
        c.add_metric([], self.m.ended_bytes + sum(s.bytes_out for s in sessions))
        yield c
        g = GaugeMetricFamily("relay_provider_connections", "Provider connections held", labels=["account"])
        slots = self.m._slots()
        if slots is not None:
            for account, n in sorted(slots.held.items()):
                g.add_metric([account], n)
        yield g
        g = GaugeMetricFamily("relay_recovery_ratio", "Failures recovered by a failover (NFR11)")
        g.add_metric([], self.m.recovery_ratio())
        yield g


class SinkCollector(Collector):
    """The event sinks (relay/storage/sinks.py), read at scrape time: a full disk shows here."""

    def __init__(self, events: Any) -> None:
        self.events = events  # an EventLog

    def collect(self) -> Iterator[Any]:
        sinks = (self.events.file_sink, self.events.db_sink)
        g = GaugeMetricFamily(
            "relay_event_sink_ok", "1 while the event sink writes, 0 while it fails", labels=["sink"]
        )
        for s in sinks:
            g.add_metric([s.name], 1 if s.ok else 0)
        yield g
        g = GaugeMetricFamily(
            "relay_event_sink_pending", "Events kept to retry into the sink", labels=["sink"]
        )
        for s in sinks:
            g.add_metric([s.name], len(s.pending))
        yield g
        c = CounterMetricFamily(
            "relay_event_sink_failures", "Writes to the event sink that failed", labels=["sink"]
        )
        for s in sinks:
            c.add_metric([s.name], s.failures)
        yield c
        c = CounterMetricFamily(
            "relay_event_sink_lost",
            "Events dropped from a full backlog (still in the other sink)",
            labels=["sink"],
        )
        for s in sinks:
            c.add_metric([s.name], s.lost)
        yield c
