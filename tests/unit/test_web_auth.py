"""The web page's rules without a socket: hashes, sessions, CSRF, the login limit, reordering."""

from __future__ import annotations

import itertools

import pytest

from relay.config import ConfigError, parse
from relay.storage.store import MappedStream, MappingError
from relay.web import auth
from relay.web.api import ApiError, event_view, levels_from, plan_order

CHEAP = {"n": 1 << 10, "r": 8}  # a real hash's form at a test's cost


def test_a_hash_verifies_its_secret_only_and_never_holds_it():
    h = auth.hash_secret("correct horse", **CHEAP)
    assert h.startswith("scrypt$1024$8$1$") and "correct" not in h
    assert auth.verify_secret("correct horse", h)
    assert not auth.verify_secret("correct hors", h)
    assert not auth.verify_secret("", h)
    assert auth.hash_secret("correct horse", **CHEAP) != h  # salted


@pytest.mark.parametrize(
    "stored",
    [
        None,
        "",
        "plain",
        "scrypt$x$8$1$aa$bb",
        "bcrypt$1$2$3$aa$bb",
        "scrypt$1048576000$8$1$aa$bb",
        "scrypt$1$2",
    ],
)
def test_a_missing_or_malformed_hash_matches_nothing(stored):
    assert not auth.verify_secret("anything", stored)


def test_an_overlong_secret_is_refused_before_hashing():
    h = auth.hash_secret("x" * 10, **CHEAP)
    assert not auth.verify_secret("x" * (auth.MAX_SECRET + 1), h)


def test_the_config_takes_only_a_hash():
    h = auth.hash_secret("pw", **CHEAP)
    assert parse({"ui": {"password": h, "token": h}}).ui.password == h
    with pytest.raises(ConfigError, match=r"ui.password: must be a hash .*relay ui-hash"):
        parse({"ui": {"password": "hunter2"}})
    assert parse({}).ui.public_status is False


def test_sessions_expire_after_their_ttl():
    ids = (f"t{i}" for i in itertools.count())
    sessions = auth.Sessions(60, token=lambda: next(ids))
    s = sessions.create(now=1000)
    assert (s.id, s.csrf) == ("t0", "t1")
    assert sessions.get("t0", now=1059) is s
    assert sessions.get("t1", now=1000) is None  # the CSRF token is not a session id
    assert sessions.get("t0", now=1060) is None
    assert len(sessions) == 0


def test_logout_ends_a_session_and_expired_ones_are_pruned_at_the_next_login():
    ids = (f"t{i}" for i in itertools.count())
    sessions = auth.Sessions(60, token=lambda: next(ids))
    a = sessions.create(now=0)
    sessions.create(now=30)
    sessions.end(a.id)
    assert sessions.get(a.id, now=1) is None
    sessions.create(now=100)  # the one from t=30 expired at 90
    assert len(sessions) == 1


def test_csrf_needs_the_sessions_own_token():
    s = auth.Session("sid", "tok", 10)
    assert auth.csrf_ok(s, "tok")
    assert not auth.csrf_ok(s, "tok2")
    assert not auth.csrf_ok(s, None)
    assert not auth.csrf_ok(None, "tok")


def test_login_limit_counts_failures_per_address_within_the_window():
    lim = auth.LoginLimiter(3, 60)
    for t in (0, 1, 2):
        assert lim.allowed("10.0.0.1", t)
        lim.failed("10.0.0.1", t)
    assert not lim.allowed("10.0.0.1", 3)
    assert lim.allowed("10.0.0.2", 3)  # another address is not punished
    assert lim.retry_after("10.0.0.1", 3) == pytest.approx(57)
    assert lim.allowed("10.0.0.1", 60)  # the first failure left the window
    lim.failed("10.0.0.1", 60)  # failures at 1, 2 and 60 are in the window
    assert not lim.allowed("10.0.0.1", 60.5)
    lim.succeeded("10.0.0.1")
    assert lim.allowed("10.0.0.1", 60.5)


def test_login_limit_remembers_a_bounded_number_of_addresses():
    lim = auth.LoginLimiter(1, 60, max_clients=2)
    for i in range(5):
        lim.failed(f"a{i}", 0)
    assert len(lim._failures) == 2


def test_cookie_is_httponly_samesite_strict_and_parsed_back():
    c = auth.session_cookie("abc", 3600)
    assert "HttpOnly" in c and "SameSite=Strict" in c and "Path=/ui" in c and "Max-Age=3600" in c
    assert auth.parse_cookies(f"x=1; {auth.COOKIE}=abc; y=2")[auth.COOKIE] == "abc"
    assert auth.parse_cookies(None) == {}
    assert "Max-Age=0" in auth.clear_cookie()


@pytest.mark.parametrize(
    ("origin", "host", "ok"),
    [
        (None, "relay:5004", True),
        ("http://relay:5004", "relay:5004", True),
        ("http://evil.example", "relay:5004", False),
        ("null", "relay:5004", False),
        ("http://relay:5004", None, False),
    ],
)
def test_same_origin(origin, host, ok):
    assert auth.same_origin(origin, host) is ok


def ms(acc: str, sid: int, prio: int, source: str) -> MappedStream:
    return MappedStream("ch", acc, sid, f"{acc} {sid}", prio, False, source, True)


def test_a_new_order_becomes_manual_priorities_in_that_order():
    current = [ms("a", 1, 0, "auto"), ms("b", 2, 1, "manual"), ms("c", 3, 2, "auto")]
    assert plan_order(current, ["c/3", "a/1", "b/2"]) == [("c", 3, 0), ("a", 1, 1), ("b", 2, 2)]


@pytest.mark.parametrize("wanted", [["a/1"], ["a/1", "a/1", "b/2"], ["a/1", "b/2", "z/9"], []])
def test_an_order_must_name_each_stream_once(wanted):
    with pytest.raises(MappingError, match="exactly once"):
        plan_order([ms("a", 1, 0, "auto"), ms("b", 2, 1, "auto")], wanted)


def test_a_config_mapping_cannot_be_moved_but_others_can_around_it():
    current = [ms("a", 1, 0, "config"), ms("b", 2, 1, "auto"), ms("c", 3, 2, "auto")]
    assert plan_order(current, ["a/1", "c/3", "b/2"]) == [("c", 3, 1), ("b", 2, 2)]
    with pytest.raises(MappingError, match="config file"):
        plan_order(current, ["b/2", "a/1", "c/3"])


def test_the_timeline_level_is_a_minimum():
    assert levels_from("warn") == ("warn", "error")
    assert levels_from(None) == ("debug", "info", "warn", "error")
    with pytest.raises(ApiError):
        levels_from("loud")


def test_only_whitelisted_event_fields_reach_the_page():
    e = {"event": "failover", "channel": "c", "url": "http://u:p@x/live/u/p/1.ts", "from_stream": "a/1"}
    assert event_view(e) == {"event": "failover", "channel": "c", "from_stream": "a/1"}
    assert event_view({"ts": "2026"})["timestamp"] == "2026"
