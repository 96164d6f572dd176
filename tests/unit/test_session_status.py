"""SessionStatus: the read model /status, the metrics and the relay use, built by a real session.

No socket is opened: the session's failover machine is driven directly (as its upstreams would), so
what the status says is checked against what the machine and the session hold.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from relay.config import parse
from relay.core.failover import HealthMemory, Reason, Slots, State, rank_candidates
from relay.core.status import SessionStatus
from relay.shell.metrics import Metrics
from relay.shell.session import ChannelSession, Shared
from relay.storage.eventlog import EventLog


class FakeOutput:
    """A client as the session sees it; remembers what it was sent."""

    def __init__(self, peer: str) -> None:
        self.peer = peer
        self.sent: list[bytes] = []
        self.started = self.aborted = self.finished = False

    def buffered(self) -> int:
        return 0

    def start_stream(self) -> None:
        self.started = True

    def send(self, views: list[bytes | memoryview], size: int, framed: object = None) -> None:
        self.sent.append(b"".join(views))

    def unavailable(self) -> None: ...
    def abort(self) -> None:
        self.aborted = True

    def finish(self) -> None:
        self.finished = True


@pytest.fixture
async def session(tmp_path: Path) -> ChannelSession:
    """A session of ch1 over a/1 then b/2 (it needs a running loop, and opens nothing by itself)."""
    cfg = parse(
        {
            "accounts": [
                {"name": "a", "url": "http://127.0.0.1:9", "username": "u", "password": "p"},
                {"name": "b", "url": "http://127.0.0.1:9", "username": "u", "password": "p"},
            ],
            "channels": [{"id": "ch1", "name": "One", "number": "101", "streams": []}],
        },
        base_dir=tmp_path,
    )
    clock = [100.0]
    shared = Shared(
        config=cfg,
        events=EventLog(tmp_path / "e.jsonl", tmp_path / "e.db"),
        health=HealthMemory(),
        slots=Slots({"a": 1, "b": 1}),
        clock=lambda: clock[0],
    )
    cands = rank_candidates([("a", 1, 0, True), ("b", 2, 1, False)])
    return ChannelSession("ch1", cands, shared, on_end=lambda s: None)


async def test_given_a_session_on_its_backup_then_the_status_says_what_it_holds(session: ChannelSession):
    m = session.machine
    m.start(100.0)  # the machine alone: no upstream socket is opened
    m.failed(1, Reason.HTTP_ERROR, 100.1, 503)
    m.head(2, 100.2)
    m.packets(2, 100.2)
    for peer in ("10.0.0.1:1", "10.0.0.2:2"):
        session.add_output(FakeOutput(peer))  # type: ignore[arg-type]
    session.outputs.write([memoryview(bytes(1_000_000))])  # what the splice let go, to both
    st = session.status(110.0)
    assert isinstance(st, SessionStatus)
    assert (st.channel, st.state, st.current.ref if st.current else None) == ("ch1", State.STREAMING, "b/2")
    assert st.upstreams == ("b",) and st.clients == 2 and st.peers == ("10.0.0.1:1", "10.0.0.2:2")
    assert st.uptime_s == pytest.approx(10.0) and st.bitrate_kbps == pytest.approx(800.0)
    assert (st.lingering, st.lag_s, st.failovers, st.upgrades) == (False, 0.0, 0, 0)
    with pytest.raises(AttributeError):
        st.clients = 3  # type: ignore[misc]


async def test_given_no_client_left_then_the_status_is_lingering_and_idle_before_start(
    session: ChannelSession,
):
    st = session.status(100.0)
    assert st.state is State.IDLE and st.current is None and st.upstreams == ()
    assert st.lingering and st.clients == 0 and st.uptime_s > 0  # never zero: a bitrate divides by it


async def test_metrics_status_reads_only_the_status(session: ChannelSession):
    m = session.machine
    m.start(100.0)
    m.packets(1, 100.05)
    session.add_output(FakeOutput("10.0.0.1:1"))  # type: ignore[arg-type]
    session.outputs.write([memoryview(bytes(4000))])
    metrics = Metrics(lambda now: [session.status(now)], lambda: session.shared.slots, clock=lambda: 102.0)
    row = metrics.status()["sessions"][0]
    assert row == {
        "channel": "ch1",
        "stream": "a/1",
        "account": "a",
        "priority": 0,
        "state": "streaming",
        "uptime_s": 2.0,
        "clients": 1,
        "lingering": False,
        "bitrate_kbps": 16.0,
        "bytes": 4000,
        "lag_ms": 0.0,
        "failovers": 0,
        "last_failover": None,
    }
    assert b"relay_clients 1.0" in metrics.exposition()
