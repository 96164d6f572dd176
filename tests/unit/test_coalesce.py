"""Coalescing a channel's writes (server.write_interval_ms): the same bytes in the same order, fewer
writes, a batch at the interval or at the byte bound, and the slow-viewer rules as without it."""

from __future__ import annotations

import asyncio

import pytest

from relay.core import events as ev
from relay.core.flow import FlowControl
from relay.shell.coalesce import Coalescer
from relay.shell.outputs import Outputs
from tests.tsbuild import pid_of, split
from tests.unit.test_outputs import Rig, Viewer

NULL = b"\x47\x1f\xff\x10" + b"\xff" * 184


class CoalescingRig(Rig):
    def __init__(self, interval_s: float, *, write_bytes: int = 1 << 20, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self.outs = Outputs(
            "ch1",
            self.splicer,
            FlowControl(lambda: self.flow_calls.append("pause"), lambda: self.flow_calls.append("resume")),
            asyncio.get_running_loop(),
            buffer_limit=self.outs._limit,
            stall_s=self.outs._stall_s,
            emit=self.events.append,
            on_drop=self.gone,
            write_interval_s=interval_s,
            write_bytes=write_bytes,
        )


async def test_coalesced_viewers_get_the_same_bytes_in_order_in_fewer_writes_framed_once():
    plain, batched = Rig(), CoalescingRig(10.0)  # an interval that never fires inside the test
    pv = [plain.add(Viewer(f"10.0.0.{i}:1")) for i in range(2)]
    bv = [batched.add(Viewer(f"10.0.0.{i}:1")) for i in range(2)]
    plain.outs.start()
    batched.outs.start()
    for frames in (1, 3, 2, 7, 1):
        plain.relay(frames)
        batched.relay(frames)
    assert all(not v.data and not v.framed for v in bv)  # nothing went out yet
    batched.outs.flush()
    assert bytes(bv[0].data) == bytes(bv[1].data) == bytes(pv[0].data) and len(bv[0].data) > 0
    assert len(pv[0].framed) >= 5 and len(bv[0].framed) == 1  # one write instead of one per read
    assert bv[0].framed[0] is bv[1].framed[0] is not None  # framed once for every viewer
    assert batched.outs.bytes_out == plain.outs.bytes_out == len(pv[0].data)


async def test_a_batch_goes_out_at_the_interval_not_before():
    rig = CoalescingRig(0.05)
    v = rig.add(Viewer("10.0.0.1:1"))
    rig.outs.start()
    sent = rig.relay(2) + rig.relay(2)
    assert sent and not v.data
    await asyncio.sleep(0.02)
    assert not v.data  # the interval runs from the batch's first byte
    await asyncio.sleep(0.06)
    assert bytes(v.data) == sent and len(v.framed) == 1
    later = rig.relay(1)
    await asyncio.sleep(0.08)
    assert bytes(v.data) == sent + later and len(v.framed) == 2


async def test_a_batch_goes_out_at_once_when_it_reaches_write_coalesce_bytes():
    rig = CoalescingRig(10.0, write_bytes=4000)
    v = rig.add(Viewer("10.0.0.1:1"))
    rig.outs.start()
    sent = b""
    while not v.data:
        sent += rig.relay(1)
    assert bytes(v.data) == sent and len(sent) >= 4000 and rig.outs.coalescer.pending == 0


@pytest.mark.parametrize("backlog, dropped", [(64 << 10, False), ((64 << 10) + 1, True)])
async def test_a_slow_viewer_is_dropped_at_the_same_bound_when_its_batch_goes_out(
    backlog: int, dropped: bool
):
    rig = CoalescingRig(0.02, limit=64 << 10)
    fast = rig.add(Viewer("10.0.0.1:1"))
    slow = rig.add(Viewer("10.0.0.2:2", buffered=backlog))
    rig.outs.start()
    rig.outs.paused(slow)  # type: ignore[arg-type]
    rig.relay(1)
    await asyncio.sleep(0)
    assert not slow.aborted  # nothing was written to it yet: nothing to judge
    await asyncio.sleep(0.05)
    assert slow.aborted is dropped and not fast.aborted
    if dropped:
        assert rig.events == [
            ev.ClientDropped(channel="ch1", peer="10.0.0.2:2", reason="SlowClient", buffered_bytes=backlog)
        ]
        assert rig.outs.viewers == [fast]
    else:
        assert rig.events == [] and slow in rig.outs


async def test_a_joiner_while_coalescing_gets_psi_then_a_keyframe_and_then_what_everyone_gets():
    rig = CoalescingRig(10.0)
    first = rig.add(Viewer("10.0.0.1:1"))
    rig.outs.start()
    rig.relay(2)
    rig.outs.flush()
    late = rig.add(Viewer("10.0.0.2:2"))
    prefix = split(bytes(late.data))
    assert {pid_of(p) for p in prefix} == {0x0, 0x1000}
    rig.relay(4)  # frames 2-5, the keyframe at 5
    rig.relay(2)
    rig.outs.flush()
    got = split(bytes(late.data))[len(prefix) :]
    assert got and pid_of(got[0]) == 0x100 and got[0][1] & 0x40 and got[0][5] & 0x40
    assert bytes(first.data).endswith(b"".join(got))


async def test_a_bridge_and_the_end_of_the_session_send_what_was_gathered_first():
    rig = CoalescingRig(10.0)
    v = rig.add(Viewer("10.0.0.1:1"))
    rig.outs.start()
    sent = rig.relay(3)
    rig.outs.bridge(NULL)
    assert bytes(v.data) == sent + NULL  # in order: the gathered bytes, then the bridge
    more = rig.relay(1)
    rig.outs.close()
    assert bytes(v.data) == sent + NULL + more  # the session's end flushes what was gathered


async def test_no_splice_joiner_while_coalescing_starts_from_the_last_read_without_a_duplicate():
    rig = CoalescingRig(10.0, splice=False)
    first = rig.add(Viewer("10.0.0.1:1"))
    rig.outs.start()
    rig.relay(1)
    last = rig.relay(1)
    late = rig.add(Viewer("10.0.0.2:2"))  # flushes: the last batch is what it starts from
    assert bytes(late.data).endswith(last)
    nxt = rig.relay(1)
    rig.outs.flush()
    assert bytes(late.data).endswith(last + nxt) and bytes(first.data).endswith(last + nxt)


async def test_coalescer_rejects_a_zero_interval_and_keeps_order():
    loop = asyncio.get_running_loop()
    with pytest.raises(ValueError):
        Coalescer(loop, 0, 10, lambda views, size: None)
    got: list[tuple[list[bytes | memoryview], int]] = []
    c = Coalescer(loop, 10.0, 5, lambda views, size: got.append((views, size)))
    c.add([b"ab"], 2)
    c.add([b"c", b"d"], 2)
    assert got == [] and c.pending == 4
    c.add([b"e"], 1)
    assert got == [([b"ab", b"c", b"d", b"e"], 5)] and c.pending == 0 and c.batches == 1
    c.flush()
    assert c.batches == 1  # nothing gathered: no empty batch


async def test_on_a_steady_stream_the_batches_keep_one_cadence():
    """A read that comes just after a batch goes out with the next batch on the cadence, not an
    interval after it: a viewer's gap stays the interval, not the interval plus a read."""
    loop = asyncio.get_running_loop()
    at: list[float] = []
    c = Coalescer(loop, 0.1, 1 << 20, lambda views, size: at.append(loop.time()))
    t0 = loop.time()
    c.add([b"a"], 1)
    await asyncio.sleep(0.13)  # the first batch went out at t0 + 0.1
    c.add([b"b"], 1)  # 0.03 after it
    await asyncio.sleep(0.12)
    assert len(at) == 2
    assert at[1] - at[0] == pytest.approx(0.1, abs=0.02), "on the cadence: 0.1 after the first batch"
    assert at[1] - t0 < 0.23, "not an interval after the late read (that would be 0.23)"
