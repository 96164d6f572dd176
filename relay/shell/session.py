"""A channel session: the I/O shell that carries out the failover machine's actions.

One session per channel: it owns the upstream attempts, one clock timer, and the list of client
outputs that share the upstream. Packets of the current attempt go to every output as one chunk per
upstream read, by reference: no per-client copy. A client joins at a packet boundary; the session
outlives its last client by `server.linger_s` (a quick return, or Plex's retune, reuses it). A client
whose write buffer falls more than `server.client_buffer_bytes` behind is dropped, with an event, so
it never slows the others; a client that stays paused (reads nothing) for `server.client_stall_s` is
dropped too, so it cannot hold a provider slot forever. Decisions are made in relay/failover.py;
this module only translates between sockets, time and those decisions.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from relay.cluster.leases import SessionLeases
from relay.cluster.ledger import Ledger, Refusal
from relay.config import Config
from relay.core import http11
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
from relay.shell import transcode
from relay.shell.upstream import UpstreamAttempt
from relay.sources.tls import account_tls_context
from relay.storage.eventlog import EventLog
from relay.ts import Splicer

PENDING_LIMIT = 1 << 20  # bytes a not-yet-chosen attempt may buffer before it is paused
KEEPALIVE_S = 0.25  # how often a silent client is fed null packets, and content health is checked


class Output(Protocol):
    """A client of a session, as the session sees it."""

    peer: str

    def buffered(self) -> int: ...
    def start_stream(self) -> None: ...
    def send(
        self, views: list[bytes | memoryview], size: int, framed: list[http11.Buffer] | None = None
    ) -> None: ...
    def unavailable(self) -> None: ...
    def abort(self) -> None: ...
    def finish(self) -> None: ...


@dataclass
class Shared:
    """What every session of one relay shares: config, clock, the event log, slots, health."""

    config: Config
    events: EventLog
    health: HealthMemory
    slots: Slots
    clock: Callable[[], float]
    ledger: Ledger | None = None  # a cluster's lease store (relay.cluster); None: Slots is the whole truth

    def url_for(self, c: Candidate) -> tuple[str, str]:
        acc = self.config.account(c.account)
        return f"{acc.url}/live/{acc.username}/{acc.password}/{c.stream_id}.ts", acc.user_agent

    def tls_for(self, c: Candidate) -> Callable[[], ssl.SSLContext]:
        """The TLS context an https:// account's connections use (its tls_verify and ca_file)."""
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
            channel, candidates, shared.config.failover, shared.health, shared.slots
        )
        self.outputs: list[Output] = []
        self.attempts: dict[int, UpstreamAttempt] = {}
        self.current: UpstreamAttempt | None = None
        self.started = False  # response head sent to the outputs
        self.ended = False
        self.bytes_out = 0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._linger: asyncio.TimerHandle | None = None
        self._on_end = on_end
        self.flow = FlowControl(self._pause_upstream, self._resume_upstream)
        self.started_at = shared.clock()
        fo = shared.config.failover
        ffmpeg = transcode.available() if fo.transcode else None
        self.splicer = Splicer(
            fo.keyframe_wait_s,
            fo.no_video_s,
            enabled=fo.splice,
            frame_hold=fo.frame_hold,
            transcodable=(lambda want, have: transcode.ffmpeg_args(want, have, ffmpeg) is not None)
            if ffmpeg
            else None,
        )
        self._ffmpeg = ffmpeg
        self._transcoders: dict[int, transcode.Transcoder] = {}  # attempt -> its re-encoder
        self._held_log: tuple[Log, float] | None = None
        self._keepalive: asyncio.TimerHandle | None = None
        self._last_out = 0.0
        self._joining: set[int] = set()  # outputs waiting for a keyframe to start
        # without the splice: the last read sent, so a joiner starts from it at once (as a fresh
        # upstream would start mid-GOP) instead of waiting for the next read
        self._recent: tuple[list[bytes | memoryview], int] | None = None
        self._stalls: dict[int, asyncio.TimerHandle] = {}  # paused outputs: when they get dropped
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

    # ---- outputs ----------------------------------------------------------------------------

    @property
    def lingering(self) -> bool:
        """No client left, kept warm for `linger_s`: holds no tuner and is the first to be reclaimed."""
        return not self.outputs and not self.ended

    def add_output(self, out: Output) -> None:
        """A client joins; if the stream already runs: the head and PAT/PMT now, then from a keyframe."""
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        self.outputs.append(out)
        self.flow.add(id(out))
        if self.started:
            out.start_stream()
            if not self.splicer.enabled and self._recent is not None:
                out.send(*self._recent)  # whole packets: the demuxer waits for the stream's own PSI
                return
            intro = self.splicer.join_prefix()
            if intro:
                out.send([memoryview(intro)], len(intro))
            self._joining.add(id(out))

    def remove_output(self, out: Output, reason: str = "ClientGone") -> None:
        if out in self.outputs:
            self.outputs.remove(out)
            self.flow.remove(id(out))
            self._joining.discard(id(out))
            self._cancel_stall(out)
        if self.outputs or self.ended:
            return
        linger = self.shared.config.server.linger_s
        if linger > 0 and self.started:
            self._linger = self.loop.call_later(linger, self.close, reason)
        else:
            self.close(reason)

    def output_paused(self, out: Output) -> None:
        self.flow.pause(id(out))
        if id(out) not in self._stalls:
            stall_s = self.shared.config.server.client_stall_s
            self._stalls[id(out)] = self.loop.call_later(stall_s, self._client_stalled, out)

    def output_resumed(self, out: Output) -> None:
        self.flow.resume(id(out))
        self._cancel_stall(out)

    def _cancel_stall(self, out: Output) -> None:
        timer = self._stalls.pop(id(out), None)
        if timer is not None:
            timer.cancel()

    def _client_stalled(self, out: Output) -> None:
        self._stalls.pop(id(out), None)
        if out in self.outputs:
            self._drop_slow(out, out.buffered(), "ClientStalled")

    def _drop_slow(self, out: Output, size: int, reason: str = "SlowClient") -> None:
        """A client fell too far behind the others, or stopped reading: drop it, free what it holds."""
        self.shared.events.emit(
            "client_dropped",
            "warn",
            {"channel": self.channel, "peer": out.peer, "reason": reason, "buffered_bytes": size},
        )
        self.remove_output(out, reason)
        out.abort()

    def _pause_upstream(self) -> None:
        self.machine.paused(self.shared.clock())
        if self.current is not None:
            self.current.pause_reading()

    def _resume_upstream(self) -> None:
        self.machine.resumed(self.shared.clock())
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
        for out in list(self.outputs):
            out.finish()
        self.outputs.clear()

    def _end(self) -> None:
        self.ended = True
        self._flush_held_log()
        if self._keepalive is not None:
            self._keepalive.cancel()
            self._keepalive = None
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        for timer in self._stalls.values():
            timer.cancel()
        self._stalls.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for att in self.attempts.values():
            att.close()
        self.attempts.clear()
        if self.leases is not None:
            self.leases.close_all()
        for tx in self._transcoders.values():
            tx.close()
        self._transcoders.clear()
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
            tx = self._transcoders.get(attempt)
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
        self._run(self.machine.failed(attempt, reason, self.shared.clock(), status))

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
                tx = self._transcoders.pop(a.attempt, None)
                if tx is not None:
                    tx.close()
                if att is not None:
                    att.close()
                    if att is self.current:
                        self.current = None
            elif isinstance(a, Switch):
                self._switch(self.attempts[a.attempt])
            elif isinstance(a, Log):
                self._log(a)
            elif isinstance(a, Exhausted):
                self._exhausted(a.started)
                return
        if not self.ended:
            self._arm()

    def _connect(self, attempt: int, candidate: Candidate) -> None:
        url, ua = self.shared.url_for(candidate)
        tls = self.shared.tls_for(candidate)
        att = UpstreamAttempt(self.loop, attempt, url, self, user_agent=ua, ssl_context=tls)
        self.attempts[attempt] = att
        att.start()

    def _lease_refused(self, attempt: int, refusal: Refusal) -> None:
        self.on_failed(attempt, Reason(refusal.reason), None)

    def _log(self, a: Log) -> None:
        """Emit an event; a switch's event waits until the backup's entry (its keyframe, whole) went
        out to the clients, so switch_ms is what a viewer waited."""
        if a.event in ("failover", "upgrade") and not self.splicer.entry_sent:
            self._flush_held_log()
            self._held_log = (a, self.shared.clock())
            return
        self.shared.events.emit(a.event, a.level, a.fields)

    def _flush_held_log(self, now: float | None = None) -> None:
        if self._held_log is None:
            return
        a, switched_at = self._held_log
        self._held_log = None
        fields = dict(a.fields)
        if now is not None:
            entry_ms = round((now - switched_at) * 1000, 1)
            fields["keyframe_wait_ms"] = entry_ms
            if fields.get("switch_ms") is not None:
                fields["switch_ms"] = round(fields["switch_ms"] + entry_ms, 1)
        self.shared.events.emit(a.event, a.level, fields)

    def _switch(self, att: UpstreamAttempt) -> None:
        """From the next whole packet on, relay `att`: the old one's partial packet never goes out."""
        now = self.shared.clock()
        self.current = att
        if not self.started:
            self.started = True
            for out in self.outputs:
                out.start_stream()
            self._keepalive = self.loop.call_later(KEEPALIVE_S, self._keepalive_tick)
        else:
            self.splicer.switch(now)
        pending, att.pending, att.pending_bytes = att.pending, [], 0
        if pending:
            self._send(pending, now)
        if self.flow.paused:
            self._pause_upstream()
        else:
            att.resume_reading()

    def _send(self, views: list[memoryview], now: float, region: tuple[bytearray, int] | None = None) -> None:
        """The current upstream's packets through the splice to every client, by reference."""
        out = self.splicer.feed(views, now, region)
        cur = self.current
        if self.splicer.codec_change and cur is not None and cur.id not in self._transcoders:
            self._start_transcoder(cur.id, views, now)
        if out:
            self._spliced_out(out, now)

    def _spliced_out(self, out: list[bytes | memoryview], now: float) -> None:
        """The splice let `out` go; a held switch event goes with the backup's entry."""
        self._last_out = now
        self._write(out)
        if self._held_log is not None and self.splicer.entry_sent:
            self._flush_held_log(now)

    def _start_transcoder(self, attempt: int, views: list[memoryview], now: float) -> None:
        """The current upstream brings other codecs: from here on its bytes go through ffmpeg."""
        want, have = self.splicer.output_types(), self.splicer.upstream_types()
        args = transcode.ffmpeg_args(want, have, self._ffmpeg or "ffmpeg")
        assert args is not None  # the splicer held it out only if this has an answer
        tx = transcode.Transcoder(
            args,
            on_packets=functools.partial(self._transcoded, attempt),
            on_end=functools.partial(self._transcoder_ended, attempt),
            on_backlog=functools.partial(self._transcoder_backlog, attempt),
        )
        self._transcoders[attempt] = tx
        self.splicer.switch(now)  # its re-encoded output enters like a new upstream
        tx.write(views)
        cur = self.machine.current_candidate
        self.shared.events.emit(
            "transcode",
            "info",
            {
                "channel": self.channel,
                "to_stream": cur.ref if cur else None,
                "reason": "CodecChange",
                "from_codecs": transcode.describe(have),
                "to_codecs": transcode.describe(want),
            },
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
        self._transcoders.pop(attempt, None)
        if attempt in self.attempts:
            self.on_failed(attempt, Reason.STREAM_ERROR, None)

    def _write(self, views: list[bytes | memoryview]) -> None:
        size = sum(len(v) for v in views) if len(views) > 1 else len(views[0])
        self.bytes_out += size
        limit = self.shared.config.server.client_buffer_bytes
        framed = http11.chunk(views, size)  # once per read, whatever the number of clients
        if not self.splicer.enabled:
            self._recent = (views, size)
        for out in self.outputs:
            if id(out) in self._joining:
                self._join(out, views)
                continue
            out.send(views, size, framed)
            # only a paused client (over the high-water mark) can be that far behind: ask only those
            if len(self.outputs) > 1 and self.flow.is_paused(id(out)) and out.buffered() > limit:
                self.loop.call_soon(self._drop_slow, out, out.buffered())

    def _join(self, out: Output, views: list[bytes | memoryview]) -> None:
        """A joining client starts at the first keyframe of the video (PAT/PMT went out before)."""
        for i, v in enumerate(views):
            off = self.splicer.keyframe_offset(v)
            if off is not None:
                rest = [memoryview(v)[off:], *views[i + 1 :]]
                self._joining.discard(id(out))
                out.send(rest, sum(len(r) for r in rest))
                return

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
                for out in self.outputs:
                    if id(out) not in self._joining:
                        out.send([memoryview(bridge)], len(bridge))
        if self.current is not None and self.splicer.health(now) == Reason.NO_VIDEO:
            self._run(self.machine.content_failed(Reason.NO_VIDEO, now))

    def _exhausted(self, started: bool) -> None:
        outs = list(self.outputs)
        self.outputs.clear()
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
