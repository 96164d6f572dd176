"""What each emulated tuner is doing right now: the read model behind /status.json, tuners.html and the
TCP control channel's /tuner<N>/... items.

Owns: `TunerState` (one tuner: idle, or the channel it streams, to whom, at what rate) and `LiveView`
(every tuner plus the lineup size), and the rule that turns "the sessions playing now" into stable
tuner numbers (`TunerSlots`). Pure: the relay hands in what it reads from its sessions; nothing here
knows a session, a socket or a clock.

Must never: give two streams one tuner number, renumber a tuner while it streams, or carry a
provider URL (the relay's guide number and name only).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field

# Signal values a real tuner shows on a perfect cable signal; an IPTV stream has none, and clients
# (Channels DVR, Home Assistant) colour a tuner by them, so they are constant and good.
SIGNAL_STRENGTH = 100
SIGNAL_QUALITY = 100
SYMBOL_QUALITY = 100


@dataclass(frozen=True)
class TunerState:
    """One tuner. `number` None = idle; else the GuideNumber it streams to `target_ip`."""

    index: int
    number: str | None = None
    name: str = ""
    target_ip: str = ""
    target_port: int = 0
    bps: int = 0  # the stream's rate as sent to the viewer, bits per second

    @property
    def busy(self) -> bool:
        return self.number is not None


@dataclass(frozen=True)
class LiveView:
    """Every tuner (idle ones too) and how many channels the lineup has."""

    tuners: tuple[TunerState, ...] = ()
    channels: int = 0

    def tuner(self, index: int) -> TunerState | None:
        return self.tuners[index] if 0 <= index < len(self.tuners) else None


def idle_view(tuner_count: int, channels: int = 0) -> LiveView:
    return LiveView(tuple(TunerState(i) for i in range(tuner_count)), channels)


@dataclass(frozen=True)
class Playing:
    """A stream the relay serves now, as the relay reads it from a session."""

    key: Hashable  # the session (or anything stable while it plays)
    number: str
    name: str
    target_ip: str
    target_port: int
    bps: int


@dataclass
class TunerSlots:
    """Stable tuner numbers: a stream keeps its number until it ends; a new one takes the lowest free."""

    tuner_count: int
    _held: dict[Hashable, int] = field(default_factory=dict)

    def view(self, playing: Iterable[Playing], channels: int) -> LiveView:
        now = list(playing)
        keys = {p.key for p in now}
        self._held = {k: i for k, i in self._held.items() if k in keys}
        used = set(self._held.values())
        for p in now:
            if p.key in self._held:
                continue
            free = next((i for i in range(self.tuner_count) if i not in used), None)
            if free is None:
                continue  # more streams than tuners (a lingering one is never counted): not shown
            self._held[p.key] = free
            used.add(free)
        by_index = {self._held[p.key]: p for p in now if p.key in self._held}
        tuners: list[TunerState] = []
        for i in range(self.tuner_count):
            p = by_index.get(i)
            if p is None:
                tuners.append(TunerState(i))
            else:
                tuners.append(TunerState(i, p.number, p.name, p.target_ip, p.target_port, p.bps))
        return LiveView(tuple(tuners), channels)


def busy(tuners: Sequence[TunerState]) -> list[TunerState]:
    return [t for t in tuners if t.busy]
