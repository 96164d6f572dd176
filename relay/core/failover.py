"""The failover policy of one channel session, as a sans-IO state machine.

Theory of operation. A session owns an ordered list of candidates (the channel's upstream streams,
best first). It opens *attempts* (one upstream HTTP connection each) and relays exactly one of them,
the *current* attempt. Everything that can happen to an attempt comes in as a method call with the
time (`head`, `packets`, `failed`, `tick`); everything the I/O shell must do comes out as actions
(`Open`, `Close`, `Switch`, `Exhausted`, `Log`). This module never reads a clock, never sleeps and
never touches a socket, so every rule below is a unit test.

The rules, in one place:
- A *round* looks for a stream to relay: at session start, after a failure of the current stream,
  and for a break-before-make upgrade. It walks its candidates in order, opening the next one when
  the previous has not delivered within `hedge_delay_s` (or at once when it failed), so a dead
  backup never eats the budget. At session start, candidates that failed within `cooldown_s` go
  last, and the round prefers priority: a lower candidate that is ready waits for a better one still
  connecting, for at most `connect_timeout_s`. After a failure, the first candidate to deliver whole
  packets wins.
- An attempt fails when: no response head within `connect_timeout_s` (ConnectionTimeout), the socket
  fails (ConnectionError), the status is not 2xx after redirects (HttpError), no body bytes for
  `stall_timeout_s` (StreamStall), or the body ends or errors (StreamError).
- A mid-stream round that finds nothing within `budget_s` of the detection is *exhausted*: the
  session ends. A start round is exhausted when every candidate failed. With `hold_s` set (for
  recordings), an exhausted mid-stream round instead holds the response open and retries every
  candidate with back-off (0.5 s, 1 s, 2 s ... 8 s) until `hold_s` after the detection.
- Upgrade: `upgrade_after_s` after switching to a lower-priority stream, probe the better
  candidates best first, one at a time, in the background; switch once one delivers packets
  (make-before-break). If none does, stay and restart the timer. When the only free way to probe is
  the slot our current stream holds on the same account, close it first (break-before-make) and run
  a round that tries the better stream, then the one we had.
- An account never holds more connections than its `max_connections` (the provider would kill the
  oldest, i.e. the stream we are protecting): a candidate on a full account waits or is skipped.
- Slow (StreamSlow, the shell's measure of media time against wall time): the other candidates are
  probed best first, one at a time, while the slow stream plays on (make-before-break, like an
  upgrade probe, never past an account's slots); the first to deliver packets takes over with a
  `failover` event. If none does, the slow stream stays.
- Every switch starts the new stream with fresh health state; only the per-stream failure time
  survives, in the shared HealthMemory.
- A switch's event (failover, upgrade) is finished only when the shell reports that the new
  stream's entry keyframe went out (`entry_pending`, `entry_sent`), so switch_ms is what a viewer
  waited.

Where things are: the states move only along `_ALLOWED` (one table, `_to` raises on any other
move); every timer is one entry of `_deadlines()`, which feeds both `tick` and `next_deadline`; the
events are typed in relay/core/events.py, the timings come in as a FailoverPolicy. It is one module
(~1,000 lines) because rounds, holds and upgrades share the attempts, the slots and the state.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from relay.core import events as ev
from relay.core.policy import FailoverPolicy


class Reason(enum.StrEnum):
    """Why an upstream attempt ended; a closed list so monitoring can group on it."""

    CONNECTION_TIMEOUT = "ConnectionTimeout"
    CONNECTION_ERROR = "ConnectionError"
    HTTP_ERROR = "HttpError"
    STREAM_STALL = "StreamStall"
    STREAM_ERROR = "StreamError"
    NO_VIDEO = "NoVideo"
    ACCOUNT_FULL = "AccountFull"
    LEDGER_UNAVAILABLE = "LedgerUnavailable"  # a cluster's lease store could not be asked: not tried
    NO_MEDIA = "NoMedia"  # no video and no audio PES (or no elementary streams) for no_media_s
    STREAM_SLOW = "StreamSlow"  # media time arrives slower than real time (slow_ratio over slow_window_s)
    SLOWER = "Slower"  # at tune: still connecting when a lower candidate won
    COOLDOWN = "Cooldown"  # at tune: failed recently, so tried last, and a lower one won first


# Reasons that say nothing about the stream itself: no cooldown for it
NOT_THE_STREAM = frozenset({Reason.ACCOUNT_FULL, Reason.LEDGER_UNAVAILABLE})


@dataclass(frozen=True)
class Candidate:
    """One upstream stream of a channel; `rank` is its place in the priority order (0 = best)."""

    account: str
    stream_id: int
    priority: int
    rank: int
    is_primary: bool = False

    @property
    def ref(self) -> str:
        """How events and logs name the stream: never a URL, never a credential."""
        return f"{self.account}/{self.stream_id}"


# ---- actions (what the shell must do) ---------------------------------------------------------


@dataclass(frozen=True)
class Open:
    attempt: int
    candidate: Candidate


@dataclass(frozen=True)
class Close:
    attempt: int


@dataclass(frozen=True)
class Switch:
    """Relay this attempt from its next whole packet on; the previous current one is closed."""

    attempt: int
    candidate: Candidate


@dataclass(frozen=True)
class Exhausted:
    """No stream could be found: answer 503 if nothing was sent yet, else end the response."""

    started: bool
    # why the last round ended (AccountFull: not the streams); not part of what the action is
    reason: str = field(default=str(Reason.CONNECTION_ERROR), compare=False)


@dataclass(frozen=True)
class Log:
    """An event to record (relay/core/events.py); `event`, `level`, `fields` read it as it is written.

    `until_entry`: a switch's event (failover, upgrade). If the new stream's entry (its keyframe,
    whole) has not gone out to the viewers when the shell carries this out, the shell hands it back
    with `FailoverMachine.entry_pending` instead of recording it, and `entry_sent` returns it finished.
    """

    what: ev.Event
    until_entry: bool = False

    @property
    def event(self) -> str:
        return self.what.kind

    @property
    def level(self) -> str:
        return self.what.level

    @property
    def fields(self) -> dict[str, object]:
        return self.what.fields()


Action = Open | Close | Switch | Exhausted | Log


# ---- shared state across sessions -------------------------------------------------------------


class HealthMemory:
    """When each stream last failed, shared by all sessions (a quick retune avoids a dead primary)."""

    def __init__(self) -> None:
        self._failed_at: dict[str, float] = {}

    def failed(self, ref: str, now: float) -> None:
        self._failed_at[ref] = now

    def recently_failed(self, ref: str, now: float, cooldown_s: float) -> bool:
        t = self._failed_at.get(ref)
        return t is not None and now - t < cooldown_s


class Slots:
    """Provider connections held per account, against each account's `max_connections`.

    Held slots are leases: every attempt acquires one when opened and releases it when dropped.
    `reconcile` checks the ledger against the connections really open (and fixes a leak, loudly);
    `external` counts connections the provider reports on the line that are not ours (another
    device on the same account), which leave us fewer slots until the next report.
    """

    def __init__(self, limits: dict[str, int]) -> None:
        self.limits = dict(limits)
        self.held: dict[str, int] = {name: 0 for name in limits}
        self.external: dict[str, int] = {}

    def free(self, account: str) -> int:
        return self.limits.get(account, 1) - self.held.get(account, 0) - self.external.get(account, 0)

    def reconcile(
        self, open_now: dict[str, int], active_cons: dict[str, int] | None = None
    ) -> dict[str, int]:
        """Set the ledger to the connections open now; returns what was wrong (account -> drift)."""
        drift = {a: self.held.get(a, 0) - open_now.get(a, 0) for a in set(self.held) | set(open_now)}
        drift = {a: d for a, d in drift.items() if d}
        for a in set(self.held) | set(open_now):
            self.held[a] = open_now.get(a, 0)
        for a, n in (active_cons or {}).items():
            self.external[a] = max(0, n - self.held.get(a, 0))
        return drift

    def acquire(self, account: str) -> None:
        if self.free(account) <= 0:
            raise RuntimeError(f"account {account} is full")  # a bug in the caller, never user input
        self.held[account] = self.held.get(account, 0) + 1

    def release(self, account: str) -> None:
        if self.held.get(account, 0) <= 0:
            raise RuntimeError(f"account {account} released more than acquired")
        self.held[account] -= 1


# ---- internal state ---------------------------------------------------------------------------


class State(enum.Enum):
    IDLE = "idle"
    STARTING = "starting"  # first round, nothing sent to the client yet
    STREAMING = "streaming"
    FAILING_OVER = "failing_over"  # a round after the current stream failed
    HOLDING = "holding"  # every candidate failed mid-stream; the response is held open, retrying
    EXHAUSTED = "exhausted"
    CLOSED = "closed"


# Every move the machine may make; `FailoverMachine._to` raises IllegalTransition on any other.
_ALLOWED: dict[State, frozenset[State]] = {
    State.IDLE: frozenset({State.STARTING, State.CLOSED}),  # start(); close() before start
    State.STARTING: frozenset(
        {
            State.STREAMING,  # the start round found a stream
            State.EXHAUSTED,  # every candidate failed before anything was sent
            State.CLOSED,
        }
    ),
    State.STREAMING: frozenset(
        {
            State.FAILING_OVER,  # the current stream failed, or a break-before-make upgrade gave it up
            State.CLOSED,
        }
    ),
    State.FAILING_OVER: frozenset(
        {
            State.STREAMING,  # the round found a stream (a backup, the upgrade target, or the old one)
            State.HOLDING,  # the round found nothing and hold_s allows a retry
            State.EXHAUSTED,  # the round found nothing within budget_s (or the hold ran out)
            State.CLOSED,
        }
    ),
    State.HOLDING: frozenset({State.FAILING_OVER, State.CLOSED}),  # the back-off retry; close()
    State.EXHAUSTED: frozenset({State.CLOSED}),  # the shell ends the session
    State.CLOSED: frozenset(),
}
_INACTIVE = frozenset({State.IDLE, State.EXHAUSTED, State.CLOSED})  # no deadlines, tick does nothing


class IllegalTransition(RuntimeError):
    """A move the table does not allow: a bug in the machine, never user input."""


class _Due(enum.Enum):
    """What a deadline is for; the attempt deadlines carry the Reason the attempt fails with."""

    STALL = "stall"  # the current stream: no bytes for stall_timeout_s
    CONNECT = "connect"  # an attempt: no response head within connect_timeout_s
    BODY = "body"  # an attempt: a head but no packets for stall_timeout_s
    RETRY = "retry"  # holding: the next back-off retry
    BUDGET = "budget"  # a round's budget_s ran out
    PREFER = "prefer"  # a start round: a ready lower candidate stops waiting for a better one
    HEDGE = "hedge"  # a round: the next candidate opens
    UPGRADE = "upgrade"  # upgrade_after_s on a lower-priority stream passed


_ATTEMPT_REASON = {
    _Due.STALL: Reason.STREAM_STALL,
    _Due.CONNECT: Reason.CONNECTION_TIMEOUT,
    _Due.BODY: Reason.STREAM_STALL,
}
_ROUND_DUES = frozenset({_Due.BUDGET, _Due.PREFER, _Due.HEDGE})


@dataclass
class _Attempt:
    id: int
    candidate: Candidate
    opened_at: float
    head_at: float | None = None
    ready_at: float | None = None
    probe: bool = False

    def deadline(self, policy: FailoverPolicy) -> tuple[float, _Due] | None:
        """When this (not current) attempt fails unless it gets further, and why."""
        if self.head_at is None:
            return self.opened_at + policy.connect_timeout_s, _Due.CONNECT
        if self.ready_at is None:
            return self.head_at + policy.stall_timeout_s, _Due.BODY
        return None


@dataclass
class _Round:
    kind: str  # "start" | "failover" | "upgrade"
    queue: list[Candidate]
    started_at: float
    deadline: float | None
    prefer_priority: bool
    reason: Reason | None = None
    http_status: int | None = None
    from_candidate: Candidate | None = None
    upgrade_target: Candidate | None = None
    attempted: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failures: list[ev.Failure] = field(default_factory=list)  # each candidate that failed, and why
    next_open_at: float = 0.0
    last_status: int | None = None
    last_reason: Reason | None = None
    detected_at: float = 0.0  # when the failure that started this search was seen (survives a hold)
    retries: int = 0


@dataclass
class _Upgrade:
    targets: list[Candidate]
    attempted: list[str] = field(default_factory=list)
    kind: str = "upgrade"  # "upgrade" (a better stream) | "slow" (away from a slow one, any other)
    started_at: float = 0.0
    last_reason: Reason | None = None
    last_status: int | None = None


class FailoverMachine:
    """The policy of one channel session; see the module docstring for the rules."""

    def __init__(
        self,
        channel: str,
        candidates: Sequence[Candidate],
        policy: FailoverPolicy,
        health: HealthMemory,
        slots: Slots,
    ) -> None:
        self.channel = channel
        self.candidates = sorted(candidates, key=lambda c: c.rank)
        self.policy = policy
        self.health = health
        self.slots = slots
        self._state = State.IDLE
        self.attempts: dict[int, _Attempt] = {}
        self.current: _Attempt | None = None
        self._round: _Round | None = None
        self._upgrade: _Upgrade | None = None
        self._next_id = 1
        self._last_data = 0.0
        self._paused = False
        self._upgrade_at: float | None = None
        self._held: _Round | None = None  # the exhausted round a hold is retrying
        self._retry_at: float | None = None
        self._started_at = 0.0
        self.failovers = 0
        self.upgrades = 0
        self._awaiting: tuple[ev.SwitchEvent, float] | None = None  # a switch event, and when it waits since

    @property
    def state(self) -> State:
        return self._state

    def _to(self, state: State) -> None:
        """The one place the state changes: only along the _ALLOWED table."""
        if state not in _ALLOWED[self._state]:
            raise IllegalTransition(f"{self.channel}: {self._state.name} -> {state.name}")
        self._state = state

    # ---- inputs -----------------------------------------------------------------------------

    def start(self, now: float) -> list[Action]:
        """Begin the session: the first round, healthy candidates first."""
        if self._state is not State.IDLE:
            raise RuntimeError("start() called twice")
        self._started_at = now
        self._to(State.STARTING)
        healthy = [c for c in self.candidates if not self._cooling(c, now)]
        cooling = [c for c in self.candidates if self._cooling(c, now)]
        self._round = _Round("start", healthy + cooling, now, None, prefer_priority=True)
        out: list[Action] = []
        self._advance(now, out)
        return out

    def head(self, attempt: int, now: float) -> list[Action]:
        """The attempt's upstream answered 2xx (after redirects): now it must deliver bytes."""
        a = self.attempts.get(attempt)
        if a is not None and a.head_at is None:
            a.head_at = now
        return []

    def packets(self, attempt: int, now: float) -> list[Action]:
        """The attempt delivered whole TS packets. Cheap for the current attempt: the hot path."""
        cur = self.current
        if cur is not None and cur.id == attempt:
            self._last_data = now
            return []
        a = self.attempts.get(attempt)
        if a is None:
            return []
        if a.head_at is None:
            a.head_at = now
        if a.ready_at is not None:
            return []
        a.ready_at = now
        out: list[Action] = []
        if a.probe:
            self._upgrade_won(a, now, out)
        elif self._round is not None:
            self._choose(now, out)
        return out

    def failed(
        self, attempt: int, reason: Reason, now: float, http_status: int | None = None
    ) -> list[Action]:
        """The attempt's connection failed or ended, for `reason`."""
        a = self.attempts.get(attempt)
        if a is None:
            return []
        out: list[Action] = []
        self._drop(a, now, out, failed=reason not in NOT_THE_STREAM)
        if self.current is a:
            self.current = None
            self._begin_failover(a.candidate, reason, http_status, now, out)
        elif a.probe:
            self._probe_failed(a, reason, http_status, now, out)
        elif self._round is not None:
            self._round.last_reason, self._round.last_status = reason, http_status
            self._round.failures.append(ev.Failure(a.candidate.ref, str(reason), http_status))
            self._advance(now, out)
            self._choose(now, out)
        return out

    def content_failed(self, reason: Reason, now: float) -> list[Action]:
        """The current stream flows but its content is broken (e.g. NoVideo): fail it over."""
        if self.current is None:
            return []
        return self.failed(self.current.id, reason, now)

    def slow(self, now: float) -> list[Action]:
        """The current stream arrives slower than real time: probe the others (make-before-break)."""
        cur = self.current
        if cur is None or self._state is not State.STREAMING or self._upgrade is not None:
            return []
        others = [c for c in self.candidates if c != cur.candidate]
        if not others:
            return []
        self.health.failed(cur.candidate.ref, now)
        healthy = [c for c in others if not self._cooling(c, now)]
        cooling = [c for c in others if self._cooling(c, now)]
        self._upgrade = _Upgrade(healthy + cooling, kind="slow", started_at=now)
        out: list[Action] = []
        self._probe_next(now, out)
        return out

    def entry_pending(self, log: Log, now: float) -> list[Log]:
        """The shell carried out the switch `log` announced, and the new stream's entry has not gone
        out yet: the event waits for `entry_sent`. Returns the one that was waiting, unfinished."""
        if not (log.until_entry and isinstance(log.what, ev.SwitchEvent)):
            raise ValueError(f"{log.event} does not wait for an entry")
        out = self._release_awaiting()
        self._awaiting = (log.what, now)
        return out

    def entry_sent(self, now: float) -> list[Log]:
        """The new stream's entry went out to the viewers at `now`: the waiting switch event, finished
        (the wait counts in its switch_ms: what a viewer waited)."""
        if self._awaiting is None:
            return []
        event, since = self._awaiting
        self._awaiting = None
        return [Log(event.entered(_ms(now - since)))]

    @property
    def awaiting_entry(self) -> bool:
        return self._awaiting is not None

    def _release_awaiting(self) -> list[Log]:
        if self._awaiting is None:
            return []
        event, _ = self._awaiting
        self._awaiting = None
        return [Log(event)]

    def paused(self, now: float) -> None:
        """The client stopped reading, so the upstream is paused: silence is not a stall."""
        self._paused = True

    def resumed(self, now: float) -> None:
        self._paused = False
        self._last_data = max(self._last_data, now)

    def tick(self, now: float) -> list[Action]:
        """Act on every deadline that has passed: the ones `next_deadline` reported, in one list."""
        out: list[Action] = []
        if self._state in _INACTIVE:
            return out
        round_checked = False
        # each due one is checked against the state again: acting on an earlier one may have moved it
        for when, due, attempt in self._deadlines():
            if when > now:
                continue
            if due in _ATTEMPT_REASON:
                a = self.attempts.get(attempt) if attempt is not None else None
                if a is not None and (a is self.current) == (due is _Due.STALL):
                    out += self.failed(a.id, _ATTEMPT_REASON[due], now)
            elif due is _Due.RETRY and self._retry_at is not None and now >= self._retry_at:
                self._retry(now, out)
            elif due in _ROUND_DUES and not round_checked and (rnd := self._round) is not None:
                round_checked = True
                if rnd.deadline is not None and now >= rnd.deadline:
                    self._exhaust(now, out)
                else:
                    self._advance(now, out)
                    self._choose(now, out)
            elif (
                due is _Due.UPGRADE
                and self._round is None
                and self._upgrade is None
                and self._upgrade_at is not None
                and now >= self._upgrade_at
            ):
                self._begin_upgrade(now, out)
        return out

    def close(self, now: float, reason: str) -> list[Action]:
        """The session ends (client gone, shutdown): close everything, log session_end."""
        if self._state is State.CLOSED:
            return []
        out: list[Action] = []
        cur = self.current
        for a in list(self.attempts.values()):
            self._drop(a, now, out, failed=False)
        was = self._state
        self._to(State.CLOSED)
        self._round = self._upgrade = self._held = None
        self._upgrade_at = self._retry_at = None
        self.current = None
        if was is not State.IDLE:
            out.append(
                Log(
                    ev.SessionEnd(
                        channel=self.channel,
                        from_stream=cur.candidate.ref if cur else None,
                        reason=reason,
                        duration_ms=round((now - self._started_at) * 1000, 1),
                        failovers=self.failovers,
                        upgrades=self.upgrades,
                    )
                )
            )
        out += self._release_awaiting()  # a switch event still waiting goes out as it is, last
        return out

    def next_deadline(self) -> float | None:
        """The earliest time tick() has something to do, for the shell's single timer."""
        if self._state in _INACTIVE:
            return None
        return min((when for when, _, _ in self._deadlines()), default=None)

    def _deadlines(self) -> list[tuple[float, _Due, int | None]]:
        """Every deadline pending now, as (when, what, attempt), in the order tick acts on them."""
        p = self.policy
        out: list[tuple[float, _Due, int | None]] = []
        cur = self.current
        if cur is not None and not self._paused:
            out.append((self._last_data + p.stall_timeout_s, _Due.STALL, cur.id))
        for a in self.attempts.values():
            if a is not cur and (d := a.deadline(p)) is not None:
                out.append((d[0], d[1], a.id))
        if self._retry_at is not None:
            out.append((self._retry_at, _Due.RETRY, None))
        rnd = self._round
        if rnd is not None:
            if rnd.deadline is not None:
                out.append((rnd.deadline, _Due.BUDGET, None))
            ready = [a.ready_at for a in self.attempts.values() if a.ready_at is not None and a is not cur]
            if rnd.prefer_priority and ready:
                out.append((min(ready) + p.connect_timeout_s, _Due.PREFER, None))
            if rnd.queue:
                out.append((rnd.next_open_at, _Due.HEDGE, None))
        if self._upgrade_at is not None:
            out.append((self._upgrade_at, _Due.UPGRADE, None))
        return out

    @property
    def current_candidate(self) -> Candidate | None:
        return self.current.candidate if self.current else None

    # ---- rounds -----------------------------------------------------------------------------

    def _begin_failover(
        self, failed: Candidate, reason: Reason, status: int | None, now: float, out: list[Action]
    ) -> None:
        self._cancel_upgrade(now, out)
        self._to(State.FAILING_OVER)
        others = [c for c in self.candidates if c != failed]
        healthy = [c for c in others if not self._cooling(c, now)]
        cooling = [c for c in others if self._cooling(c, now)]
        self._round = _Round(
            "failover",
            healthy + cooling,
            now,
            now + self.policy.budget_s,
            prefer_priority=False,
            reason=reason,
            http_status=status,
            from_candidate=failed,
            detected_at=now,
        )
        self._advance(now, out)
        self._choose(now, out)

    def _advance(self, now: float, out: list[Action]) -> None:
        """Open the next candidate(s) of the round: one at once, then one per hedge delay."""
        rnd = self._round
        if rnd is None:
            return
        while rnd.queue:
            ours = self._round_attempts()
            if any(a.ready_at is not None for a in ours):
                return  # a winner is ready; only attempts already open may still beat it
            pending = [a for a in ours if a.ready_at is None]
            if pending and now < rnd.next_open_at:
                return
            cand = self._next_openable(rnd, pending)
            if cand is None:
                break
            rnd.queue.remove(cand)
            rnd.attempted.append(cand.ref)
            self._open(cand, now, out, probe=False)
            rnd.next_open_at = now + self.policy.hedge_delay_s
        if not rnd.queue and not self._round_attempts():
            self._exhaust(now, out)

    def _next_openable(self, rnd: _Round, pending: list[_Attempt]) -> Candidate | None:
        """The first queued candidate whose account has a free slot.

        A candidate blocked by one of our own pending attempts waits for it; one blocked by
        connections we do not hold here is skipped for this round (the provider would kill them).
        """
        own = {a.candidate.account for a in pending}
        for cand in list(rnd.queue):
            if self.slots.free(cand.account) > 0:
                return cand
            if cand.account not in own:
                rnd.queue.remove(cand)
                rnd.skipped.append(cand.ref)
                rnd.last_reason = rnd.last_reason or Reason.ACCOUNT_FULL
        return None

    def _round_attempts(self) -> list[_Attempt]:
        return [a for a in self.attempts.values() if not a.probe and a is not self.current]

    def _choose(self, now: float, out: list[Action]) -> None:
        """Pick the round's winner among the attempts that delivered packets."""
        rnd = self._round
        if rnd is None:
            return
        ours = self._round_attempts()
        ready = sorted((a for a in ours if a.ready_at is not None), key=lambda a: a.candidate.rank)
        if not ready:
            return
        best = ready[0]
        better_pending = any(a.ready_at is None and a.candidate.rank < best.candidate.rank for a in ours)
        assert best.ready_at is not None
        if rnd.prefer_priority and better_pending and now < best.ready_at + self.policy.connect_timeout_s:
            return  # a better one may still answer; a ready one waits at most connect_timeout_s for it
        self._win(best, now, out)

    def _win(self, a: _Attempt, now: float, out: list[Action]) -> None:
        rnd = self._round
        assert rnd is not None
        slower = {o.candidate.ref for o in self._round_attempts() if o is not a}
        for other in self._round_attempts():
            if other is not a:
                self._drop(other, now, out, failed=False)
        prev = self.current
        if prev is not None:
            self._drop(prev, now, out, failed=False)
        self.current = a
        self._round = None
        self._last_data = now
        self._to(State.STREAMING)
        out.append(Switch(a.id, a.candidate))
        attempted, skipped, failures = tuple(rnd.attempted), tuple(rnd.skipped), tuple(rnd.failures)
        if rnd.kind == "start":
            out.append(
                Log(
                    ev.SessionStart(
                        channel=self.channel,
                        to_stream=a.candidate.ref,
                        attempted=attempted,
                        ttfb_ms=_ms(now - rnd.started_at),
                        skipped=skipped,
                        failures=failures,
                    )
                )
            )
            if (tuned := self._tune_failover(a, rnd, slower, now)) is not None:
                out.append(Log(tuned))
        elif rnd.kind == "upgrade" and rnd.upgrade_target is not None:
            assert rnd.from_candidate is not None
            if a.candidate == rnd.upgrade_target:
                self.upgrades += 1
                up: ev.Event = ev.Upgrade(
                    channel=self.channel,
                    from_stream=rnd.from_candidate.ref,
                    to_stream=a.candidate.ref,
                    reason="Upgrade",
                    attempted=attempted,
                    switch_ms=_ms(now - rnd.started_at),
                    mode="break_before_make",
                    skipped=skipped,
                    failures=failures,
                )
            else:
                up = ev.UpgradeFailed(
                    channel=self.channel,
                    from_stream=rnd.from_candidate.ref,
                    to_stream=rnd.upgrade_target.ref,
                    reason=str(rnd.last_reason or Reason.STREAM_ERROR),
                    attempted=attempted,
                    http_status=rnd.last_status,
                    switch_ms=_ms(now - rnd.started_at),
                    mode="break_before_make",
                    skipped=skipped,
                    failures=failures,
                )
            out.append(Log(up, until_entry=isinstance(up, ev.SwitchEvent)))
        else:
            assert rnd.from_candidate is not None and rnd.reason is not None
            self.failovers += 1
            out.append(
                Log(
                    ev.Failover(
                        channel=self.channel,
                        from_stream=rnd.from_candidate.ref,
                        to_stream=a.candidate.ref,
                        reason=str(rnd.reason),
                        attempted=attempted,
                        http_status=rnd.http_status,
                        switch_ms=_ms(now - rnd.detected_at),
                        held_retries=rnd.retries or None,
                        skipped=skipped,
                        failures=failures,
                    ),
                    until_entry=True,
                )
            )
        self._arm_upgrade(now)

    def _tune_failover(
        self, a: _Attempt, rnd: _Round, slower: set[str], now: float
    ) -> ev.TuneFailover | None:
        """The start round won on a lower candidate: what happened to each better one, as a failover."""
        better = [c for c in self.candidates if c.rank < a.candidate.rank]
        if not better:
            return None
        failed = {f.stream: f for f in rnd.failures}
        skipped = set(rnd.skipped)
        why: list[ev.Failure] = []
        for c in better:
            if c.ref in failed:
                why.append(failed[c.ref])
            elif c.ref in slower:
                why.append(ev.Failure(c.ref, str(Reason.SLOWER), None))
            elif c.ref in skipped:
                why.append(ev.Failure(c.ref, str(Reason.ACCOUNT_FULL), None))
            else:  # cooling, queued last, not reached before a lower one won
                why.append(ev.Failure(c.ref, str(Reason.COOLDOWN), None))
        best = why[0]
        return ev.TuneFailover(
            channel=self.channel,
            from_stream=best.stream,
            to_stream=a.candidate.ref,
            reason=best.reason,
            attempted=tuple(rnd.attempted),
            http_status=best.http_status,
            ttfb_ms=_ms(now - rnd.started_at),
            skipped=tuple(rnd.skipped),
            failures=tuple(why),
        )

    def _exhaust(self, now: float, out: list[Action]) -> None:
        rnd = self._round
        assert rnd is not None
        for a in self._round_attempts():
            self._drop(a, now, out, failed=False)
        self._round = None
        if self._hold(rnd, now, out):
            return
        started = rnd.kind != "start"
        self._to(State.EXHAUSTED)
        reason = rnd.reason or rnd.last_reason or Reason.CONNECTION_ERROR
        out.append(
            Log(
                ev.Exhausted(
                    channel=self.channel,
                    from_stream=rnd.from_candidate.ref if rnd.from_candidate else None,
                    reason=str(reason),
                    attempted=tuple(rnd.attempted),
                    http_status=rnd.http_status if rnd.reason else rnd.last_status,
                    skipped=tuple(rnd.skipped),
                    failures=tuple(rnd.failures),
                    waited_ms=_ms(now - rnd.started_at),
                )
            )
        )
        out.append(Exhausted(started=started, reason=str(reason)))

    # ---- hold instead of hang up ------------------------------------------------------------

    def _hold(self, rnd: _Round, now: float, out: list[Action]) -> bool:
        """Mid-stream, with `hold_s` set: keep the response open and retry with back-off."""
        hold_s = self.policy.hold_s
        if rnd.kind != "failover" or hold_s <= 0:
            return False
        backoff = min(8.0, 0.5 * 2**rnd.retries)
        if now + backoff >= rnd.detected_at + hold_s:
            return False
        if rnd.retries == 0:
            out.append(
                Log(
                    ev.Holding(
                        channel=self.channel,
                        from_stream=rnd.from_candidate.ref if rnd.from_candidate else None,
                        reason=str(rnd.reason),
                        attempted=tuple(rnd.attempted),
                        hold_s=hold_s,
                    )
                )
            )
        self._to(State.HOLDING)
        self._held = rnd
        self._retry_at = now + backoff
        return True

    def _retry(self, now: float, out: list[Action]) -> None:
        held = self._held
        self._retry_at = None
        self._held = None
        if held is None:
            return
        self._to(State.FAILING_OVER)
        healthy = [c for c in self.candidates if not self._cooling(c, now)]
        cooling = [c for c in self.candidates if self._cooling(c, now)]
        self._round = _Round(
            "failover",
            healthy + cooling,
            now,
            now + self.policy.budget_s,
            prefer_priority=False,
            reason=held.reason,
            http_status=held.http_status,
            from_candidate=held.from_candidate,
            attempted=held.attempted,
            failures=held.failures,
            detected_at=held.detected_at,
            retries=held.retries + 1,
        )
        self._advance(now, out)
        self._choose(now, out)

    # ---- upgrades ---------------------------------------------------------------------------

    def _arm_upgrade(self, now: float) -> None:
        cur = self.current
        better = cur is not None and any(c.rank < cur.candidate.rank for c in self.candidates)
        self._upgrade_at = now + self.policy.upgrade_after_s if better else None

    def _begin_upgrade(self, now: float, out: list[Action]) -> None:
        cur = self.current
        self._upgrade_at = None
        if cur is None:
            return
        targets = [c for c in self.candidates if c.rank < cur.candidate.rank]
        self._upgrade = _Upgrade(targets)
        self._probe_next(now, out)

    def _probe_next(self, now: float, out: list[Action]) -> None:
        up = self._upgrade
        cur = self.current
        assert up is not None and cur is not None
        while up.targets:
            target = up.targets.pop(0)
            up.attempted.append(target.ref)
            if self.slots.free(target.account) > 0:
                self._open(target, now, out, probe=True)
                return
            if (
                up.kind == "upgrade"
                and target.account == cur.candidate.account
                and self.slots.limits.get(target.account, 1) == 1
            ):
                self._break_before_make(target, up, now, out)
                return
            up.last_reason = Reason.ACCOUNT_FULL
        self._upgrade = None
        if up.kind == "slow":
            return  # nothing else delivers: the slow stream stays (the shell measures it afresh)
        out.append(
            Log(
                ev.UpgradeFailed(
                    channel=self.channel,
                    from_stream=cur.candidate.ref,
                    to_stream=up.attempted[0] if up.attempted else None,
                    reason=str(up.last_reason or Reason.STREAM_ERROR),
                    attempted=tuple(up.attempted),
                    http_status=up.last_status,
                )
            )
        )
        self._arm_upgrade(now)

    def _break_before_make(self, target: Candidate, up: _Upgrade, now: float, out: list[Action]) -> None:
        """Our own stream holds the account's only slot: give it up, try the better one, else return."""
        cur = self.current
        assert cur is not None
        self._upgrade = None
        self._drop(cur, now, out, failed=False)
        self.current = None
        self._to(State.FAILING_OVER)
        self._round = _Round(
            "upgrade",
            [target, cur.candidate] + [c for c in self.candidates if c not in (target, cur.candidate)],
            now,
            now + self.policy.budget_s,
            prefer_priority=True,
            from_candidate=cur.candidate,
            upgrade_target=target,
        )
        self._advance(now, out)

    def _upgrade_won(self, a: _Attempt, now: float, out: list[Action]) -> None:
        cur = self.current
        up = self._upgrade
        self._upgrade = None
        if cur is not None:
            self._drop(cur, now, out, failed=False)
        a.probe = False
        self.current = a
        self._last_data = now
        out.append(Switch(a.id, a.candidate))
        if up is not None and up.kind == "slow":
            self.failovers += 1
            out.append(
                Log(
                    ev.Failover(
                        channel=self.channel,
                        from_stream=cur.candidate.ref if cur else None,
                        to_stream=a.candidate.ref,
                        reason=str(Reason.STREAM_SLOW),
                        attempted=tuple(up.attempted),
                        switch_ms=_ms(now - up.started_at),
                    ),
                    until_entry=True,
                )
            )
            self._arm_upgrade(now)
            return
        self.upgrades += 1
        out.append(
            Log(
                ev.Upgrade(
                    channel=self.channel,
                    from_stream=cur.candidate.ref if cur else None,
                    to_stream=a.candidate.ref,
                    reason="Upgrade",
                    attempted=tuple(up.attempted) if up else (a.candidate.ref,),
                    switch_ms=0.0,
                    probe_ms=_ms(now - a.opened_at),
                    mode="make_before_break",
                ),
                until_entry=True,
            )
        )
        self._arm_upgrade(now)

    def _probe_failed(
        self, a: _Attempt, reason: Reason, status: int | None, now: float, out: list[Action]
    ) -> None:
        up = self._upgrade
        if up is None or self.current is None:
            return
        up.last_reason, up.last_status = reason, status
        self._probe_next(now, out)

    def _cancel_upgrade(self, now: float, out: list[Action]) -> None:
        self._upgrade_at = None
        self._upgrade = None
        for a in list(self.attempts.values()):
            if a.probe:
                self._drop(a, now, out, failed=False)

    # ---- bookkeeping ------------------------------------------------------------------------

    def _open(self, cand: Candidate, now: float, out: list[Action], *, probe: bool) -> None:
        self.slots.acquire(cand.account)
        a = _Attempt(self._next_id, cand, now, probe=probe)
        self._next_id += 1
        self.attempts[a.id] = a
        out.append(Open(a.id, cand))

    def _drop(self, a: _Attempt, now: float, out: list[Action], *, failed: bool) -> None:
        if self.attempts.pop(a.id, None) is None:
            return
        self.slots.release(a.candidate.account)
        if failed:
            self.health.failed(a.candidate.ref, now)
        out.append(Close(a.id))

    def _cooling(self, c: Candidate, now: float) -> bool:
        return self.health.recently_failed(c.ref, now, self.policy.cooldown_s)


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def rank_candidates(rows: Iterable[tuple[str, int, int, bool]]) -> list[Candidate]:
    """Candidates from (account, stream_id, priority, is_primary) rows already in store order."""
    return [Candidate(acc, sid, prio, i, bool(prim)) for i, (acc, sid, prio, prim) in enumerate(rows)]
