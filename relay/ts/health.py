"""Content health of the current upstream: is what flows a program a viewer can watch? Sans-IO.

A stall (no bytes) is the failover machine's business (`stall_timeout_s`). This module judges an
upstream whose bytes keep coming:
- NoMedia: neither a video nor an audio PES started for `no_media_s` while its packets kept coming —
  only null packets, a PAT whose PMT never comes, a PMT whose PIDs never arrive, or mid-stream only
  PSI/null packets. Such a "zombie" answers 200 and sends valid TS, so nothing else would ever fail it.
  "Kept coming" means a packet within the last `no_media_s / 3` (1 s by default): a paused client or a
  silent provider is not judged here.
- NoVideo: the program had video and the current upstream's video PID is silent for `no_video_s`
  while audio flows, or its PMT has no video stream.
The times are the session's clock as the Splicer was fed (`now`); PES starts are seen by the Splicer.
"""

from __future__ import annotations

from relay.ts.program import UpstreamState

NO_VIDEO = "NoVideo"
NO_MEDIA = "NoMedia"


def no_media(src: UpstreamState, now: float, no_media_s: float) -> bool:
    """No video or audio PES for `no_media_s` since the upstream's first packet or its last PES,
    while its packets still come."""
    if src.t0 is None or src.fed_at is None or now - src.fed_at > no_media_s / 3:
        return False
    seen = [t for t in (src.video_seen, src.audio_seen) if t is not None]
    since = max(seen) if seen else src.t0
    return now - since >= no_media_s


def no_video(src: UpstreamState, now: float, no_video_s: float, had_video: bool) -> bool:
    """The video the program had is gone while audio flows (or the upstream's PMT has none)."""
    if src.program is None:
        return False
    if not src.program.has_video:
        return had_video
    if src.audio_seen is None or now - src.audio_seen > no_video_s:
        return False  # no audio either: a stall or NoMedia, not this check's business
    since = src.video_seen if src.video_seen is not None else src.t0
    return since is not None and now - since >= no_video_s


def content_health(
    src: UpstreamState, now: float, no_video_s: float, no_media_s: float, had_video: bool
) -> str | None:
    """The current upstream's content failure (NoMedia first: it says more), or None."""
    if no_media(src, now, no_media_s):
        return NO_MEDIA
    if no_video(src, now, no_video_s, had_video):
        return NO_VIDEO
    return None
