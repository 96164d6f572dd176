"""SessionLeases, the session's hook into a ledger, with a ledger whose answers the test releases:
an attempt connects only once granted, a refusal becomes that attempt's failure, and a lease that
arrives for an attempt already closed (or a session already ended) goes straight back."""

from __future__ import annotations

import asyncio

from relay.cluster.leases import SessionLeases
from relay.cluster.ledger import Lease, Ledger, LostLease, Refusal
from relay.core.failover import Candidate, Slots


class GatedLedger(Ledger):
    clustered = True

    def __init__(self) -> None:
        super().__init__(Slots({"a": 2}))
        self.waiting: list[asyncio.Future[Lease | Refusal]] = []
        self.released: list[Lease] = []
        self.lost: list[LostLease] = []
        self.n = 0

    async def acquire(
        self, kind: str, key: str, limit: int, what: str, on_lost: LostLease
    ) -> Lease | Refusal:
        fut: asyncio.Future[Lease | Refusal] = asyncio.get_running_loop().create_future()
        self.waiting.append(fut)
        self.lost.append(on_lost)
        return await fut

    def grant(self, i: int) -> Lease:
        self.n += 1
        lease = Lease("account", "a", f"r|x|{self.n}", self.n)
        self.waiting[i].set_result(lease)
        return lease

    def release(self, lease: Lease) -> None:
        self.released.append(lease)


def make() -> tuple[GatedLedger, SessionLeases, list[int], list[tuple[int, str]], list[int]]:
    ledger = GatedLedger()
    connected: list[int] = []
    refused: list[tuple[int, str]] = []
    lost: list[int] = []
    leases = SessionLeases(
        ledger,
        "ch",
        lambda acc: 2,
        lambda att, cand: connected.append(att),
        lambda att, r: refused.append((att, r.reason)),
        lost.append,
    )
    return ledger, leases, connected, refused, lost


CAND = Candidate("a", 1, 0, 0)


async def test_connects_only_once_granted_and_releases_on_close() -> None:
    ledger, leases, connected, _, _ = make()
    leases.open(1, CAND)
    await asyncio.sleep(0)
    assert connected == []
    lease = ledger.grant(0)
    await asyncio.sleep(0)
    assert connected == [1] and leases.held == {1: lease}
    leases.close(1)
    assert ledger.released == [lease] and not leases.held


async def test_a_refusal_is_the_attempts_failure() -> None:
    ledger, leases, connected, refused, _ = make()
    leases.open(3, CAND)
    await asyncio.sleep(0)
    ledger.waiting[0].set_result(Refusal("LedgerUnavailable", "redis down"))
    await asyncio.sleep(0)
    assert refused == [(3, "LedgerUnavailable")] and connected == []


async def test_a_lease_for_an_attempt_closed_meanwhile_goes_straight_back() -> None:
    ledger, leases, connected, _, _ = make()
    leases.open(1, CAND)
    leases.open(2, CAND)
    await asyncio.sleep(0)
    leases.close(1)  # the machine gave up on it (e.g. a better candidate won) before the answer
    leases.close_all()  # and then the session ended
    a, b = ledger.grant(0), ledger.grant(1)
    await asyncio.sleep(0)
    assert connected == [] and ledger.released == [a, b] and not leases.held


async def test_a_lost_lease_fails_its_attempt_once() -> None:
    ledger, leases, _, _, lost = make()
    leases.open(1, CAND)
    await asyncio.sleep(0)
    lease = ledger.grant(0)
    await asyncio.sleep(0)
    ledger.lost[0](lease)
    ledger.lost[0](lease)
    assert lost == [1] and not leases.held
