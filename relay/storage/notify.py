"""Webhooks: every warn/error event POSTed as its JSON to each `notify[].url`; in words through apprise.

Users want a message naming the from- and to-provider on every failover (Discord, Pushover, ...
through a small bridge). Delivery never blocks a stream: events go into a bounded queue (the
oldest is dropped, and counted, when a webhook is down for long), one task posts them with retries
and back-off, the blocking HTTP call runs in a worker thread.

`notify[].apprise` targets (Discord, Telegram, ntfy, Pushover, e-mail...: any apprise URL) get the
same events as one line in words instead ("BBC One: main → backup, StreamStall, 117 ms"), and after
a sync a line for an account that expires within the target's `expiry_days` ("account main expires
in 3 days"), once per account and day.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import urllib.request
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import orjson

log = logging.getLogger("relay.storage.notify")

QUEUE_MAX = 1000
RETRIES = 3
TIMEOUT_S = 5.0


DAY_S = 86400


# ---- in words (issue 19): pure, so every line is a unit test ---------------------------------------------


def _side(ref: Any, other: Any) -> str:
    """`main` for main/12, unless both sides are on one account: then the stream, main/12."""
    acc, _, _ = str(ref or "?").partition("/")
    other_acc, _, _ = str(other or "?").partition("/")
    return str(ref or "?") if acc == other_acc else acc


def in_words(e: dict[str, Any], names: dict[str, str]) -> str | None:
    """The line a person reads for a warn/error event; None for events nobody is told about."""
    if e.get("level") not in ("warn", "error"):
        return None
    ch = e.get("channel")
    name = names.get(ch, ch) if isinstance(ch, str) else None
    kind = e.get("event")
    frm, to = e.get("from_stream"), e.get("to_stream")
    if kind == "failover":
        ms = e.get("switch_ms")
        took = f", {round(ms)} ms" if isinstance(ms, int | float) else ""
        return f"{name}: {_side(frm, to)} → {_side(to, frm)}, {e.get('reason')}{took}"
    if kind == "exhausted":
        tried = len(e.get("attempted") or [])
        return f"{name}: every stream failed ({e.get('reason')}); tried {tried}, viewers cut off"
    if kind == "holding":
        return f"{name}: every stream failed ({e.get('reason')}); holding on and retrying"
    if kind == "account_inactive":
        return f"account {e.get('account')} is {e.get('reason')}: not used until a sync finds it usable"
    text = e.get("message")
    return str(text) if text else None


def expiry_words(account: str, exp_date: float, now: float) -> str:
    days = int((exp_date - now) // DAY_S)
    when = "today" if days <= 0 else "tomorrow" if days == 1 else f"in {days} days"
    return f"account {account} expires {when}"


def _apprise_send(url: str, body: str) -> None:
    import apprise  # imported only when an apprise target is configured: it is a large package

    ap = apprise.Apprise()
    if not ap.add(url):
        raise ValueError("not an apprise URL")
    if not ap.notify(body=body, title="relay"):
        raise OSError("apprise could not deliver")


# ---- end of the words ------------------------------------------------------------------------------------


class Notifier:
    def __init__(
        self,
        urls: list[str],
        *,
        backoff_s: float = 1.0,
        apprise: Sequence[tuple[str, int]] = (),
        names: Callable[[], dict[str, str]] = dict,
    ) -> None:
        self.urls = urls
        self.apprise = list(apprise)  # (apprise URL, expiry_days)
        self.names = names  # channel id -> name, for the words
        self.backoff_s = backoff_s
        self._warned: set[tuple[str, int]] = set()  # (account, days left) already told
        # (event for the webhooks, words for the apprise targets, only this apprise target)
        self._queue: deque[tuple[dict[str, Any] | None, str | None, int | None]] = deque(maxlen=QUEUE_MAX)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.sent = 0
        self.failed = 0
        self.dropped = 0

    def start(self) -> None:
        if self.urls or self.apprise:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="relay-notify")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def on_event(self, e: dict[str, Any]) -> None:
        """EventLog listener: queue warn/error events."""
        if not (self.urls or self.apprise) or e.get("level") not in ("warn", "error"):
            return
        text = in_words(e, self.names()) if self.apprise else None
        self._put(e if self.urls else None, text)

    def accounts_synced(self, accounts: Sequence[dict[str, Any]], now: float) -> None:
        """After a sync: tell the apprise targets about accounts that expire soon, once a day each."""
        for a in accounts:
            exp = a.get("exp_date")
            if not exp or exp < now - DAY_S:
                continue
            days = int((exp - now) // DAY_S)
            for i, (_, within) in enumerate(self.apprise):
                if days <= within and (a["name"], days) not in self._warned:
                    self._warned.add((a["name"], days))
                    self._put(None, expiry_words(a["name"], exp, now), only=i)

    def _put(self, event: dict[str, Any] | None, text: str | None, only: int | None = None) -> None:
        if event is None and text is None:
            return
        if len(self._queue) == self._queue.maxlen:
            self.dropped += 1
        self._queue.append((event, text, only))
        self._wake.set()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                event, text, only = self._queue.popleft()
                if event is not None:
                    body = orjson.dumps(event)
                    for i, url in enumerate(self.urls):
                        await self._deliver(i, url, body)
                if text is not None:
                    for i, (url, _) in enumerate(self.apprise):
                        if only is None or only == i:
                            await self._deliver(len(self.urls) + i, url, text, _apprise_send)

    async def _deliver(
        self, index: int, url: str, body: Any, send: Callable[[str, Any], None] | None = None
    ) -> None:
        for attempt in range(RETRIES):
            try:
                await asyncio.to_thread(send or _post, url, body)
                self.sent += 1
                return
            except Exception as e:  # any failure of a webhook is the webhook's, never ours
                if attempt == RETRIES - 1:
                    self.failed += 1
                    # the URL may carry a token: name the webhook by its position only
                    log.warning(
                        "notify[%d]: giving up on an event after %d tries (%s)",
                        index,
                        RETRIES,
                        type(e).__name__,
                    )
                    return
                await asyncio.sleep(self.backoff_s * 2**attempt)


def _post(url: str, body: bytes) -> None:
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=TIMEOUT_S) as resp:
        resp.read(1024)
