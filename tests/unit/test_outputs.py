"""Outputs: a session's viewers, without sockets. Viewers are recording doubles of the Output protocol;
the splice is the real Splicer fed a synthetic program, so joins happen at real keyframes."""

from __future__ import annotations

import asyncio

import pytest

from relay.core import events as ev
from relay.core.flow import FlowControl
from relay.shell.outputs import Outputs
from relay.ts import Splicer
from tests.tsbuild import TS, Upstream, pid_of, split


class Viewer:
    """A client as Outputs sees it: remembers what it was sent, and how."""

    def __init__(self, peer: str, buffered: int = 0) -> None:
        self.peer = peer
        self.backlog = buffered
        self.data = bytearray()
        self.framed: list[object] = []
        self.started = self.aborted = self.finished = self.refused = False

    def buffered(self) -> int:
        return self.backlog

    def start_stream(self) -> None:
        self.started = True

    def send(self, views: list[bytes | memoryview], size: int, framed: object = None) -> None:
        assert size == sum(len(v) for v in views)
        self.data += b"".join(views)
        self.framed.append(framed)

    def unavailable(self) -> None:
        self.refused = True

    def abort(self) -> None:
        self.aborted = True

    def finish(self) -> None:
        self.finished = True


class Rig:
    def __init__(self, *, splice: bool = True, limit: int = 1 << 20, stall_s: float = 30.0) -> None:
        self.splicer = Splicer(1.0, 3.0, enabled=splice, frame_hold=False)
        self.flow_calls: list[str] = []
        self.events: list[ev.Event] = []
        self.left: list[tuple[str, str]] = []
        self.upstream = Upstream()
        self.frame = 0
        self.outs = Outputs(
            "ch1",
            self.splicer,
            FlowControl(lambda: self.flow_calls.append("pause"), lambda: self.flow_calls.append("resume")),
            asyncio.get_running_loop(),
            buffer_limit=limit,
            stall_s=stall_s,
            emit=self.events.append,
            on_drop=self.gone,
        )

    def gone(self, out: Viewer, reason: str) -> None:  # the session's remove_output
        self.left.append((out.peer, reason))
        self.outs.remove(out)  # type: ignore[arg-type]

    def add(self, v: Viewer) -> Viewer:
        self.outs.add(v)  # type: ignore[arg-type]
        return v

    def relay(self, frames: int) -> bytes:
        """The next `frames` frames of the upstream through the splice to the viewers; what went out."""
        data = b"".join(self.upstream.stream(frames, self.frame))
        self.frame += frames
        out = self.splicer.feed([memoryview(data)], self.frame * 0.04)
        if out:
            self.outs.write(out)
        return b"".join(out)


async def test_given_three_viewers_when_a_read_goes_out_then_each_gets_it_framed_once_by_reference():
    rig = Rig()
    viewers = [rig.add(Viewer(f"10.0.0.{i}:1")) for i in range(3)]
    rig.outs.start()
    sent = rig.relay(5)
    assert sent and all(v.started and bytes(v.data) == sent for v in viewers)
    for call in range(len(viewers[0].framed)):
        framed = {id(v.framed[call]) for v in viewers}
        assert len(framed) == 1 and viewers[0].framed[call] is not None  # one framing for all
    assert rig.outs.bytes_out == len(sent)  # counted once, not per viewer


async def test_given_a_running_stream_when_a_viewer_joins_then_psi_at_once_then_from_the_next_keyframe():
    rig = Rig()
    first = rig.add(Viewer("10.0.0.1:1"))
    rig.outs.start()
    rig.relay(2)  # frames 0-1: the keyframe at 0 went out before the joiner came
    late = rig.add(Viewer("10.0.0.2:2"))
    assert late.started
    prefix = split(bytes(late.data))
    assert prefix and {pid_of(p) for p in prefix} == {0x0, 0x1000}  # PAT and PMT, at once
    rig.relay(2)  # frames 2-3: no keyframe, the joiner gets nothing of them
    assert len(late.data) == len(prefix) * TS
    rig.relay(2)  # frame 4 (no keyframe), frame 5 (keyframe, gop=5)
    got = split(bytes(late.data))[len(prefix) :]
    key = got[0]
    assert pid_of(key) == 0x100 and key[1] & 0x40 and key[3] & 0x20 and key[5] & 0x40  # PES start, RAI
    assert bytes(first.data).endswith(b"".join(got))  # from there on, what everyone gets


async def test_given_no_splice_when_a_viewer_joins_then_it_starts_from_the_last_read_at_once():
    rig = Rig(splice=False)
    rig.add(Viewer("10.0.0.1:1"))
    rig.outs.start()
    rig.relay(1)
    last = rig.relay(1)
    late = rig.add(Viewer("10.0.0.2:2"))
    assert bytes(late.data) == last


async def test_given_a_paused_viewer_far_behind_the_others_then_it_is_dropped_with_an_event():
    rig = Rig(limit=64 << 10)
    fast = rig.add(Viewer("10.0.0.1:1"))
    slow = rig.add(Viewer("10.0.0.2:2", buffered=100_000))
    rig.outs.start()
    rig.outs.paused(slow)  # type: ignore[arg-type]
    rig.relay(1)
    assert not slow.aborted  # dropped on the next turn of the loop, never inside the fan-out
    await asyncio.sleep(0)
    assert slow.aborted and rig.left == [("10.0.0.2:2", "SlowClient")]
    assert rig.events == [
        ev.ClientDropped(channel="ch1", peer="10.0.0.2:2", reason="SlowClient", buffered_bytes=100_000)
    ]
    assert rig.outs.viewers == [fast] and not fast.aborted


async def test_given_a_single_viewer_far_behind_then_it_is_not_dropped_but_pauses_the_upstream():
    rig = Rig(limit=64 << 10)
    only = rig.add(Viewer("10.0.0.1:1", buffered=100_000))
    rig.outs.start()
    rig.outs.paused(only)  # type: ignore[arg-type]
    assert rig.flow_calls == ["pause"]
    rig.relay(1)
    await asyncio.sleep(0)
    assert not only.aborted and rig.events == []
    rig.outs.resumed(only)  # type: ignore[arg-type]
    assert rig.flow_calls == ["pause", "resume"]


async def test_given_a_viewer_paused_for_stall_s_then_it_is_dropped_as_stalled_unless_it_resumes():
    rig = Rig(stall_s=0.05)
    stuck = rig.add(Viewer("10.0.0.1:1", buffered=5))
    back = rig.add(Viewer("10.0.0.2:2"))
    rig.outs.paused(stuck)  # type: ignore[arg-type]
    rig.outs.paused(back)  # type: ignore[arg-type]
    rig.outs.resumed(back)  # type: ignore[arg-type]
    await asyncio.sleep(0.1)
    assert stuck.aborted and not back.aborted
    assert rig.left == [("10.0.0.1:1", "ClientStalled")]
    assert [(e.reason, e.buffered_bytes) for e in rig.events if isinstance(e, ev.ClientDropped)] == [
        ("ClientStalled", 5)
    ]


async def test_a_bridge_goes_to_every_viewer_past_its_join_and_take_all_ends_them():
    rig = Rig()
    watching = rig.add(Viewer("10.0.0.1:1"))
    rig.outs.start()
    rig.relay(1)
    joining = rig.add(Viewer("10.0.0.2:2"))
    before = len(joining.data)
    rig.outs.bridge(b"\x47\x1f\xff\x10" + b"\xff" * 184)
    assert watching.data.endswith(b"\x47\x1f\xff\x10" + b"\xff" * 184) and len(joining.data) == before
    assert rig.outs.take_all() == [watching, joining] and not rig.outs and len(rig.outs) == 0


@pytest.mark.parametrize("started", [False, True])
async def test_a_viewer_that_joins_before_the_stream_starts_gets_the_head_with_the_others(started: bool):
    rig = Rig()
    if started:
        rig.outs.start()
    v = rig.add(Viewer("10.0.0.1:1"))
    assert v.started is started
    rig.outs.start()
    assert v.started and v in rig.outs
    assert rig.outs.remove(v) and not rig.outs.remove(v)  # type: ignore[arg-type]
