"""Unit tests of the sans-IO failover policy: time is a number we pass in, nothing sleeps."""

from __future__ import annotations

from relay.config import FailoverConfig
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
    State,
    Switch,
)

POLICY = FailoverConfig().policy()


def cands(*specs: tuple[str, int]) -> list[Candidate]:
    return [Candidate(acc, sid, i, i) for i, (acc, sid) in enumerate(specs)]


class Harness:
    """Drives a machine and remembers which candidate each attempt id belongs to."""

    def __init__(self, candidates: list[Candidate], limits: dict[str, int] | None = None, **policy: float):
        self.health = HealthMemory()
        accounts = {c.account for c in candidates}
        self.slots = Slots(limits or {a: 1 for a in accounts})
        self.m = FailoverMachine(
            "ch1", candidates, FailoverConfig(**policy).policy(), self.health, self.slots
        )
        self.by_ref: dict[str, int] = {}
        self.actions: list[Action] = []

    def run(self, actions: list[Action]) -> list[Action]:
        for a in actions:
            if isinstance(a, Open):
                self.by_ref[a.candidate.ref] = a.attempt
        self.actions += actions
        return actions

    def id(self, ref: str) -> int:
        return self.by_ref[ref]

    def start(self, now: float = 0.0) -> list[Action]:
        return self.run(self.m.start(now))

    def ready(self, ref: str, now: float) -> list[Action]:
        self.run(self.m.head(self.id(ref), now))
        return self.run(self.m.packets(self.id(ref), now))

    def fail(self, ref: str, reason: Reason, now: float, status: int | None = None) -> list[Action]:
        return self.run(self.m.failed(self.id(ref), reason, now, status))

    def tick(self, now: float) -> list[Action]:
        return self.run(self.m.tick(now))

    def events(self, name: str | None = None) -> list[Log]:
        return [a for a in self.actions if isinstance(a, Log) and (name is None or a.event == name)]


def opened(actions: list[Action]) -> list[str]:
    return [a.candidate.ref for a in actions if isinstance(a, Open)]


def switched(actions: list[Action]) -> list[str]:
    return [a.candidate.ref for a in actions if isinstance(a, Switch)]


def test_given_healthy_primary_when_session_starts_then_primary_is_relayed_and_session_start_logged():
    h = Harness(cands(("a", 1), ("b", 2)))
    assert opened(h.start(0.0)) == ["a/1"]
    out = h.ready("a/1", 0.05)
    assert switched(out) == ["a/1"]
    ev = h.events("session_start")[0]
    assert ev.level == "info" and ev.fields["to_stream"] == "a/1" and ev.fields["ttfb_ms"] == 50.0
    assert h.m.state is State.STREAMING


def test_given_slow_primary_when_starting_then_backup_opens_after_hedge_delay_and_waits_for_better():
    h = Harness(cands(("a", 1), ("b", 2)))
    h.start(0.0)
    assert opened(h.tick(0.1)) == []
    assert opened(h.tick(0.25)) == ["b/2"]
    # backup ready first, but at session start the better primary still connecting is preferred
    assert switched(h.ready("b/2", 0.3)) == []
    out = h.ready("a/1", 0.4)
    assert switched(out) == ["a/1"]
    assert Close(h.id("b/2")) in out


def test_given_dead_primary_at_start_when_it_times_out_then_backup_wins():
    h = Harness(cands(("a", 1), ("b", 2)))
    h.start(0.0)
    h.tick(0.25)
    h.ready("b/2", 0.3)
    out = h.tick(1.0)  # primary: no response head within connect_timeout_s
    assert switched(out) == ["b/2"]
    assert h.health.recently_failed("a/1", 1.0, POLICY.cooldown_s)


def test_given_all_candidates_fail_at_start_then_exhausted_not_started_and_error_event():
    h = Harness(cands(("a", 1), ("b", 2)))
    h.start(0.0)
    h.fail("a/1", Reason.HTTP_ERROR, 0.01, 404)
    out = h.fail("b/2", Reason.CONNECTION_ERROR, 0.02)
    assert Exhausted(started=False) in out
    ev = h.events("exhausted")[0]
    assert ev.level == "error"
    assert ev.fields["attempted"] == ["a/1", "b/2"]
    assert ev.fields["reason"] == "ConnectionError"
    assert h.m.next_deadline() is None


def test_given_no_backup_when_primary_fails_at_start_then_exhausted_immediately():
    h = Harness(cands(("a", 1)))
    h.start(0.0)
    out = h.fail("a/1", Reason.HTTP_ERROR, 0.01, 503)
    assert Exhausted(started=False) in out
    assert h.events("exhausted")[0].fields["http_status"] == 503


def streaming(h: Harness, ref: str = "a/1", now: float = 0.0) -> None:
    h.start(now)
    h.ready(ref, now + 0.01)


def on_backup_at_70s(h: Harness, backup: str) -> None:
    """Given a/1 failed at 10 s and `backup` took over, still delivering at 70 s (an upgrade is due)."""
    streaming(h)
    h.fail("a/1", Reason.STREAM_ERROR, 10.0)
    h.ready(backup, 10.01)
    h.run(h.m.packets(h.id(backup), 70.0))


def test_given_streaming_when_primary_drops_then_next_is_opened_at_once_and_failover_logged():
    h = Harness(cands(("a", 1), ("b", 2), ("c", 3)))
    streaming(h)
    out = h.fail("a/1", Reason.STREAM_ERROR, 10.0)
    assert opened(out) == ["b/2"]
    out = h.ready("b/2", 10.002)
    assert switched(out) == ["b/2"]
    ev = h.events("failover")[0]
    assert ev.level == "warn"
    f = ev.fields
    assert (f["channel"], f["from_stream"], f["to_stream"], f["reason"]) == (
        "ch1",
        "a/1",
        "b/2",
        "StreamError",
    )
    assert f["switch_ms"] == 2.0 and f["attempted"] == ["b/2"]


def test_given_streaming_when_no_bytes_for_stall_timeout_then_stream_stall_failover():
    h = Harness(cands(("a", 1), ("b", 2)))
    streaming(h)
    h.run(h.m.packets(h.id("a/1"), 3.0))
    assert h.m.next_deadline() == 3.0 + POLICY.stall_timeout_s
    assert opened(h.tick(7.9)) == []
    assert opened(h.tick(8.0)) == ["b/2"]
    h.ready("b/2", 8.01)
    assert h.events("failover")[0].fields["reason"] == "StreamStall"


def test_given_paused_client_then_upstream_silence_is_not_a_stall():
    h = Harness(cands(("a", 1), ("b", 2)))
    streaming(h)
    h.m.paused(1.0)
    assert h.tick(100.0) == []
    h.m.resumed(100.0)
    assert opened(h.tick(104.9)) == []
    assert opened(h.tick(105.0)) == ["b/2"]


def test_given_black_holed_first_backup_when_failing_over_then_second_backup_opens_after_hedge_delay():
    h = Harness(cands(("a", 1), ("b", 2), ("c", 3)))
    streaming(h)
    h.fail("a/1", Reason.STREAM_ERROR, 10.0)
    assert opened(h.tick(10.25)) == ["c/3"]
    out = h.ready("c/3", 10.26)
    assert switched(out) == ["c/3"]
    assert Close(h.id("b/2")) in out  # the black hole is closed: no slot leaks
    assert h.events("failover")[0].fields["attempted"] == ["b/2", "c/3"]
    assert h.slots.held == {"a": 0, "b": 0, "c": 1}


def test_given_failover_when_nothing_answers_within_budget_then_exhausted_started():
    h = Harness(cands(("a", 1), ("b", 2), ("c", 3)))
    streaming(h)
    h.fail("a/1", Reason.STREAM_ERROR, 10.0)
    h.tick(10.25)
    out = h.tick(12.0)
    assert Exhausted(started=True) in out
    ev = h.events("exhausted")[0]
    assert ev.level == "error" and ev.fields["from_stream"] == "a/1" and ev.fields["reason"] == "StreamError"
    assert sum(h.slots.held.values()) == 0


def test_given_priorities_when_candidates_fail_in_turn_then_tried_in_priority_order():
    h = Harness(cands(("a", 1), ("b", 2), ("c", 3), ("d", 4)))
    streaming(h)
    seen = opened(h.fail("a/1", Reason.STREAM_ERROR, 10.0))
    seen += opened(h.fail("b/2", Reason.HTTP_ERROR, 10.01, 500))
    seen += opened(h.fail("c/3", Reason.CONNECTION_ERROR, 10.02))
    assert seen == ["b/2", "c/3", "d/4"]
    h.ready("d/4", 10.03)
    ev = h.events("failover")[0].fields
    assert ev["attempted"] == ["b/2", "c/3", "d/4"]
    assert ev["failures"] == [  # each failure is logged, with its reason
        {"stream": "b/2", "reason": "HttpError", "http_status": 500},
        {"stream": "c/3", "reason": "ConnectionError", "http_status": None},
    ]


def test_given_recently_failed_primary_when_session_restarts_then_healthy_backup_first():
    h = Harness(cands(("a", 1), ("b", 2)))
    h.health.failed("a/1", 100.0)
    assert opened(h.start(110.0)) == ["b/2"]
    h2 = Harness(cands(("a", 1), ("b", 2)))
    h2.health.failed("a/1", 100.0)
    assert opened(h2.start(131.0)) == ["a/1"]  # cooldown_s (30) has passed


def test_given_backup_after_failover_then_upgrade_probe_after_upgrade_after_s_and_switch_when_it_delivers():
    h = Harness(cands(("a", 1), ("b", 2)))
    streaming(h)
    h.fail("a/1", Reason.STREAM_ERROR, 10.0)
    h.ready("b/2", 10.01)
    assert h.m.next_deadline() is not None and h.m.next_deadline() <= 10.01 + 5.0
    h.run(h.m.packets(h.id("b/2"), 70.0))
    assert opened(h.tick(70.01)) == ["a/1"]  # probe even though a/1 failed recently
    out = h.ready("a/1", 70.2)
    assert switched(out) == ["a/1"]
    assert Close(h.id("b/2")) in out
    ev = h.events("upgrade")[0]
    assert ev.level == "info" and ev.fields["from_stream"] == "b/2" and ev.fields["to_stream"] == "a/1"
    assert h.m._upgrade_at is None  # on the best stream: no more upgrades


def test_given_upgrade_probe_fails_then_stay_log_and_restart_timer():
    h = Harness(cands(("a", 1), ("b", 2)))
    on_backup_at_70s(h, "b/2")
    h.tick(70.01)
    out = h.fail("a/1", Reason.HTTP_ERROR, 70.05, 503)
    assert switched(out) == []
    ev = h.events("upgrade_failed")[0]
    assert ev.fields["reason"] == "HttpError" and ev.fields["http_status"] == 503
    assert h.m.current_candidate is not None and h.m.current_candidate.ref == "b/2"
    h.run(h.m.packets(h.id("b/2"), 129.0))
    assert opened(h.tick(129.0)) == []
    assert opened(h.tick(130.05)) == ["a/1"]  # timer restarted at the failure


def test_given_upgrade_probe_that_never_answers_then_it_times_out_without_touching_current():
    h = Harness(cands(("a", 1), ("b", 2)))
    on_backup_at_70s(h, "b/2")
    h.tick(70.01)
    h.run(h.m.packets(h.id("b/2"), 71.0))
    out = h.tick(71.01)
    assert Close(h.id("a/1")) in out and switched(out) == []
    assert h.events("upgrade_failed")[0].fields["reason"] == "ConnectionTimeout"


def test_given_single_slot_account_then_a_second_stream_on_it_is_never_opened_alongside():
    # primary and first backup on the same one-connection account, second backup elsewhere
    h = Harness(cands(("a", 1), ("a", 2), ("b", 3)))
    h.start(0.0)
    h.tick(0.25)  # hedge: a/2 would kill a/1 at the provider, so the next other-account one is opened
    assert opened(h.actions) == ["a/1", "b/3"]
    assert h.slots.held == {"a": 1, "b": 1}


def test_given_backup_on_same_single_slot_account_then_upgrade_is_break_before_make():
    h = Harness(cands(("a", 1), ("a", 2)))
    on_backup_at_70s(h, "a/2")
    out = h.tick(70.01)
    assert [type(x) for x in out][:2] == [Close, Open]  # close ours first, then open the better one
    assert out[0] == Close(h.id("a/2")) and opened(out) == ["a/1"]
    # the better one fails -> back to the one we had, logged as upgrade_failed
    out = h.fail("a/1", Reason.HTTP_ERROR, 70.1, 404)
    assert opened(out) == ["a/2"]
    out = h.ready("a/2", 70.2)
    assert switched(out) == ["a/2"]
    assert h.events("upgrade_failed")[-1].fields["mode"] == "break_before_make"
    assert h.slots.held == {"a": 1}


def test_given_current_fails_during_probe_then_probe_is_dropped_and_failover_runs():
    h = Harness(cands(("a", 1), ("b", 2), ("c", 3)))
    on_backup_at_70s(h, "b/2")
    h.tick(70.01)
    probe = h.id("a/1")
    out = h.fail("b/2", Reason.STREAM_ERROR, 70.1)
    assert Close(probe) in out
    assert opened(out) == ["a/1"]  # a fresh round attempt on the (no longer cooling) primary
    assert sum(h.slots.held.values()) == 1  # only the new round attempt


def test_given_account_full_elsewhere_then_candidate_is_skipped_with_reason():
    h = Harness(cands(("a", 1), ("b", 2)))
    h.slots.acquire("a")  # another session holds the only slot
    assert opened(h.start(0.0)) == ["b/2"]
    h.ready("b/2", 0.01)
    assert h.events("session_start")[0].fields["skipped"] == ["a/1"]


def test_when_session_closes_then_every_attempt_is_closed_and_session_end_logged():
    h = Harness(cands(("a", 1), ("b", 2)))
    streaming(h)
    h.fail("a/1", Reason.STREAM_ERROR, 1.0)
    out = h.run(h.m.close(1.1, "ClientGone"))
    assert Close(h.id("b/2")) in out
    assert h.events("session_end")[0].fields["reason"] == "ClientGone"
    assert sum(h.slots.held.values()) == 0
    assert h.m.next_deadline() is None and h.m.tick(2.0) == []


def test_each_switch_starts_with_fresh_health_state():
    """Peer bug (Dispatcharr #1670): stall state of the dead stream made the healthy backup fail too."""
    h = Harness(cands(("a", 1), ("b", 2)))
    streaming(h)
    h.tick(4.0)
    h.fail("a/1", Reason.STREAM_STALL, 5.01)
    h.ready("b/2", 5.5)
    assert h.tick(10.4) == []  # the backup's stall clock started at its switch, not at a/1's last byte
    assert opened(h.tick(10.5)) == ["a/1"]


def test_given_hold_s_when_everything_fails_midstream_then_hold_retry_with_backoff_and_resume():
    h = Harness(cands(("a", 1), ("b", 2)), hold_s=30.0)
    streaming(h)
    h.fail("a/1", Reason.STREAM_ERROR, 10.0)
    out = h.fail("b/2", Reason.HTTP_ERROR, 10.01, 503)
    assert not any(isinstance(x, Exhausted) for x in out)
    assert h.m.state is State.HOLDING and h.events("holding")[0].level == "warn"
    assert h.m.next_deadline() == 10.51  # first retry after 0.5 s
    assert opened(h.tick(10.51)) == ["a/1"]
    h.fail("a/1", Reason.CONNECTION_ERROR, 10.52)
    h.fail("b/2", Reason.CONNECTION_ERROR, 10.53)
    assert h.m.next_deadline() == 11.53  # back-off doubled
    h.tick(11.53)
    out = h.ready("a/1", 11.6)
    assert switched(out) == ["a/1"]
    ev = h.events("failover")[0]
    assert ev.fields["switch_ms"] == 1600.0 and ev.fields["held_retries"] == 2
    assert len(h.events("holding")) == 1


def test_given_hold_s_when_nothing_comes_back_then_exhausted_at_the_end_of_the_hold():
    h = Harness(cands(("a", 1)), hold_s=3.0)
    streaming(h)
    h.fail("a/1", Reason.STREAM_ERROR, 10.0)  # no other candidate: the round is exhausted at once
    t = 10.0
    exhausted = False
    while t < 20 and not exhausted:
        d = h.m.next_deadline()
        assert d is not None
        t = d
        out = h.tick(t)
        for a in out:
            if isinstance(a, Open):
                out += h.fail(a.candidate.ref, Reason.HTTP_ERROR, t, 404)
        exhausted = any(isinstance(x, Exhausted) for x in out)
    assert exhausted and 10.0 + 1.0 < t <= 13.0
    assert Exhausted(started=True) in h.actions


def test_given_silent_primary_at_start_then_a_ready_backup_waits_at_most_connect_timeout():
    h = Harness(cands(("a", 1), ("b", 2)))
    h.start(0.0)
    h.run(h.m.head(h.id("a/1"), 0.05))  # 200 OK, then silence
    h.tick(0.25)
    assert switched(h.ready("b/2", 0.3)) == []  # waits for the better one ...
    assert h.m.next_deadline() == 1.3
    out = h.tick(1.3)  # ... but not for the stall timeout
    assert switched(out) == ["b/2"] and Close(h.id("a/1")) in out


def test_slots_reconcile_fixes_a_leak_and_counts_other_devices_on_the_line():
    slots = Slots({"a": 2, "b": 1})
    slots.acquire("a")
    slots.acquire("a")  # one of these was never released: a leak
    assert slots.reconcile({"a": 1}) == {"a": 1}
    assert slots.held == {"a": 1, "b": 0} and slots.free("a") == 1
    assert slots.reconcile({"a": 1}) == {}  # nothing wrong now
    slots.reconcile({"a": 1}, active_cons={"a": 2, "b": 1})  # the panel sees one more on a, one on b
    assert slots.free("a") == 0 and slots.free("b") == 0
    slots.reconcile({"a": 1}, active_cons={"a": 1, "b": 0})  # the other device went away
    assert slots.free("a") == 1 and slots.free("b") == 1


# ---- issue 15: tune-time failures are failovers -------------------------------------------------


def test_a_primary_failing_at_tune_is_a_warn_tune_failover_and_session_start_is_unchanged():
    h = Harness(cands(("a", 1), ("b", 2)))
    h.start(0.0)
    h.fail("a/1", Reason.HTTP_ERROR, 0.01, 503)
    h.ready("b/2", 0.05)
    start = h.events("session_start")[0]
    assert start.fields["failures"] == [{"stream": "a/1", "reason": "HttpError", "http_status": 503}]
    (tf,) = h.events("tune_failover")
    assert tf.level == "warn" and tf.what.category == "failover"
    assert tf.fields["from_stream"] == "a/1" and tf.fields["to_stream"] == "b/2"
    assert tf.fields["reason"] == "HttpError" and tf.fields["http_status"] == 503
    assert tf.fields["failures"] == [{"stream": "a/1", "reason": "HttpError", "http_status": 503}]
    assert h.m.failovers == 0  # mid-stream switches only; the metric counts it with phase=tune


def test_a_better_candidate_still_connecting_when_a_lower_one_wins_is_recorded_slower():
    h = Harness(cands(("a", 1), ("b", 2), ("c", 3)))
    h.start(0.0)
    h.run(h.m.head(h.id("a/1"), 0.05))  # a answers but sends no body
    h.tick(0.25)
    h.fail("b/2", Reason.CONNECTION_ERROR, 0.3)
    assert opened(h.tick(0.5)) == ["c/3"]
    h.ready("c/3", 0.55)
    assert switched(h.tick(0.55 + POLICY.connect_timeout_s)) == ["c/3"]  # it waited for a, then won
    (tf,) = h.events("tune_failover")
    assert tf.fields["from_stream"] == "a/1" and tf.fields["reason"] == "Slower"
    assert [(f["stream"], f["reason"]) for f in tf.fields["failures"]] == [
        ("a/1", "Slower"),
        ("b/2", "ConnectionError"),
    ]
    assert h.events("session_start")[0].fields.get("failures") == [
        {"stream": "b/2", "reason": "ConnectionError", "http_status": None}
    ]


def test_a_primary_that_times_out_at_tune_is_a_connection_timeout_tune_failover():
    h = Harness(cands(("a", 1), ("b", 2)))
    h.start(0.0)
    h.tick(0.25)
    h.ready("b/2", 0.3)
    h.tick(POLICY.connect_timeout_s)
    (tf,) = h.events("tune_failover")
    assert tf.fields["reason"] == "ConnectionTimeout" and tf.fields["from_stream"] == "a/1"


def test_a_best_candidate_that_wins_the_tune_is_no_failover():
    h = Harness(cands(("a", 1), ("b", 2)))
    h.start(0.0)
    h.tick(0.25)
    h.ready("b/2", 0.3)
    h.ready("a/1", 0.4)
    assert h.events("tune_failover") == []


# ---- issue 15: a slow stream is left make-before-break -----------------------------------------


def test_a_slow_stream_plays_on_while_the_next_is_probed_and_the_first_that_delivers_takes_over():
    h = Harness(cands(("a", 1), ("b", 2), ("c", 3)))
    streaming(h)
    out = h.run(h.m.slow(20.0))
    assert opened(out) == ["b/2"] and not [a for a in out if isinstance(a, Close)]  # a/1 plays on
    assert h.m.state is State.STREAMING and h.m.current_candidate.ref == "a/1"
    h.run(h.m.packets(h.id("a/1"), 20.5))  # still the current one's bytes
    h.fail("b/2", Reason.HTTP_ERROR, 20.6, 503)
    assert h.m.current_candidate.ref == "a/1"
    out = h.ready("c/3", 21.0)
    assert switched(out) == ["c/3"] and Close(h.id("a/1")) in out
    (fo,) = h.events("failover")
    assert fo.until_entry and fo.fields["reason"] == "StreamSlow"
    assert fo.fields["from_stream"] == "a/1" and fo.fields["to_stream"] == "c/3"
    assert fo.fields["attempted"] == ["b/2", "c/3"] and fo.fields["switch_ms"] == 1000.0
    assert h.m.failovers == 1 and h.m.upgrades == 0
    assert h.health.recently_failed("a/1", 21.0, POLICY.cooldown_s)


def test_a_slow_stream_stays_when_nothing_else_delivers_and_no_event_is_written():
    h = Harness(cands(("a", 1), ("b", 2)))
    streaming(h)
    h.run(h.m.packets(h.id("a/1"), 19.9))
    h.run(h.m.slow(20.0))
    h.run(h.m.packets(h.id("a/1"), 20.9))
    out = h.tick(20.0 + POLICY.connect_timeout_s)  # b/2 never answers
    assert Close(h.id("b/2")) in out and not switched(out)
    assert h.m.current_candidate.ref == "a/1" and h.events("failover") == []
    assert h.m.slow(30.0) != []  # the next verdict searches again


def test_a_slow_search_never_gives_up_the_only_slot_and_ignores_a_second_verdict():
    h = Harness(cands(("a", 1), ("a", 2)))
    streaming(h)
    assert h.run(h.m.slow(20.0)) == []  # a/2 would need a/1's slot: no break-before-make for slowness
    assert h.m.current_candidate.ref == "a/1" and h.m.state is State.STREAMING
    h = Harness(cands(("a", 1), ("b", 2)))
    streaming(h)
    h.run(h.m.slow(20.0))
    assert h.m.slow(20.25) == []  # one search at a time
