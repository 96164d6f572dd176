"""A channel session's hook into a cluster ledger: a lease before each provider connection.

The failover machine emits `Open(attempt, candidate)` having counted the connection in this relay's
`Slots`; in a cluster the session hands that attempt here instead of connecting at once. Once the
ledger grants a lease (on loopback about a millisecond) the attempt connects; a refusal comes back
to the machine as that attempt failing (AccountFull, or LedgerUnavailable when the store cannot be
asked), so the machine moves on exactly as for a full account. An attempt closed while its lease
was on the way gives the lease straight back; nothing is cancelled mid-call, so no lease leaks.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable

from relay.cluster.ledger import ACCOUNT, Lease, Ledger, Refusal
from relay.core.failover import Candidate


class SessionLeases:
    def __init__(
        self,
        ledger: Ledger,
        channel: str,
        limit: Callable[[str], int],
        connect: Callable[[int, Candidate], None],
        refused: Callable[[int, Refusal], None],
        lost: Callable[[int], None],
    ) -> None:
        self.ledger = ledger
        self.channel = channel
        self._limit = limit
        self._connect = connect
        self._refused = refused
        self._lost = lost
        self.pending: dict[int, asyncio.Task[None]] = {}
        self.held: dict[int, Lease] = {}
        self._dropped: set[int] = set()  # closed while its lease was being asked for

    def open(self, attempt: int, cand: Candidate) -> None:
        task = asyncio.get_running_loop().create_task(self._acquire(attempt, cand))
        self.pending[attempt] = task

    async def _acquire(self, attempt: int, cand: Candidate) -> None:
        try:
            got = await self.ledger.acquire(
                ACCOUNT,
                cand.account,
                self._limit(cand.account),
                f"{self.channel}/{cand.ref}",
                functools.partial(self._lease_lost, attempt),
            )
        finally:
            self.pending.pop(attempt, None)
        if attempt in self._dropped:
            self._dropped.discard(attempt)
            if isinstance(got, Lease):
                self.ledger.release(got)
            return
        if isinstance(got, Refusal):
            self._refused(attempt, got)
            return
        self.held[attempt] = got
        self._connect(attempt, cand)

    def _lease_lost(self, attempt: int, lease: Lease) -> None:
        if self.held.get(attempt) is lease:
            del self.held[attempt]
            self._lost(attempt)

    def close(self, attempt: int) -> None:
        """The machine dropped the attempt: give its lease back (now, or when it arrives)."""
        if attempt in self.pending:
            self._dropped.add(attempt)
        lease = self.held.pop(attempt, None)
        if lease is not None:
            self.ledger.release(lease)

    def close_all(self) -> None:
        for attempt in list(self.pending):
            self._dropped.add(attempt)
        for lease in self.held.values():
            self.ledger.release(lease)
        self.held.clear()
