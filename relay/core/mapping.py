"""Automatic mapping: which provider streams carry which guide channel, in which order.

Pure functions over plain rows: no I/O, no clock, so every rule is a three-line test.

The rules, in order:
1. A stream belongs to the guide channel whose id equals its `epg_channel_id` / `tvg-id` (ignoring
   case). Panels share one `epg_channel_id` across a channel's FHD/HD/SD variants (protocols.md §2.2).
2. Otherwise to the guide channel whose normalised display name equals the stream's normalised name:
   case, accents, punctuation, quality marks (4K/UHD/FHD/HD/SD/HEVC...) and country prefixes ("UK:",
   "US|", "|UK|", "[FR]") do not count. A timeshift mark ("+1") does: "Channel 4 +1" shows other
   programmes than "Channel 4", so it is another channel. When two guide channels share the
   normalised name, the one whose name carries no quality mark takes it; if that does not settle
   it, the stream maps nowhere and is reported as ambiguous.
3. A channel's streams are ordered by the account order of the config, then by quality (4K > FHD >
   HD > unmarked > SD), then id matches before name matches: the first is primary, the rest backups.
4. A config channel that lists streams is never mapped automatically (config mappings win), a pair
   with a manual mapping is left to it, and a pair a person unmapped is not mapped again.
"""

from __future__ import annotations

import fnmatch
import re
import unicodedata
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import NamedTuple


class StreamRow(NamedTuple):
    """An imported provider stream (`xtream_channels` joined with its account); the store reads them."""

    key: int  # xtream_channels.id
    account: str
    stream_id: int
    name: str | None
    epg_channel_id: str | None
    category: str | None


QUALITY_ORDER = ("4K", "FHD", "HD", "", "SD")  # best first; "" = the name does not say
_QUALITY_TOKENS = {
    "4k": "4K",
    "uhd": "4K",
    "2160p": "4K",
    "fhd": "FHD",
    "1080p": "FHD",
    "1080i": "FHD",
    "fullhd": "FHD",
    "hd": "HD",
    "720p": "HD",
    "sd": "SD",
    "576p": "SD",
    "576i": "SD",
    "480p": "SD",
}
_NOISE_TOKENS = {"hevc", "h265", "h264", "hdr", "hdr10", "50fps", "60fps", "25fps", "vip"}
_COUNTRY = r"(?:[a-z]{2}|usa|can|aus|gbr|ger|deu|fra|esp|ita|nld|por|bra|mex|ind|ara|arb|lat|afr|exyu|ex-yu)"
_PREFIX = re.compile(
    rf"^\s*(?:[|\[(]\s*{_COUNTRY}\s*[|\])]|{_COUNTRY}\s*[:|]|{_COUNTRY}\s+-\s)\s*[|:\-]?\s*", re.IGNORECASE
)
_SUFFIX = re.compile(rf"\s*[\[(]\s*{_COUNTRY}\s*[\])]\s*$", re.IGNORECASE)
_TIMESHIFT = re.compile(r"(?:\+\s*|\bplus\s*)(\d{1,2})\s*(?:h\b|hours?\b)?", re.IGNORECASE)
_FULL_HD = re.compile(r"\bfull\s+hd\b", re.IGNORECASE)
_TOKEN = re.compile(r"[a-z0-9]+")


def _fold(text: str) -> str:
    """Lower case without accents: "Télé Zürich" -> "tele zurich"."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch)).casefold()


fold = _fold  # for the CLI's search: the same folding the matching uses


def _strip_country(name: str) -> str:
    previous = None
    while previous != name:  # "|UK| VIP: ..." has more than one prefix
        previous = name
        name = _PREFIX.sub("", name, count=1)
    return _SUFFIX.sub("", name)


@dataclass(frozen=True)
class NameKey:
    """A name reduced for matching: `key` without quality marks, `exact` with them."""

    key: str
    exact: str
    quality: str  # one of QUALITY_ORDER


def name_key(name: str) -> NameKey:
    """Normalise a channel or stream name: "UK: BBC One FHD" -> key "bbcone", quality "FHD"."""
    text = _FULL_HD.sub(" fullhd ", _strip_country(name))
    shift = ""
    m = _TIMESHIFT.search(text)
    if m is not None:
        shift = f"+{int(m.group(1))}"
        text = text[: m.start()] + " " + text[m.end() :]
    tokens = _TOKEN.findall(_fold(text.replace("&", " and ")))
    quality = ""
    kept: list[str] = []
    for tok in tokens:
        q = _QUALITY_TOKENS.get(tok)
        if q is not None:
            if not quality or QUALITY_ORDER.index(q) < QUALITY_ORDER.index(quality):
                quality = q
            continue
        if tok not in _NOISE_TOKENS:
            kept.append(tok)
    exact = "".join(t for t in tokens if t not in _NOISE_TOKENS) + shift
    return NameKey("".join(kept) + shift, exact, quality)


def quality_of(name: str | None) -> str:
    """4K, FHD, HD, SD from the name, or "" when it does not say."""
    return name_key(name).quality if name else ""


@dataclass(frozen=True)
class GuideChannel:
    id: str
    names: tuple[str, ...]  # display names, most canonical first


@dataclass(frozen=True)
class AutoMapping:
    channel_id: str
    stream_key: int  # xtream_channels.id
    priority: int
    primary: bool
    matched_by: str  # "id" or "name"


@dataclass
class MappingResult:
    mappings: list[AutoMapping] = field(default_factory=list)
    unmapped: list[StreamRow] = field(default_factory=list)  # streams no guide channel claims
    ambiguous: list[tuple[StreamRow, tuple[str, ...]]] = field(default_factory=list)

    def channels(self) -> set[str]:
        return {m.channel_id for m in self.mappings}


class _NameIndex:
    """Normalised guide names -> channel ids, for rule 2."""

    def __init__(self, channels: Iterable[GuideChannel]) -> None:
        self.exact: dict[str, set[str]] = defaultdict(set)  # quality marks included
        self.by_key: dict[str, set[str]] = defaultdict(set)
        self.plain: dict[str, set[str]] = defaultdict(set)  # channels whose name has no quality mark
        for ch in channels:
            for name in ch.names:
                k = name_key(name)
                if k.key:
                    self.exact[k.exact].add(ch.id)
                    self.by_key[k.key].add(ch.id)
                    if k.exact == k.key:
                        self.plain[k.key].add(ch.id)

    def find(self, name: str) -> tuple[str | None, tuple[str, ...]]:
        """(the channel, ()) or (None, the ids it could be): "BBC One HD" prefers a guide's
        "BBC One HD" to its "BBC One", and "BBC One FHD" the plain "BBC One"."""
        k = name_key(name)
        for index, key in ((self.exact, k.exact), (self.by_key, k.key), (self.plain, k.key)):
            ids = index.get(key, set())
            if len(ids) == 1:
                return next(iter(ids)), ()
        return None, tuple(sorted(self.by_key.get(k.key, set())))


def auto_map(
    channels: Sequence[GuideChannel],
    streams: Sequence[StreamRow],
    account_order: Sequence[str],
    *,
    fixed: AbstractSet[tuple[str, int]] = frozenset(),
    blocked: AbstractSet[tuple[str, str, int]] = frozenset(),
) -> MappingResult:
    """Map streams to `channels` by the module's rules; `fixed` pairs (config, manual) are skipped."""
    by_id = {ch.id.casefold(): ch.id for ch in channels}
    names = _NameIndex(channels)
    rank = {name: i for i, name in enumerate(account_order)}
    result = MappingResult()
    found: dict[str, list[tuple[tuple[int, int, int, str, int], StreamRow, str]]] = defaultdict(list)
    for s in streams:
        if not s.name and not s.epg_channel_id:
            continue  # a row a config mapping created before any sync: nothing to match on
        channel: str | None = by_id.get(s.epg_channel_id.casefold()) if s.epg_channel_id else None
        how = "id"
        if channel is None and s.name:
            channel, could_be = names.find(s.name)
            how = "name"
            if channel is None and could_be:
                result.ambiguous.append((s, could_be))
                continue
        if channel is None:
            result.unmapped.append(s)
            continue
        if (channel, s.key) in fixed or (channel, s.account, s.stream_id) in blocked:
            continue
        order = (
            rank.get(s.account, len(rank)),
            QUALITY_ORDER.index(quality_of(s.name)),
            0 if how == "id" else 1,
            s.name or "",
            s.stream_id,
        )
        found[channel].append((order, s, how))
    for channel, entries in found.items():
        entries.sort(key=lambda e: e[0])
        for prio, (_, s, how) in enumerate(entries):
            result.mappings.append(AutoMapping(channel, s.key, prio, prio == 0, how))
    return result


# ---- which guide channels become relay channels, and their numbers -----------------------------------


def select_channels(
    candidates: Iterable[GuideChannel],
    mapped: set[str],
    categories: Mapping[str, set[str]],
    *,
    include: Sequence[str] = (),
    groups: Sequence[str] = (),
    exclude: Sequence[str] = (),
) -> list[GuideChannel]:
    """The guide channels that become relay channels: mapped to a stream and, when `include` or
    `groups` is set, matching an include pattern (id or name) or carried in a listed category; never
    one whose id, name or category matches an `exclude` pattern."""
    out = []
    for ch in candidates:
        if ch.id not in mapped:
            continue
        labels = [ch.id, *ch.names]
        if exclude and any(
            matches(p, label) for p in exclude for label in (*labels, *categories.get(ch.id, ()))
        ):
            continue
        if not include and not groups:
            out.append(ch)
            continue
        if any(matches(p, label) for p in include for label in labels) or any(
            matches(p, cat) for p in groups for cat in categories.get(ch.id, ())
        ):
            out.append(ch)
    return out


def matches(pattern: str, value: str) -> bool:
    """A config pattern against an id, a name or a category, ignoring case and accents: a glob
    (* and ?, the whole value), or "re:REGEX" (searched anywhere in the value, its accents removed)."""
    if pattern.startswith("re:"):
        return re.search(pattern[3:], _fold(value), re.IGNORECASE) is not None  # re caches compiled ones
    return fnmatch.fnmatchcase(_fold(value), _fold(pattern))


def assign_numbers(
    channels: Sequence[GuideChannel],
    stored: Mapping[str, str | None],
    reserved: set[str],
    *,
    start: int,
) -> dict[str, str]:
    """Guide numbers that do not move: a channel keeps the number it had; a new one gets the next
    number above every number ever given (from `start`), in name order. `reserved` (the config's
    numbers) is never given; a stored number that collides with it is replaced."""
    taken = set(reserved)
    out: dict[str, str] = {}
    highest = start - 1
    for number in stored.values():
        if number is not None and number.isdigit():
            highest = max(highest, int(number))
    fresh: list[GuideChannel] = []
    for ch in channels:
        number = stored.get(ch.id)
        if number is not None and number not in taken:
            out[ch.id] = number
            taken.add(number)
        else:
            fresh.append(ch)
    for ch in sorted(fresh, key=lambda c: (name_key(c.names[0] if c.names else c.id).exact, c.id)):
        highest += 1
        while str(highest) in taken:
            highest += 1
        out[ch.id] = str(highest)
        taken.add(str(highest))
    return out
