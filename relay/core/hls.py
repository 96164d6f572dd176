"""Following an HLS live playlist, as a sans-IO state machine (RFC 8216).

The shell fetches; this module decides. It is fed each playlist body with the time its load began
and the time it arrived, and it answers with what to fetch next: a variant's media playlist, the
next segment (with its key and IV), or when the playlist is due again. It never reads a clock and
never touches a socket, so every rule below is a unit test.

The rules, in one place:
- A master playlist: the variant with the highest BANDWIDTH up to `max_bandwidth` (None: no cap),
  else the first listed. The follower stays on it; when it fails, the other variants are tried
  (best first) before the candidate is given up.
- Reload timing (§6.3.4): a target duration after the load *began*; half of it when the reload
  found the playlist unchanged.
- Start at the live edge: the segment that starts `live_edge` target durations (three, §6.3.3)
  before the end, or EXT-X-START's TIME-OFFSET when the playlist gives one.
- Never replay a segment (media sequence numbers only go up); never skip one silently: segments
  that left the window before they were fetched are counted (`skipped`), and the next one is marked
  a discontinuity, since its timestamps jump.
- EXT-X-DISCONTINUITY before a segment marks it (`Segment.discontinuity`): the splice treats it as
  a switch. The very first segment played is a start, not a discontinuity.
- A failure is an HlsFailure(reason, detail): a body that is not a playlist, a nested master,
  EXT-X-ENDLIST on a live channel, fMP4 segments (EXT-X-MAP: not supported, see the README), a key
  method other than AES-128, a segment that failed twice, and a playlist that stops advancing for
  `stall_s` past its target duration (StreamStall). `detail` is short and never holds a URL.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import m3u8

STREAM_ERROR = "StreamError"  # the names of relay.core.failover.Reason, which this module outlives
STREAM_STALL = "StreamStall"
SIGNATURE = b"#EXTM3U"


class HlsFailure(Exception):
    """The stream cannot go on: `reason` is a failover Reason's value, `detail` safe to log."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Segment:
    """One media segment to fetch and relay, in order."""

    seq: int  # media sequence number
    url: str
    duration: float
    discontinuity: bool = False  # the timeline breaks before it: splice it like a switch
    key_url: str | None = None  # AES-128: the key's URL; None for clear segments
    iv: bytes | None = None  # AES-128: 16 bytes, from the tag or the media sequence number


@dataclass(frozen=True)
class Variant:
    url: str
    bandwidth: int


def looks_like_playlist(head: bytes) -> bool:
    """Whether a body's first bytes are an M3U playlist's (a BOM and blank lines allowed)."""
    return head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(SIGNATURE)


def choose_variants(variants: list[Variant], max_bandwidth: int | None) -> list[Variant]:
    """The variants in the order to try them: the chosen one first, then the others best first."""
    if not variants:
        return []
    fitting = [v for v in variants if max_bandwidth is None or v.bandwidth <= max_bandwidth]
    fitting.sort(key=lambda v: -v.bandwidth)  # stable: equal bandwidths keep the listed order
    first = fitting[0] if fitting else variants[0]
    rest = [v for v in fitting if v is not first] + [
        v for v in variants if v not in fitting and v is not first
    ]
    return [first, *rest]


def iv_from(tag_iv: str | None, seq: int) -> bytes:
    """The IV of an AES-128 segment: EXT-X-KEY's IV, else the media sequence number (§5.2)."""
    if tag_iv:
        text = tag_iv[2:] if tag_iv[:2].lower() == "0x" else tag_iv
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            raise HlsFailure(STREAM_ERROR, "EXT-X-KEY IV is not hexadecimal") from None
        if len(raw) > 16:
            raise HlsFailure(STREAM_ERROR, "EXT-X-KEY IV is longer than 128 bits")
        return raw.rjust(16, b"\0")
    return seq.to_bytes(16, "big")


class PlaylistFollower:
    """One HLS candidate: feed it playlists, take segments from it, reload it when it says."""

    def __init__(self, *, max_bandwidth: int | None, stall_s: float, live_edge: float = 3.0) -> None:
        self.max_bandwidth = max_bandwidth
        self.stall_s = stall_s
        self.live_edge = live_edge
        self.variants: list[Variant] = []  # left to try, after the current one
        self.media_url: str | None = None  # the media playlist being followed
        self.target_duration = 0.0
        self.reload_at: float | None = None  # when the media playlist is due again
        self.next_seq: int | None = None  # the first segment not yet queued
        self.queue: deque[Segment] = deque()
        self.skipped = 0  # segments that left the window before they were fetched, in all
        self.discontinuities = 0
        self._text: str | None = None
        self._changed_at = 0.0
        self._gap = False  # the next queued segment follows a skip
        self._retried: set[int] = set()

    # ---- inputs -----------------------------------------------------------------------------

    def playlist(self, text: str, url: str, began: float, now: float) -> str | None:
        """A playlist body arrived (`url`: where from, after redirects). Returns the URL of a
        variant to load next (it was a master playlist), else None (its segments are queued)."""
        if not looks_like_playlist(text[:64].encode("utf-8", "replace")):
            raise HlsFailure(STREAM_ERROR, "not an M3U playlist")
        try:
            pl = m3u8.loads(text, uri=url)
        except Exception as e:  # the parser's own errors are many and undocumented
            raise HlsFailure(STREAM_ERROR, f"unreadable playlist ({type(e).__name__})") from None
        if pl.is_variant:
            if self.media_url is not None or self.variants:
                raise HlsFailure(STREAM_ERROR, "a variant is itself a master playlist")
            found = [
                Variant(p.absolute_uri, int(p.stream_info.bandwidth or 0))
                for p in pl.playlists
                if p.absolute_uri
            ]
            order = choose_variants(found, self.max_bandwidth)
            if not order:
                raise HlsFailure(STREAM_ERROR, "master playlist lists no variant")
            self.media_url, self.variants = order[0].url, order[1:]
            return self.media_url
        self.media_url = self.media_url or url
        self._media(pl, text, began, now)
        return None

    def variant_failed(self) -> str | None:
        """The current variant's playlist failed: the next variant's URL, or None (give up)."""
        if not self.variants:
            return None
        self.media_url = self.variants.pop(0).url
        self._text, self.reload_at = None, None
        return self.media_url

    def next_segment(self) -> Segment | None:
        return self.queue.popleft() if self.queue else None

    def segment_failed(self, seg: Segment) -> None:
        """A segment fetch failed: it goes first again once; a second failure ends the stream."""
        if seg.seq in self._retried:
            raise HlsFailure(STREAM_ERROR, f"segment {seg.seq} failed twice")
        self._retried.add(seg.seq)
        self.queue.appendleft(seg)

    def segment_done(self, seg: Segment) -> None:
        self._retried.discard(seg.seq)

    def check(self, now: float) -> None:
        """StreamStall when the playlist has not advanced for `stall_s` past its target duration."""
        if self._text is not None and now - self._changed_at > self.target_duration + self.stall_s:
            raise HlsFailure(STREAM_STALL, "the live playlist stopped advancing")

    # ---- internals --------------------------------------------------------------------------

    def _media(self, pl: m3u8.M3U8, text: str, began: float, now: float) -> None:
        if pl.is_endlist:
            raise HlsFailure(STREAM_ERROR, "EXT-X-ENDLIST on a live channel")
        segments = pl.segments
        if any(s.init_section is not None for s in segments):
            raise HlsFailure(STREAM_ERROR, "fMP4/CMAF segments (EXT-X-MAP) are not supported")
        self.target_duration = float(pl.target_duration or 0) or max(
            (float(s.duration or 0) for s in segments), default=1.0
        )
        changed = text != self._text
        first_load = self._text is None
        self._text = text
        if changed:
            self._changed_at = now
        self.reload_at = began + (self.target_duration if changed else self.target_duration / 2)
        if not segments:
            return
        base = int(pl.media_sequence or 0)
        start = 0
        if self.next_seq is None:
            start = self._live_edge(pl)
        else:
            start = self.next_seq - base
            if start < 0:  # the window moved past segments we never fetched: count them, mark the gap
                self.skipped += -start
                self._gap = True
                start = 0
        for i in range(start, len(segments)):
            s = segments[i]
            seq = base + i
            self.queue.append(self._segment(s, seq, first=first_load and i == start))
        self.next_seq = max(self.next_seq or 0, base + len(segments))

    def _segment(self, s: m3u8.Segment, seq: int, *, first: bool) -> Segment:
        disc = not first and (bool(s.discontinuity) or self._gap)
        self._gap = False
        if disc:
            self.discontinuities += 1
        key = s.key
        method = (key.method or "NONE").upper() if key is not None else "NONE"
        if method == "NONE":
            return Segment(seq, s.absolute_uri, float(s.duration or 0), disc)
        if method != "AES-128":
            raise HlsFailure(STREAM_ERROR, f"EXT-X-KEY METHOD={method} is not supported")
        if not key.absolute_uri:
            raise HlsFailure(STREAM_ERROR, "EXT-X-KEY without a URI")
        return Segment(
            seq, s.absolute_uri, float(s.duration or 0), disc, key.absolute_uri, iv_from(key.iv, seq)
        )

    def _live_edge(self, pl: m3u8.M3U8) -> int:
        """The index of the first segment to play: EXT-X-START, else `live_edge` targets from the end."""
        durations = [float(s.duration or 0) for s in pl.segments]
        start = getattr(pl, "start", None)
        offset = getattr(start, "time_offset", None)
        if offset is not None:
            total = sum(durations)
            at = float(offset) if offset >= 0 else total + float(offset)
            at = min(max(at, 0.0), total)
            t = 0.0
            for i, d in enumerate(durations):
                if t + d > at:
                    return i
                t += d
            return len(durations) - 1
        want = self.live_edge * self.target_duration
        t = 0.0
        for i in range(len(durations) - 1, -1, -1):
            t += durations[i]
            if t >= want - 1e-6:
                return i
        return 0
