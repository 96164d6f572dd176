"""The JSON of every event kind, pinned: monitoring reads these lines (and the same rows in SQLite).

Each line of pinned_events.txt was written by the relay before events were types (commit a084dec),
from the same scenario as below; the typed events must give the same bytes (fields, order, values,
message).
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from relay.core import events as ev
from relay.sources.sync import AccountResult, SyncReport
from relay.storage.eventlog import record
from tests.unit.test_failover import Harness, Reason, cands, on_backup_at_70s, streaming

T = 1700000000.123
ID = "0" * 32

# name <TAB> the line as written, one per scenario below
PINNED = dict(
    line.split("\t", 1) for line in (Path(__file__).parent / "pinned_events.txt").read_text().splitlines()
)


def written(e: ev.Event) -> str:
    return orjson.dumps(record(e, T, ID)).decode()


def machine_events() -> dict[str, ev.Event]:
    """Every event of the failover machine, from the scenarios that wrote the pinned lines."""
    out: dict[str, ev.Event] = {}

    def take(name: str, h: Harness, kind: str, i: int = 0) -> ev.Event:
        out[name] = h.events(kind)[i].what
        return out[name]

    h = Harness(cands(("a", 1), ("b", 2), ("c", 3)))
    h.slots.acquire("a")
    h.start(0.0)
    h.fail("b/2", Reason.HTTP_ERROR, 0.01, 503)
    h.ready("c/3", 0.05)
    take("session_start", h, "session_start")
    take("tune_failover", h, "tune_failover")  # issue 15: the same tune, as the failover it is
    h = Harness(cands(("a", 1), ("b", 2)))
    h.start(0.0)
    h.ready("a/1", 0.05)
    take("session_start_plain", h, "session_start")
    h = Harness(cands(("a", 1), ("b", 2), ("c", 3)), hold_s=30.0)
    streaming(h)
    h.fail("a/1", Reason.STREAM_ERROR, 10.0)
    h.fail("b/2", Reason.HTTP_ERROR, 10.01, 503)
    h.fail("c/3", Reason.CONNECTION_ERROR, 10.02)
    take("holding", h, "holding")
    h.tick(10.52)
    h.ready("a/1", 10.6)
    take("failover_held", h, "failover")
    h.run(h.m.close(20.0, "ClientGone"))
    take("session_end", h, "session_end")
    h = Harness(cands(("a", 1), ("b", 2)))
    streaming(h)
    h.fail("a/1", Reason.STREAM_STALL, 10.0)
    h.ready("b/2", 10.25)
    failover = take("failover", h, "failover")
    assert isinstance(failover, ev.Failover)
    out["failover_entered"] = failover.entered(round((10.31 - 10.25) * 1000, 1))
    h = Harness(cands(("a", 1), ("b", 2)))
    on_backup_at_70s(h, "b/2")
    h.tick(70.01)
    h.ready("a/1", 70.2)
    take("upgrade_mbb", h, "upgrade")
    h = Harness(cands(("a", 1), ("b", 2)))
    on_backup_at_70s(h, "b/2")
    h.tick(70.01)
    h.fail("a/1", Reason.HTTP_ERROR, 70.05, 503)
    take("upgrade_failed_probe", h, "upgrade_failed")
    h = Harness(cands(("a", 1), ("a", 2)))
    on_backup_at_70s(h, "a/2")
    h.tick(70.01)
    h.ready("a/1", 70.2)
    take("upgrade_bbm", h, "upgrade")
    h = Harness(cands(("a", 1), ("a", 2)))
    on_backup_at_70s(h, "a/2")
    h.tick(70.01)
    h.fail("a/1", Reason.HTTP_ERROR, 70.1, 404)
    h.ready("a/2", 70.2)
    take("upgrade_failed_bbm", h, "upgrade_failed", -1)
    h = Harness(cands(("a", 1), ("b", 2)))
    h.start(0.0)
    h.fail("a/1", Reason.HTTP_ERROR, 0.01, 404)
    h.fail("b/2", Reason.CONNECTION_ERROR, 0.02)
    take("exhausted_start", h, "exhausted")
    h = Harness(cands(("a", 1), ("b", 2), ("c", 3)))
    streaming(h)
    h.fail("a/1", Reason.STREAM_ERROR, 10.0)
    h.tick(10.25)
    h.tick(12.0)
    take("exhausted", h, "exhausted")
    return out


def shell_events() -> dict[str, ev.Event]:
    """The session's and the sync's events, as they build them."""
    out: dict[str, ev.Event] = {
        "client_dropped": ev.ClientDropped(
            channel="ch1", peer="127.0.0.1:5555", reason="SlowClient", buffered_bytes=123456
        ),
        "transcode": ev.Transcode(
            channel="ch1", to_stream="b/2", from_codecs="mpeg2video/mp2", to_codecs="h264/aac"
        ),
    }
    report = SyncReport(
        accounts=[
            AccountResult("acc1", "inactive", reason="expired", was=None, exp_date=1700000000),
            AccountResult("acc2", "inactive", reason="banned", was="expired"),
            AccountResult("acc3", "ok", was="expired"),
        ]
    )
    for name, e in zip(
        ["account_inactive_exp", "account_inactive", "account_active"], report.events(), strict=True
    ):
        out[name] = e
    return out


ALL = {**machine_events(), **shell_events()}


@pytest.mark.parametrize("name", sorted(PINNED))
def test_each_event_kind_is_written_as_before(name: str):
    assert written(ALL[name]) == PINNED[name]


def test_every_kind_is_pinned():
    assert {type(e) for e in ALL.values()} == set(ev.KINDS)
    assert set(ALL) == set(PINNED)


def test_the_record_listeners_get_is_the_written_line():
    e = ALL["failover_entered"]
    rec = record(e, T, ID)
    assert list(rec)[:4] == ["timestamp", "level", "category", "event"] and list(rec)[-2:] == [
        "message",
        "event_id",
    ]
    assert orjson.loads(orjson.dumps(rec)) == rec  # plain JSON values only: lists, not tuples


def test_events_are_frozen_values():
    e = ALL["failover"]
    with pytest.raises(AttributeError):
        e.switch_ms = 1.0  # type: ignore[misc]
    assert e == ALL["failover"] and e.fields() is not e.fields()
