"""What one channel session looks like from outside, at one moment: a read model.

/status, the Prometheus gauges and the relay's tuner bookkeeping (slot reconcile, zapping, "has it
started") read this, never the session's failover machine or splicer, so those can change inside
without breaking a page or a metric. The session builds it (`ChannelSession.status(now)`).
"""

from __future__ import annotations

from dataclasses import dataclass

from relay.core.failover import Candidate, State


@dataclass(frozen=True, slots=True)
class SessionStatus:
    channel: str
    state: State
    current: Candidate | None  # the stream relayed now
    upstreams: tuple[str, ...]  # the account of each provider connection the session holds now
    uptime_s: float  # since the session began, never below 1 µs (a bitrate divides by it)
    clients: int
    peers: tuple[str, ...]  # each client's address
    lingering: bool  # no client left, kept warm for linger_s
    bytes_out: int  # sent to the clients (once per session, not per client)
    lag_s: float  # the frame hold's delay behind the provider
    failovers: int
    upgrades: int

    @property
    def bitrate_kbps(self) -> float:
        return self.bytes_out * 8 / self.uptime_s / 1000
