"""Back-pressure in one place: a paused writer pauses its reader, with idempotent flags."""

from __future__ import annotations

from collections.abc import Callable


class FlowControl:
    """Tracks which writers are paused and calls on_pause / on_resume on the edges only.

    The relay keeps one of these per session: any paused client pauses upstream reading, so a slow
    client bounds the memory a fast upstream can fill (the transport's write buffer, no more).
    """

    def __init__(self, on_pause: Callable[[], None], on_resume: Callable[[], None]) -> None:
        self._paused: set[int] = set()
        self._on_pause = on_pause
        self._on_resume = on_resume

    @property
    def paused(self) -> bool:
        return bool(self._paused)

    def pause(self, key: int) -> None:
        was = bool(self._paused)
        self._paused.add(key)
        if not was:
            self._on_pause()

    def resume(self, key: int) -> None:
        if key not in self._paused:
            return
        self._paused.discard(key)
        if not self._paused:
            self._on_resume()
