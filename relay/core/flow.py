"""Back-pressure in one place: the upstream pauses only when every client it feeds is paused.

One slow client must never slow the others, so a session pauses its upstream only when all of its
clients stopped draining; a client that falls behind the others is bounded separately (its write
buffer) and dropped by the session when it exceeds the bound. With a single client this is plain
back-pressure: a slow client pauses the upstream, and a fast upstream never grows memory.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable


class FlowControl:
    """Tracks which writers are paused; calls on_pause / on_resume on the edges only (idempotent)."""

    def __init__(self, on_pause: Callable[[], None], on_resume: Callable[[], None]) -> None:
        self._writers: set[Hashable] = set()
        self._paused: set[Hashable] = set()
        self._on_pause = on_pause
        self._on_resume = on_resume
        self.paused = False

    def add(self, key: Hashable) -> None:
        self._writers.add(key)
        self._update()

    def remove(self, key: Hashable) -> None:
        self._writers.discard(key)
        self._paused.discard(key)
        self._update()

    def pause(self, key: Hashable) -> None:
        if key in self._writers:
            self._paused.add(key)
            self._update()

    def resume(self, key: Hashable) -> None:
        if key in self._paused:
            self._paused.discard(key)
            self._update()

    def is_paused(self, key: Hashable) -> bool:
        return key in self._paused

    def _update(self) -> None:
        now_paused = bool(self._writers) and self._paused >= self._writers
        if now_paused and not self.paused:
            self.paused = True
            self._on_pause()
        elif not now_paused and self.paused:
            self.paused = False
            self._on_resume()
