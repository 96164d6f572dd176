"""Is an upstream slower than real time? Judged from the stream's own clock. Sans-IO.

A provider that sends 0.7 s of media per second never stalls — bytes keep coming — yet every player
rebuffers. The meter compares the media time delivered (the reference stream's DTS, 90 kHz, as the
Splicer sees each PES start) with wall time: its *lead* is media time minus wall time since the first
sample. A real-time stream's lead stays level, whatever its jitter; a slow one's declines steadily, by
(1 - rate) per second.

Robust to jittery, bursty delivery: the window (`window_s`) is cut in thirds and each third keeps only
its highest lead — the sample that came earliest relative to its media time, i.e. right after a burst —
so late samples and gaps between bursts never count. The stream is slow when the rate from the first
third's peak to the last's is below `ratio`, each step between thirds lost at least half its share of
that (a sustained decline, not a one-time step: a delay that grew once by a second, then steady), and
that has held for a tenth of the window (one unlucky poll is no verdict). A jump in the timestamps
(backwards by more than a second, or forward by more than `window_s`: an encoder restart, a provider
looping a file) counts as one step of the size seen before it, so the media clock runs on across it.
The shell calls `reset` at a switch and when it paused the upstream for a slow client (delivery held
back on purpose).
"""

from __future__ import annotations

import math

PTS_MODULUS = 1 << 33
TICKS = 90_000.0
_BINS_PER_THIRD = 4


class SlowMeter:
    """Media time against wall time over `window_s`; `slow(now)` once the rate stays below `ratio`."""

    def __init__(self, window_s: float, ratio: float) -> None:
        self.window_s = window_s
        self.ratio = ratio
        self.hold_s = window_s / 10
        self._bin_s = window_s / (3 * _BINS_PER_THIRD)
        self.reset()

    def reset(self) -> None:
        """Forget the history (a switch, a pause, a timestamp jump)."""
        self._t0: float | None = None
        self._last: int | None = None
        self._media = 0.0
        self._step = 0  # the last regular step between samples, in ticks
        self._bins: dict[int, float] = {}  # wall-time bin -> the highest lead seen in it
        self.rate: float | None = None  # the last measured rate (media seconds per second)
        self._below_since: float | None = None

    def sample(self, now: float, ticks: int) -> None:
        """The reference stream's DTS (or PTS), 90 kHz mod 2^33, arrived at wall time `now`."""
        last = self._last
        if last is None or self._t0 is None:
            self._t0, self._last, self._media = now, ticks, 0.0
            self._bins = {0: 0.0}
            return
        delta = (ticks - last) % PTS_MODULUS
        if delta >= PTS_MODULUS // 2:
            delta -= PTS_MODULUS
        if delta < -TICKS or delta > self.window_s * TICKS:  # a jump: one step, the clock runs on
            delta = self._step
        elif delta <= 0:
            return  # a repeat or a small step back: nothing delivered
        else:
            self._step = delta
        self._last = ticks
        self._media += delta / TICKS
        elapsed = now - self._t0
        k = math.floor(elapsed / self._bin_s)
        lead = self._media - elapsed
        if lead > self._bins.get(k, -math.inf):
            self._bins[k] = lead
        if len(self._bins) > 4 * _BINS_PER_THIRD:
            for old in [b for b in self._bins if b <= k - 3 * _BINS_PER_THIRD]:
                del self._bins[old]

    def slow(self, now: float) -> bool:
        """The rate over the window stayed below `ratio` for `hold_s` (see the module docstring)."""
        if self._t0 is None or now - self._t0 < self.window_s:
            return False
        k = math.floor((now - self._t0) / self._bin_s)
        peaks = []
        for third in (2, 1, 0):  # oldest first
            hi = k - third * _BINS_PER_THIRD
            got = [self._bins[b] for b in range(hi - _BINS_PER_THIRD + 1, hi + 1) if b in self._bins]
            if not got:
                return False  # nothing arrived in a third: a gap, the stall timer's business
            peaks.append(max(got))
        span = self.window_s / 3
        # the rate from the first third to the last, if the lead fell through the middle one too
        self.rate = 1 - (peaks[0] - peaks[2]) / (2 * span)
        step = (1 - self.ratio) * span / 2  # each third's share of the decline, halved
        below = self.rate < self.ratio and peaks[0] - peaks[1] >= step and peaks[1] - peaks[2] >= step
        if not below:
            self._below_since = None
            return False
        if self._below_since is None:
            self._below_since = now
        return now - self._below_since >= self.hold_s
