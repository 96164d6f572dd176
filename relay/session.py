"""A channel session: the I/O shell that carries out the failover machine's actions.

One session per channel: it owns the upstream attempts, one clock timer, and a list of client
outputs (today one; the shared-upstream work adds more without changing this shape). Packets of
the current attempt go to every output as one chunk per upstream read, by reference. Decisions are
made in relay/failover.py; this module only translates between sockets, time and those decisions.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from relay.config import Config
from relay.events import EventLog
from relay.failover import (
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
from relay.flow import FlowControl
from relay.upstream import UpstreamAttempt

PENDING_LIMIT = 1 << 20  # bytes a not-yet-chosen attempt may buffer before it is paused


class Output(Protocol):
    """A client of a session, as the session sees it."""

    def start_stream(self) -> None: ...
    def send(self, views: list[memoryview], size: int) -> None: ...
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

    def url_for(self, c: Candidate) -> tuple[str, str]:
        acc = self.config.account(c.account)
        return f"{acc.url}/live/{acc.username}/{acc.password}/{c.stream_id}.ts", acc.user_agent


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
        self._on_end = on_end
        self.flow = FlowControl(self._pause_upstream, self._resume_upstream)

    # ---- outputs ----------------------------------------------------------------------------

    def add_output(self, out: Output) -> None:
        self.outputs.append(out)

    def remove_output(self, out: Output, reason: str = "ClientGone") -> None:
        if out in self.outputs:
            self.outputs.remove(out)
            self.flow.resume(id(out))
        if not self.outputs and not self.ended:
            self.close(reason)

    def output_paused(self, out: Output) -> None:
        self.flow.pause(id(out))

    def output_resumed(self, out: Output) -> None:
        self.flow.resume(id(out))

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
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for att in self.attempts.values():
            att.close()
        self.attempts.clear()
        self.current = None
        self._on_end(self)

    # ---- upstream sink ----------------------------------------------------------------------

    def on_head(self, attempt: int) -> None:
        self._run(self.machine.head(attempt, self.shared.clock()))

    def on_packets(self, attempt: int, views: list[memoryview]) -> None:
        cur = self.current
        if cur is not None and cur.id == attempt:  # the hot path
            self.machine.packets(attempt, self.shared.clock())
            self._send(views)
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
                url, ua = self.shared.url_for(a.candidate)
                att = UpstreamAttempt(self.loop, a.attempt, url, self, user_agent=ua)
                self.attempts[a.attempt] = att
                att.start()
            elif isinstance(a, Close):
                att = self.attempts.pop(a.attempt, None)
                if att is not None:
                    att.close()
                    if att is self.current:
                        self.current = None
            elif isinstance(a, Switch):
                self._switch(self.attempts[a.attempt])
            elif isinstance(a, Log):
                self.shared.events.emit(a.event, a.level, a.fields)
            elif isinstance(a, Exhausted):
                self._exhausted(a.started)
                return
        if not self.ended:
            self._arm()

    def _switch(self, att: UpstreamAttempt) -> None:
        """From the next whole packet on, relay `att`: the old one's partial packet never goes out."""
        self.current = att
        if not self.started:
            self.started = True
            for out in self.outputs:
                out.start_stream()
        pending, att.pending, att.pending_bytes = att.pending, [], 0
        if pending:
            self._send(pending)
        if self.flow.paused:
            self._pause_upstream()
        else:
            att.resume_reading()

    def _send(self, views: list[memoryview]) -> None:
        size = sum(len(v) for v in views) if len(views) > 1 else len(views[0])
        self.bytes_out += size
        for out in self.outputs:
            out.send(views, size)

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
