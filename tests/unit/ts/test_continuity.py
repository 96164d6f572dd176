"""relay.ts.continuity: continuity_counter across switches, PSI counters in output order."""

from __future__ import annotations

import pytest

from relay.ts import (
    Splicer,
)
from relay.ts.continuity import Continuity
from relay.ts.program import OutStream
from tests.tsbuild import (
    B_upstream,
    Upstream,
    cc_errors,
    join,
    pid_of,
    split,
    ts_packet,
    two_upstreams,
)


def test_continuity_counters_continue_across_a_switch() -> None:
    _, out = two_upstreams(cut_a=57, start_b=3)
    assert cc_errors(out) == []


def test_psi_counters_follow_the_output_order_when_one_read_holds_many_psi_packets() -> None:
    """Given whole streams in one read each (a provider's burst at connect, 1 MiB reads), Then our
    inserted PAT/PMT and the upstream's own are numbered in the order they go out (a switch too)."""
    splicer = Splicer()
    out = split(join(splicer.feed([b"".join(Upstream().stream(16)[:100])], 0.0)))
    splicer.switch(1.0)
    out += split(join(splicer.feed([b"".join(B_upstream().stream(10))], 1.0)))
    assert sum(1 for p in out if pid_of(p) == 0) >= 5
    assert cc_errors(out) == []


# --- Continuity on its own ------------------------------------------------------------------------------


def _psi(pid: int, cc: int = 0) -> bytearray:
    return bytearray(ts_packet(pid, b"\x00" * 184, cc))


def test_stamp_counts_each_psi_pid_on_its_own_modulo_16() -> None:
    c = Continuity()
    ccs = [c.stamp(_psi(0))[3] & 0x0F for _ in range(17)]
    assert ccs == [*range(16), 0]
    assert c.stamp(_psi(0x1000))[3] & 0x0F == 0, "another PID starts at 0"
    assert c.last(0) == 0 and c.last(0x1000) == 0 and c.last(0x1001) is None


def test_marked_psi_is_numbered_in_output_order_and_native_packets_set_the_counter() -> None:
    """Given ours at output 5 and the upstream's own (cc 9) found later but at output 3, When released,
    Then the native one goes first and sets the counter, and ours continues it."""
    c = Continuity()
    ours, native = _psi(0), _psi(0, cc=9)
    c.mark(5, ours, False)
    c.mark_in_order(3, native)
    assert c.native_pending
    c.settle_to(4)
    assert c.last(0) == 9 and ours[3] & 0x0F == 0, "only what is before index 4 was numbered"
    c.settle_to(6)
    assert ours[3] & 0x0F == 10 and native[3] & 0x0F == 9, "the upstream's own packet is never rewritten"
    assert not c.native_pending


def test_adopt_numbers_our_copy_just_before_the_upstreams_next_counter() -> None:
    c = Continuity()
    c.adopt(0x1000, 0)  # the upstream's last PMT packet carried 0: our copy takes its counter
    assert c.stamp(_psi(0x1000))[3] & 0x0F == 0, "and the upstream's next one (1) follows it"


def test_repeat_last_copies_a_packet_with_the_last_counter_sent() -> None:
    c = Continuity()
    template = _psi(0, cc=0)
    assert c.repeat_last(template)[3] & 0x0F == 0, "nothing sent yet: as made"
    for _ in range(4):
        c.stamp(_psi(0))
    copy = c.repeat_last(template)
    assert copy[3] & 0x0F == 3 and template[3] & 0x0F == 0, "a copy; the template is untouched"


@pytest.mark.parametrize(("next_cc", "upstream_cc"), [(7, 3), (0, 15), (15, 0), (4, 4)])
def test_entry_delta_makes_the_entry_packet_carry_the_counter_due(next_cc: int, upstream_cc: int) -> None:
    payload, af_only = 0x10 | upstream_cc, 0x20 | upstream_cc
    assert (upstream_cc + Continuity.entry_delta(next_cc, payload)) & 0x0F == next_cc
    assert (upstream_cc + Continuity.entry_delta(next_cc, af_only)) & 0x0F == (next_cc - 1) & 0x0F, (
        "a packet without payload repeats the previous counter"
    )
    assert Continuity.entry_delta(None, payload) == 0, "a PID the client never saw keeps the upstream's"


def test_carry_over_continues_after_the_last_packet_or_takes_the_dropped_pes_place() -> None:
    o = OutStream(0x100, last_cc=15, pes_cc=6)
    Continuity.carry_over(o, unfinished=False)
    assert o.next_cc == 0
    Continuity.carry_over(o, unfinished=True)
    assert o.next_cc == 6
    fresh = OutStream(0x101)
    Continuity.carry_over(fresh, unfinished=False)
    assert fresh.next_cc is None


def test_restamp_adds_lane_by_lane_without_carrying_into_the_next_packet() -> None:
    b3 = bytes([0x1F, 0x3E, 0x10, 0xD5])
    add = bytes([1, 3, 0, 15])
    assert Continuity.restamp(b3, add) == bytes([0x10, 0x31, 0x10, 0xD4])
