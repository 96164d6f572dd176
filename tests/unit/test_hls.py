"""The HLS playlist follower and AES-128 decryption, without sockets: playlist text and time in."""

from __future__ import annotations

import pytest

from relay.core.hls import (
    HlsFailure,
    PlaylistFollower,
    Variant,
    choose_variants,
    iv_from,
    looks_like_playlist,
)
from relay.core.hls_crypto import DecryptError, decrypt_segment, encrypt_segment

BASE = "http://h/live/ch.m3u8"


def media(
    first: int, count: int, *, target: int = 2, extra: str = "", tags: dict[int, str] | None = None
) -> str:
    lines = [
        "#EXTM3U",
        "#EXT-X-VERSION:3",
        f"#EXT-X-TARGETDURATION:{target}",
        f"#EXT-X-MEDIA-SEQUENCE:{first}",
    ]
    if extra:
        lines.append(extra)
    for seq in range(first, first + count):
        if tags and seq in tags:
            lines.append(tags[seq])
        lines += [f"#EXTINF:{target}.000,", f"seg{seq}.ts"]
    return "\n".join(lines) + "\n"


def follower(**kw) -> PlaylistFollower:
    return PlaylistFollower(max_bandwidth=kw.pop("max_bandwidth", None), stall_s=kw.pop("stall_s", 5.0), **kw)


def drain(f: PlaylistFollower) -> list[int]:
    out = []
    while (s := f.next_segment()) is not None:
        out.append(s.seq)
    return out


# ---- reload timing (RFC 8216 §6.3.4) ----------------------------------------------------------


def test_reload_one_target_duration_after_the_load_began_when_changed_half_when_unchanged():
    f = follower()
    f.playlist(media(0, 6, target=4), BASE, began=10.0, now=10.3)
    assert f.reload_at == pytest.approx(14.0)  # from when the load began, not when it arrived
    f.playlist(media(0, 6, target=4), BASE, began=14.0, now=14.2)
    assert f.reload_at == pytest.approx(16.0)  # unchanged: half the target duration
    f.playlist(media(1, 6, target=4), BASE, began=16.0, now=16.1)
    assert f.reload_at == pytest.approx(20.0)


# ---- where a session starts, and never replaying ----------------------------------------------


def test_starts_three_target_durations_from_the_end():
    f = follower()
    f.playlist(media(100, 10), BASE, 0.0, 0.0)
    assert drain(f) == [107, 108, 109]  # 3 x 2 s before the end


def test_short_playlist_starts_at_its_first_segment():
    f = follower()
    f.playlist(media(5, 2), BASE, 0.0, 0.0)
    assert drain(f) == [5, 6]


def test_ext_x_start_offset_wins_over_the_default_edge():
    f = follower()
    f.playlist(media(0, 10, extra="#EXT-X-START:TIME-OFFSET=-2.5"), BASE, 0.0, 0.0)
    assert drain(f) == [8, 9]  # 2.5 s before the end of a 20 s window: inside segment 8
    g = follower()
    g.playlist(media(0, 10, extra="#EXT-X-START:TIME-OFFSET=4"), BASE, 0.0, 0.0)
    assert drain(g)[0] == 2


def test_reload_queues_only_new_segments_never_a_replay():
    f = follower()
    f.playlist(media(0, 6), BASE, 0.0, 0.0)
    assert drain(f) == [3, 4, 5]
    f.playlist(media(1, 6), BASE, 2.0, 2.0)
    assert drain(f) == [6]
    f.playlist(media(1, 6), BASE, 3.0, 3.0)  # unchanged
    assert drain(f) == []
    f.playlist(media(0, 6), BASE, 4.0, 4.0)  # a stale cache answers an older window
    assert drain(f) == []
    assert f.skipped == 0


def test_segments_that_left_the_window_unfetched_are_counted_and_mark_a_gap():
    f = follower()
    f.playlist(media(0, 6), BASE, 0.0, 0.0)
    drain(f)
    f.playlist(media(10, 6), BASE, 20.0, 20.0)  # 6..9 slid out while we were away
    assert f.skipped == 4
    segs = [f.next_segment() for _ in range(6)]
    assert [s.seq for s in segs] == list(range(10, 16))
    assert segs[0].discontinuity and not any(s.discontinuity for s in segs[1:])


# ---- discontinuities --------------------------------------------------------------------------


def test_discontinuity_marks_the_segment_after_it_but_not_the_first_played():
    f = follower()
    f.playlist(media(0, 6, tags={3: "#EXT-X-DISCONTINUITY"}), BASE, 0.0, 0.0)
    first = f.next_segment()
    assert first.seq == 3 and not first.discontinuity  # where we start is a start
    f.playlist(media(1, 6, tags={3: "#EXT-X-DISCONTINUITY", 6: "#EXT-X-DISCONTINUITY"}), BASE, 2, 2)
    segs = [f.next_segment() for _ in range(3)]
    assert [(s.seq, s.discontinuity) for s in segs] == [(4, False), (5, False), (6, True)]
    assert f.discontinuities == 1


# ---- variants ---------------------------------------------------------------------------------

MASTER = """#EXTM3U
#EXT-X-STREAM-INF:BANDWIDTH=800000,RESOLUTION=640x360
low/index.m3u8
#EXT-X-STREAM-INF:BANDWIDTH=5000000,RESOLUTION=1920x1080
hd/index.m3u8
#EXT-X-STREAM-INF:BANDWIDTH=2000000,RESOLUTION=1280x720
mid/index.m3u8
"""


def test_master_picks_the_highest_bandwidth_under_the_cap_and_keeps_the_rest_in_order():
    f = follower(max_bandwidth=3_000_000)
    assert f.playlist(MASTER, "http://h/live/master.m3u8", 0, 0) == "http://h/live/mid/index.m3u8"
    assert f.variant_failed() == "http://h/live/low/index.m3u8"
    assert f.variant_failed() == "http://h/live/hd/index.m3u8"  # over the cap: only as a last resort
    assert f.variant_failed() is None


def test_master_without_a_cap_picks_the_best_and_below_every_variant_the_first():
    assert follower().playlist(MASTER, "http://h/m.m3u8", 0, 0) == "http://h/hd/index.m3u8"
    vs = [Variant("a", 900), Variant("b", 800)]
    assert choose_variants(vs, 100)[0].url == "a"  # nothing fits: the first listed


def test_a_variant_that_is_a_master_again_is_an_error():
    f = follower()
    f.playlist(MASTER, "http://h/m.m3u8", 0, 0)
    with pytest.raises(HlsFailure, match="master"):
        f.playlist(MASTER, "http://h/hd/index.m3u8", 0, 0)


# ---- AES-128 ----------------------------------------------------------------------------------


def test_iv_comes_from_the_tag_or_the_media_sequence_number():
    key_tag = '#EXT-X-KEY:METHOD=AES-128,URI="k.bin"'
    f = follower()
    f.playlist(media(41, 2, extra=key_tag), BASE, 0, 0)
    s = f.next_segment()
    assert s.key_url == "http://h/live/k.bin" and s.iv == (41).to_bytes(16, "big")
    g = follower()
    g.playlist(media(41, 2, extra=key_tag + ",IV=0x000102030405060708090a0b0c0d0e0f"), BASE, 0, 0)
    assert g.next_segment().iv == bytes(range(16))
    assert iv_from("0x01", 0) == b"\0" * 15 + b"\x01"


def test_clear_segments_have_no_key_and_other_methods_fail():
    f = follower()
    f.playlist(media(0, 2), BASE, 0, 0)
    assert f.next_segment().key_url is None
    with pytest.raises(HlsFailure, match="SAMPLE-AES"):
        follower().playlist(media(0, 2, extra='#EXT-X-KEY:METHOD=SAMPLE-AES,URI="k"'), BASE, 0, 0)


def test_aes_round_trip_and_wrong_key():
    key, iv = bytes(range(16)), (7).to_bytes(16, "big")
    plain = b"\x47" + bytes(187) * 1 + b"x" * 500
    sealed = encrypt_segment(plain, key, iv)
    assert sealed != plain and decrypt_segment(sealed, key, iv) == plain
    with pytest.raises(DecryptError):
        decrypt_segment(sealed[:-1], key, iv)
    with pytest.raises(DecryptError):
        decrypt_segment(sealed, key[:8], iv)


# ---- failures ---------------------------------------------------------------------------------


def test_endlist_on_a_live_channel_is_a_stream_error():
    with pytest.raises(HlsFailure) as e:
        follower().playlist(media(0, 3, extra="") + "#EXT-X-ENDLIST\n", BASE, 0, 0)
    assert e.value.reason == "StreamError" and "ENDLIST" in e.value.detail


def test_garbage_fmp4_and_stall():
    with pytest.raises(HlsFailure, match="not an M3U"):
        follower().playlist("<html><body>Too many connections</body></html>", BASE, 0, 0)
    assert not looks_like_playlist(b"\x47\x40\x00") and looks_like_playlist(b"\xef\xbb\xbf\n#EXTM3U\n")
    with pytest.raises(HlsFailure, match="fMP4"):
        follower().playlist(media(0, 2, extra='#EXT-X-MAP:URI="init.mp4"'), BASE, 0, 0)
    f = follower(stall_s=1.0)
    f.playlist(media(0, 4), BASE, 0.0, 0.0)
    f.playlist(media(0, 4), BASE, 2.0, 2.0)  # unchanged: not advancing since t=0
    f.check(2.9)  # the target duration (2 s) plus stall_s (1 s) not yet over
    with pytest.raises(HlsFailure) as e:
        f.check(3.1)
    assert e.value.reason == "StreamStall"


def test_a_segment_may_fail_once_then_it_ends_the_stream():
    f = follower()
    f.playlist(media(0, 3), BASE, 0, 0)
    s = f.next_segment()
    f.segment_failed(s)
    again = f.next_segment()
    assert again == s  # retried first, before the ones after it
    with pytest.raises(HlsFailure, match="failed twice"):
        f.segment_failed(again)
