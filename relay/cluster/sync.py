"""One account sync at a time across a cluster; only the relay that runs it calls player_api.

Chosen design (docs/scaling.md): every relay keeps its own SQLite, so every relay still runs the
sync (import, guide channels, mapping) on its own database, but the panel sees one sync, not one
per relay. A relay's periodic sync first takes the cluster's sync lock (`SET NX PX`, TTL
`cluster.sync_lock_s`, renewed while it runs, released by a compare-and-delete):
- the holder calls player_api as a lone relay does and publishes each answer (user_info,
  categories, streams, per account; user_info without username/password) under
  `{ns}:sync:<account>:<action>`, kept for two sync intervals; a panel's error is published as
  that error, so the others draw the same conclusion (inactive, down, no API);
- a relay that finds the lock held waits for it to be released (at most its TTL), then syncs from
  the published answers: no player_api request. So does a relay whose sync comes less than half an
  interval after the cluster's last complete one (`{ns}:sync:done`): relays started at different
  times still make one player_api sync per interval, not one each. An answer missing there counts
  as the API being down for that account (its last import is kept), never as a reason to call the
  panel.
M3U playlists and guide sources are fetched by each relay (they are not player_api, and each relay
builds its own /xmltv.xml). Redis unreachable: the relay syncs on its own, as without a cluster
(a sync is at most every `sync.interval_h`; the panel sees one more, which is logged).
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import redis
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from relay.config import AccountConfig, Config
from relay.sources.sync import SyncReport, sync_once
from relay.sources.xtream import NoXtreamApi, XtreamClient, XtreamError
from relay.storage.eventlog import EventLog

log = logging.getLogger("relay.cluster.sync")

RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""
RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""


class SharedAnswers:
    """player_api answers in Redis, read and written from the sync's worker thread (blocking client)."""

    def __init__(self, url: str, namespace: str, keep_s: float, timeout_s: float) -> None:
        self.r = redis.Redis.from_url(url, socket_timeout=timeout_s * 4, socket_connect_timeout=timeout_s * 4)
        self.namespace = namespace
        self.keep_ms = int(keep_s * 1000)

    def key(self, account: str, action: str) -> str:
        return f"{{{self.namespace}}}:sync:{account}:{action}"

    def put(self, account: str, action: str, answer: dict[str, Any]) -> None:
        try:
            self.r.set(self.key(account, action), gzip.compress(orjson.dumps(answer), 1), px=self.keep_ms)
        except RedisError as e:
            log.warning("sync: cannot publish %s of account %s to the cluster: %s", action, account, e)

    def get(self, account: str, action: str) -> dict[str, Any] | None:
        try:
            raw = self.r.get(self.key(account, action))
        except RedisError as e:
            log.warning("sync: cannot read the cluster's %s of account %s: %s", action, account, e)
            return None
        return orjson.loads(gzip.decompress(raw)) if isinstance(raw, bytes) else None

    def close(self) -> None:
        self.r.close()


@dataclass
class ClusterXtreamClient(XtreamClient):
    """An XtreamClient that publishes what the panel answered (`record`) or replays it (not `record`)."""

    answers: SharedAnswers | None = field(default=None, repr=False)
    account: str = ""
    record: bool = True

    def _get(self, **params: str) -> Any:
        assert self.answers is not None
        action = params.get("action", "user_info")
        if self.record:
            try:
                payload = super()._get(**params)
            except NoXtreamApi as e:
                self.answers.put(self.account, action, {"error": "no_api", "detail": str(e)})
                raise
            except XtreamError as e:
                self.answers.put(self.account, action, {"error": "down", "detail": str(e)})
                raise
            self.answers.put(self.account, action, {"answer": _without_credentials(payload)})
            return payload
        got = self.answers.get(self.account, action)
        if got is None:
            raise XtreamError(f"account {self.account}: no {action} from the cluster's last sync")
        if got.get("error") == "no_api":
            raise NoXtreamApi(got.get("detail") or "no player_api")
        if "error" in got:
            raise XtreamError(got.get("detail") or "down")
        return got["answer"]


def _without_credentials(payload: Any) -> Any:
    if isinstance(payload, dict) and isinstance(payload.get("user_info"), dict):
        info = {k: v for k, v in payload["user_info"].items() if k not in ("username", "password")}
        return {**payload, "user_info": info}
    return payload


def client_for(answers: SharedAnswers, record: bool) -> Callable[[AccountConfig, Path], XtreamClient]:
    def make(acc: AccountConfig, base_dir: Path) -> XtreamClient:
        c = ClusterXtreamClient.for_account(acc, base_dir)
        assert isinstance(c, ClusterXtreamClient)
        c.answers, c.account, c.record = answers, acc.name, record
        return c

    return make


class ClusterSync:
    """The lock, and one sync run as its holder or from its holder's answers."""

    def __init__(self, cfg: Config, db_path: Path, events: EventLog | None, relay_id: str) -> None:
        cl = cfg.cluster
        assert cl.redis_url is not None
        self.cfg = cfg
        self.db_path = db_path
        self.events = events
        self.relay_id = relay_id
        self.lock_key = f"{{{cl.namespace}}}:sync:lock"
        self.done_key = f"{{{cl.namespace}}}:sync:done"
        self.redis = aioredis.Redis.from_url(
            cl.redis_url, socket_timeout=cl.redis_timeout_s * 4, socket_connect_timeout=cl.redis_timeout_s * 4
        )
        self.answers = SharedAnswers(
            cl.redis_url, cl.namespace, cfg.sync.interval_h * 7200, cl.redis_timeout_s
        )
        self.last_role = ""  # "holder", "follower" or "alone" (Redis unreachable), for logs and tests

    async def once(self) -> SyncReport | None:
        token = f"{self.relay_id}|{secrets.token_hex(8)}"
        ttl_ms = int(self.cfg.cluster.sync_lock_s * 1000)
        try:
            recent = await self.redis.get(self.done_key)
            got = None if recent else await self.redis.set(self.lock_key, token, nx=True, px=ttl_ms)
        except RedisError as e:
            log.warning("sync: cluster lock unavailable (%s); syncing on our own", e)
            self.last_role = "alone"
            return await sync_once(self.cfg, self.db_path, self.events)
        if got:
            self.last_role = "holder"
            renewer = asyncio.get_running_loop().create_task(self._keep(token, ttl_ms))
            try:
                report = await sync_once(
                    self.cfg, self.db_path, self.events, client_for=client_for(self.answers, True)
                )
                if report is not None:
                    half = int(self.cfg.sync.interval_h * 1800 * 1000)
                    with contextlib.suppress(RedisError):
                        await self.redis.set(self.done_key, self.relay_id, px=half)
                return report
            finally:
                renewer.cancel()
                with contextlib.suppress(RedisError, asyncio.CancelledError):
                    await self.redis.eval(RELEASE, 1, self.lock_key, token)
        self.last_role = "follower"
        holder = await self._wait_for_release(ttl_ms / 1000)
        log.info("sync: %s ran the cluster's sync; using its player_api answers", holder or "another relay")
        return await sync_once(
            self.cfg, self.db_path, self.events, client_for=client_for(self.answers, False)
        )

    async def _keep(self, token: str, ttl_ms: int) -> None:
        while True:
            await asyncio.sleep(ttl_ms / 3000)
            with contextlib.suppress(RedisError):
                await self.redis.eval(RENEW, 1, self.lock_key, token, ttl_ms)

    async def _wait_for_release(self, at_most_s: float) -> str:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + at_most_s
        holder = ""
        while loop.time() < deadline:
            try:
                value = await self.redis.get(self.lock_key)
            except RedisError:
                return holder
            if value is None:
                return holder
            holder = value.decode(errors="replace").split("|")[0]
            await asyncio.sleep(0.5)
        return holder

    async def close(self) -> None:
        await self.redis.aclose()
        await asyncio.to_thread(self.answers.close)


async def _forever(sync: ClusterSync, on_synced: Callable[[SyncReport], None] | None) -> None:
    interval = sync.cfg.sync.interval_h * 3600.0
    try:
        if not sync.cfg.sync.on_start:
            await asyncio.sleep(interval)
        while True:
            report = await sync.once()
            if report is not None and on_synced is not None:
                on_synced(report)
            await asyncio.sleep(interval)
    finally:
        await sync.close()


def start_cluster_sync(
    cfg: Config,
    db_path: Path,
    events: EventLog | None,
    relay_id: str,
    on_synced: Callable[[SyncReport], None] | None = None,
) -> asyncio.Task[None] | None:
    """`relay.sources.sync.start_sync` for a relay in a cluster."""
    if not cfg.accounts and not cfg.guide.sources:
        return None
    sync = ClusterSync(cfg, db_path, events, relay_id)
    return asyncio.get_running_loop().create_task(_forever(sync, on_synced), name="account-sync")
