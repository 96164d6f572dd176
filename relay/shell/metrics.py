"""What monitoring reads: Prometheus metrics (/metrics) and a JSON status of every session (/status).

Counters follow the event stream (one listener on the EventLog), gauges are read from the live
sessions at scrape time, so nothing on the data path touches a metric.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from relay.config import MetricsConfig
    from relay.core.failover import Slots
    from relay.core.status import SessionStatus
    from relay.sources.sync import SyncReport

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
SWITCH_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0)


class Metrics:
    def __init__(
        self,
        sessions: Callable[[float], Iterable[SessionStatus]],
        slots: Callable[[], Slots | None],
        clock: Callable[[], float] = time.monotonic,
        *,
        accounts: Callable[[], Iterable[dict[str, Any]]] = list,
        options: MetricsConfig | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._accounts = accounts  # the accounts table's rows (relay.storage.store.Store.accounts)
        self._wall_clock = wall_clock
        self.channel_label = options.channel_label if options is not None else False
        self.channel_label_max = options.channel_label_max if options is not None else 0
        self._labelled: set[str] = set()
        self._sessions = sessions
        self._slots = slots
        self._clock = clock
        self.ended_bytes = 0
        self.recovered = 0
        self.exhausted = 0
        self.last_failover: dict[str, dict[str, Any]] = {}
        r = self.registry
        labels = ["reason", "phase", "channel"] if self.channel_label else ["reason", "phase"]
        # phase: tune (before the first byte) or stream; channel: metrics.channel_label
        self.failovers = Counter(
            "relay_failovers", "Recovered failovers by reason and phase", labels, registry=r
        )
        self.exhaustions = Counter("relay_exhaustions", "Channels whose every stream failed", registry=r)
        self.upgrades = Counter("relay_upgrades", "Returns to a better stream", registry=r)
        self.upgrade_failures = Counter("relay_upgrade_failures", "Upgrade probes that failed", registry=r)
        self.dropped_clients = Counter("relay_dropped_clients", "Clients dropped for lagging", registry=r)
        self.transcodes = Counter("relay_transcodes", "Backups re-encoded to the client's codecs", registry=r)
        self.hls_skipped = Counter(
            "relay_hls_skipped_segments", "HLS segments that left the live window unfetched", registry=r
        )
        self.tunes_refused = Counter(
            "relay_tunes_refused",
            "Tunes of a failing channel refused (429) by the per-address limit",
            registry=r,
        )
        self.switch_seconds = Histogram(
            "relay_switch_seconds", "Detection to first backup byte", buckets=SWITCH_BUCKETS, registry=r
        )
        r.register(_LiveCollector(self))
        # ---- issue 19: sync metrics and the process collector ----
        self.sync_seconds = Gauge("relay_sync_duration_seconds", "How long the last sync took", registry=r)
        self.sync_at = Gauge(
            "relay_sync_last_timestamp_seconds", "When the last sync ended (Unix)", registry=r
        )
        self.syncs = Counter(
            "relay_syncs", "Completed syncs by result (ok: every account usable)", ["result"], registry=r
        )
        self.sync_accounts = Gauge(
            "relay_sync_accounts", "Accounts by state at the last sync", ["state"], registry=r
        )
        ProcessCollector(registry=r)  # process_cpu_seconds_total, process_resident_memory_bytes, ...

    def on_event(self, e: dict[str, Any]) -> None:
        """EventLog listener: count what happened (a coalesced record counts as its `repeated`)."""
        name = e.get("event")
        n = e.get("repeated", 1)
        if name in ("failover", "tune_failover"):
            self.recovered += 1
            reason = e.get("reason") or "unknown"
            phase = "tune" if name == "tune_failover" else "stream"
            if self.channel_label:
                ch = self._channel_label(e.get("channel"))
                self.failovers.labels(reason=reason, phase=phase, channel=ch).inc()
            else:
                self.failovers.labels(reason=reason, phase=phase).inc()
            if name == "tune_failover":
                return
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
        elif name == "hls_skipped":
            self.hls_skipped.inc(e.get("skipped_segments") or 0)

    def _channel_label(self, channel: Any) -> str:
        """The channel's id for the first `channel_label_max` channels seen, then "other": bounded."""
        ch = str(channel or "unknown")
        if ch in self._labelled:
            return ch
        if len(self._labelled) < self.channel_label_max:
            self._labelled.add(ch)
            return ch
        return "other"

    def synced(self, report: SyncReport) -> None:
        """After a completed sync (relay.shell.app)."""
        self.sync_seconds.set(report.seconds)
        self.sync_at.set(self._wall_clock())
        states = [a.state for a in report.accounts]
        ok = all(st in ("ok", "off") for st in states) and not report.guide.errors
        self.syncs.labels(result="ok" if ok else "degraded").inc()
        for st in ("ok", "inactive", "no_api", "down", "off"):
            self.sync_accounts.labels(state=st).set(states.count(st))

    def session_ended(self, s: SessionStatus) -> None:
        self.ended_bytes += s.bytes_out

    def exposition(self) -> bytes:
        return generate_latest(_WithoutCreated(self.registry))  # type: ignore[arg-type]

    def status(self) -> dict[str, Any]:
        out = []
        for s in sorted(self._sessions(self._clock()), key=lambda s: s.channel):
            cur = s.current
            out.append(
                {
                    "channel": s.channel,
                    "stream": cur.ref if cur else None,
                    "account": cur.account if cur else None,
                    "priority": cur.priority if cur else None,
                    "state": s.state.value,
                    "uptime_s": round(s.uptime_s, 1),
                    "clients": s.clients,
                    "lingering": s.lingering,
                    "bitrate_kbps": round(s.bitrate_kbps, 1),
                    "bytes": s.bytes_out,
                    "lag_ms": round(s.lag_s * 1000, 1),  # the frame hold's delay behind the provider
                    "failovers": s.failovers,
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


class _WithoutCreated:
    """The registry without the `*_created` samples (one per counter and histogram, noise to scrapers)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Any]:
        for family in self.registry.collect():
            family.samples = [x for x in family.samples if not x.name.endswith("_created")]
            yield family


class _LiveCollector(Collector):
    """Gauges read from the sessions at scrape time."""

    def __init__(self, m: Metrics) -> None:
        self.m = m

    def collect(self) -> Iterator[Any]:
        sessions = list(self.m._sessions(self.m._clock()))
        g = GaugeMetricFamily("relay_sessions", "Channel sessions (upstreams) open")
        g.add_metric([], len(sessions))
        yield g
        g = GaugeMetricFamily("relay_clients", "Clients being streamed to")
        g.add_metric([], sum(s.clients for s in sessions))
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
        yield from self._accounts(slots)

    def _accounts(self, slots: Slots | None) -> Iterator[Any]:
        """Issue 19: per-account gauges, from the accounts table and the slot ledger."""
        rows = list(self.m._accounts())
        now = self.m._wall_clock()
        active = GaugeMetricFamily(
            "relay_account_active", "1 if the account is used, 0 if not", labels=["account"]
        )
        cons = GaugeMetricFamily(
            "relay_account_connections_active", "Provider connections open", labels=["account"]
        )
        cmax = GaugeMetricFamily(
            "relay_account_connections_max", "Provider connections allowed", labels=["account"]
        )
        exp = GaugeMetricFamily(
            "relay_account_expiry_seconds",
            "Seconds until the account expires (absent: never)",
            labels=["account"],
        )
        for a in rows:
            name = a["name"]
            active.add_metric([name], int(bool(a.get("is_active"))))
            held = slots.held.get(name, 0) if slots is not None else 0
            limit = slots.limits.get(name, a.get("max_connections")) if slots is not None else None
            cons.add_metric([name], held)
            cmax.add_metric([name], limit if limit is not None else a.get("max_connections") or 0)
            if a.get("exp_date"):
                exp.add_metric([name], a["exp_date"] - now)
        yield from (active, cons, cmax, exp)


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
