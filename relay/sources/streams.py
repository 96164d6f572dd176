"""Which URL a candidate plays, and as what kind: the one place a stream's URL is decided.

Kinds: "ts" (an Xtream live TS URL built from the account), "hls" (the same stream as the panel's
HLS, `accounts[].output`), "auto" (a URL given in the config or found in an M3U: TS or HLS, the
first response decides). URLs are stored as *templates*: the account's username and password
replaced by `{username}` and `{password}` wherever they are a whole path segment or query value, so
the database and every copy of a URL the relay keeps carry no credential; `fill` puts them back at
the moment a connection is opened. A URL is never logged, put in an event or shown: a stream is
named `account/stream_id` (URL streams get a stable id from their template, `url_stream_id`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from relay.config import DEFAULT_USER_AGENT, DIRECT_ACCOUNT, AccountConfig, Config
from relay.core.failover import Candidate

Kind = Literal["ts", "hls", "auto"]
URL_ID_BASE = 1 << 40  # URL streams' ids lie above every Xtream id, so the two never collide
USERNAME, PASSWORD = "{username}", "{password}"


@dataclass(frozen=True)
class Target:
    kind: Kind
    url: str = field(repr=False)  # carries the credentials
    user_agent: str


@dataclass
class Directory:
    """What the database knows beyond the candidate: URL templates and the panels' output formats."""

    urls: dict[tuple[str, int], str] = field(default_factory=dict)  # (account, stream_id) -> template
    formats: dict[str, tuple[str, ...]] = field(default_factory=dict)  # account -> allowed_output_formats


def template(url: str, username: str | None, password: str | None) -> str:
    """`url` with the account's credentials as placeholders (whole path segments and query values)."""
    parts = urlsplit(url.strip())
    secrets = {v: k for k, v in ((USERNAME, username), (PASSWORD, password)) if v}

    def swap(piece: str) -> str:
        return secrets.get(piece) or secrets.get(unquote(piece)) or piece

    path = "/".join(swap(p) for p in parts.path.split("/"))
    query = "&".join(
        (f"{k}={swap(v)}" if sep else swap(k))
        for k, sep, v in (item.partition("=") for item in parts.query.split("&"))
    )
    netloc = parts.netloc.rsplit("@", 1)[-1]  # user:pass@host is never kept
    return urlunsplit((parts.scheme, netloc, path, query if parts.query else "", ""))


def fill(tmpl: str, account: AccountConfig | None) -> str:
    if account is None:
        return tmpl
    return tmpl.replace(USERNAME, quote(account.username, safe="")).replace(
        PASSWORD, quote(account.password, safe="")
    )


def url_stream_id(tmpl: str) -> int:
    """A stable id for a URL stream (its template's hash), so mappings survive a re-import."""
    return URL_ID_BASE + int.from_bytes(hashlib.sha256(tmpl.encode()).digest()[:5], "big")


def xtream_output(account: AccountConfig, formats: tuple[str, ...] | None) -> Literal["ts", "m3u8"]:
    """`output: auto` is ts unless the panel said it allows formats without ts (then m3u8)."""
    if account.output != "auto":
        return account.output
    return "m3u8" if formats and "ts" not in formats and "m3u8" in formats else "ts"


def target_for(cfg: Config, c: Candidate, directory: Directory) -> Target:
    """The kind and URL a candidate plays now."""
    acc = None if c.account == DIRECT_ACCOUNT else cfg.account(c.account)
    ua = acc.user_agent if acc is not None else DEFAULT_USER_AGENT
    tmpl = directory.urls.get((c.account, c.stream_id))
    if tmpl is not None:
        return Target("auto", fill(tmpl, acc), ua)
    assert acc is not None  # a direct stream always has its URL
    base = f"{acc.url}/live/{acc.username}/{acc.password}/{c.stream_id}"
    if xtream_output(acc, directory.formats.get(acc.name)) == "m3u8":
        return Target("hls", base + ".m3u8", ua)
    return Target("ts", base + ".ts", ua)


def direct_limits(cfg: Config) -> dict[str, int]:
    """The slot limit of url: streams without an account: not limited (they share no provider line)."""
    direct = any(s.url is not None and s.account is None for ch in cfg.channels for s in ch.streams)
    return {DIRECT_ACCOUNT: 1 << 20} if direct else {}
