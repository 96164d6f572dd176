"""M3U and m3u_plus playlists: a provider's `get.php`, or any M3U URL or file, read line by line.

Owns: the `#EXTINF` attributes (`tvg-id`, `tvg-name`, `tvg-logo`, `group-title`, with spaces around
`=` tolerated, PlexIPTV#28), the title after the comma, `#EXTGRP`, and the Xtream stream id inside a
stream URL (`/live/U/P/1234.ts`, `/U/P/1234`). A playlist of any size costs one entry of memory.

Must never: log a stream URL or return one with the account's credentials in it. A URL leaves this
module only as a template (relay.sources.streams: username and password as placeholders), for the
entries the relay must play at exactly their URL (not an Xtream live URL of the account's own server);
for the others only the stream id leaves, and the relay builds its own URL from the account.
"""

from __future__ import annotations

import http.client
import re
import threading
import urllib.error
import urllib.parse
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Protocol

from relay.config import AccountConfig
from relay.sources.fetch import Source, SourceTooLarge, fetch_source, open_stream, redact_url, url_secrets
from relay.sources.streams import template, url_stream_id
from relay.sources.tls import account_ca_file
from relay.sources.xtream import LiveStream

CHUNK = 1 << 16
_ATTR = re.compile(r"""([A-Za-z0-9_-]+)\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s"',]+))""")
_NOT_LIVE = ("movie", "series", "timeshift")


class M3uError(Exception):
    """The playlist could not be read; str() is scrubbed of credentials."""


@dataclass(frozen=True)
class M3uEntry:
    """One playlist entry: its title, its #EXTINF attributes (lower-case keys), its stream id."""

    title: str
    attrs: dict[str, str] = field(default_factory=dict)
    stream_id: int | None = None  # None: the URL is not an Xtream live URL
    url: str = field(default="", repr=False, compare=False)  # carries credentials: never shown

    @property
    def tvg_id(self) -> str | None:
        return self.attrs.get("tvg-id") or None

    @property
    def name(self) -> str:
        return self.title or self.attrs.get("tvg-name") or ""

    @property
    def logo(self) -> str | None:
        return self.attrs.get("tvg-logo") or None

    @property
    def group(self) -> str | None:
        return self.attrs.get("group-title") or None


def stream_id_from_url(url: str) -> int | None:
    """The stream id of an Xtream live URL (`/live/U/P/1234.ts`, `/U/P/1234`), else None."""
    segs = [s for s in urllib.parse.urlsplit(url.strip()).path.split("/") if s]
    if len(segs) < 3 or segs[0].lower() in _NOT_LIVE:
        return None
    stem = segs[-1].split(".", 1)[0]
    return int(stem) if stem.isdigit() else None


def parse_extinf(line: str) -> tuple[dict[str, str], str]:
    """The attributes and the title of an `#EXTINF:` line (the title follows the first bare comma)."""
    body = line.split(":", 1)[1] if ":" in line else ""
    quote = ""
    split_at = -1
    for i, ch in enumerate(body):
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "\"'":
            quote = ch
        elif ch == ",":
            split_at = i
            break
    head, title = (body[:split_at], body[split_at + 1 :]) if split_at >= 0 else (body, "")
    attrs = {
        m.group(1).lower(): _first(m.group(2), m.group(3), m.group(4)).strip() for m in _ATTR.finditer(head)
    }
    return attrs, title.strip()


def _first(*values: str | None) -> str:
    return next((v for v in values if v is not None), "")


def parse_m3u(lines: Iterable[str]) -> Iterator[M3uEntry]:
    """Entries in playlist order; a URL line closes the entry its #EXTINF opened."""
    attrs: dict[str, str] = {}
    title = ""
    group: str | None = None
    for raw in lines:
        line = raw.strip().lstrip("\ufeff")
        if not line:
            continue
        if line.startswith("#"):
            upper = line[:8].upper()
            if upper.startswith("#EXTINF"):
                attrs, title = parse_extinf(line)
                group = None
            elif upper.startswith("#EXTGRP"):
                group = line.split(":", 1)[1].strip() if ":" in line else None
            continue
        if group and "group-title" not in attrs:
            attrs["group-title"] = group
        yield M3uEntry(title=title, attrs=attrs, stream_id=stream_id_from_url(line), url=line)
        attrs, title, group = {}, "", None


class Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


def iter_lines(stream: Readable) -> Iterator[str]:
    """Text lines of a byte stream, read in chunks: UTF-8, or Latin-1 for a line that is not."""
    rest = b""
    while chunk := stream.read(CHUNK):
        rest += chunk
        *lines, rest = rest.split(b"\n")
        for line in lines:
            yield _decode(line)
    if rest:
        yield _decode(rest)


def _decode(line: bytes) -> str:
    try:
        return line.decode("utf-8").rstrip("\r")
    except UnicodeDecodeError:
        return line.decode("latin-1").rstrip("\r")


def account_m3u_source(account: AccountConfig, base_dir: Path) -> Source:
    """The account's `m3u:` as a guide-style Source: a file, a URL, or "get.php" (its m3u_plus)."""
    value = account.m3u or ""
    secrets = (account.username, account.password)
    if value == "get.php":
        query = urllib.parse.urlencode(
            {"username": account.username, "password": account.password, "type": "m3u_plus", "output": "ts"}
        )
        return _url_source(account, base_dir, f"{account.url}/get.php?{query}", secrets)
    if re.match(r"^https?://", value):
        return _url_source(account, base_dir, value, secrets + url_secrets(value))
    p = Path(value)
    p = p if p.is_absolute() else base_dir / p
    return Source(label=str(p), path=p, secrets=secrets)


def _url_source(account: AccountConfig, base_dir: Path, url: str, secrets: tuple[str, ...]) -> Source:
    """A playlist URL of the account; an https:// account's TLS settings apply to it (as to player_api)."""
    https = account.url.startswith("https://")
    return Source(
        label=redact_url(url),
        url=url,
        user_agent=account.user_agent,
        secrets=secrets,
        tls_verify=account.tls_verify if https else True,
        ca_file=account_ca_file(account, base_dir) if https else None,
    )


SKIP_REASONS = ("vod_series", "unsupported_scheme", "duplicate", "unparseable")


@dataclass
class M3uImport:
    """An M3U's live streams, the URL templates of those played at their own URL, what was left out."""

    streams: list[LiveStream] = field(default_factory=list)
    urls: dict[int, str] = field(default_factory=dict)  # stream_id -> template (relay.sources.streams)
    skips: list[tuple[str, str]] = field(default_factory=list)  # (reason, entry name); never a URL


def classify(entry: M3uEntry, account: AccountConfig) -> tuple[int, str | None] | str:
    """(stream_id, URL template or None) for a playable entry, else the skip reason.

    An Xtream live URL on the account's own server plays as the account's stream (its `output`);
    any other http(s) URL plays at exactly that URL, TS or HLS as its answer says.
    """
    try:
        parts = urllib.parse.urlsplit(entry.url.strip())
        port = parts.port
    except ValueError:
        return "unparseable"
    scheme = parts.scheme.lower()
    if not scheme or "://" not in entry.url:
        return "unparseable"
    if scheme not in ("http", "https"):
        return "unsupported_scheme"
    if not parts.hostname:
        return "unparseable"
    segs = [p.lower() for p in parts.path.split("/") if p]
    if segs and segs[0] in _NOT_LIVE:
        return "vod_series"
    own = urllib.parse.urlsplit(account.url)
    same_server = (parts.hostname, port or (443 if scheme == "https" else 80)) == (
        own.hostname,
        own.port or (443 if own.scheme == "https" else 80),
    )
    if entry.stream_id is not None and same_server:
        return entry.stream_id, None
    tmpl = template(entry.url, account.username, account.password)
    return (entry.stream_id if entry.stream_id is not None else url_stream_id(tmpl)), tmpl


def import_entries(entries: Iterable[M3uEntry], account: AccountConfig) -> M3uImport:
    out = M3uImport()
    seen: set[int] = set()
    for entry in entries:
        kind = classify(entry, account)
        name = entry.name or "(no name)"
        if isinstance(kind, str):
            out.skips.append((kind, name))
            continue
        sid, tmpl = kind
        if sid in seen:
            out.skips.append(("duplicate", name))
            continue
        seen.add(sid)
        out.streams.append(
            LiveStream(
                stream_id=sid,
                name=entry.name or str(sid),
                epg_channel_id=entry.tvg_id,
                category=entry.group,
                icon=entry.logo,
            )
        )
        if tmpl is not None:
            out.urls[sid] = tmpl
    return out


def read_m3u_import(
    account: AccountConfig, base_dir: Path, *, cancel: threading.Event | None = None
) -> M3uImport:
    """The account's M3U, every entry either a stream or a counted skip; M3uError (one scrubbed line)
    when it cannot be read."""
    src = account_m3u_source(account, base_dir)
    cancel = cancel or threading.Event()
    try:
        raw: IO[bytes] = fetch_source(src)
        with raw:
            return import_entries(parse_m3u(iter_lines(open_stream(raw, cancel))), account)
    except urllib.error.HTTPError as e:
        e.close()
        raise M3uError(src.scrub(f"{src.label}: HTTP {e.code}")) from None
    except urllib.error.URLError as e:
        raise M3uError(src.scrub(f"{src.label}: {e.reason}")) from None
    except SourceTooLarge as e:
        raise M3uError(src.scrub(f"{src.label}: {e}")) from None
    except (http.client.HTTPException, ValueError) as e:
        raise M3uError(src.scrub(f"{src.label}: broken HTTP answer ({type(e).__name__})")) from None
    except OSError as e:
        raise M3uError(src.scrub(f"{src.label}: {e.strerror or type(e).__name__}")) from None
