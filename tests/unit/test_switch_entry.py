"""A switch's event is finished by the machine once the new stream's entry went out to the viewers.

The shell only reports facts: "the entry of the switch this Log announced has not gone out yet"
(`entry_pending`) and "it went out now" (`entry_sent`); the machine gives back the finished event,
so switch_ms is what a viewer waited and no one outside the core edits an event.
"""

from __future__ import annotations

import pytest

from relay.core import events as ev
from relay.core.failover import Log, Reason
from tests.unit.test_failover import Harness, cands, on_backup_at_70s, streaming


def failed_over(at: float = 10.25) -> tuple[Harness, Log]:
    h = Harness(cands(("a", 1), ("b", 2), ("c", 3)))
    streaming(h)
    h.fail("a/1", Reason.STREAM_STALL, 10.0)
    h.ready("b/2", at)
    (log,) = h.events("failover")
    return h, log


def test_given_a_failover_when_the_entry_goes_out_later_then_the_machine_returns_it_finished():
    h, log = failed_over()
    assert log.until_entry and log.fields["switch_ms"] == 250.0 and "keyframe_wait_ms" not in log.fields
    assert h.m.entry_pending(log, 10.25) == [] and h.m.awaiting_entry
    (done,) = h.m.entry_sent(10.31)
    assert isinstance(done.what, ev.Failover) and not done.until_entry
    assert done.fields["switch_ms"] == 310.0 and done.fields["keyframe_wait_ms"] == 60.0
    assert done.what == log.what.entered(60.0) and log.fields["switch_ms"] == 250.0  # a new value
    assert not h.m.awaiting_entry and h.m.entry_sent(10.5) == []  # once


def test_given_an_upgrade_when_its_entry_goes_out_then_it_is_finished_too():
    h = Harness(cands(("a", 1), ("b", 2)))
    on_backup_at_70s(h, "b/2")
    h.tick(70.01)
    h.ready("a/1", 70.2)
    (log,) = h.events("upgrade")
    assert log.until_entry
    h.m.entry_pending(log, 70.2)
    (done,) = h.m.entry_sent(70.3)
    assert (done.fields["switch_ms"], done.fields["keyframe_wait_ms"]) == (100.0, 100.0)


def test_given_a_second_switch_before_the_first_entry_then_the_first_goes_out_unfinished():
    h, first = failed_over()
    h.m.entry_pending(first, 10.25)
    h.fail("b/2", Reason.STREAM_ERROR, 11.0)
    h.ready("c/3", 11.1)
    second = h.events("failover")[-1]
    (released,) = h.m.entry_pending(second, 11.1)
    assert released.what is first.what and "keyframe_wait_ms" not in released.fields
    (done,) = h.m.entry_sent(11.2)
    assert done.fields["to_stream"] == "c/3" and done.fields["keyframe_wait_ms"] == 100.0


def test_given_a_switch_event_still_waiting_when_the_session_closes_then_it_goes_out_after_session_end():
    h, log = failed_over()
    h.m.entry_pending(log, 10.25)
    out = [a for a in h.m.close(10.3, "ClientGone") if isinstance(a, Log)]
    assert [a.event for a in out] == ["session_end", "failover"]
    assert out[1].what is log.what and not out[1].until_entry and not h.m.awaiting_entry


def test_only_a_switch_event_can_wait_for_an_entry():
    h = Harness(cands(("a", 1)))
    streaming(h)
    (start,) = h.events("session_start")
    assert not start.until_entry
    with pytest.raises(ValueError):
        h.m.entry_pending(start, 0.1)
    assert not h.m.awaiting_entry
