"""Test helpers for the web page: a config with a login, and a small HTTP client that keeps the cookie."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import orjson

from relay.web.auth import COOKIE, hash_secret

PASSWORD = "open sesame"
TOKEN = "tok-for-scripts"
# cheap scrypt parameters (same form as `relay ui-hash`): tests log in often
PASSWORD_HASH = hash_secret(PASSWORD, n=1 << 10)
TOKEN_HASH = hash_secret(TOKEN, n=1 << 10)


def with_ui(cfg: dict[str, Any], **ui: Any) -> dict[str, Any]:
    return {**cfg, "ui": {"password": PASSWORD_HASH, "token": TOKEN_HASH, **ui}}


@dataclass
class Resp:
    status: int
    headers: dict[str, list[str]]
    body: bytes

    def header(self, name: str) -> str | None:
        v = self.headers.get(name.lower())
        return v[0] if v else None

    def json(self) -> Any:
        return orjson.loads(self.body)


async def http(
    port: int,
    method: str,
    path: str,
    *,
    body: Any = None,
    headers: dict[str, str] | None = None,
    raw_body: bytes | None = None,
) -> Resp:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    hs = {"Host": f"127.0.0.1:{port}", "Connection": "close", **(headers or {})}
    data = raw_body if raw_body is not None else (orjson.dumps(body) if body is not None else b"")
    if body is not None and "Content-Type" not in hs:
        hs["Content-Type"] = "application/json"
    if data or method == "POST":
        hs["Content-Length"] = str(len(data))
    writer.write(
        f"{method} {path} HTTP/1.1\r\n".encode()
        + b"".join(f"{k}: {v}\r\n".encode() for k, v in hs.items())
        + b"\r\n"
        + data
    )
    raw = bytearray()
    async with asyncio.timeout(10):
        while chunk := await reader.read(65536):
            raw += chunk
    writer.close()
    head, _, rest = bytes(raw).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    got: dict[str, list[str]] = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        got.setdefault(k.strip().lower(), []).append(v.strip())
    n = int(got.get("content-length", [len(rest)])[0])
    return Resp(int(lines[0].split()[1]), got, rest[:n])


@dataclass
class UiClient:
    """A logged-in (after `login`) page: its cookie and CSRF token go with every request."""

    port: int
    cookie: str | None = None
    csrf: str | None = None
    seen: list[bytes] = field(default_factory=list)  # every body received: leak checks

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        h = dict(extra or {})
        if self.cookie:
            h["Cookie"] = f"{COOKIE}={self.cookie}"
        return h

    async def login(self, password: str = PASSWORD) -> Resp:
        r = await http(self.port, "POST", "/ui/api/login", body={"password": password})
        if r.status == 200:
            cookie = r.header("set-cookie") or ""
            self.cookie = cookie.split(";")[0].split("=", 1)[1]
            self.csrf = r.json()["csrf"]
        return r

    async def get(self, path: str) -> Resp:
        r = await http(self.port, "GET", path, headers=self._headers())
        self.seen.append(r.body)
        return r

    async def post(self, path: str, body: Any, *, csrf: bool = True) -> Resp:
        extra = {"X-CSRF-Token": self.csrf} if csrf and self.csrf else {}
        r = await http(self.port, "POST", path, body=body, headers=self._headers(extra))
        self.seen.append(r.body)
        return r
