"""The slow-stream meter (relay/core/slowness.py): simulated delivery, time passed in, nothing sleeps."""

from __future__ import annotations

import random

from relay.core.slowness import PTS_MODULUS, SlowMeter

FRAME = 3600  # 25 fps in 90 kHz ticks


def deliver(meter: SlowMeter, arrivals: list[tuple[float, int]], poll_s: float = 0.25) -> list[float]:
    """Feed (arrival time, DTS) in order, polling `slow` every `poll_s` as the session's keepalive does;
    the poll times at which it said slow."""
    slow_at: list[float] = []
    t_poll = arrivals[0][0]
    for at, dts in arrivals:
        while t_poll < at:
            if meter.slow(t_poll):
                slow_at.append(t_poll)
            t_poll += poll_s
        meter.sample(at, dts % PTS_MODULUS)
    return slow_at


def paced(seconds: float, rate: float, t0: float = 0.0, dts0: int = 0) -> list[tuple[float, int]]:
    """Frames delivered at `rate` times real time, smoothly."""
    n = int(seconds * 25 * rate)
    return [(t0 + i / 25 / rate, dts0 + i * FRAME) for i in range(n)]


def jittery(seconds: float, seed: int, rate: float = 1.0) -> list[tuple[float, int]]:
    """A healthy but ugly live delivery: reads of 1-12 frames (a read leaves once its last frame was
    produced), per-read jitter up to 0.5 s, and a 2 s hole then a catch-up burst every 5-20 s."""
    rnd = random.Random(seed)
    out: list[tuple[float, int]] = []
    latency, t_prev, f = 0.2, 0.0, 0  # seconds behind the live edge
    next_hole = rnd.uniform(5, 20)
    while f / 25 < seconds:
        n = rnd.randint(1, 12)
        ideal = (f + n - 1) / 25 / rate  # live: nothing arrives before it was produced
        at = ideal + latency + rnd.uniform(0, 0.5)
        if ideal > next_hole:
            at = max(at, next_hole + 2.0)  # nothing for 2 s, then all of it at once
            if ideal > next_hole + 2.0:
                next_hole = ideal + rnd.uniform(5, 20)
        at = max(at, t_prev)  # TCP: in order
        for _ in range(n):
            out.append((at, f * FRAME))
            f += 1
        t_prev = at
    return out


def test_no_false_positive_over_a_long_jittery_bursty_healthy_run() -> None:
    for seed in range(4):
        meter = SlowMeter(10.0, 0.9)
        assert deliver(meter, jittery(1800, seed)) == [], seed  # 30 minutes each
        assert meter.rate is not None and meter.rate > 0.9


def test_a_one_time_latency_step_is_not_slowness() -> None:
    """The provider's buffer grows by 1 s once (1 s less media in a few seconds), then real time."""
    meter = SlowMeter(10.0, 0.9)
    a = paced(40, 1.0)
    b = [(t + 40 + 1.0, d + 40 * 25 * FRAME) for t, d in paced(60, 1.0)]
    assert deliver(meter, a + b) == []


def test_a_stream_at_07x_is_detected_within_the_window_plus_2s() -> None:
    meter = SlowMeter(10.0, 0.9)
    slow_at = deliver(meter, paced(30, 0.7))
    assert slow_at and slow_at[0] <= 10 + 2
    assert meter.rate is not None and abs(meter.rate - 0.7) < 0.05


def test_a_stream_that_slows_to_07x_mid_way_is_detected_within_the_window_plus_2s() -> None:
    meter = SlowMeter(10.0, 0.9)
    fast = paced(60, 1.0)
    t, dts = fast[-1][0] + 0.04, fast[-1][1] + FRAME
    slow_at = deliver(meter, fast + paced(30, 0.7, t0=t, dts0=dts))
    assert slow_at and t < slow_at[0] <= t + 10 + 2, (t, slow_at[:1])


def test_a_jittery_07x_stream_is_detected_too() -> None:
    meter = SlowMeter(10.0, 0.9)
    slow_at = deliver(meter, jittery(120, 7, rate=0.7))
    assert slow_at and slow_at[0] <= 10 + 2 + 3  # its holes and latency count


def test_095x_is_not_slow_and_real_time_is_not_slow() -> None:
    for rate in (0.95, 1.0, 1.3):
        meter = SlowMeter(10.0, 0.9)
        assert deliver(meter, paced(300, rate)) == [], rate


def test_the_meter_runs_on_across_a_wrap_and_timestamp_jumps() -> None:
    meter = SlowMeter(10.0, 0.9)
    near_wrap = PTS_MODULUS - 100 * FRAME
    assert deliver(meter, paced(60, 1.0, dts0=near_wrap)) == []  # it wraps 2^33 after 4 s
    meter = SlowMeter(10.0, 0.9)
    a = paced(20, 1.0)
    b = paced(20, 1.0, t0=20.0, dts0=50_000_000)  # an encoder restart: DTS jumps forward
    c = paced(20, 1.0, t0=40.0)  # a looped file: back to the start
    assert deliver(meter, a + b + c) == []


def test_a_looped_4s_file_at_07x_is_still_detected() -> None:
    meter = SlowMeter(10.0, 0.9)
    loops = [(t + i * 4 / 0.7, d) for i in range(6) for t, d in paced(4, 0.7)]
    slow_at = deliver(meter, loops)
    assert slow_at and slow_at[0] <= 12


def test_a_gap_with_nothing_in_a_third_is_no_verdict() -> None:
    meter = SlowMeter(10.0, 0.9)
    for at, dts in paced(10, 0.5):
        meter.sample(at, dts)
    assert not meter.slow(10.5)  # below since 10.5: a verdict once that held a tenth of the window
    assert meter.slow(11.6)
    assert not meter.slow(30.0)  # nothing for 18 s: a stall, not slowness
