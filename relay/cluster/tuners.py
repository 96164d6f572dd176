"""`tuner.tuner_count` held across a cluster: a session starts only with a tuner lease.

Every relay of a cluster advertises the same TunerCount to Plex (it is one tuner), so the count
must be of the cluster's sessions, not one relay's. In a cluster a new session asks the ledger for a
lease on the cluster's tuners before its failover machine starts; the lease lives until the session
ends (a lingering session keeps it, for at most `server.linger_s`). Refused: the viewers waiting for
that session get `503` with `805 All Tuners In Use`, and a `tune_refused` event says why. Without a
cluster `start` is `session.start()`, nothing else.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from relay.cluster.ledger import TUNER, TUNERS_KEY, Lease, Ledger, Refusal

if TYPE_CHECKING:
    from relay.shell.session import ChannelSession


class TunerGate:
    def __init__(
        self,
        ledger: Callable[[], Ledger | None],
        tuner_count: int,
        refuse: Callable[[ChannelSession, Refusal], None],
    ) -> None:
        self._ledger = ledger
        self.tuner_count = tuner_count
        self._refuse = refuse
        self._pending: set[ChannelSession] = set()
        self._held: dict[ChannelSession, Lease] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    def start(self, session: ChannelSession) -> None:
        ledger = self._ledger()
        if ledger is None or not ledger.clustered:
            session.start()
            return
        if session in self._pending or session in self._held:
            return  # a second viewer while the lease is on its way
        self._pending.add(session)
        task = asyncio.get_running_loop().create_task(self._admit(ledger, session))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _admit(self, ledger: Ledger, session: ChannelSession) -> None:
        try:
            got = await ledger.acquire(TUNER, TUNERS_KEY, self.tuner_count, session.channel, lambda _: None)
        finally:
            self._pending.discard(session)
        if isinstance(got, Refusal):
            if not session.ended:
                self._refuse(session, got)
            return
        if session.ended:
            ledger.release(got)
            return
        self._held[session] = got
        session.start()

    def members(self) -> set[str]:
        return {lease.member for lease in self._held.values()}

    def ended(self, session: ChannelSession) -> None:
        lease = self._held.pop(session, None)
        ledger = self._ledger()
        if lease is not None and ledger is not None:
            ledger.release(lease)
