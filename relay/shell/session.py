"""A channel session: the I/O shell that carries out the failover machine's actions.

One session per channel, shared by every viewer of it: it owns the upstream attempts, carries out
the machine's actions (open, close, switch, record, exhausted), runs its one clock timer and the
keepalive poll (null packets over a gap, the splice's lag, NoMedia/NoVideo, StreamSlow), and passes
the current upstream's packets through the splice. The session outlives its last viewer by `server.linger_s`
(a quick return, or Plex's retune, reuses it). Its parts live next to it: the viewers and their
fan-out in relay/shell/outputs.py, the re-encoders in relay/shell/transcode.py; decisions are made
in relay/core/failover.py. This module only translates between sockets, time and those decisions.

Over 400 lines because the machine's actions, the timer and the upstream callbacks are one translation;
fan-out and transcoding already live apart.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from relay.cluster.leases import SessionLeases
from relay.cluster.ledger import Ledger, Refusal
from relay.config import Config
from relay.core import events
from relay.core.failover import (
    Action,
    Candidate,
    Close,
    Exhausted,
    FailoverMachine,
    HealthMemory,
    Log,
    Open,
    Reason,
    Slots,
    Switch,
)
from relay.core.flow import FlowControl
from relay.core.status import SessionStatus
from relay.shell import transcode
from relay.shell.hls_upstream import HlsUpstreamAttempt
from relay.shell.outputs import Output, Outputs
from relay.shell.upstream import UpstreamAttempt
from relay.sources import streams
from relay.sources.tls import account_tls_context, tls_context
from relay.storage.eventlog import EventLog
from relay.ts import Splicer
from relay.ts.gop import GopCache

PENDING_LIMIT = 1 << 20  # bytes a not-yet-chosen attempt may buffer before it is paused
KEEPALIVE_S = 0.25  # how often a silent client is fed null packets, and content health is checked


@dataclass
class Shared:
    """What every session of one relay shares: config, clock, the event log, slots, health."""

    config: Config
    events: EventLog
    health: HealthMemory
    slots: Slots
    clock: Callable[[], float]
    directory: streams.Directory = field(default_factory=streams.Directory)  # URL streams, panel formats
    ledger: Ledger | None = None  # a cluster's lease store (relay.cluster); None: Slots is the whole truth

    def url_for(self, c: Candidate) -> streams.Target:
        """The kind (ts, hls, auto) and URL the candidate plays: relay/sources/streams.py decides."""
        return streams.target_for(self.config, c, self.directory)

    def tls_for(self, c: Candidate) -> Callable[[], ssl.SSLContext]:
        """The TLS context an https:// account's connections use (its tls_verify and ca_file)."""
        if c.account == streams.DIRECT_ACCOUNT:
            return functools.partial(tls_context, True, None)
        return functools.partial(account_tls_context, self.config.account(c.account), self.config.base_dir)


class ChannelSession:
    def __init__(
        self,
        channel: str,
        candidates: list[Candidate],
        shared: Shared,
        on_end: Callable[[ChannelSession], None],
    ) -> None:
        self.channel = channel
        self.shared = shared
        self.loop = asyncio.get_running_loop()
        self.machine = FailoverMachine(
            channel, candidates, shared.config.failover.policy(), shared.health, shared.slots
        )
        self.attempts: dict[int, UpstreamAttempt | HlsUpstreamAttempt] = {}
        self.current: UpstreamAttempt | HlsUpstreamAttempt | None = None
        self.ended = False
        self.exhausted = False  # ended because every stream failed (the tune limiter counts these)
        self.exhausted_reason: str | None = None  # ... and why (a full account is not the channel's fault)
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._linger: asyncio.TimerHandle | None = None
        self._on_end = on_end
        self.started_at = shared.clock()
        fo = shared.config.failover
        self.transcoders = transcode.Transcoders(
            transcode.available() if fo.transcode else None,
            on_packets=self._transcoded,
            on_end=self._transcoder_ended,
            on_backlog=self._transcoder_backlog,
        )
        self.splicer = Splicer(
            fo.keyframe_wait_s,
            fo.no_video_s,
            enabled=fo.splice,
            no_media_s=fo.no_media_s,
            slow_window_s=fo.slow_window_s,
            slow_ratio=fo.slow_ratio,
            frame_hold=fo.frame_hold,
            transcodable=self.transcoders.can if self.transcoders.ffmpeg else None,
        )
        server = shared.config.server
        self.outputs = Outputs(
            channel,
            self.splicer,
            FlowControl(self._pause_upstream, self._resume_upstream),
            self.loop,
            buffer_limit=server.client_buffer_bytes,
            stall_s=server.client_stall_s,
            emit=shared.events.emit,
            on_drop=self.remove_output,
            write_interval_s=server.write_interval_ms / 1000,
            write_bytes=server.write_coalesce_bytes,
        )
        self.flow = self.outputs.flow
        self.gop = GopCache(server.join_gop_bytes)  # a joiner's instant start (relay/ts/gop.py)
        self._keepalive: asyncio.TimerHandle | None = None
        self._last_out = 0.0
        # cluster hook: each Open waits for a lease first (relay.cluster.leases)
        ledger = shared.ledger
        self.leases = (
            SessionLeases(
                ledger,
                channel,
                lambda account: shared.slots.limits.get(account, 1),
                self._connect,
                self._lease_refused,
                lambda attempt: self.on_failed(attempt, Reason.ACCOUNT_FULL, None),
            )
            if ledger is not None and ledger.clustered
            else None
        )

    def status(self, now: float) -> SessionStatus:
        """The session as /status, the metrics and the relay read it (`now` on the session's clock)."""
        m = self.machine
        outs = self.outputs.viewers
        return SessionStatus(
            channel=self.channel,
            state=m.state,
            current=m.current_candidate,
            upstreams=tuple(a.candidate.account for a in m.attempts.values()),
            uptime_s=max(now - self.started_at, 1e-6),
            clients=len(outs),
            peers=tuple(o.peer for o in outs),
            lingering=self.lingering,
            bytes_out=self.outputs.bytes_out,
            lag_s=self.splicer.lag_s,
            failovers=m.failovers,
            upgrades=m.upgrades,
        )

    @property
    def started(self) -> bool:
        """The response head went out to the viewers."""
        return self.outputs.started

    @property
    def bytes_out(self) -> int:
        return self.outputs.bytes_out

    # ---- viewers (relay/shell/server.py calls these) -----------------------------------------

    @property
    def lingering(self) -> bool:
        """No client left, kept warm for `linger_s`: holds no tuner and is the first to be reclaimed."""
        return not self.outputs and not self.ended

    def add_output(self, out: Output) -> None:
        """A client joins (at once if the stream runs: see Outputs.add)."""
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        gop = self.gop.snapshot(self.splicer.psi_pids) if self.outputs.started else None
        self.outputs.add(out, gop)

    def remove_output(self, out: Output, reason: str = "ClientGone") -> None:
        self.outputs.remove(out)
        if self.outputs or self.ended:
            return
        linger = self.shared.config.server.linger_s
        if linger > 0 and self.started:
            self._linger = self.loop.call_later(linger, self.close, reason)
        else:
            self.close(reason)

    def output_paused(self, out: Output) -> None:
        self.outputs.paused(out)

    def output_resumed(self, out: Output) -> None:
        self.outputs.resumed(out)

    def _pause_upstream(self) -> None:
        self.machine.paused(self.shared.clock())
        if self.current is not None:
            self.current.pause_reading()

    def _resume_upstream(self) -> None:
        self.machine.resumed(self.shared.clock())
        self.splicer.slowness.reset()  # held back on purpose: not the provider's slowness
        if self.current is not None:
            self.current.resume_reading()
        self._arm()

    # ---- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        self._run(self.machine.start(self.shared.clock()))

    def close(self, reason: str) -> None:
        """End the session: close upstreams, finish every output, log session_end."""
        if self.ended:
            return
        self._run(self.machine.close(self.shared.clock(), reason))
        self._end()
        for out in self.outputs.take_all():
            out.finish()

    def _end(self) -> None:
        self.ended = True
        if self._keepalive is not None:
            self._keepalive.cancel()
            self._keepalive = None
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        self.outputs.close()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for att in self.attempts.values():
            att.close()
        self.attempts.clear()
        if self.leases is not None:
            self.leases.close_all()
        self.transcoders.close_all()
        self.current = None
        self._on_end(self)

    # ---- upstream sink ----------------------------------------------------------------------

    def on_head(self, attempt: int) -> None:
        self._run(self.machine.head(attempt, self.shared.clock()))

    def on_packets(
        self, attempt: int, views: list[memoryview], region: tuple[bytearray, int] | None = None
    ) -> None:
        cur = self.current
        if cur is not None and cur.id == attempt:  # the hot path
            now = self.shared.clock()
            self.machine.packets(attempt, now)
            tx = self.transcoders.get(attempt)
            if tx is not None:
                tx.write(views)
            else:
                self._send(views, now, region)
            return
        att = self.attempts.get(attempt)
        if att is None:
            return
        att.pending += views
        att.pending_bytes += sum(len(v) for v in views)
        if att.pending_bytes > PENDING_LIMIT:
            att.pause_reading()
        self._run(self.machine.packets(attempt, self.shared.clock()))

    def on_failed(self, attempt: int, reason: Reason, status: int | None) -> None:
        if self.current is not None and self.current.id == attempt:
            self.outputs.flush()  # nothing more comes from it: what was gathered goes out now
        self._run(self.machine.failed(attempt, reason, self.shared.clock(), status))

    def on_discontinuity(self, attempt: int) -> None:
        """An HLS upstream's timeline breaks (EXT-X-DISCONTINUITY): splice it like a switch."""
        cur = self.current
        if cur is not None and cur.id == attempt:
            if self.started:
                self._splice_switch(self.shared.clock())
        elif (att := self.attempts.get(attempt)) is not None:
            att.pending, att.pending_bytes = [], 0  # what came before the break never goes out

    def on_note(self, attempt: int, event: str, fields: dict[str, Any]) -> None:
        """An HLS upstream's own event (skipped segments, a failure's detail), named by its stream."""
        a = self.machine.attempts.get(attempt)
        stream = a.candidate.ref if a is not None else None
        if event == "hls_skipped":
            self.shared.events.emit(events.HlsSkipped(channel=self.channel, stream=stream, **fields))
        elif event == "hls_error":
            self.shared.events.emit(events.HlsError(channel=self.channel, stream=stream, **fields))

    # ---- actions ----------------------------------------------------------------------------

    def _run(self, actions: list[Action]) -> None:
        for a in actions:
            if isinstance(a, Open):
                if self.leases is not None:
                    self.leases.open(a.attempt, a.candidate)  # connects once the lease is granted
                else:
                    self._connect(a.attempt, a.candidate)
            elif isinstance(a, Close):
                if self.leases is not None:
                    self.leases.close(a.attempt)
                att = self.attempts.pop(a.attempt, None)
                self.transcoders.close(a.attempt)
                if att is not None:
                    att.close()
                    if att is self.current:
                        self.current = None
            elif isinstance(a, Switch):
                self._switch(self.attempts[a.attempt])
            elif isinstance(a, Log):
                self._log(a)
            elif isinstance(a, Exhausted):
                self._exhausted(a.started, a.reason)
                return
        if not self.ended:
            self._arm()

    def _connect(self, attempt: int, candidate: Candidate) -> None:
        att = self._attempt(attempt, candidate)
        self.attempts[attempt] = att
        att.start()

    def _lease_refused(self, attempt: int, refusal: Refusal) -> None:
        self.on_failed(attempt, Reason(refusal.reason), None)

    def _attempt(self, attempt: int, candidate: Candidate) -> UpstreamAttempt | HlsUpstreamAttempt:
        """The one place a stream's kind picks its attempt: Xtream TS, else the HLS (or probing) one."""
        t = self.shared.url_for(candidate)
        tls = self.shared.tls_for(candidate)
        if t.kind == "ts":
            return UpstreamAttempt(self.loop, attempt, t.url, self, user_agent=t.user_agent, ssl_context=tls)
        fo = self.shared.config.failover
        return HlsUpstreamAttempt(
            self.loop,
            attempt,
            t.url,
            self,
            user_agent=t.user_agent,
            ssl_context=tls,
            max_bandwidth=fo.hls_max_bandwidth,
            stall_s=fo.stall_timeout_s,
            live_edge=fo.hls_live_edge,
        )

    def _log(self, a: Log) -> None:
        """Record an event; a switch's event whose entry has not gone out yet goes back to the
        machine, which gives it back finished from `entry_sent`."""
        if a.until_entry and not self.splicer.entry_sent:
            self._record(self.machine.entry_pending(a, self.shared.clock()))
        else:
            self.shared.events.emit(a.what)

    def _record(self, logs: list[Log]) -> None:
        for log in logs:
            self.shared.events.emit(log.what)

    def _switch(self, att: UpstreamAttempt | HlsUpstreamAttempt) -> None:
        """From the next whole packet on, relay `att`: the old one's partial packet never goes out."""
        now = self.shared.clock()
        self.current = att
        if not self.started:
            self.outputs.start()
            self._keepalive = self.loop.call_later(KEEPALIVE_S, self._keepalive_tick)
        else:
            self._splice_switch(now)
        pending, att.pending, att.pending_bytes = att.pending, [], 0
        if pending:
            self._send(pending, now)
        if self.flow.paused:
            self._pause_upstream()
        else:
            att.resume_reading()

    def _splice_switch(self, now: float) -> None:
        """The splice takes a new upstream from here on; the joiners' GOP starts again at its entry."""
        self.splicer.switch(now)
        self.gop.clear()

    def _send(self, views: list[memoryview], now: float, region: tuple[bytearray, int] | None = None) -> None:
        """The current upstream's packets through the splice to every client, by reference."""
        out = self.splicer.feed(views, now, region)
        cur = self.current
        if self.splicer.codec_change and cur is not None and cur.id not in self.transcoders:
            self._start_transcoder(cur.id, views, now)
        if out:
            self._spliced_out(out, now)

    def _spliced_out(self, out: list[bytes | memoryview], now: float) -> None:
        """The splice let `out` go; a switch event waiting for the backup's entry goes with it."""
        self._last_out = now
        self.gop.add(out, self.splicer.video_stream)
        self.outputs.write(out)
        if self.splicer.entry_streaming:
            self.outputs.flush()  # the first picture after a switch or a tune: now, not at the interval
        if self.machine.awaiting_entry and self.splicer.entry_sent:
            self.outputs.flush()  # the backup's entry goes out now, not at the next interval
            self._record(self.machine.entry_sent(now))

    # ---- re-encoding a backup in other codecs ------------------------------------------------

    def _start_transcoder(self, attempt: int, views: list[memoryview], now: float) -> None:
        """The current upstream brings other codecs: from here on its bytes go through ffmpeg."""
        want, have = self.splicer.output_types(), self.splicer.upstream_types()
        tx = self.transcoders.start(attempt, want, have)
        self._splice_switch(now)  # its re-encoded output enters like a new upstream
        tx.write(views)
        cur = self.machine.current_candidate
        self.shared.events.emit(
            events.Transcode(
                channel=self.channel,
                to_stream=cur.ref if cur else None,
                from_codecs=transcode.describe(have),
                to_codecs=transcode.describe(want),
            )
        )

    def _transcoded(self, attempt: int, views: list[memoryview]) -> None:
        cur = self.current
        if cur is not None and cur.id == attempt:
            self._send(views, self.shared.clock())

    def _transcoder_backlog(self, attempt: int, behind: bool) -> None:
        """ffmpeg encodes slower than the stream comes: hold the upstream back rather than buffer it."""
        att = self.attempts.get(attempt)
        if att is None:
            return
        if behind:
            att.pause_reading()
        elif not self.flow.paused:
            att.resume_reading()

    def _transcoder_ended(self, attempt: int) -> None:
        """ffmpeg gave up (or could not start): that upstream failed, like one that ends."""
        if attempt in self.attempts:
            self.on_failed(attempt, Reason.STREAM_ERROR, None)

    # ---- the keepalive poll ------------------------------------------------------------------

    def _keepalive_tick(self) -> None:
        """Every KEEPALIVE_S: bridge a gap with null packets, and check the content's health."""
        if self.ended:
            return
        now = self.shared.clock()
        self._keepalive = self.loop.call_later(KEEPALIVE_S, self._keepalive_tick)
        if self.outputs and self.splicer.lag_s and (due := self.splicer.poll(now)):
            self._spliced_out(due, now)  # the upstream went quiet: what trailed it by the lag goes now
        if now - self._last_out >= KEEPALIVE_S and self.outputs and not self.flow.paused:
            bridge = self.splicer.bridge(now)
            if bridge:
                self._last_out = now
                self.outputs.bridge(bridge)
        if self.current is not None and (why := self.splicer.health(now)) is not None:
            self._run(self.machine.content_failed(Reason(why), now))  # NoMedia, NoVideo
        elif self.current is not None and not self.flow.paused and self.splicer.slowness.slow(now):
            self.splicer.slowness.reset()  # one search a window: measured afresh meanwhile
            self._run(self.machine.slow(now))  # StreamSlow: make-before-break

    def _exhausted(self, started: bool, reason: str) -> None:
        self.exhausted = True
        self.exhausted_reason = reason
        outs = self.outputs.take_all()
        self._run(self.machine.close(self.shared.clock(), "Exhausted"))
        self._end()
        for out in outs:
            if started:
                out.abort()
            else:
                out.unavailable()

    # ---- the one timer ----------------------------------------------------------------------

    def _arm(self) -> None:
        when = self.machine.next_deadline()
        if when is None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = self._timer_at = None
            return
        if self._timer is not None and self._timer_at is not None and self._timer_at <= when:
            return  # an earlier timer will fire and re-arm
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = self.loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self._timer = self._timer_at = None
        if not self.ended:
            self._run(self.machine.tick(self.shared.clock()))
