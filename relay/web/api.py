"""The page's JSON API under /ui/api/, and the page itself under /ui: what an operator sees and changes.

Reads: status (sessions and accounts), the timeline (failover, upgrade, exhaustion, account events),
channels with their streams in the order they are tried, a search over every provider stream, the
last sync's report. Changes: enable/disable a channel, set its number, reorder its streams, map or
unmap a stream (the rules of `relay map`: a manual mapping survives a sync, the config file wins),
run a sync. Every change needs a login and the session's CSRF token (or the API token); reads need
a login too unless `ui.public_status` (then Status, Timeline and the live feed are open, without
viewers' addresses).

Nothing here sends a password, a username or a stream URL: streams are `account/stream_id`, and
accounts are read from the `accounts` table, which holds neither. Database work runs in one worker
thread on its own SQLite connection, so a search over 20,000 streams or a write waiting behind a
sync's transaction never holds up the event loop (and so never a stream).

Over 400 lines because each endpoint is a few lines of rules beside its SQL; splitting them by endpoint
would scatter one API's auth and error conventions.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import orjson

from relay.config import ChannelConfig, Config
from relay.core import http11
from relay.core.mapping import quality_of
from relay.shell.server import HttpProtocol, Request
from relay.sources.sync import SyncReport, channel_list, sync_once
from relay.storage.store import MappedStream, MappingError, Store
from relay.web import auth
from relay.web.sse import LiveFeed

if TYPE_CHECKING:
    from relay.shell.app import Relay

log = logging.getLogger("relay.web")

STATIC = {  # what /ui/static/ serves: these files of the package, nothing else
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
}
SECURITY_HEADERS = (
    # the page's own files only: no inline script, no other origin, no framing
    (
        "Content-Security-Policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
        " connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    ),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("X-Frame-Options", "DENY"),
    ("Cache-Control", "no-store"),
)
TIMELINE_CATEGORIES = ("failover", "provider")  # failover, upgrade(_failed), exhausted, holding; account_*
LEVELS = ("debug", "info", "warn", "error")
EVENT_FIELDS = (  # what of an event reaches the page (events hold no URL; a whitelist all the same)
    "timestamp", "level", "category", "event", "channel", "from_stream", "to_stream", "reason",
    "switch_ms", "http_status", "attempted", "account", "was", "exp_date", "message", "event_id",
)  # fmt: skip
NUMBER = re.compile(r"\d+(\.\d+)?")
STREAM_REF = re.compile(r"(.+)/(\d+)")
MAX_LIMIT = 1000


class ApiError(Exception):
    """A request the API refuses: (status, one line for the page)."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


# ---- the one place that reads a live session (the lead repoints it at relay.core.status) ------------


def session_rows(relay: Relay, *, addresses: bool) -> list[dict[str, Any]]:
    """Every channel session as the page shows it (from its SessionStatus); `addresses`: viewers' IPs."""
    loop_now = relay.shared.clock() if relay.shared is not None else 0.0
    names = {c.id: c.name for c in relay.channels}
    rows = []
    for st in sorted((s.status(loop_now) for s in relay.sessions), key=lambda st: st.channel):
        cur = st.current
        rows.append(
            {
                "channel": st.channel,
                "name": names.get(st.channel, st.channel),
                "stream": cur.ref if cur else None,
                "account": cur.account if cur else None,
                "priority": cur.priority if cur else None,
                "state": st.state.value,
                "uptime_s": round(st.uptime_s, 1),
                "viewers": st.clients,
                "addresses": sorted(set(st.peers)) if addresses else None,
                "bitrate_kbps": round(st.bitrate_kbps, 1),
                "lag_ms": round(st.lag_s * 1000, 1),
                "failovers": st.failovers,
                "last_failover": relay.metrics.last_failover.get(st.channel),
            }
        )
    return rows


# ---- pure rules ---------------------------------------------------------------------------------------


def parse_ref(cfg: Config, ref: Any) -> tuple[str, int]:
    """(account, stream_id) from `account/stream_id`, the account one of the config's."""
    m = STREAM_REF.fullmatch(ref) if isinstance(ref, str) else None
    if m is None:
        raise MappingError(f"{str(ref)[:80]!r}: give the stream as ACCOUNT/STREAM_ID")
    account, sid = m.group(1), int(m.group(2))
    if account not in {a.name for a in cfg.accounts}:
        raise MappingError(f"unknown account {account!r}")
    return account, sid


def plan_order(current: Sequence[MappedStream], wanted: Sequence[str]) -> list[tuple[str, int, int]]:
    """The manual mappings (account, stream_id, priority) that make a channel try `wanted` in order.

    `wanted` names each of the channel's streams once. Position i becomes priority i, written as a
    manual mapping (so a sync keeps it); a config-file mapping cannot move (config wins), so it must
    already sit where its priority puts it.
    """
    have = {f"{s.account}/{s.stream_id}": s for s in current}
    if len(wanted) != len(set(wanted)) or set(wanted) != set(have):
        raise MappingError("the new order must name each of the channel's streams exactly once")
    plan = []
    for i, ref in enumerate(wanted):
        s = have[ref]
        if s.source == "config":
            if s.priority != i:
                raise MappingError(
                    f"{ref} is set in the config file at priority {s.priority}, which wins over the"
                    " page; edit it there"
                )
            continue
        plan.append((s.account, s.stream_id, i))
    return plan


def event_view(e: dict[str, Any]) -> dict[str, Any]:
    out = {k: e[k] for k in EVENT_FIELDS if k in e}
    if "timestamp" not in out and "ts" in e:
        out["timestamp"] = e["ts"]
    return out


def levels_from(level: str | None) -> tuple[str, ...]:
    """`warn` means warn and error: the timeline's filter is a minimum level."""
    if not level:
        return LEVELS
    if level not in LEVELS:
        raise ApiError(400, f"level: one of {', '.join(LEVELS)}")
    return LEVELS[LEVELS.index(level) :]


def report_view(report: SyncReport, unmapped: tuple[int, list[Any]], at: float, by: str) -> dict[str, Any]:
    n, rows = unmapped
    return {
        "at": at,
        "by": by,
        **dataclasses.asdict(report),
        "unmapped": {
            "count": n,
            "streams": [
                {"stream": f"{a}/{sid}", "name": name, "category": cat} for a, sid, name, cat in rows
            ],
        },
    }


# ---- the HTTP side --------------------------------------------------------------------------------------


class WebUi:
    """/ui and /ui/...: registered on a Relay by relay.web.register."""

    def __init__(self, relay: Relay, *, wall_clock: Callable[[], float] = time.time) -> None:
        self.relay = relay
        self.cfg = relay.cfg.ui
        self.wall_clock = wall_clock
        self.sessions = auth.Sessions(self.cfg.session_h * 3600)
        self.limiter = auth.LoginLimiter(self.cfg.login_attempts, self.cfg.login_window_s)
        self._tokens_ok: set[str] = set()  # sha256 of a bearer token already verified (scrypt is slow)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="relay-ui-db")
        self._db: Store | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.sync_task: asyncio.Task[None] | None = None
        self.last_sync: dict[str, Any] | None = None
        self._sync_by = "schedule"  # who started the sync whose report comes next
        self.feed = LiveFeed(self.status_for, self.cfg.status_interval_s, self.cfg.max_viewers)
        self._files = {name: _read_static(name) for name in (*STATIC, "index.html")}
        self._get: dict[str, Callable[[Request, bool], Awaitable[Any]]] = {
            "api/status": self._status,
            "api/events": self._events,
            "api/channels": self._channels,
            "api/channel": self._channel,
            "api/streams": self._streams,
            "api/sync": self._sync_report,
        }
        self._post: dict[str, Callable[[dict[str, Any]], Awaitable[Any]]] = {
            "api/channels/enabled": self._set_enabled,
            "api/channels/number": self._set_number,
            "api/channels/order": self._set_order,
            "api/channels/map": self._map,
            "api/channels/unmap": self._unmap,
            "api/sync": self._start_sync,
        }

    # ---- lifecycle hooks (called from relay.shell.app) -------------------------------------------

    def on_event(self, e: dict[str, Any]) -> None:
        """EventLog listener: the live feed."""
        self.feed.on_event(event_view(e))

    def synced(self, report: SyncReport) -> None:
        """After any completed sync (the schedule's or the page's): keep its report for the page."""
        by, self._sync_by = self._sync_by, "schedule"
        task = asyncio.get_running_loop().create_task(self._keep_report(report, by))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        self.feed.close()
        if self.sync_task is not None:
            self.sync_task.cancel()
            await asyncio.gather(self.sync_task, return_exceptions=True)
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._db is not None:
            db, self._db = self._db, None
            await asyncio.get_running_loop().run_in_executor(self._executor, db.close)
        self._executor.shutdown(wait=False)

    # ---- routing ----------------------------------------------------------------------------------

    def handle(self, proto: HttpProtocol, req: Request, rest: str) -> None:
        """Everything under /ui (`rest` is what follows "/ui/"; "" for /ui itself)."""
        rest = rest.strip("/")
        if rest in ("", "index.html") and req.method in ("GET", "HEAD"):
            self._send(proto, req, 200, self._files["index.html"], "text/html; charset=utf-8")
            return
        if rest.startswith("static/") and req.method in ("GET", "HEAD"):
            name = rest[len("static/") :]
            if name in STATIC:
                self._send(proto, req, 200, self._files[name], STATIC[name])
            else:
                self._error(proto, req, 404, "not found")
            return
        if not rest.startswith("api/"):
            self._error(proto, req, 404, "not found")
            return
        if rest == "api/live" and req.method == "GET":
            self._live(proto, req)
            return
        if req.method in ("GET", "HEAD"):
            if rest == "api/session":
                self._json(proto, req, 200, self._session_info(req))
                return
            handler = self._get.get(rest)
            if handler is None:
                self._error(proto, req, 404, "not found")
                return
            authed = self._logged_in(req)
            if not authed and not (self.cfg.public_status and rest in ("api/status", "api/events")):
                self._error(proto, req, 401, "log in first")
                return
            self._spawn(proto, req, handler(req, authed))
            return
        if req.method != "POST":
            self._error(proto, req, 405, "method not allowed", [("Allow", "GET, HEAD, POST")])
            return
        try:
            body = self._checked_body(req)
            if rest == "api/login":
                self._login(proto, req, body)
                return
            self._require_change_rights(req)
            if rest == "api/logout":
                sid = auth.parse_cookies(req.headers.get("cookie")).get(auth.COOKIE)
                self.sessions.end(sid)
                self._json(proto, req, 200, {"ok": True}, [("Set-Cookie", auth.clear_cookie())])
                return
            handler = self._post.get(rest)
            if handler is None:
                raise ApiError(404, "not found")
        except ApiError as e:
            self._error(proto, req, e.status, e.text)
            return
        self._spawn(proto, req, handler(body))

    # ---- who is asking ------------------------------------------------------------------------------

    def _session(self, req: Request) -> auth.Session | None:
        sid = auth.parse_cookies(req.headers.get("cookie")).get(auth.COOKIE)
        return self.sessions.get(sid, self.wall_clock())

    def _bearer_ok(self, req: Request) -> bool:
        value = req.headers.get("authorization", "")
        if not value.lower().startswith("bearer ") or not self.cfg.token:
            return False
        token = value[7:].strip()
        digest = hashlib.sha256(token.encode()).hexdigest()
        if digest in self._tokens_ok:
            return True
        now = self.wall_clock()
        if not self.limiter.allowed(req.peer, now):
            return False
        if auth.verify_secret(token, self.cfg.token):
            self._tokens_ok = {digest}  # one token is configured: remember only it
            return True
        self.limiter.failed(req.peer, now)
        return False

    def _logged_in(self, req: Request) -> bool:
        return self._session(req) is not None or self._bearer_ok(req)

    def _session_info(self, req: Request) -> dict[str, Any]:
        s = self._session(req)
        return {
            "logged_in": s is not None,
            "csrf": s.csrf if s is not None else None,
            "public_status": self.cfg.public_status,
            "login_configured": bool(self.cfg.password or self.cfg.token),
        }

    def _checked_body(self, req: Request) -> dict[str, Any]:
        """A state-changing request: same origin, JSON (a cross-site form cannot send that), an object."""
        if not auth.same_origin(req.headers.get("origin"), req.headers.get("host")):
            raise ApiError(403, "cross-origin request refused")
        ctype = req.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/json":
            raise ApiError(415, "send JSON (Content-Type: application/json)")
        try:
            body = orjson.loads(bytes(req.body) or b"{}")
        except orjson.JSONDecodeError:
            raise ApiError(400, "the body is not JSON") from None
        if not isinstance(body, dict):
            raise ApiError(400, "the body must be a JSON object")
        return body

    def _require_change_rights(self, req: Request) -> None:
        if self._bearer_ok(req):
            return  # a script with the API token: no cookie, so no cross-site forgery to guard against
        session = self._session(req)
        if session is None:
            raise ApiError(401, "log in first")
        if not auth.csrf_ok(session, req.headers.get("x-csrf-token")):
            raise ApiError(403, "missing or wrong CSRF token; reload the page")

    def _login(self, proto: HttpProtocol, req: Request, body: dict[str, Any]) -> None:
        now = self.wall_clock()
        if not (self.cfg.password or self.cfg.token):
            raise ApiError(403, "no login is configured: set ui.password (relay ui-hash makes its hash)")
        wait = self.limiter.retry_after(req.peer, now)
        if wait > 0:
            self._error(
                proto, req, 429, "too many failed logins; wait", [("Retry-After", str(int(wait) + 1))]
            )
            return
        secret = body.get("password")
        secret = secret if isinstance(secret, str) else ""
        if not (auth.verify_secret(secret, self.cfg.password) or auth.verify_secret(secret, self.cfg.token)):
            self.limiter.failed(req.peer, now)
            log.warning("ui: failed login from %s", req.peer)
            raise ApiError(401, "wrong password")
        self.limiter.succeeded(req.peer)
        s = self.sessions.create(now)
        cookie = auth.session_cookie(s.id, self.cfg.session_h * 3600)
        self._json(proto, req, 200, {"ok": True, "csrf": s.csrf}, [("Set-Cookie", cookie)])

    # ---- responses ----------------------------------------------------------------------------------

    def _send(
        self,
        proto: HttpProtocol,
        req: Request,
        status: int,
        body: bytes,
        ctype: str,
        headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        keep = req.keep_alive and status < 400
        data = http11.response(
            status,
            body,
            ctype,
            keep_alive=keep,
            headers=[*SECURITY_HEADERS, *headers],
            head_only=req.head_only,
        )
        proto.respond(data, keep_alive=keep)

    def _json(
        self,
        proto: HttpProtocol,
        req: Request,
        status: int,
        body: Any,
        headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        self._send(proto, req, status, orjson.dumps(body), "application/json", headers)

    def _error(
        self,
        proto: HttpProtocol,
        req: Request,
        status: int,
        text: str,
        headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        self._json(proto, req, status, {"error": text}, headers)

    def _spawn(self, proto: HttpProtocol, req: Request, work: Awaitable[Any]) -> None:
        """Run an async handler; its result (or ApiError) is the response."""

        async def run() -> None:
            try:
                body = await work
            except ApiError as e:
                self._error(proto, req, e.status, e.text)
            except MappingError as e:
                self._error(proto, req, 400, str(e))
            except Exception:  # a bug answers 500 and is logged; the relay goes on
                log.exception("ui: %s %s failed", req.method, req.path)
                self._error(proto, req, 500, "internal error")
            else:
                self._json(proto, req, 200, body)

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _db_call(self, fn: Callable[[Store], Any]) -> Any:
        def call() -> Any:
            if self._db is None:
                assert self.relay.store is not None
                self._db = Store(self.relay.store.path)
            return fn(self._db)

        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    # ---- reads --------------------------------------------------------------------------------------

    def status_for(self, authed: bool) -> dict[str, Any]:
        """The live part of the status (no database): what the live feed pushes."""
        r = self.relay
        slots = r.shared.slots if r.shared is not None else None
        return {
            "now": self.wall_clock(),
            "sessions": session_rows(r, addresses=authed),
            "connections": dict(slots.held) if slots else {},
            "limits": dict(slots.limits) if slots else {},
            "recovery_ratio": r.metrics.recovery_ratio(),
            "tuners": r.cfg.tuner.tuner_count,
            "sync_running": self.sync_task is not None and not self.sync_task.done(),
        }

    async def _status(self, req: Request, authed: bool) -> Any:
        accounts = await self._db_call(lambda db: db.accounts())
        live = self.status_for(authed)
        now = live["now"]
        live["accounts"] = [
            {
                "name": a["name"],
                "active": bool(a["is_active"]),
                "reason": a["inactive_reason"],
                "status": a["status"],
                "exp_date": a["exp_date"],
                "expires_in_s": round(a["exp_date"] - now) if a["exp_date"] else None,
                "connections": live["connections"].get(a["name"], 0),
                "max_connections": live["limits"].get(a["name"], a["max_connections"]),
                "synced_at": a["synced_at"],
            }
            for a in accounts
            if a["name"] in {x.name for x in self.relay.cfg.accounts}
        ]
        ls = self.last_sync
        live["last_sync"] = (
            None
            if ls is None
            else {
                "at": ls["at"],
                "by": ls["by"],
                "seconds": ls["seconds"],
                "accounts": {a["name"]: a["state"] for a in ls["accounts"]},
            }
        )
        return live

    async def _events(self, req: Request, authed: bool) -> Any:
        q = _query(req)
        levels = levels_from(q.get("level"))
        channel = q.get("channel") or None
        limit = _int(q.get("limit"), 200, 1, MAX_LIMIT)
        rows = await self._db_call(
            lambda db: db.timeline(
                categories=TIMELINE_CATEGORIES, levels=levels, channel=channel, limit=limit
            )
        )
        return {"events": [event_view(e) for e in rows]}

    async def _channels(self, req: Request, authed: bool) -> Any:
        """Every channel with its stream count: small enough for 5,000 channels in one answer."""
        cfg = self.relay.cfg

        def read(db: Store) -> Any:
            return channel_list(cfg, db, include_disabled=True), db.disabled_channels(), db.mapping_counts()

        chans, disabled, counts = await self._db_call(read)
        in_config = {c.id for c in cfg.channels}
        return {
            "channels": [
                {
                    "id": c.id,
                    "name": c.name,
                    "number": c.number,
                    "from": "config" if c.id in in_config else "guide",
                    "enabled": c.id not in disabled,
                    "streams": counts.get(c.id, 0),
                }
                for c in chans
            ]
        }

    async def _channel(self, req: Request, authed: bool) -> Any:
        """One channel's streams, in the order they are tried."""
        cid = _query(req).get("id") or ""

        def read(db: Store) -> Any:
            self._known(db, cid)
            return db.mapped_streams(cid)

        rows = await self._db_call(read)
        return {
            "channel": cid,
            "streams": [
                {
                    "stream": f"{s.account}/{s.stream_id}",
                    "name": s.name,
                    "quality": quality_of(s.name),
                    "priority": s.priority,
                    "source": s.source,
                    "active": s.active,
                }
                for s in rows
            ],
        }

    async def _streams(self, req: Request, authed: bool) -> Any:
        q = _query(req)
        text = (q.get("q") or "")[:200]
        limit = _int(q.get("limit"), 50, 1, 500)
        offset = _int(q.get("offset"), 0, 0, 1 << 30)
        total, rows = await self._db_call(lambda db: db.search_streams(text, limit=limit, offset=offset))
        for r in rows:
            r["stream"] = f"{r.pop('account')}/{r.pop('stream_id')}"
            r["quality"] = quality_of(r["name"])
        return {"total": total, "streams": rows}

    async def _sync_report(self, req: Request, authed: bool) -> Any:
        running = self.sync_task is not None and not self.sync_task.done()
        return {"running": running, "report": self.last_sync}

    # ---- changes ------------------------------------------------------------------------------------

    def _channel_arg(self, body: dict[str, Any]) -> str:
        cid = body.get("channel")
        if not isinstance(cid, str) or not cid:
            raise ApiError(400, "channel: the channel's id")
        return cid

    def _known(self, db: Store, cid: str) -> ChannelConfig:
        for c in channel_list(self.relay.cfg, db, include_disabled=True):
            if c.id == cid:
                return c
        raise MappingError(f"unknown channel {cid!r}")

    async def _set_enabled(self, body: dict[str, Any]) -> Any:
        cid = self._channel_arg(body)
        enabled = body.get("enabled")
        if not isinstance(enabled, bool):
            raise ApiError(400, "enabled: true or false")

        def write(db: Store) -> None:
            self._known(db, cid)
            db.set_disabled(cid, not enabled)

        await self._db_call(write)
        self._lineup_changed()
        return {"ok": True, "channel": cid, "enabled": enabled}

    async def _set_number(self, body: dict[str, Any]) -> Any:
        cid = self._channel_arg(body)
        number = body.get("number")
        if not isinstance(number, str) or not NUMBER.fullmatch(number):
            raise ApiError(400, 'number: like "101" or "5.1"')
        cfg = self.relay.cfg

        def write(db: Store) -> None:
            self._known(db, cid)
            if cfg.channel(cid) is not None:
                raise MappingError(
                    f"{cid} is numbered in the config file, which wins over the page; edit it there"
                )
            taken = {c.number: c.id for c in channel_list(cfg, db, include_disabled=True)}
            if taken.get(number, cid) != cid:
                raise MappingError(f"number {number} is taken by {taken[number]}")
            db.set_number(cid, number)

        await self._db_call(write)
        self._lineup_changed()
        return {"ok": True, "channel": cid, "number": number}

    async def _set_order(self, body: dict[str, Any]) -> Any:
        cid = self._channel_arg(body)
        wanted = body.get("streams")
        if not isinstance(wanted, list) or not all(isinstance(x, str) for x in wanted):
            raise ApiError(400, 'streams: the list of "account/stream_id", first tried first')

        def write(db: Store) -> list[str]:
            self._known(db, cid)
            plan = plan_order(db.mapped_streams(cid), wanted)
            for account, sid, prio in plan:
                db.map_manual(cid, account, sid, prio)
            return [f"{s.account}/{s.stream_id}" for s in db.mapped_streams(cid)]

        order = await self._db_call(write)
        return {"ok": True, "channel": cid, "streams": order}

    async def _map(self, body: dict[str, Any]) -> Any:
        cid = self._channel_arg(body)
        account, sid = parse_ref(self.relay.cfg, body.get("stream"))
        priority = body.get("priority", 0)
        if not isinstance(priority, int) or isinstance(priority, bool) or priority < 0:
            raise ApiError(400, "priority: 0 or more (0 is tried first)")

        def write(db: Store) -> None:
            self._known(db, cid)
            db.map_manual(cid, account, sid, priority)

        await self._db_call(write)
        return {"ok": True, "channel": cid, "stream": f"{account}/{sid}", "priority": priority}

    async def _unmap(self, body: dict[str, Any]) -> Any:
        cid = self._channel_arg(body)
        account, sid = parse_ref(self.relay.cfg, body.get("stream"))

        def write(db: Store) -> str | None:
            self._known(db, cid)
            return db.unmap(cid, account, sid)

        was = await self._db_call(write)
        return {"ok": True, "channel": cid, "stream": f"{account}/{sid}", "removed": was}

    async def _start_sync(self, body: dict[str, Any]) -> Any:
        if self.sync_task is not None and not self.sync_task.done():
            raise ApiError(409, "a sync is already running")
        r = self.relay
        assert r.store is not None

        async def run() -> None:
            report = await sync_once(r.cfg, r.store.path, r.events)
            if report is None:  # logged (scrubbed) by sync_once
                failed = {
                    "at": self.wall_clock(),
                    "by": "page",
                    "failed": True,
                    "seconds": 0.0,
                    "accounts": [],
                }
                self.last_sync = failed
                self.feed.push_sync(failed)
                return
            self._sync_by = "page"
            r._synced(report)  # the relay's own after-sync step, which calls self.synced (app.py)

        self.sync_task = asyncio.get_running_loop().create_task(run(), name="ui-sync")
        return {"ok": True, "running": True}

    async def _keep_report(self, report: SyncReport, by: str) -> None:
        unmapped = await self._db_call(lambda db: db.unmapped_streams())
        self.last_sync = report_view(report, unmapped, self.wall_clock(), by)
        self.feed.push_sync(self.last_sync)

    def _lineup_changed(self) -> None:
        """A channel was enabled, disabled or renumbered: the lineup, /stream/ and the guide follow."""
        r = self.relay
        r._load_channels()
        task = asyncio.get_running_loop().create_task(r.guide.refresh())
        self._tasks.add(task)  # type: ignore[arg-type]
        task.add_done_callback(self._tasks.discard)  # type: ignore[arg-type]

    # ---- the live feed --------------------------------------------------------------------------------

    def _live(self, proto: HttpProtocol, req: Request) -> None:
        authed = self._logged_in(req)
        if not authed and not self.cfg.public_status:
            self._error(proto, req, 401, "log in first")
            return
        if not self.feed.add(proto, authed):
            self._error(proto, req, 503, "too many live viewers", [("Retry-After", "10")])


def _read_static(name: str) -> bytes:
    return resources.files("relay.web").joinpath("static", name).read_bytes()


def _query(req: Request) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(req.query, max_num_fields=20).items()}


def _int(value: str | None, default: int, lo: int, hi: int) -> int:
    if value is None or value == "":
        return default
    try:
        n = int(value)
    except ValueError:
        raise ApiError(400, f"not a number: {value[:20]!r}") from None
    return min(max(n, lo), hi)
