"""A fake Xtream-Codes panel API on 127.0.0.1: player_api.php, get.php (m3u_plus) and xmltv.php.

Panels answer in specific, inconsistent ways (protocols.md §2): bad credentials are HTTP 200 with
`auth: 0`, numbers arrive as strings, `epg_channel_id` is null, get.php answers 404 to bad
credentials. This server reproduces those and has switchable failure modes per endpoint, so the
sync's reactions can be asserted exactly. It runs in its own thread (ThreadingHTTPServer), so a
test may call blocking code, run a CLI subprocess, or await, while it answers.
"""

from __future__ import annotations

import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Literal

import orjson

HOST = "127.0.0.1"
PASSWORD = "Pa55 w/rd&x=1@é"  # needs URL-quoting in every form: redaction tests grep for all of them

Fault = Literal["5xx", "garbage", "404", "empty", "slow"]
Endpoint = Literal["login", "get_live_categories", "get_live_streams", "get.php", "xmltv.php"]


@dataclass
class Stream:
    stream_id: int
    name: str
    epg_channel_id: str | None = None
    category_id: str | None = "1"
    icon: str | None = None


@dataclass
class Account:
    """The line's state as the panel reports it in user_info."""

    auth: Any = 1  # 0, "0" and False all mean "bad credentials" on real panels
    status: str = "Active"
    exp_date: Any = None  # None = unlimited; real panels send a string of Unix seconds
    max_connections: Any = "2"
    active_cons: Any = "0"  # the line's open connections, as the panel counts them


@dataclass
class FakeXtream:
    username: str = "alice"
    password: str = PASSWORD
    streams: list[Stream] = field(default_factory=list)
    categories: dict[str, str] = field(default_factory=lambda: {"1": "UK", "2": "FR"})
    xmltv: bytes = b'<?xml version="1.0"?><tv></tv>'
    account: Account = field(default_factory=Account)
    faults: dict[str, Fault] = field(default_factory=dict)  # endpoint -> failure mode
    requests: list[str] = field(default_factory=list)  # endpoint names, in order (never credentials)
    slow_s: float = 1.0  # how long a "slow" fault holds its answer
    port: int = 0
    _server: ThreadingHTTPServer | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def count(self, endpoint: str) -> int:
        return self.requests.count(endpoint)

    def start(self) -> FakeXtream:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status, ctype, body = fake._answer(self.path)
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer((HOST, 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, name="fake-xtream", daemon=True
        ).start()
        return self

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeXtream:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- answers ------------------------------------------------------------------------------------

    def _answer(self, target: str) -> tuple[int, str, bytes]:
        parts = urllib.parse.urlsplit(target)
        q = dict(urllib.parse.parse_qsl(parts.query))
        creds_ok = (q.get("username"), q.get("password")) == (self.username, self.password)
        path = parts.path.rsplit("/", 1)[-1]
        if path == "player_api.php":
            endpoint = q.get("action") or "login"
        elif path in ("get.php", "xmltv.php"):
            endpoint = path
        else:
            return 404, "text/plain", b"not found\n"
        self.requests.append(endpoint)
        fault = self.faults.get(endpoint)
        if fault == "slow":
            time.sleep(self.slow_s)
        elif fault == "5xx":
            return 502, "text/html", b"<html><body>502 Bad Gateway</body></html>"
        elif fault == "404":
            return 404, "text/html", b"<html><body>Not Found</body></html>"
        elif fault == "garbage":
            return 200, "application/json", b'{"user_info": {"auth": 1, "status": "Act'
        if endpoint == "get.php":
            return (200, "audio/x-mpegurl", self.m3u()) if creds_ok else (404, "text/plain", b"")
        if endpoint == "xmltv.php":
            return (200, "application/xml", self.xmltv) if creds_ok else (404, "text/plain", b"")
        refused = self.account.auth in (0, "0", False)
        if not creds_ok or refused:
            auth = self.account.auth if refused else 0
            return 200, "application/json", orjson.dumps({"user_info": {"auth": auth}})
        if endpoint == "login" or self.account.status != "Active":
            return 200, "application/json", orjson.dumps(self._login())
        if fault == "empty":
            return 200, "application/json", b"[]"
        if endpoint == "get_live_categories":
            cats = [
                {"category_id": k, "category_name": v, "parent_id": 0} for k, v in self.categories.items()
            ]
            return 200, "application/json", orjson.dumps(cats)
        if endpoint == "get_live_streams":
            return (
                200,
                "application/json",
                orjson.dumps([self._stream(i, s) for i, s in enumerate(self.streams)]),
            )
        return 200, "application/json", orjson.dumps(self._login())  # unknown action: the login answer

    def _login(self) -> dict[str, Any]:
        a = self.account
        return {
            "user_info": {
                "username": self.username,
                "password": self.password,  # real panels echo it: it must never reach a log
                "message": "",
                "auth": a.auth,
                "status": a.status,
                "exp_date": a.exp_date,
                "is_trial": "0",
                "active_cons": a.active_cons,
                "created_at": "1535225504",
                "max_connections": a.max_connections,
                "allowed_output_formats": ["m3u8", "ts"],
            },
            "server_info": {"url": HOST, "port": str(self.port), "timezone": "UTC", "timestamp_now": 0},
        }

    def _stream(self, i: int, s: Stream) -> dict[str, Any]:
        """Types drift on purpose: ids as strings on odd rows, category ids as ints on even ones."""
        return {
            "num": i + 1,
            "name": s.name,
            "stream_type": "live",
            "stream_id": str(s.stream_id) if i % 2 else s.stream_id,
            "stream_icon": s.icon or "",
            "epg_channel_id": s.epg_channel_id,
            "added": "1532728123",
            "category_id": int(s.category_id) if s.category_id and i % 2 == 0 else s.category_id,
            "custom_sid": "",
            "tv_archive": 0,
            "direct_source": "",
            "tv_archive_duration": 0,
        }

    def m3u(self) -> bytes:
        """get.php?type=m3u_plus: spaces around `=` on odd rows, as some panels write (PlexIPTV#28)."""
        user = urllib.parse.quote(self.username, safe="")
        pw = urllib.parse.quote(self.password, safe="")
        lines = [f'#EXTM3U url-tvg="{self.url}/xmltv.php?username={user}&password={pw}"']
        for i, s in enumerate(self.streams):
            eq = " = " if i % 2 else "="
            group = self.categories.get(s.category_id or "", "")
            lines.append(
                f'#EXTINF:-1 tvg-id{eq}"{s.epg_channel_id or ""}" tvg-name{eq}"{s.name}"'
                f' tvg-logo{eq}"{s.icon or ""}" group-title{eq}"{group}",{s.name}'
            )
            lines.append(f"{self.url}/live/{user}/{pw}/{s.stream_id}.ts")
        return ("\n".join(lines) + "\n").encode()
