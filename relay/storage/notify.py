"""Webhooks: every warn/error event POSTed as its JSON to each `notify[].url`.

Users want a message naming the from- and to-provider on every failover (Discord, Pushover, ...
through a small bridge). Delivery never blocks a stream: events go into a bounded queue (the
oldest is dropped, and counted, when a webhook is down for long), one task posts them with retries
and back-off, the blocking HTTP call runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import urllib.request
from collections import deque
from typing import Any

import orjson

log = logging.getLogger("relay.storage.notify")

QUEUE_MAX = 1000
RETRIES = 3
TIMEOUT_S = 5.0


class Notifier:
    def __init__(self, urls: list[str], *, backoff_s: float = 1.0) -> None:
        self.urls = urls
        self.backoff_s = backoff_s
        self._queue: deque[dict[str, Any]] = deque(maxlen=QUEUE_MAX)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.sent = 0
        self.failed = 0
        self.dropped = 0

    def start(self) -> None:
        if self.urls:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="relay-notify")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def on_event(self, e: dict[str, Any]) -> None:
        """EventLog listener: queue warn/error events."""
        if not self.urls or e.get("level") not in ("warn", "error"):
            return
        if len(self._queue) == self._queue.maxlen:
            self.dropped += 1
        self._queue.append(e)
        self._wake.set()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                event = self._queue.popleft()
                body = orjson.dumps(event)
                for i, url in enumerate(self.urls):
                    await self._deliver(i, url, body)

    async def _deliver(self, index: int, url: str, body: bytes) -> None:
        for attempt in range(RETRIES):
            try:
                await asyncio.to_thread(_post, url, body)
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
