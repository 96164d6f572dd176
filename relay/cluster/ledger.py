"""The slot ledger: who holds which provider connection (and tuner), against each limit.

The failover machine (relay.core.failover) stays synchronous and sans-IO: it counts this relay's
connections in `Slots` and never waits. A cluster needs one more gate that *does* wait: before a
connection to a provider is opened, a lease for it is taken in a store every relay sees. This module
is that gate's interface and the single-relay implementation:

- `LocalLedger` (no `cluster.redis_url`): `Slots` is the whole truth, every lease is granted at
  once and the session never goes through it (today's code path, unchanged).
- `relay.cluster.redis_ledger.RedisLedger`: leases in Redis, atomic against the limit.

A lease is taken per provider connection (kind "account", key = the account) and per session
(kind "tuner", limit = `tuner.tuner_count`), released when that connection or session ends, and
renewed by the ledger while it lives. A refusal says why, in the words an event shows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from relay.core.failover import Slots

ACCOUNT = "account"
TUNER = "tuner"
TUNERS_KEY = "tuners"  # the one key of kind TUNER: the cluster's tuner_count


@dataclass(frozen=True)
class Lease:
    """One held lease: `member` is what the store keys it by (holder, what it is for, a token)."""

    kind: str
    key: str
    member: str
    fence: int = 0  # increases with every grant cluster-wide: a lease granted later has a larger one


@dataclass(frozen=True)
class Refusal:
    """Why a lease was not granted; `reason` is a failover Reason value, `detail` a safe sentence."""

    reason: str
    detail: str


LostLease = Callable[[Lease], None]  # the ledger could not keep a lease: its holder must let go


class Ledger:
    """What a relay's sessions ask before opening a provider connection in a cluster."""

    clustered = False  # True: sessions must hold a lease before they connect

    def __init__(self, slots: Slots) -> None:
        self.slots = slots  # this relay's own connections, as the failover machine counts them

    async def start(self) -> None:
        """Connect and begin renewing; never raises for an unreachable store (that is a state)."""

    async def close(self) -> None:
        """Stop renewing and give back every lease still held."""

    async def acquire(
        self, kind: str, key: str, limit: int, what: str, on_lost: LostLease
    ) -> Lease | Refusal:
        """A lease on `key` if fewer than `limit` are held cluster-wide; `what` names it (no secret)."""
        raise NotImplementedError

    def release(self, lease: Lease) -> None:
        """Give the lease back (in the background: the caller never waits)."""
        raise NotImplementedError

    def held(self) -> dict[str, int]:
        """Leases this relay holds now, per key (for /status and tests)."""
        return {}

    def reconcile(self, live: set[str]) -> int:
        """Release every lease whose connection or session is gone (`live`: the members in use);
        returns how many leaked. Runs with the relay's Slots reconcile."""
        return 0


class LocalLedger(Ledger):
    """One relay: `Slots` already enforces every limit; a lease is granted at once and costs nothing."""

    def __init__(self, slots: Slots) -> None:
        super().__init__(slots)
        self._next = 0

    async def acquire(
        self, kind: str, key: str, limit: int, what: str, on_lost: LostLease
    ) -> Lease | Refusal:
        self._next += 1
        return Lease(kind, key, f"local|{what}|{self._next}", self._next)

    def release(self, lease: Lease) -> None:
        pass
