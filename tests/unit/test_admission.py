"""The coalescer and the tune limiter, with time passed in."""

from __future__ import annotations

from relay.core.admission import Coalescer, TuneLimiter, coalesce_key


def test_only_flood_kinds_are_coalesced_and_failovers_never():
    assert coalesce_key("exhausted", {"channel": "c", "reason": "HttpError"}) == (
        "c",
        "exhausted",
        "HttpError",
    )
    assert coalesce_key("client_dropped", {"channel": "c", "reason": "SlowClient"}) is not None
    assert coalesce_key("tune_refused", {"channel": "c", "reason": "RateLimited"}) is not None
    assert coalesce_key("session_end", {"channel": "c", "reason": "Exhausted"}) is not None
    for event in ("failover", "upgrade", "upgrade_failed", "holding", "session_start", "transcode"):
        assert coalesce_key(event, {"channel": "c", "reason": "StreamError"}) is None
    assert coalesce_key("session_end", {"channel": "c", "reason": "ClientGone"}) is None


def test_given_a_flood_then_first_at_once_then_one_record_per_window_counting_all():
    c: Coalescer[int] = Coalescer(10.0)
    k = ("c", "exhausted", "HttpError")
    written: list[tuple[int, int]] = []
    for i in range(1000):  # 100 per second for 10 s, then 10 s more
        written += c.offer(k, i, i * 0.02)
    written += c.due(20.0)
    assert written[0] == (0, 1)
    assert len(written) == 3  # the first, then one per window
    assert sum(n for _, n in written) == 1000  # nothing is lost from the count
    assert written[-1] == (999, written[-1][1])  # a held record is the last one of its window


def test_given_events_of_other_keys_then_each_key_has_its_own_window():
    c: Coalescer[str] = Coalescer(10.0)
    assert c.offer(("a", "exhausted", "X"), "a1", 0.0) == [("a1", 1)]
    assert c.offer(("b", "exhausted", "X"), "b1", 0.1) == [("b1", 1)]
    assert c.offer(("a", "exhausted", "Y"), "a-other-reason", 0.2) == [("a-other-reason", 1)]
    assert c.offer(None, "failover", 0.3) == [("failover", 1)]
    assert c.offer(("a", "exhausted", "X"), "a2", 0.4) == []
    assert c.next_deadline() == 10.0
    # the held one comes out before a later event once its window ended, even without a timer
    assert c.offer(None, "failover2", 10.5) == [("a2", 1), ("failover2", 1)]


def test_given_a_quiet_window_then_the_next_event_is_written_at_once_again():
    c: Coalescer[str] = Coalescer(10.0)
    k = ("c", "exhausted", "X")
    c.offer(k, "1", 0.0)
    c.offer(k, "2", 1.0)
    assert c.due(10.0) == [("2", 1)]
    assert c.due(20.0) == []  # nothing came in the window after: forgotten
    assert c.offer(k, "3", 21.0) == [("3", 1)]


def test_window_zero_writes_everything_and_drain_gives_what_is_held():
    c0: Coalescer[int] = Coalescer(0.0)
    assert [c0.offer(("k",), i, 0.0) for i in range(3)] == [[(0, 1)], [(1, 1)], [(2, 1)]]
    c: Coalescer[int] = Coalescer(10.0)
    for i in range(5):
        c.offer(("k",), i, 0.0)
    assert c.drain() == [(4, 4)] and c.next_deadline() is None


def test_tune_limiter_limits_only_failing_channels_per_address_with_a_burst_and_a_rate():
    t = TuneLimiter(burst=3, every_s=10.0, failing_s=60.0, max_peers=2)
    assert t.admit("dead", "1.1.1.1", 0.0) is None  # not known to fail yet
    t.failed("dead", 0.0)
    assert [t.admit("dead", "1.1.1.1", 1.0) for _ in range(3)] == [None, None, None]
    wait = t.admit("dead", "1.1.1.1", 1.0)
    assert wait is not None and abs(wait - 10.0) < 1e-9
    assert t.admit("ok", "1.1.1.1", 1.0) is None  # a working channel is never limited
    assert t.admit("dead", "2.2.2.2", 1.0) is None  # another address has its own burst
    assert t.admit("dead", "1.1.1.1", 11.5) is None  # one more per every_s
    assert t.admit("dead", "1.1.1.1", 11.6) is not None
    t.recovered("dead")
    assert t.admit("dead", "1.1.1.1", 11.7) is None
    t.failed("dead", 20.0)
    assert not t.failing("dead", 80.0)  # failing_s later it is given a chance again


def test_tune_limiter_remembers_at_most_max_peers_addresses():
    t = TuneLimiter(burst=1, every_s=10.0, failing_s=60.0, max_peers=2)
    t.failed("dead", 0.0)
    for peer in ("a", "b", "c"):
        t.admit("dead", peer, 0.0)
    assert len(t._tokens) == 2 and "a" not in t._tokens
