"""The cluster-wide slot ledger on Redis: one lease per provider connection (and per tuner).

Theory of operation. Every lease of one key (an account, or the cluster's tuners) is a member of one
sorted set, scored by its expiry in Redis's own clock (`TIME`, so the relays' clocks never matter):
`{ns}:account:<name>` -> {"<relay_id>|<channel>/<account>/<stream>|<fence>": expiry_ms}. Acquire is one
Lua script, atomic in Redis: drop the expired members, count the rest, add ours only if that is
below the limit. However the relays interleave, no key ever holds more live leases than its limit.
The ledger renews all of its relay's leases every `lease_ttl_s / 3` (one script call per key); a
relay that dies stops renewing, and its leases expire `lease_ttl_s` after the last renewal.

Fencing: each grant takes a number from `{ns}:fence` (INCR), part of the member; a renewal extends
only members that are still there. A lease that is gone at renewal (expired while the relay was
stalled or cut off, or wiped by a Redis restart) is re-added only if the key is below its limit;
otherwise it is *lost*: the holder closes that connection (a `lease_lost` event), so the relay that
was granted the slot meanwhile keeps it and the provider never sees one too many.

A Redis restart (without persistence) forgets every lease while the connections still run. Each
relay knows the cluster's *epoch* (a random token in `{ns}:epoch`); the first relay to find it gone
or changed, having known one, starts a new epoch and a recovery window of one TTL
(`{ns}:recovering`), during which acquire refuses new leases and renewals re-add the ones that
exist. After one TTL every live connection is counted again, and new tunes are granted.

Redis unreachable: open streams keep flowing (nothing is torn down for a failed renewal), every new
lease is refused with LedgerUnavailable and one `ledger_unavailable` event says why; the first
successful call emits `ledger_available`. A limit is never exceeded silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from relay.cluster.ledger import Lease, Ledger, LostLease, Refusal
from relay.config import ClusterConfig
from relay.core import events
from relay.core.failover import Reason, Slots

log = logging.getLogger("relay.cluster")

Emit = Callable[[events.Event], Any]  # EventLog.emit

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

_EPOCH = """
local epoch = redis.call('GET', KEYS[2])
if not epoch then
  epoch = ARGV[5]
  redis.call('SET', KEYS[2], epoch)
  if ARGV[4] ~= '' then
    redis.call('SET', KEYS[3], '1', 'PX', ARGV[3])
  end
end
"""

# KEYS: (unused), epoch, recovering. ARGV: -, -, ttl ms, known epoch, new epoch. Learn (or start) the epoch.
EPOCH = _EPOCH + "\nreturn epoch\n"

# KEYS: leases (zset), epoch, recovering, fence. ARGV: limit, member prefix, ttl ms, known epoch, new epoch
ACQUIRE = (
    _NOW
    + _EPOCH
    + """
local rec = redis.call('PTTL', KEYS[3])
if rec > 0 then
  return {-1, 0, epoch, rec}
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local n = redis.call('ZCARD', KEYS[1])
if n >= tonumber(ARGV[1]) then
  return {0, n, epoch, 0}
end
local fence = redis.call('INCR', KEYS[4])
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[2] .. '|' .. fence)
return {1, n + 1, epoch, fence}
"""
)

# KEYS: leases (zset), epoch, recovering. ARGV: limit, (unused), ttl ms, known epoch, new epoch, members...
RENEW = (
    _NOW
    + _EPOCH
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local ttl = tonumber(ARGV[3])
local lost = {}
for i = 6, #ARGV do
  local m = ARGV[i]
  if redis.call('ZSCORE', KEYS[1], m) then
    redis.call('ZADD', KEYS[1], 'XX', now + ttl, m)
  elseif redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
    redis.call('ZADD', KEYS[1], now + ttl, m)
  else
    lost[#lost + 1] = m
  end
end
return {epoch, lost}
"""
)


def where(url: str) -> str:
    """host:port of a Redis URL, without the password it may carry."""
    u = urlsplit(url)
    if u.scheme == "unix":
        return f"unix:{u.path}"
    return f"{u.hostname or 'localhost'}:{u.port or 6379}"


class RedisLedger(Ledger):
    clustered = True

    def __init__(
        self,
        slots: Slots,
        cfg: ClusterConfig,
        relay_id: str,
        emit: Emit,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(slots)
        assert cfg.redis_url is not None
        self.cfg = cfg
        self.relay_id = relay_id
        self._emit = emit
        self._clock = clock
        self.where = where(cfg.redis_url)
        t = cfg.redis_timeout_s
        self.redis = aioredis.Redis.from_url(
            cfg.redis_url,
            socket_timeout=t,
            socket_connect_timeout=t,
            retry=Retry(NoBackoff(), 1),  # a pooled connection broken by a Redis restart fails once
            decode_responses=True,
        )
        self._acquire_script = self.redis.register_script(ACQUIRE)
        self._renew_script = self.redis.register_script(RENEW)
        self._epoch_script = self.redis.register_script(EPOCH)
        ns = cfg.namespace
        self._epoch_key = f"{{{ns}}}:epoch"  # one hash slot: the scripts also run on a Redis Cluster
        self._recovering_key = f"{{{ns}}}:recovering"
        self._fence_key = f"{{{ns}}}:fence"
        self.epoch = ""  # the cluster epoch this relay last saw; "" before the first contact
        self.available: bool | None = None  # None until the first call answered or failed
        self.down_since: float | None = None
        self.down_detail = ""
        self._leases: dict[str, tuple[Lease, int, LostLease]] = {}  # member -> (lease, limit, on_lost)
        self._renewer: asyncio.Task[None] | None = None
        self._releases: set[asyncio.Task[None]] = set()
        self.lost = 0
        self.refused = 0

    def key(self, kind: str, key: str) -> str:
        return f"{{{self.cfg.namespace}}}:{kind}:{key}"

    # ---- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        await self.probe()
        self._renewer = asyncio.get_running_loop().create_task(self._renew_forever(), name="ledger-renew")

    async def close(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
        for lease, _, _ in list(self._leases.values()):
            self.release(lease)
        if self._releases:
            await asyncio.gather(*self._releases, return_exceptions=True)
        await self.redis.aclose()

    # ---- leases -----------------------------------------------------------------------------

    async def acquire(
        self, kind: str, key: str, limit: int, what: str, on_lost: LostLease
    ) -> Lease | Refusal:
        rkey = self.key(kind, key)
        prefix = f"{self.relay_id}|{what}"
        ttl_ms = int(self.cfg.lease_ttl_s * 1000)
        try:
            async with asyncio.timeout(self.cfg.redis_timeout_s * 2):
                ok, n, epoch, extra = await self._acquire_script(
                    keys=[rkey, self._epoch_key, self._recovering_key, self._fence_key],
                    args=[limit, prefix, ttl_ms, self.epoch, secrets.token_hex(8)],
                )
        except (RedisError, OSError, TimeoutError) as e:
            self._down(_describe(e))
            self.refused += 1
            return Refusal(str(Reason.LEDGER_UNAVAILABLE), f"redis {self.where} unreachable ({_describe(e)})")
        self._up()
        self.epoch = epoch
        if ok == 1:
            lease = Lease(kind, key, f"{prefix}|{extra}", int(extra))
            self._leases[lease.member] = (lease, limit, on_lost)
            return lease
        self.refused += 1
        if ok == -1:
            return Refusal(
                str(Reason.LEDGER_UNAVAILABLE),
                f"redis {self.where} restarted: leases are being re-counted for {extra} ms more",
            )
        return Refusal(str(Reason.ACCOUNT_FULL), f"{kind} {key}: {n} of {limit} held across the cluster")

    def release(self, lease: Lease) -> None:
        if self._leases.pop(lease.member, None) is None:
            return
        task = asyncio.get_running_loop().create_task(self._zrem(lease))
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)

    async def _zrem(self, lease: Lease) -> None:
        try:
            async with asyncio.timeout(self.cfg.redis_timeout_s * 2):
                await self.redis.zrem(self.key(lease.kind, lease.key), lease.member)
        except (RedisError, OSError, TimeoutError) as e:  # it expires at its TTL instead
            self._down(_describe(e))

    def held(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for lease, _, _ in self._leases.values():
            name = f"{lease.kind}:{lease.key}"
            out[name] = out.get(name, 0) + 1
        return out

    async def probe(self) -> None:
        """Learn the cluster's epoch (starting one on a fresh Redis, or a recovery window after a
        restart this relay notices first); an error makes the ledger unavailable."""
        try:
            async with asyncio.timeout(self.cfg.redis_timeout_s * 2):
                self.epoch = await self._epoch_script(
                    keys=[self._epoch_key, self._epoch_key, self._recovering_key],
                    args=["", "", int(self.cfg.lease_ttl_s * 1000), self.epoch, secrets.token_hex(8)],
                )
        except (RedisError, OSError, TimeoutError) as e:
            self._down(_describe(e))
            return
        self._up()

    def reconcile(self, live: set[str]) -> int:
        leaked = [lease for member, (lease, _, _) in self._leases.items() if member not in live]
        for lease in leaked:
            log.warning("ledger: lease %s had no connection or session left; released", lease.member)
            self.release(lease)
        return len(leaked)

    # ---- renewal ----------------------------------------------------------------------------

    async def _renew_forever(self) -> None:
        period = self.cfg.lease_ttl_s / 3
        while True:
            await asyncio.sleep(period)
            await self.renew()

    async def renew(self) -> None:
        """Extend every lease this relay holds; re-add what a Redis restart lost; report what cannot be."""
        by_key: dict[tuple[str, str], list[str]] = {}
        limits: dict[tuple[str, str], int] = {}
        for member, (lease, limit, _) in self._leases.items():
            by_key.setdefault((lease.kind, lease.key), []).append(member)
            limits[(lease.kind, lease.key)] = limit
        if not by_key:
            await self.probe()  # nothing to renew: still notice a restart, and when Redis is back
            return
        ttl_ms = int(self.cfg.lease_ttl_s * 1000)
        for (kind, key), members in by_key.items():
            try:
                async with asyncio.timeout(self.cfg.redis_timeout_s * 2):
                    epoch, lost = await self._renew_script(
                        keys=[self.key(kind, key), self._epoch_key, self._recovering_key],
                        args=[limits[(kind, key)], "", ttl_ms, self.epoch, secrets.token_hex(8), *members],
                    )
            except (RedisError, OSError, TimeoutError) as e:
                self._down(_describe(e))
                return  # streams keep flowing; the next period tries again
            self._up()
            self.epoch = epoch
            for member in lost:
                entry = self._leases.pop(member, None)
                if entry is None:
                    continue
                lease, limit, on_lost = entry
                self.lost += 1
                self._emit(
                    events.LeaseLost(
                        reason=str(Reason.ACCOUNT_FULL),
                        lease=member.split("|")[1],
                        detail=f"{kind} {key}: its {limit} slots were taken while this lease was gone",
                    )
                )
                on_lost(lease)

    # ---- state ------------------------------------------------------------------------------

    def _down(self, detail: str) -> None:
        if self.available is False:
            return
        self.available = False
        self.down_since = self._clock()
        self.down_detail = detail
        self._emit(
            events.LedgerUnavailable(
                reason=str(Reason.LEDGER_UNAVAILABLE),
                detail=f"redis {self.where}: {detail}; open streams continue, new tunes are refused",
            )
        )

    def _up(self) -> None:
        if self.available is True:
            return
        was = self.available
        self.available = True
        if was is False:
            down_ms = round((self._clock() - (self.down_since or self._clock())) * 1000, 1)
            self._emit(events.LedgerAvailable(was=self.down_detail, down_ms=down_ms))
        self.down_since = None


def _describe(e: BaseException) -> str:
    if isinstance(e, TimeoutError):
        return "timed out"
    text = str(e).split("\n")[0] or type(e).__name__
    return text[:200]
