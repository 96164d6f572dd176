"""The relay process: wires config, store, event log and sessions to the HTTP server, and routes.

Routes are a small table: exact paths for the fixed endpoints, prefixes for the stream URLs.
Every handler answers with bytes at once, except a stream, which hands the connection to a
channel session. Nothing here decides failover; nothing here knows a provider's password except
`Shared.url_for` (relay/sources/streams.py), which builds the URL when a connection is opened.

Over 400 lines because it is the route table and each route's short handler; the work behind them lives
in the modules they call.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import math
import signal
import time
from collections.abc import Callable
from typing import Any

import orjson

from relay.cluster.ledger import Ledger, Refusal
from relay.cluster.setup import forwarded_client, make_ledger, relay_id
from relay.cluster.sync import start_cluster_sync
from relay.cluster.tuners import TunerGate
from relay.config import ChannelConfig, Config, ConfigError
from relay.core import events, http11
from relay.core.admission import TuneLimiter
from relay.core.failover import NOT_THE_STREAM, HealthMemory, Slots, State
from relay.shell.limits import effective_max_clients
from relay.shell.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from relay.shell.metrics import Metrics, SinkCollector
from relay.shell.server import HttpProtocol, Request
from relay.shell.session import ChannelSession, Shared
from relay.sources.guide import GuideCache
from relay.sources.streams import direct_limits
from relay.sources.sync import SyncReport, account_limits, channel_list, start_sync, stop_sync
from relay.storage.eventlog import EventLog
from relay.storage.files import group_id
from relay.storage.notify import Notifier
from relay.storage.store import Store
from relay.tuner import hdhomerun
from relay.tuner.discovery import device_info, start_discovery
from relay.tuner.status import LiveView, Playing, TunerSlots
from relay.web import register as register_ui  # issue 19: the web page

log = logging.getLogger("relay")

Handler = Callable[[HttpProtocol, Request], None]
RECONCILE_S = 30.0  # how often the slot ledger is checked against the connections really open


class ListenError(ConfigError):
    """The listening socket could not be opened; str() names the config keys, and a caller that took
    the address from elsewhere (the demo's --host/--port) can name its own."""

    def __init__(self, host: str, port: int, error: OSError) -> None:
        self.host, self.port, self.in_use = host, port, error.errno == errno.EADDRINUSE
        self.strerror = error.strerror or str(error)
        super().__init__(self.describe("server.host", "server.port"))

    def describe(self, host_key: str, port_key: str) -> str:
        if self.in_use:
            return f"{port_key}: {self.host}:{self.port} is already in use"
        return f"{host_key}: cannot listen on {self.host}:{self.port} ({self.strerror})"


class Relay:
    def __init__(self, cfg: Config, *, wall_clock: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self.wall_clock = wall_clock
        self.store: Store | None = None
        self.events: EventLog | None = None
        self.shared: Shared | None = None
        self.sessions: set[ChannelSession] = set()
        self.by_channel: dict[str, ChannelSession] = {}  # one upstream session per channel, shared
        self.connections: set[HttpProtocol] = set()
        self.health_conns: set[HttpProtocol] = set()  # past max_clients: /health only (limits.health_slots)
        self.max_clients = cfg.server.max_clients  # lowered at start if the open-file limit is smaller
        self.server: asyncio.base_events.Server | None = None
        self.started_at = 0.0
        self.host = cfg.server.host
        self.port = cfg.server.port
        self.channels: list[ChannelConfig] = list(cfg.channels)  # config channels, then synced ones
        self._by_id = {c.id: c for c in self.channels}
        self._by_number = {c.number: c.id for c in self.channels}
        self.art: dict[str, hdhomerun.ChannelArt] = {}  # logos and groups for lineup.m3u and the guide
        self.discovery: list[Any] = []
        self._reconciler: asyncio.TimerHandle | None = None
        self.sync_task: asyncio.Task[None] | None = None  # relay.sources.sync: accounts and guide channels
        # cluster (relay.cluster): the lease ledger, this relay's name, tuner_count across the cluster
        self.ledger: Ledger | None = None
        self.relay_id = ""
        self.tuners = TunerGate(lambda: self.ledger, cfg.tuner.tuner_count, self._tuner_refused)
        self.metrics = Metrics(
            lambda now: [s.status(now) for s in self.sessions],
            lambda: self.shared.slots if self.shared else None,
            accounts=lambda: self.store.accounts() if self.store else [],  # issue 19: per-account gauges
            options=cfg.metrics,
            wall_clock=wall_clock,
        )
        self.notifier = Notifier(
            [n.url for n in cfg.notify if n.url],
            apprise=[(n.apprise, n.expiry_days) for n in cfg.notify if n.apprise],  # issue 19: in words
            names=lambda: {c.id: c.name for c in self.channels},
        )
        self.guide = GuideCache(
            cfg,
            refresh_h=cfg.guide.refresh_h,
            channels=lambda: self.channels,
            icons=lambda: {cid: a.logo for cid, a in self.art.items() if a.logo},
        )
        self._tuner_slots = TunerSlots(cfg.tuner.tuner_count)  # stable tuner numbers for status.json
        lim = cfg.limits
        self.tunes = TuneLimiter(
            lim.failing_tune_burst, lim.failing_tune_every_s, lim.failing_channel_s, lim.tune_peers
        )
        get = ("GET", "HEAD")
        self.routes: dict[str, tuple[tuple[str, ...], Handler]] = {
            "/health": (get, self._health),
            "/discover.json": (get, self._discover),
            "/lineup.json": (get, self._lineup),
            "/lineup.m3u": (get, self._lineup_m3u),
            "/lineup.xml": (get, self._lineup_xml),
            "/status.json": (get, self._status_json),
            "/tuners.html": (get, self._tuners_html),
            "/lineup_status.json": (get, self._lineup_status),
            "/lineup.post": (("POST", "GET"), self._lineup_post),
            "/device.xml": (get, self._device_xml),
            "/": (get, self._device_xml),
            "/xmltv.xml": (get, self._xmltv),
            "/metrics": (get, self._metrics),
            "/status": (get, self._status),
        }
        self.prefixes: list[tuple[str, tuple[str, ...], Callable[[HttpProtocol, Request, str], None]]] = [
            ("/stream/", ("GET", "HEAD"), self._stream),
            ("/auto/v", ("GET", "HEAD"), self._auto),
        ]
        self.ui = register_ui(self)  # issue 19: /ui and /ui/... (relay/web)

    # ---- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Open storage, sync the config into it, and listen. Port in use is a ConfigError."""
        loop = asyncio.get_running_loop()
        cfg = self.cfg
        db = cfg.path(cfg.storage.database)
        db.parent.mkdir(parents=True, exist_ok=True)
        gid = group_id(cfg.storage.group)
        self.store = Store(db, gid=gid)
        self.store.sync_config(cfg)
        self._load_channels()
        st, lim = cfg.storage, cfg.limits
        self.events = EventLog(
            cfg.path(st.events),
            db,
            clock=self.wall_clock,
            max_bytes=st.events_max_bytes,
            keep=st.events_keep,
            retention_days=st.event_log_days,
            gid=gid,
            coalesce_window_s=lim.coalesce_window_s,
            retry_s=lim.sink_retry_s,
            warn_every_s=lim.sink_warn_every_s,
            backlog=lim.sink_backlog,
        )
        self.metrics.registry.register(SinkCollector(self.events))
        self.events.listeners += [self.metrics.on_event, self.notifier.on_event, self.ui.on_event]
        await self.events.open()
        self.notifier.start()
        self.shared = Shared(
            config=cfg,
            events=self.events,
            health=HealthMemory(),
            slots=Slots(account_limits(cfg, self.store) | direct_limits(cfg)),
            clock=loop.time,
            directory=self.store.stream_directory(),
        )
        self.max_clients = effective_max_clients(
            cfg.server.max_clients,
            reserve=lim.fd_reserve,
            # provider connections it may hold: each account's limit, but never more than its sessions
            # can open (a tuner's session: the current stream plus hedged/probing attempts); url:
            # streams without an account have no limit of their own
            upstreams=sum(min(n, 8 * cfg.tuner.tuner_count) for n in self.shared.slots.limits.values()),
            health_slots=lim.health_slots,
        )
        try:
            self.server = await loop.create_server(
                self._protocol, cfg.server.host, cfg.server.port, reuse_address=True, backlog=1024
            )
        except OSError as e:
            await self.events.close()
            self.store.close()
            raise ListenError(cfg.server.host, cfg.server.port, e) from None
        sock = self.server.sockets[0].getsockname()
        self.port = sock[1]
        self.started_at = loop.time()
        log.info("listening on http://%s:%d", _host_for_url(cfg.server.host), self.port)
        if cfg.cluster.redis_url is not None:  # cluster hook: relay_id on every event, leases in Redis
            self.relay_id = relay_id(cfg, self.port)
            self.events.stamp = {"relay_id": self.relay_id}
        self.ledger = make_ledger(cfg, self.shared.slots, self.relay_id, self.events.emit)
        await self.ledger.start()
        self.shared.ledger = self.ledger
        device = device_info(cfg, self.port)
        self.discovery = await start_discovery(cfg, device, loop, log, view=self.live_view)
        self._reconciler = loop.call_later(RECONCILE_S, self._reconcile_tick)
        self.guide.start()
        if cfg.cluster.redis_url is not None:  # cluster hook: one sync at a time (relay.cluster.sync)
            self.sync_task = start_cluster_sync(
                cfg, self.store.path, self.events, self.relay_id, self._synced
            )
        else:
            self.sync_task = start_sync(self.cfg, self.store, self.events, on_synced=self._synced)

    def reopen(self) -> None:
        """SIGHUP: reopen the JSON-lines event file (an outside logrotate moved it)."""
        if self.events is not None:
            self.events.reopen()
            log.info("events: reopening %s before the next event", self.events.jsonl_path)

    async def stop(self) -> None:
        """Stop accepting, end every stream cleanly, flush every event to both sinks."""
        if self.server is not None:
            self.server.close()
        if self._reconciler is not None:
            self._reconciler.cancel()
        for d in self.discovery:
            d.close()
        await self.guide.stop()
        await stop_sync(self.sync_task)
        await self.ui.close()  # issue 19
        for s in list(self.sessions):
            s.close("Shutdown")
        for c in [*self.connections, *self.health_conns]:
            c.close()
        if self.ledger is not None:
            await self.ledger.close()  # gives back every lease still held
        if self.server is not None:
            await self.server.wait_closed()
            self.server = None
        if self.events is not None:
            await self.events.close()
        await self.notifier.stop()
        if self.store is not None:
            self.store.close()

    def _load_channels(self) -> None:
        assert self.store is not None
        self.channels = channel_list(self.cfg, self.store)
        self._by_id = {c.id: c for c in self.channels}
        self._by_number = {c.number: c.id for c in self.channels}
        secrets = [s for a in self.cfg.accounts for s in (a.username, a.password) if len(s) >= 3]
        self.art = {}
        for cid, (logo, group) in self.store.channel_art().items():
            if logo and any(secret in logo for secret in secrets):
                logo = None  # a logo URL on the panel with the line's credentials in it: not shown
            self.art[cid] = hdhomerun.ChannelArt(logo, group)

    def _synced(self, report: SyncReport) -> None:
        """After a sync: new channels in the lineup and guide, the panels' connection limits."""
        before = len(self.channels)
        self._load_channels()
        self.ui.synced(report)  # issue 19: the page shows the last report
        self.metrics.synced(report)  # issue 19
        if self.store is not None:  # issue 19: accounts that expire soon, in words
            self.notifier.accounts_synced(self.store.accounts(), self.wall_clock())
        if self.shared is not None and self.store is not None:
            self.shared.slots.limits.update(account_limits(self.cfg, self.store))
            self.shared.directory = self.store.stream_directory()
            reported = {a.name: a.active_cons for a in report.accounts if a.active_cons is not None}
            self.reconcile_slots(reported)
        if len(self.channels) != before:
            log.info("lineup: %d channels (was %d)", len(self.channels), before)
            asyncio.get_running_loop().create_task(self.guide.refresh())

    def reconcile_slots(self, active_cons: dict[str, int] | None = None) -> None:
        """Check the slot ledger against the upstream connections really open; log and fix a leak."""
        if self.shared is None:
            return
        open_now: dict[str, int] = {}
        now = self.shared.clock()
        for s in self.sessions:
            for account in s.status(now).upstreams:
                open_now[account] = open_now.get(account, 0) + 1
        drift = self.shared.slots.reconcile(open_now, active_cons)
        if drift:
            log.warning("slots: ledger was off by %s; set to the connections open now", drift)
        if self.ledger is not None and self.ledger.clustered:  # cluster hook: leases without an owner
            live = self.tuners.members()
            for s in self.sessions:
                if s.leases is not None:
                    live |= {lease.member for lease in s.leases.held.values()}
            self.ledger.reconcile(live)

    def _reconcile_tick(self) -> None:
        self.reconcile_slots()
        self._reconciler = asyncio.get_running_loop().call_later(RECONCILE_S, self._reconcile_tick)

    def _protocol(self) -> HttpProtocol:
        full = len(self.connections) >= self.max_clients
        if full and len(self.health_conns) < self.cfg.limits.health_slots:
            p = HttpProtocol(
                self.route,
                max_head_bytes=self.cfg.server.max_head_bytes,
                header_timeout_s=self.cfg.limits.health_wait_s,
                on_close=self.health_conns.discard,
                health_only=True,
            )
            self.health_conns.add(p)
            return p
        p = HttpProtocol(
            self.route,
            max_head_bytes=self.cfg.server.max_head_bytes,
            header_timeout_s=self.cfg.server.header_timeout_s,
            on_close=self.connections.discard,
            reject=full,  # answered 503, then closed
        )
        if not full:
            self.connections.add(p)
        return p

    # ---- routing ------------------------------------------------------------------------------

    def route(self, proto: HttpProtocol, req: Request) -> None:
        entry = self.routes.get(req.path)
        if entry is not None:
            methods, handler = entry
            if req.method not in methods:
                proto.respond(http11.error(405, headers=[("Allow", ", ".join(methods))]), keep_alive=False)
                return
            handler(proto, req)
            return
        for prefix, methods, phandler in self.prefixes:
            if req.path.startswith(prefix):
                if req.method not in methods:
                    proto.respond(
                        http11.error(405, headers=[("Allow", ", ".join(methods))]), keep_alive=False
                    )
                    return
                phandler(proto, req, req.path[len(prefix) :])
                return
        proto.respond(http11.error(404, "Not found"), keep_alive=False)

    def json(self, proto: HttpProtocol, req: Request, body: Any, status: int = 200) -> None:
        proto.respond(
            http11.response(
                status,
                orjson.dumps(body),
                "application/json",
                keep_alive=req.keep_alive,
                head_only=req.head_only,
            ),
            keep_alive=req.keep_alive,
        )

    def _health(self, proto: HttpProtocol, req: Request) -> None:
        loop = asyncio.get_running_loop()
        problems = self.events.degraded if self.events is not None else []
        body: dict[str, Any] = {
            "status": "degraded" if problems else "ok",  # still 200: streams are served either way
            "uptime_s": round(loop.time() - self.started_at, 1),
            "sessions": len(self.sessions),
            "channels": len(self.channels),
            **self._cluster_health(),
        }
        if problems:
            body["problems"] = problems
        self.json(proto, req, body)

    def _cluster_health(self) -> dict[str, Any]:
        """In a cluster: this relay's name, whether its ledger answers, the leases it holds."""
        ledger = self.ledger
        if ledger is None or not ledger.clustered:
            return {}
        return {
            "relay_id": self.relay_id,
            "ledger": {"available": getattr(ledger, "available", None), "held": ledger.held()},
        }

    def _metrics(self, proto: HttpProtocol, req: Request) -> None:
        self._send(proto, req, self.metrics.exposition(), METRICS_CONTENT_TYPE)

    def _status(self, proto: HttpProtocol, req: Request) -> None:
        body = self.metrics.status()
        if self.events is not None:
            body["event_sinks"] = {s.name: s.status() for s in (self.events.file_sink, self.events.db_sink)}
        self.json(proto, req, body)

    # ---- the HDHomeRun tuner Plex talks to ---------------------------------------------------------

    def base_url(self, proto: HttpProtocol, req: Request) -> str:
        return hdhomerun.base_url(self.cfg, req.headers.get("host"), self.port, local_ip=proto.local_ip)

    def _send(self, proto: HttpProtocol, req: Request, body: bytes, content_type: str) -> None:
        data = http11.response(200, body, content_type, keep_alive=req.keep_alive, head_only=req.head_only)
        proto.respond(data, keep_alive=req.keep_alive)

    def _discover(self, proto: HttpProtocol, req: Request) -> None:
        self._send(
            proto, req, hdhomerun.discover_json(self.cfg, self.base_url(proto, req)), "application/json"
        )

    def _lineup(self, proto: HttpProtocol, req: Request) -> None:
        body = hdhomerun.lineup_json(self.channels, self.base_url(proto, req))
        self._send(proto, req, body, "application/json")

    def _lineup_m3u(self, proto: HttpProtocol, req: Request) -> None:
        body = hdhomerun.lineup_m3u(self.channels, self.base_url(proto, req), self.art)
        self._send(proto, req, body, "audio/x-mpegurl")

    # ---- what the tuners do now: status.json, tuners.html and the TCP control channel ------------------

    def live_view(self) -> LiveView:
        """Each tuner's stream (channel, viewer, bit/s), read from the sessions that have a viewer."""
        now = asyncio.get_running_loop().time()
        playing = []
        for s in self.sessions:
            ch = self._by_id.get(s.channel)
            st = s.status(now)
            if s.ended or st.lingering or not st.clients or ch is None:
                continue
            port = getattr(s.outputs.viewers[0], "peer_port", 0)  # the first viewer is the tuner's target
            bps = int(st.bitrate_kbps * 1000)
            playing.append(Playing(s, ch.number, ch.name, st.peers[0], port, bps))
        return self._tuner_slots.view(playing, len(self.channels))

    def _status_json(self, proto: HttpProtocol, req: Request) -> None:
        self._send(proto, req, hdhomerun.status_json(self.live_view()), "application/json")

    def _tuners_html(self, proto: HttpProtocol, req: Request) -> None:
        self._send(proto, req, hdhomerun.tuners_html(self.live_view()), "text/html; charset=utf-8")

    def _lineup_xml(self, proto: HttpProtocol, req: Request) -> None:
        body = hdhomerun.lineup_xml(self.channels, self.base_url(proto, req))
        self._send(proto, req, body, "application/xml")

    def _lineup_status(self, proto: HttpProtocol, req: Request) -> None:
        self._send(proto, req, hdhomerun.lineup_status_json(), "application/json")

    def _lineup_post(self, proto: HttpProtocol, req: Request) -> None:
        self._send(proto, req, hdhomerun.lineup_post_body(), "application/json")

    def _device_xml(self, proto: HttpProtocol, req: Request) -> None:
        self._send(proto, req, hdhomerun.device_xml(self.cfg, self.base_url(proto, req)), "application/xml")

    def _xmltv(self, proto: HttpProtocol, req: Request) -> None:
        files = self.guide.current()
        if files is None:
            proto.respond(
                http11.error(503, "Guide not built yet", headers=[("Retry-After", "5")]), keep_alive=False
            )
            return
        gz = "gzip" in req.headers.get("accept-encoding", "").lower()
        try:
            f = open(files.gz if gz else files.xml, "rb")  # noqa: SIM115 - handed to the protocol, which closes it
        except OSError:
            proto.respond(http11.error(503, "Guide not built yet"), keep_alive=False)
            return
        headers = [("Vary", "Accept-Encoding"), ("Last-Modified", _http_date(files.built_at))]
        if gz:
            headers.append(("Content-Encoding", "gzip"))
        proto.send_file(f, "application/xml; charset=utf-8", headers, head_only=req.head_only)

    # ---- streams ------------------------------------------------------------------------------

    def _auto(self, proto: HttpProtocol, req: Request, number: str) -> None:
        channel = self._by_number.get(number)
        if channel is None:
            proto.respond(http11.error(404, "Unknown channel"), keep_alive=False)
            return
        self._stream(proto, req, channel)

    def _stream(self, proto: HttpProtocol, req: Request, channel: str) -> None:
        ch = self._by_id.get(channel)
        if ch is None:
            proto.respond(http11.error(404, "Unknown channel"), keep_alive=False)
            return
        if req.head_only:
            proto.respond(http11.stream_head("video/mp2t", chunked=proto.chunked), keep_alive=False)
            return
        proto.peer = forwarded_client(self.cfg, proto.peer, req.headers)  # cluster hook: the viewer
        session = self.by_channel.get(ch.id)
        if session is None or session.ended:
            wait = self.tunes.admit(ch.id, proto.peer, asyncio.get_running_loop().time())
            if wait is not None:
                self._refuse_tune(proto, ch.id, wait)
                return
            session = self._new_session(ch.id, proto.peer)
            if session is None:
                busy = hdhomerun.TunerError.ALL_TUNERS_IN_USE.header()
                proto.respond(http11.error(503, "All tuners in use", headers=[busy]), keep_alive=False)
                return
        proto.streaming = True
        proto.session = session
        session.add_output(proto)
        if session.status(session.shared.clock()).state is State.IDLE:
            self.tuners.start(session)  # in a cluster: after a tuner lease (relay.cluster.tuners)

    def _refuse_tune(self, proto: HttpProtocol, channel: str, wait: float) -> None:
        """A client that keeps tuning failing channels: 429, without a session or a provider request."""
        retry = max(1, math.ceil(wait))
        assert self.events is not None
        self.events.emit(
            events.TuneRefused(channel=channel, peer=proto.peer, reason="RateLimited", retry_after_s=retry)
        )
        proto.respond(
            http11.error(429, "Channel failing; tuned too often", headers=[("Retry-After", str(retry))]),
            keep_alive=False,
        )

    def _new_session(self, channel: str, peer: str) -> ChannelSession | None:
        """A session for a channel nobody watches yet, if a tuner is free (reclaiming one if need be)."""
        assert self.store is not None and self.shared is not None
        active = [s for s in self.sessions if not s.lingering]
        if len(active) >= self.cfg.tuner.tuner_count:
            return None
        candidates = self.store.candidates(channel)
        self._reclaim_slots({c.account for c in candidates}, peer)
        session = ChannelSession(channel, candidates, self.shared, self._session_ended)
        self.sessions.add(session)
        self.by_channel[channel] = session
        return session

    def _reclaim_slots(self, accounts: set[str], peer: str) -> None:
        """Zapping on full accounts: free a slot from a lingering session, else from the same client.

        Plex often tunes the next channel before it closes the previous one; on a one-connection
        account that would be a 503. A lingering session (no client left) gives its slot up at once;
        failing that, a session whose only clients are the same address (the zapping Plex) does.
        """
        assert self.shared is not None
        slots = self.shared.slots
        if not accounts or any(slots.free(a) > 0 for a in accounts):
            return
        now = self.shared.clock()
        status = {s: s.status(now) for s in self.sessions}
        lingering = [s for s, st in status.items() if st.lingering]
        same_client = [s for s, st in status.items() if st.peers and all(p == peer for p in st.peers)]
        for victim in (*lingering, *same_client):
            cur = status[victim].current
            if cur is not None and cur.account in accounts:
                victim.close("Reclaimed")
                return

    def _tuner_refused(self, session: ChannelSession, refusal: Refusal) -> None:
        """The cluster has no tuner free (or cannot be asked): 805 to every viewer of the session."""
        assert self.events is not None
        self.events.emit(
            events.ClusterTuneRefused(channel=session.channel, reason=refusal.reason, detail=refusal.detail)
        )
        busy = hdhomerun.TunerError.ALL_TUNERS_IN_USE.header()
        for out in list(session.outputs.viewers):
            session.remove_output(out, "TunerBusy")
            if isinstance(out, HttpProtocol):
                out.session = None
                out.respond(http11.error(503, "All tuners in use", headers=[busy]), keep_alive=False)
        session.close("TunerBusy")

    def _session_ended(self, session: ChannelSession) -> None:
        # every stream failed: tunes of it are limited for a while (not when only the provider's
        # connection limit or the cluster's ledger said no: the channel itself is fine)
        if session.exhausted and session.exhausted_reason not in NOT_THE_STREAM:
            self.tunes.failed(session.channel, asyncio.get_running_loop().time())
        elif session.started:
            self.tunes.recovered(session.channel)
        self.tuners.ended(session)
        self.metrics.session_ended(session.status(session.shared.clock()))
        self.sessions.discard(session)
        if self.by_channel.get(session.channel) is session:
            del self.by_channel[session.channel]


def _http_date(ts: float) -> str:
    from email.utils import formatdate

    return formatdate(ts, usegmt=True)


def _host_for_url(host: str) -> str:
    return f"[{host}]" if ":" in host else host


async def run(cfg: Config, stop: asyncio.Event) -> None:
    """Serve until `stop` is set."""
    relay = Relay(cfg)
    await relay.start()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, relay.reopen)  # logrotate's postrotate, systemd's ExecReload
    try:
        await stop.wait()
    finally:
        loop.remove_signal_handler(signal.SIGHUP)
        await relay.stop()
