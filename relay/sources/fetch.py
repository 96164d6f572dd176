"""Reading a provider's documents: the one place the relay GETs player_api, M3U and XMLTV.

Owns: the request (the account's user agent, gzip accepted, its TLS settings from relay.sources.tls,
urllib's redirects, a timeout), reading the answer or a file under a size cap, gunzipping it when it
starts with the gzip magic, giving up at the next chunk once a cancel flag is set; and the texts that
may describe a provider: URLs with their credentials redacted, the secrets a URL carries, error texts
with those secrets scrubbed. The live TS streams are asyncio connections (relay.shell.upstream); they
share the TLS builder, not this blocking reader.

Must never: put a username, a password or a token in a label, an exception text or a log line.
"""

from __future__ import annotations

import gzip
import http.client
import re
import threading
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, cast

from relay.config import DEFAULT_USER_AGENT
from relay.sources.tls import tls_context

FETCH_TIMEOUT_S = 60.0
MAX_SOURCE_BYTES = 4 << 30  # decompressed; a document bigger than this is a mistake or an attack
CHUNK = 1 << 20

Opener = Callable[[str, str], IO[bytes]]  # (url, user_agent) -> readable binary stream


class FetchError(Exception):
    """A source could not be read as a whole; str() is a sentence safe to log."""


class SourceTooLarge(FetchError):
    """The source (decompressed) went past the size cap."""


class Cancelled(Exception):
    """The cancel flag was set: the reader gave up between two chunks."""


# ---------------------------------------------------------------------------------------------
# Redaction (pure)

_SECRET_KEYS = re.compile(r"(?i)^(user(name)?|pass(word)?|pwd|token|key|api_?key|auth|secret)$")


def redact_url(url: str) -> str:
    """The URL with user-info and credential-like query values replaced by ***."""
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    if "@" in parts.netloc:
        netloc = "***@" + netloc
    query = "&".join(
        f"{k}=***" if _SECRET_KEYS.match(k) else f"{k}={v}"
        for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    )
    segs = parts.path.split("/")
    if len(segs) >= 5 and segs[1] == "live":  # Xtream stream URLs: /live/{username}/{password}/{id}.ts
        segs[2] = segs[3] = "***"
    return urllib.parse.urlunsplit((parts.scheme, netloc, "/".join(segs), query, ""))


def url_secrets(url: str) -> tuple[str, ...]:
    """The credentials a URL carries: credential-like query values, then its user-info."""
    parts = urllib.parse.urlsplit(url)
    found = [v for k, v in urllib.parse.parse_qsl(parts.query) if _SECRET_KEYS.match(k)]
    found += [s for s in (parts.username, parts.password) if s]
    return tuple(found)


def scrub(text: str, secrets: Iterable[str]) -> str:
    """`text` with every secret (raw or URL-quoted) of two characters or more replaced by ***."""
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) >= 2:
            for form in {secret, urllib.parse.quote(secret, safe=""), urllib.parse.quote_plus(secret)}:
                text = text.replace(form, "***")
    return text


def describe(e: BaseException) -> str:
    """One line for a failed source; the caller scrubs it with the source's secrets."""
    if isinstance(e, ET.ParseError):
        return f"not valid XML ({e})"
    text = str(e) or type(e).__name__
    return text if isinstance(e, FetchError) else f"{type(e).__name__}: {text}"


@dataclass(frozen=True)
class Source:
    """A document to read: a file or a URL, with what it takes to fetch it and to talk about it."""

    label: str  # what logs may show: a file path or a redacted URL
    url: str | None = None
    path: Path | None = None
    user_agent: str = DEFAULT_USER_AGENT
    secrets: tuple[str, ...] = field(default=(), repr=False)
    tls_verify: bool = True  # an account's https settings apply to its xmltv.php and get.php too
    ca_file: str | None = None

    def scrub(self, text: str) -> str:
        """`text` with every credential of this source (raw or URL-quoted) replaced by ***."""
        return scrub(text, self.secrets)


# ---------------------------------------------------------------------------------------------
# Opening and reading


def open_url(
    url: str,
    user_agent: str,
    *,
    timeout: float = FETCH_TIMEOUT_S,
    tls_verify: bool = True,
    ca_file: str | None = None,
) -> http.client.HTTPResponse:
    """GET `url` (gzip accepted, redirects followed by urllib); the account's TLS settings for https.

    Raises what urllib raises (HTTPError, URLError, OSError, http.client.HTTPException): callers
    word those themselves and scrub the text.
    """
    req = urllib.request.Request(url, headers={"User-Agent": user_agent, "Accept-Encoding": "gzip"})
    ctx = tls_context(tls_verify, ca_file) if url.startswith("https:") else None
    resp: http.client.HTTPResponse = urllib.request.urlopen(req, timeout=timeout, context=ctx)
    return resp


def fetch_source(src: Source, opener: Opener | None = None) -> IO[bytes]:
    """A source's raw bytes: its file, or its URL with the source's user agent and TLS settings.

    `opener` replaces the HTTP GET (tests); it gets the URL and the user agent only.
    """
    if src.path is not None:
        return src.path.open("rb")
    if opener is None:
        resp = open_url(src.url or "", src.user_agent, tls_verify=src.tls_verify, ca_file=src.ca_file)
        return cast(IO[bytes], resp)
    return opener(src.url or "", src.user_agent)


class Reader:
    """A read-only stream: first `prefix`, then `raw`; counts bytes and honours a cancel flag."""

    def __init__(self, raw: IO[bytes], prefix: bytes, limit: int, cancel: threading.Event) -> None:
        self._raw = raw
        self._prefix = prefix
        self._left = limit
        self._cancel = cancel

    def read(self, n: int = -1) -> bytes:
        if self._cancel.is_set():
            raise Cancelled
        if self._prefix:
            data, self._prefix = self._prefix, b""
        else:
            data = self._raw.read(n if n is not None and n >= 0 else CHUNK)
        self._left -= len(data)
        if self._left < 0:
            raise SourceTooLarge("source larger than the size limit")
        return data


def open_stream(raw: IO[bytes], cancel: threading.Event, limit: int = MAX_SOURCE_BYTES) -> Reader:
    """Wrap a source stream, transparently gunzipping it when it starts with the gzip magic; both
    the compressed and the decompressed bytes are capped at `limit`."""
    head = raw.read(2)
    outer = Reader(raw, head, limit, cancel)
    if head == b"\x1f\x8b":
        inner: IO[bytes] = gzip.GzipFile(fileobj=outer, mode="rb")  # type: ignore[arg-type]
        return Reader(inner, b"", limit, cancel)
    return outer
