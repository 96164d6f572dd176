"""A small Xtream-Codes `player_api.php` client: the login, the live categories, the live streams.

Owns: the three HTTP calls a sync makes (plain blocking urllib: run it in a worker thread; this is
not the data path) and reading panels' drifting JSON types into plain values — numbers as strings,
`auth` as 0, "0" or false, `exp_date` as null or a string, ids as strings or null (protocols.md §2).

Must never: put the username or password in an exception, a log line or a repr. Every error text
leaves this module scrubbed of both, raw and URL-quoted.
"""

from __future__ import annotations

import gzip
import http.client
import math
import urllib.error
import urllib.parse
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from relay.config import AccountConfig
from relay.sources.fetch import open_url, redact_url, scrub
from relay.sources.tls import account_ca_file

API_TIMEOUT_S = 30.0  # a panel listing 50k streams answers in seconds; longer means it is down
CHUNK = 64 << 10
MAX_ANSWER_BYTES = 256 << 20  # a stream list bigger than this is a broken or hostile panel
INACTIVE_STATUSES = ("expired", "banned", "disabled")


class XtreamError(Exception):
    """The API could not be used this time (down, 5xx, timeout, bad JSON); str() is scrubbed."""


class NoXtreamApi(XtreamError):
    """player_api.php answered 404: an M3U-only line or not an Xtream panel at all."""


def flex_int(value: Any) -> int | None:
    """An integer from an int, a float or a numeric string; None for null, "" or anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if math.isfinite(value) else None
    if isinstance(value, str):
        text = value.strip()
        try:
            return int(text)
        except ValueError:
            try:
                number = float(text)
            except ValueError:
                return None
            return int(number) if math.isfinite(number) else None
    return None


def flex_bool(value: Any) -> bool:
    """True for true, a non-zero number, or "1"/"true"/"yes"; False for 0, "0", false, null, ""."""
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    if isinstance(value, bool | int | float):
        return bool(value)
    return False


def flex_str(value: Any) -> str | None:
    """A stripped string, or None for null and empty values."""
    if value is None or isinstance(value, dict | list):
        return None
    text = str(value).strip()
    return text or None


@dataclass(frozen=True)
class UserInfo:
    """`user_info` of the login answer, types settled."""

    auth: bool
    status: str  # Active, Expired, Banned, Disabled as the panel spells it; "" when absent
    exp_date: int | None  # Unix seconds; None = unlimited
    max_connections: int | None
    active_cons: int | None
    is_trial: bool
    allowed_output_formats: tuple[str, ...] | None = None  # e.g. ("m3u8", "ts"); None: not said

    def problem(self, now: float) -> str | None:
        """Why this line cannot stream — unauthorised, expired, banned, disabled — or None."""
        if not self.auth:
            return "unauthorised"
        status = self.status.lower()
        if status in INACTIVE_STATUSES:
            return status
        if self.exp_date is not None and 0 < self.exp_date < now:
            return "expired"
        return None


def parse_user_info(payload: Any) -> UserInfo:
    """Read a login answer; XtreamError if it is not one (so the last good import is kept)."""
    info = payload.get("user_info") if isinstance(payload, dict) else None
    if not isinstance(info, dict):
        raise XtreamError("the login answer has no user_info")
    return UserInfo(
        auth=flex_bool(info.get("auth")),
        status=flex_str(info.get("status")) or "",
        exp_date=flex_int(info.get("exp_date")),
        max_connections=flex_int(info.get("max_connections")),
        active_cons=flex_int(info.get("active_cons")),
        is_trial=flex_bool(info.get("is_trial")),
        allowed_output_formats=_formats(info.get("allowed_output_formats")),
    )


def _formats(value: Any) -> tuple[str, ...] | None:
    if not isinstance(value, list):
        return None
    return tuple(f.lower() for v in value if (f := flex_str(v)))


@dataclass(frozen=True)
class LiveStream:
    """One live stream of an account, as the sync stores it in `xtream_channels`."""

    stream_id: int
    name: str
    epg_channel_id: str | None = None
    category: str | None = None
    icon: str | None = None


def _items(payload: Any) -> list[Any]:
    """A JSON list, or the values of an object some panels send instead of one."""
    if isinstance(payload, list):
        return payload
    if isinstance(payload, dict):
        return list(payload.values())
    raise XtreamError(f"expected a list, got {type(payload).__name__}")


def parse_categories(payload: Any) -> dict[str, str]:
    """category_id (as a string) -> category_name."""
    out: dict[str, str] = {}
    for item in _items(payload):
        if isinstance(item, dict):
            cid, name = flex_str(item.get("category_id")), flex_str(item.get("category_name"))
            if cid is not None and name is not None:
                out[cid] = name
    return out


def parse_live_streams(payload: Any, categories: Mapping[str, str]) -> list[LiveStream]:
    """The live streams; entries without a stream id, and radio, are left out."""
    return parse_live_streams_report(payload, categories)[0]


def parse_live_streams_report(
    payload: Any, categories: Mapping[str, str]
) -> tuple[list[LiveStream], list[tuple[str, str]]]:
    """The live streams, and (reason, name) of each entry left out: radio, unparseable, duplicate."""
    out: list[LiveStream] = []
    skips: list[tuple[str, str]] = []
    seen: set[int] = set()
    for item in _items(payload):
        if not isinstance(item, dict):
            skips.append(("unparseable", "(not an object)"))
            continue
        name = flex_str(item.get("name")) or "(no name)"
        if item.get("stream_type") == "radio_streams":
            skips.append(("radio", name))
            continue
        sid = flex_int(item.get("stream_id"))
        if sid is None or sid < 0:
            skips.append(("unparseable", name))
            continue
        if sid in seen:
            skips.append(("duplicate", name))
            continue
        seen.add(sid)
        cid = flex_str(item.get("category_id"))
        if cid is None and isinstance(item.get("category_ids"), list) and item["category_ids"]:
            cid = flex_str(item["category_ids"][0])
        out.append(
            LiveStream(
                stream_id=sid,
                name=flex_str(item.get("name")) or str(sid),
                epg_channel_id=flex_str(item.get("epg_channel_id")),
                category=categories.get(cid, cid) if cid is not None else None,
                icon=flex_str(item.get("stream_icon")),
            )
        )
    return out, skips


@dataclass
class XtreamClient:
    """player_api.php of one account. Blocking; every error is an XtreamError with a scrubbed text."""

    base_url: str
    username: str = field(repr=False)
    password: str = field(repr=False)
    user_agent: str = "VLC/3.0.20 LibVLC/3.0.20"
    timeout_s: float = API_TIMEOUT_S
    tls_verify: bool = True  # for an https:// panel (relay.sources.tls)
    ca_file: str | None = None

    @classmethod
    def for_account(cls, account: AccountConfig, base_dir: Path) -> XtreamClient:
        return cls(
            account.url,
            account.username,
            account.password,
            user_agent=account.user_agent,
            tls_verify=account.tls_verify,
            ca_file=account_ca_file(account, base_dir),
        )

    def user_info(self) -> UserInfo:
        return parse_user_info(self._get())

    def live_categories(self) -> dict[str, str]:
        return parse_categories(self._get(action="get_live_categories"))

    def live_streams(self, categories: Mapping[str, str] | None = None) -> list[LiveStream]:
        return parse_live_streams(self._get(action="get_live_streams"), categories or {})

    def live_streams_report(
        self, categories: Mapping[str, str] | None = None
    ) -> tuple[list[LiveStream], list[tuple[str, str]]]:
        return parse_live_streams_report(self._get(action="get_live_streams"), categories or {})

    def scrub(self, text: str) -> str:
        """`text` without this account's username or password in any encoding."""
        return scrub(text, (self.username, self.password))

    def _get(self, **params: str) -> Any:
        query = urllib.parse.urlencode({"username": self.username, "password": self.password, **params})
        url = f"{self.base_url}/player_api.php?{query}"
        what = redact_url(url)
        try:
            with open_url(
                url, self.user_agent, timeout=self.timeout_s, tls_verify=self.tls_verify, ca_file=self.ca_file
            ) as resp:
                gzipped = (resp.headers.get("Content-Encoding") or "").lower() == "gzip"
                body = resp.read1(CHUNK)
                if not _looks_like_json(body, gzipped):  # an HTML page, a video stream: hang up now
                    raise XtreamError(self.scrub(f"{what}: the answer is not JSON"))
                body += resp.read(MAX_ANSWER_BYTES + 1 - len(body))
        except urllib.error.HTTPError as e:
            e.close()
            if e.code == 404:
                raise NoXtreamApi(self.scrub(f"{what}: HTTP 404 (no player_api here)")) from None
            raise XtreamError(self.scrub(f"{what}: HTTP {e.code}")) from None
        except urllib.error.URLError as e:
            raise XtreamError(self.scrub(f"{what}: {_reason(e.reason)}")) from None
        except OSError as e:  # timeouts (TimeoutError is an OSError) and resets while reading the body
            raise XtreamError(self.scrub(f"{what}: {_reason(e)}")) from None
        except (http.client.HTTPException, ValueError) as e:  # broken framing
            raise XtreamError(self.scrub(f"{what}: broken HTTP answer ({type(e).__name__})")) from None
        if len(body) > MAX_ANSWER_BYTES:
            raise XtreamError(self.scrub(f"{what}: answer larger than {MAX_ANSWER_BYTES >> 20} MB"))
        if gzipped:
            try:
                body = gzip.decompress(body)
            except (OSError, EOFError):
                raise XtreamError(self.scrub(f"{what}: broken gzip answer")) from None
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            raise XtreamError(self.scrub(f"{what}: the answer is not JSON")) from None


def _looks_like_json(first: bytes, gzipped: bool) -> bool:
    """Whether an answer's first bytes can start JSON (an object or a list)."""
    if gzipped:
        try:
            first = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(first, 64)
        except zlib.error:
            return False
    text = first.lstrip(b" \t\r\n").removeprefix(b"\xef\xbb\xbf")
    return not text or text[:1] in (b"{", b"[")


def _reason(reason: object) -> str:
    if isinstance(reason, TimeoutError):
        return "timed out"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    return str(reason) or type(reason).__name__
