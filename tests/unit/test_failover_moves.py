"""The failover machine's table of moves and its one list of deadlines (tick and next_deadline agree)."""

from __future__ import annotations

import pytest

from relay.core.failover import (
    _ALLOWED,
    Close,
    Exhausted,
    FailoverMachine,
    IllegalTransition,
    Open,
    Reason,
    State,
    Switch,
    _Due,
)
from tests.unit.test_failover import Harness, cands, on_backup_at_70s, opened, streaming, switched


class Recording(FailoverMachine):
    """The machine, remembering every move it made."""

    moves: list[tuple[State, State]]

    def _to(self, state: State) -> None:
        self.__dict__.setdefault("moves", []).append((self.state, state))
        super()._to(state)


def recorded(h: Harness) -> list[tuple[State, State]]:
    return list(h.m.__dict__.get("moves", []))


def harness(*specs: tuple[str, int], **policy: float) -> Harness:
    h = Harness(cands(*specs), **policy)
    m = h.m
    h.m = Recording(m.channel, m.candidates, m.policy, m.health, m.slots)
    return h


def scenarios() -> list[Harness]:
    """One session per road through the table; together they take every legal move."""
    out = []
    h = harness(("a", 1))  # close before start
    h.run(h.m.close(0.0, "ClientGone"))
    out.append(h)
    h = harness(("a", 1))  # close while starting
    h.start(0.0)
    h.run(h.m.close(0.1, "ClientGone"))
    out.append(h)
    h = harness(("a", 1), ("b", 2))  # every candidate fails at start, then the shell closes
    h.start(0.0)
    h.fail("a/1", Reason.HTTP_ERROR, 0.01, 404)
    h.fail("b/2", Reason.HTTP_ERROR, 0.02, 404)
    h.run(h.m.close(0.03, "Exhausted"))
    out.append(h)
    h = harness(("a", 1), ("b", 2))  # stream, fail over, close while streaming
    streaming(h)
    h.fail("a/1", Reason.STREAM_ERROR, 10.0)
    h.ready("b/2", 10.01)
    h.run(h.m.close(11.0, "ClientGone"))
    out.append(h)
    h = harness(("a", 1), ("b", 2))  # close during a failover round
    streaming(h)
    h.fail("a/1", Reason.STREAM_ERROR, 10.0)
    h.run(h.m.close(10.1, "ClientGone"))
    out.append(h)
    h = harness(("a", 1), ("b", 2), ("c", 3))  # a failover round runs out of budget
    streaming(h)
    h.fail("a/1", Reason.STREAM_ERROR, 10.0)
    h.tick(10.25)
    h.tick(12.0)
    out.append(h)
    h = harness(("a", 1), ("b", 2), hold_s=30.0)  # hold, retry, close while holding
    streaming(h)
    h.fail("a/1", Reason.STREAM_ERROR, 10.0)
    h.fail("b/2", Reason.HTTP_ERROR, 10.01, 503)
    h.tick(10.51)
    h.fail("a/1", Reason.CONNECTION_ERROR, 10.52)
    h.fail("b/2", Reason.CONNECTION_ERROR, 10.53)
    h.run(h.m.close(11.0, "ClientGone"))
    out.append(h)
    h = harness(("a", 1), ("a", 2))  # break-before-make upgrade
    on_backup_at_70s(h, "a/2")
    h.tick(70.01)
    h.ready("a/1", 70.2)
    out.append(h)
    return out


def test_every_legal_move_is_taken_by_some_session_and_nothing_else_is():
    legal = {(a, b) for a, targets in _ALLOWED.items() for b in targets}
    taken = {move for h in scenarios() for move in recorded(h)}
    assert taken == legal


def test_the_states_a_session_passes_through_in_a_failover():
    h = harness(("a", 1), ("b", 2))
    streaming(h)
    h.fail("a/1", Reason.STREAM_ERROR, 10.0)
    h.ready("b/2", 10.01)
    assert recorded(h) == [
        (State.IDLE, State.STARTING),
        (State.STARTING, State.STREAMING),
        (State.STREAMING, State.FAILING_OVER),
        (State.FAILING_OVER, State.STREAMING),
    ]


@pytest.mark.parametrize("src", list(State))
def test_every_move_outside_the_table_raises_a_named_error(src: State):
    for dst in State:
        m = Harness(cands(("a", 1))).m
        m._state = src
        if dst in _ALLOWED[src]:
            m._to(dst)
            assert m.state is dst
        else:
            with pytest.raises(IllegalTransition, match=f"{src.name} -> {dst.name}"):
                m._to(dst)
            assert m.state is src  # a refused move changes nothing


def test_start_twice_is_refused():
    h = Harness(cands(("a", 1)))
    h.start(0.0)
    with pytest.raises(RuntimeError):
        h.m.start(0.1)


# ---- deadlines: one list feeds tick and next_deadline ---------------------------------------------


def earliest(h: Harness) -> tuple[float, _Due]:
    when, due, _ = min(h.m._deadlines(), key=lambda d: d[0])
    assert h.m.next_deadline() == when
    return when, due


def agree(h: Harness, kind: _Due) -> list:
    """The earliest deadline is of `kind`; tick does nothing just before it and acts at it."""
    when, due = earliest(h)
    assert due is kind
    assert h.tick(when - 0.001) == []
    out = h.tick(when)
    assert out, f"tick did nothing at the {kind.name} deadline it reported"
    return out


def test_stall_of_the_current_stream():
    h = Harness(cands(("a", 1), ("b", 2)))
    streaming(h)
    assert opened(agree(h, _Due.STALL)) == ["b/2"]
    assert h.events("failover") == [] and h.m.state is State.FAILING_OVER


def test_connect_timeout_of_an_attempt():
    h = Harness(cands(("a", 1)))
    h.start(0.0)
    out = agree(h, _Due.CONNECT)
    assert Close(h.id("a/1")) in out and Exhausted(started=False) in out
    assert h.events("exhausted")[0].fields["failures"][0]["reason"] == "ConnectionTimeout"


def test_body_stall_of_an_attempt_that_answered():
    h = Harness(cands(("a", 1)))
    h.start(0.0)
    h.run(h.m.head(h.id("a/1"), 0.1))
    out = agree(h, _Due.BODY)
    assert Exhausted(started=False) in out
    assert h.events("exhausted")[0].fields["failures"][0]["reason"] == "StreamStall"


def test_hedge_opens_the_next_candidate():
    h = Harness(cands(("a", 1), ("b", 2)))
    h.start(0.0)
    assert opened(agree(h, _Due.HEDGE)) == ["b/2"]


def test_a_ready_lower_candidate_stops_waiting_for_a_better_one():
    h = Harness(cands(("a", 1), ("b", 2)))
    h.start(0.0)
    h.run(h.m.head(h.id("a/1"), 0.05))
    h.tick(0.25)
    h.ready("b/2", 0.3)
    assert switched(agree(h, _Due.PREFER)) == ["b/2"]


def test_budget_of_a_failover_round():
    h = Harness(cands(("a", 1), ("b", 2)))
    streaming(h)
    h.fail("a/1", Reason.STREAM_ERROR, 10.0)
    h.run(h.m.head(h.id("b/2"), 10.1))  # answers, never delivers: its stall is later than the budget
    assert Exhausted(started=True) in agree(h, _Due.BUDGET)


def test_retry_of_a_hold():
    h = Harness(cands(("a", 1), ("b", 2)), hold_s=30.0)
    streaming(h)
    h.fail("a/1", Reason.STREAM_ERROR, 10.0)
    h.fail("b/2", Reason.HTTP_ERROR, 10.01, 503)
    assert opened(agree(h, _Due.RETRY)) == ["a/1"]


def test_upgrade_probe_after_upgrade_after_s():
    h = Harness(cands(("a", 1), ("b", 2)))
    on_backup_at_70s(h, "b/2")
    out = agree(h, _Due.UPGRADE)
    assert [type(a) for a in out] == [Open] and opened(out) == ["a/1"]


def test_no_deadlines_once_the_session_is_over():
    h = Harness(cands(("a", 1)))
    h.start(0.0)
    h.run(h.m.close(0.5, "ClientGone"))
    assert h.m.next_deadline() is None and h.m.tick(100.0) == []
    assert not any(isinstance(a, Switch) for a in h.actions)
