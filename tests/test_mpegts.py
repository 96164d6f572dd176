"""relay.ts: packet alignment and the seamless splice (issue 4), with hand-built packets and real media.

The builders below make small but genuine programs (PAT, PMT, video PES with PCR, bounded audio PES), so
each acceptance criterion of the splice is a few lines: Given an upstream, When the session switches,
Then the client sees one continuous program.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.ts import (
    NULL_PID,
    PTS_MODULUS,
    ElementaryStream,
    PacketAligner,
    ProgramMap,
    Splicer,
    build_pat_section,
    build_pmt_section,
    crc32_mpeg2,
    packetize_section,
    parse_pat,
    parse_pmt,
    read_pcr_base,
    read_timestamp,
    write_timestamp,
)
from tests.media import MEDIA_DIR, require_ffmpeg

TS = 188

# --- builders -------------------------------------------------------------------------------------------


def pcr_field(base: int, ext: int = 0) -> bytes:
    head = [base >> 25 & 0xFF, base >> 17 & 0xFF, base >> 9 & 0xFF, base >> 1 & 0xFF]
    return bytes([*head, (base & 1) << 7 | 0x7E | ext >> 8, ext & 0xFF])


def ts_packet(
    pid: int,
    payload: bytes = b"",
    cc: int = 0,
    *,
    pusi: bool = False,
    pcr: int | None = None,
    rai: bool = False,
    di: bool = False,
    af_only: bool = False,
) -> bytes:
    """One 188-byte packet; an adaptation field carries PCR/flags and any stuffing the payload leaves."""
    flags = (0x80 if di else 0) | (0x40 if rai else 0) | (0x10 if pcr is not None else 0)
    af = b""
    if flags or pcr is not None:
        af = bytes([flags]) + (pcr_field(pcr) if pcr is not None else b"")
    if af_only:
        body = af or b"\x00"
        field_ = bytes([183]) + body + b"\xff" * (182 - len(body))
        return bytes([0x47, pid >> 8, pid & 0xFF, 0x20 | (cc & 0x0F)]) + field_
    assert len(payload) <= 184
    has_af = bool(af) or len(payload) < 184
    if has_af:
        stuffing = 184 - len(payload) - 1 - len(af)
        if not af and stuffing > 0:
            af, stuffing = b"\x00", stuffing - 1
        assert stuffing >= 0, "payload too long for this adaptation field"
        field_ = bytes([len(af) + stuffing]) + af + b"\xff" * stuffing
    else:
        field_ = b""
    afc = 0x30 if has_af else 0x10
    head = bytes([0x47, (0x40 if pusi else 0) | (pid >> 8), pid & 0xFF, afc | (cc & 0x0F)])
    packet = head + field_ + payload
    assert len(packet) == TS
    return packet


def ts_field(prefix: int, value: int) -> bytes:
    b = bytearray([prefix << 4, 0, 0, 0, 0])
    write_timestamp(b, 0, value)
    return bytes(b)


def pes(
    stream_id: int, data: bytes, pts: int | None = None, dts: int | None = None, bounded: bool = False
) -> bytes:
    fields, flags = b"", 0
    if pts is not None:
        flags = 0x80 if dts is None else 0xC0
        fields = ts_field(0x2 if dts is None else 0x3, pts)
        if dts is not None:
            fields += ts_field(0x1, dts)
    body = bytes([0x80, flags, len(fields)]) + fields + data
    length = len(body) if bounded else 0
    return b"\x00\x00\x01" + bytes([stream_id]) + length.to_bytes(2, "big") + body


H264_KEY = b"\x00\x00\x00\x01\x09\x10\x00\x00\x00\x01\x67\x42\x00\x1e\xaa\x00\x00\x01\x65\x88"
H264_DELTA = b"\x00\x00\x00\x01\x09\x30\x00\x00\x00\x01\x41\x9a"
MPEG2_KEY = b"\x00\x00\x01\xb3\x14\x00\xf0\x13\x00\x00\x01\x00\x00\x0f\xff\xf8"  # sequence header, I picture
MPEG2_DELTA = b"\x00\x00\x01\x00\x00\x57\xff\xf8"  # P picture


@dataclass
class Upstream:
    """A synthetic upstream program: PAT/PMT, video frames of `video_packets` packets, one audio PES each."""

    video_pid: int = 0x100
    audio_pid: int = 0x101
    pmt_pid: int = 0x1000
    program_number: int = 1
    video_type: int = 0x1B
    audio_type: int = 0x0F
    t0: int = 900_000
    frame: int = 3600
    gop: int = 5
    rai: bool = True
    video_packets: int = 3
    key_packets: int | None = None  # keyframes this many packets (default: video_packets)
    psi_every: int = 5
    extra: tuple[ElementaryStream, ...] = ()  # more PMT rows (no packets)
    cc: dict[int, int] = field(default_factory=dict)

    def _next_cc(self, pid: int) -> int:
        cc = self.cc.get(pid, -1) + 1 & 0x0F
        self.cc[pid] = cc
        return cc

    def program(self) -> ProgramMap:
        streams = (
            ElementaryStream(self.video_type, self.video_pid),
            ElementaryStream(self.audio_type, self.audio_pid),
        )
        if self.video_type == 0:
            streams = streams[1:]
        streams += self.extra
        return ProgramMap(
            self.program_number, self.video_pid if self.video_type else self.audio_pid, b"", streams
        )

    def psi(self) -> list[bytes]:
        out = []
        for pid, section in (
            (0, build_pat_section(1, [(self.program_number, self.pmt_pid)])),
            (self.pmt_pid, build_pmt_section(self.program())),
        ):
            for p in packetize_section(pid, section, self._next_cc(pid)):
                out.append(bytes(p))
        return out

    def video(self, f: int) -> list[bytes]:
        key = f % self.gop == 0
        es = (MPEG2_KEY if key else MPEG2_DELTA) if self.video_type == 2 else H264_KEY if key else H264_DELTA
        dts = (self.t0 + f * self.frame) % PTS_MODULUS
        count = self.key_packets if key and self.key_packets else self.video_packets
        data = pes(
            0xE0,
            es + bytes([f & 0xFF]) * (count * 184),
            (dts + 2 * self.frame) % PTS_MODULUS,
            dts,
        )
        chunks = [
            data[:170],
            *[data[i : i + 184] for i in range(170, len(data), 184)][: count - 1],
        ]
        out = []
        for i, chunk in enumerate(chunks):
            pid = self.video_pid
            if i == 0:
                pcr = (dts - 1800) % PTS_MODULUS
                out.append(
                    ts_packet(pid, chunk, self._next_cc(pid), pusi=True, pcr=pcr, rai=key and self.rai)
                )
            else:
                out.append(ts_packet(pid, chunk, self._next_cc(pid)))
        return out

    def audio(self, f: int) -> list[bytes]:
        pts = (self.t0 + f * self.frame + 900) % PTS_MODULUS
        data = pes(0xC0, bytes([0xF1, f & 0xFF]) * 100, pts, bounded=True)
        pid = self.audio_pid
        return [
            ts_packet(pid, data[:184], self._next_cc(pid), pusi=True),
            ts_packet(pid, data[184:], self._next_cc(pid)),
        ]

    def stream(self, frames: int, start: int = 0, *, video: bool = True) -> list[bytes]:
        out: list[bytes] = []
        for f in range(start, start + frames):
            if f % self.psi_every == 0:
                out += self.psi()
            if video and self.video_type:
                out += self.video(f)
            out += self.audio(f)
        return out


def B_upstream(**kw: object) -> Upstream:
    """A different provider: other PIDs, program_number, PMT PID and timestamps, same codecs."""
    args: dict[object, object] = dict(
        video_pid=0x1E1, audio_pid=0x1E2, pmt_pid=0x1E0, program_number=7, t0=5_000_000
    )
    args.update(kw)
    return Upstream(**args)  # type: ignore[arg-type]


# --- output inspection ----------------------------------------------------------------------------------


def join(out: list[bytes | memoryview]) -> bytes:
    return b"".join(bytes(x) for x in out)


def split(data: bytes) -> list[bytes]:
    assert len(data) % TS == 0
    return [data[i : i + TS] for i in range(0, len(data), TS)]


def pid_of(p: bytes) -> int:
    return ((p[1] & 0x1F) << 8) | p[2]


def payload_start(p: bytes) -> int:
    return 4 + (1 + p[4] if p[3] & 0x20 else 0)


def pes_times(p: bytes) -> tuple[int | None, int | None]:
    o = payload_start(p)
    if not p[1] & 0x40 or p[o : o + 3] != b"\x00\x00\x01":
        return None, None
    flags = p[o + 7] >> 6
    pts = read_timestamp(p, o + 9) if flags & 2 else None
    dts = read_timestamp(p, o + 14) if flags == 3 else pts
    return pts, dts


def pcr_of(p: bytes) -> int | None:
    if p[3] & 0x20 and p[4] >= 7 and p[5] & 0x10:
        return read_pcr_base(p, 6)
    return None


def cc_errors(packets: list[bytes]) -> list[str]:
    """ffmpeg's continuity rule: +1 on payload packets, same value on AF-only, exempt null PID and DI."""
    last: dict[int, int] = {}
    errors = []
    for n, p in enumerate(packets):
        pid = pid_of(p)
        if pid == NULL_PID:
            continue
        cc, payload, di = p[3] & 0x0F, p[3] & 0x10, p[3] & 0x20 and p[4] and p[5] & 0x80
        if pid in last and not di:
            expected = (last[pid] + (1 if payload else 0)) & 0x0F
            if cc != expected:
                errors.append(f"packet {n} pid {pid:#x}: expected {expected} got {cc}")
        last[pid] = cc
    return errors


def sections_on(packets: list[bytes], pid: int) -> list[bytes]:
    out = []
    for p in packets:
        if pid_of(p) == pid and p[1] & 0x40:
            o = payload_start(p)
            o += 1 + p[o]
            length = 3 + (((p[o + 1] & 0x0F) << 8) | p[o + 2])
            out.append(p[o : o + length])
    return out


def run(splicer: Splicer, packets: list[bytes], now: float = 0.0, chunk: int = 7) -> list[bytes]:
    out: list[bytes | memoryview] = []
    for i in range(0, len(packets), chunk):
        out += splicer.feed([b"".join(packets[i : i + chunk])], now)
    return split(join(out))


def video_dts(packets: list[bytes], pid: int) -> list[int]:
    return [d for p in packets if pid_of(p) == pid for d in [pes_times(p)[1]] if d is not None]


# --- CRC, sections --------------------------------------------------------------------------------------


def test_crc32_mpeg2_check_value() -> None:
    """CRC-32/MPEG-2 catalogue check value over "123456789"."""
    assert crc32_mpeg2(b"123456789") == 0x0376E6E7


def test_built_sections_round_trip_and_crc_is_zero_over_the_whole_section() -> None:
    program = ProgramMap(
        7,
        0x1E1,
        b"\x05\x04HDMV",
        (ElementaryStream(0x02, 0x1E1), ElementaryStream(0x03, 0x1E2, b"\x0a\x04eng\x00")),
    )
    pmt = build_pmt_section(program, version=3)
    assert crc32_mpeg2(pmt) == 0
    assert parse_pmt(pmt) == (program, 3)
    pat = build_pat_section(0x42, [(7, 0x1E0)])
    assert crc32_mpeg2(pat) == 0
    assert parse_pat(pat) == (0x42, 0, [(7, 0x1E0)])


# --- PacketAligner --------------------------------------------------------------------------------------


def test_aligned_input_comes_back_as_one_view_without_copy() -> None:
    data = b"".join(Upstream().stream(3))
    aligner = PacketAligner()
    out = aligner.feed(data)
    assert len(out) == 1 and out[0].obj is data and bytes(out[0]) == data
    assert aligner.synced and aligner.garbage_bytes == 0


def test_garbage_before_the_stream_is_counted_and_skipped() -> None:
    """Given an HTML error page then TS, When fed, Then the packets come out and the page is garbage."""
    html = b"<html><body>GGG 403 Forbidden GGGG</body></html>\n" * 3
    data = b"".join(Upstream().stream(3))
    aligner = PacketAligner()
    assert join(aligner.feed(html + data)) == data
    assert aligner.garbage_bytes == len(html)


def test_a_page_that_never_syncs_is_all_garbage() -> None:
    aligner = PacketAligner()
    page = b"<!DOCTYPE html>" + b"G" * 7 + b"x" * 20_000
    out = []
    for i in range(0, len(page), 1000):
        out += aligner.feed(page[i : i + 1000])
    assert out == [] and not aligner.synced
    assert aligner.garbage_bytes >= len(page) - 5 * TS


def test_resync_after_garbage_mid_stream_drops_the_cut_packet() -> None:
    """Given a packet cut short (60 bytes lost) mid-stream, Then it is dropped and sync returns after it."""
    packets = Upstream().stream(4)
    cut = 10
    data = b"".join(packets[:cut]) + packets[cut][:128] + b"".join(packets[cut + 1 :])
    aligner = PacketAligner()
    out = split(join(aligner.feed(data)))
    assert out == packets[:cut] + packets[cut + 1 :]
    assert aligner.synced and aligner.garbage_bytes > 0


def test_byte_by_byte_feeding_carries_over() -> None:
    data = b"".join(Upstream().stream(2))
    aligner = PacketAligner()
    out = []
    for i in range(len(data)):
        out += aligner.feed(data[i : i + 1])
    assert join(out) == data


@settings(max_examples=60, deadline=None)
@given(
    frames=st.integers(1, 6),
    cuts=st.lists(st.integers(1, 3000), max_size=12),
    garbage=st.lists(st.tuples(st.integers(0, 40), st.binary(min_size=1, max_size=300)), max_size=3),
)
def test_aligner_emits_only_whole_valid_packets_whatever_the_chunking(
    frames: int, cuts: list[int], garbage: list[tuple[int, bytes]]
) -> None:
    packets = Upstream().stream(frames)
    for at, junk in sorted(garbage, reverse=True):
        packets.insert(min(at, len(packets)), junk)
    data = b"".join(packets)
    aligner = PacketAligner(sync_packets=3)
    out: list[memoryview] = []
    pos = 0
    for step in cuts:
        out += aligner.feed(data[pos : pos + step])
        pos += step
    out += aligner.feed(data[pos:])
    blob = join(out)
    assert len(blob) % TS == 0
    assert blob[::TS] == b"\x47" * (len(blob) // TS)
    if not garbage:
        assert blob == data


# --- Splicer: entry, remap, PSI -------------------------------------------------------------------------


def test_first_upstream_enters_with_pat_pmt_then_a_keyframe() -> None:
    """Given an upstream joined mid-GOP, Then output starts PAT, PMT, then the video keyframe PES."""
    up = Upstream()
    splicer = Splicer()
    out = run(splicer, up.stream(12, start=2))
    assert splicer.entered
    assert [pid_of(p) for p in out[:3]] == [0, 0x1000, 0x100]
    assert out[2][3] & 0x20 and out[2][5] & 0x40  # random_access_indicator kept
    assert pes_times(out[2])[1] == up.t0 + 5 * up.frame  # frame 5 is the first keyframe; timeline untouched
    assert splicer.dropped_packets > 0


def test_rewritten_pat_pmt_have_valid_crc_and_keep_the_first_pids() -> None:
    splicer = Splicer()
    run(splicer, Upstream().stream(6))
    splicer.switch(1.0)
    out = run(splicer, B_upstream().stream(11), now=1.0)
    pats, pmts = sections_on(out, 0), sections_on(out, 0x1000)
    assert pats and pmts and not sections_on(out, 0x1E0)
    assert all(crc32_mpeg2(s) == 0 for s in pats + pmts)
    assert parse_pat(pats[-1])[2] == [(1, 0x1000)]
    program, version = parse_pmt(pmts[-1])
    assert version == 0, "same stream types: the PMT did not really change"
    assert [(es.stream_type, es.elementary_PID) for es in program.streams] == [(0x1B, 0x100), (0x0F, 0x101)]
    assert program.PCR_PID == 0x100
    assert {pid_of(p) for p in out} <= {0, 0x1000, 0x100, 0x101}


def test_pmt_version_bumps_only_when_the_program_really_changes() -> None:
    """A stream type change bumps version_number and gets a PID of its own; going back bumps again."""
    splicer = Splicer()
    run(splicer, Upstream().stream(6))
    splicer.switch(1.0)
    out = run(splicer, B_upstream(video_type=0x02, audio_type=0x03).stream(11), now=1.0)
    program, version = parse_pmt(sections_on(out, 0x1000)[-1])
    assert version == 1
    types = [(es.stream_type, es.elementary_PID) for es in program.streams]
    assert types == [(0x02, 0x1E1), (0x03, 0x1E2)]  # new codecs: new output PIDs, never 0x100/0x101
    splicer.switch(2.0)
    out = run(splicer, Upstream(t0=123).stream(11), now=2.0)
    program, version = parse_pmt(sections_on(out, 0x1000)[-1])
    assert version == 2 and [es.elementary_PID for es in program.streams] == [0x100, 0x101]


def test_a_mid_stream_pmt_change_is_published_once_with_a_new_version() -> None:
    """Given the upstream adds a track mid-stream, Then the output PMT (version+1) lists it, once."""
    up = Upstream()
    splicer = Splicer()
    out = run(splicer, up.stream(6))
    up.extra = (ElementaryStream(0x0F, 0x102, b"\x0a\x04deu\x00"),)
    out += run(splicer, up.stream(12, start=6))
    versions = [parse_pmt(s)[1] for s in sections_on(out, 0x1000)]
    assert versions[0] == 0 and versions[-1] == 1 and versions == sorted(versions)
    assert [es.elementary_PID for es in parse_pmt(sections_on(out, 0x1000)[-1])[0].streams] == [
        0x100,
        0x101,
        0x102,
    ]
    assert cc_errors(out) == []


def test_the_splicer_never_writes_into_the_callers_buffer() -> None:
    splicer = Splicer()
    run(splicer, Upstream().stream(6))
    splicer.switch(1.0)
    data = bytearray(b"".join(B_upstream().stream(10)))
    before = bytes(data)
    out = split(join(splicer.feed([memoryview(data)], 1.0)))
    assert data == before and {pid_of(p) for p in out} & {0x100, 0x101}


def test_a_stuck_video_pes_stops_holding_the_program_after_hold_max_s() -> None:
    """Given video stops mid-stream while audio flows, Then audio is released after hold_max_s."""
    up = Upstream()
    splicer = Splicer(hold_max_s=1.0, early_after_s=None)
    run(splicer, up.stream(6), now=0.0)
    held = run(splicer, up.stream(2, start=6, video=False), now=0.5)
    assert held == [], "within hold_max_s the current video PES still holds everything after it"
    out = run(splicer, up.stream(2, start=8, video=False), now=1.5)
    assert sum(1 for p in out if pid_of(p) == 0x101) >= 8


def test_a_video_pes_held_for_long_lets_the_other_pids_go_ahead_each_in_its_own_order() -> None:
    """Given a large frame still arriving (held whole), Then after early_after_s the audio and null
    packets behind it go out, and when the frame completes it follows without them: each packet once."""
    up = Upstream()
    splicer = Splicer(early_after_s=0.02)
    out = run(splicer, up.stream(6), now=0.0)  # the last video PES is held from t=0
    fed = up.stream(2, start=6, video=False)
    fed.insert(3, ts_packet(NULL_PID, b"\xff" * 184))
    assert run(splicer, fed, now=0.01) == [], "a short hold keeps the order"
    ahead = run(splicer, up.stream(2, start=8, video=False), now=0.05)
    assert ahead and 0x100 not in {pid_of(p) for p in ahead}
    assert {0x101, NULL_PID} <= {pid_of(p) for p in ahead}
    rest = run(splicer, up.stream(4, start=10), now=0.06)  # video again: the held frame completes
    out += ahead + rest
    assert cc_errors(out) == []  # per PID: nothing twice, nothing lost, in order
    assert sum(1 for p in out if pid_of(p) == NULL_PID) == 1
    assert video_dts(out, 0x100) == sorted(video_dts(out, 0x100))


def test_without_frame_hold_frames_go_out_at_once_and_a_cut_one_is_not_dropped() -> None:
    """frame_hold=False trades the clean cut for pacing: no frame of latency, nothing dropped at a switch."""
    up = Upstream()
    fed = up.stream(6)
    held, flowing = Splicer(), Splicer(frame_hold=False)
    video_held = [p for p in run(held, fed) if pid_of(p) == 0x100]
    video_flowing = [p for p in run(flowing, fed) if pid_of(p) == 0x100]
    assert len(video_flowing) == len(video_held) + up.video_packets  # the last frame is not waited for
    for splicer in (held, flowing):
        splicer.feed([b"".join(up.stream(1, start=6)[:2])], 0.1)  # a frame cut by a dying upstream
        splicer.switch(1.0)
    assert held.dropped_packets > flowing.dropped_packets


def paced(
    splicer: Splicer, packets: list[bytes], t: float, per_ms: int = 2
) -> tuple[list[bytes], list[float]]:
    """Feed ``per_ms`` packets a millisecond from time ``t``, as a provider at the stream's pace does."""
    out: list[bytes] = []
    times: list[float] = []
    for i in range(0, len(packets), per_ms):
        now = t + i / per_ms / 1000
        got = split(join(splicer.feed([b"".join(packets[i : i + per_ms])], now)))
        if got:
            out += got
            times.append(now)
    return out, times


def test_held_frames_leave_at_the_pace_they_arrived_without_a_gap_for_a_large_keyframe() -> None:
    """Given keyframes of 60 packets arriving over 30 ms (a 62 kB keyframe at 8 Mbit/s, scaled), Then
    after the entry the client never waits more than one read for bytes, and the frame hold still
    holds: the output trails the upstream by the keyframe's hold, every packet goes out once, in order."""
    up = Upstream(key_packets=60, gop=5)
    fed = up.stream(40)
    splicer = Splicer(early_after_s=None)
    out, times = paced(splicer, fed, 0.0)
    assert times[1] >= 0.031, "the entry keyframe is held whole (only our PAT/PMT went before it)"
    gaps = [round((b - a) * 1000, 3) for a, b in itertools.pairwise(times[1:])]
    assert max(gaps) <= 2.0, f"a read or two (float rounding of the lag) at most, got {max(gaps)} ms"
    assert 0.029 <= splicer.lag_s <= 0.033, "the keyframe's hold in reads (60 packets, 2 a read), one spare"
    assert cc_errors(out) == [] and video_dts(out, 0x100) == sorted(video_dts(out, 0x100))
    out += split(join(splicer.poll(1.0)))
    assert len(out) >= len(fed) - up.video_packets - 2, "all but the last, unfinished frame went out"


def test_entered_mid_gop_the_lag_expects_a_keyframe_so_the_first_one_leaves_no_gap() -> None:
    """Given an upstream entered without a keyframe (keyframe_wait_s ran out), its small frames alone
    would teach a short lag and the first keyframe would outgrow it: until a keyframe's hold is
    learned, the lag is at least LAG_PRIOR_S; then it is what that keyframe needed."""
    up = Upstream(key_packets=60, gop=30)
    fed = up.stream(45, start=1)  # the keyframe is frame 30
    splicer = Splicer(keyframe_wait_s=0.002, early_after_s=None)
    out, times = paced(splicer, fed, 0.0)
    gaps = [round((b - a) * 1000, 3) for a, b in itertools.pairwise(times[1:])]
    assert max(gaps) <= 2.0, f"no gap at the first keyframe, got {max(gaps)} ms"
    assert 0.029 <= splicer.lag_s <= 0.033, "learned from the keyframe, the prior is gone"
    assert cc_errors(out) == []


def test_a_lagging_output_still_drops_the_frame_a_dying_upstream_cut() -> None:
    """Given the output trails the upstream, When the upstream dies in the middle of a keyframe, Then
    what had arrived complete goes out at the switch and the cut keyframe never does."""
    up = Upstream(key_packets=60, gop=5)
    fed = up.stream(16)  # frame 15 is a keyframe: cut it after 30 of its 60 packets
    cut = max(n for n, p in enumerate(fed) if pid_of(p) == 0x100 and p[1] & 0x40 and p[5] & 0x40) + 30
    splicer = Splicer(early_after_s=None)
    out, _ = paced(splicer, fed[:cut], 0.0)
    assert splicer.lag_s > 0.02
    cut_dts = pes_times(fed[cut - 30])[1]
    splicer.switch(1.0)
    out += split(join(splicer.feed([b"".join(B_upstream().stream(10))], 1.0)))
    starts = [n for n, p in enumerate(out) if pid_of(p) == 0x100 and p[1] & 0x40]
    counts = [sum(1 for p in out[a:b] if pid_of(p) == 0x100) for a, b in itertools.pairwise(starts)]
    assert set(counts) <= {3, 60}, "every video PES that went out is whole"
    assert cut_dts - 3600 in video_dts(out, 0x100), "the complete frame before the cut went out at the switch"
    in_slot = [p for p in out if pid_of(p) == 0x100 and pes_times(p)[1] == cut_dts]
    assert len(in_slot) == 1 and in_slot[0][5] & 0x40, "the cut keyframe's slot is B's keyframe"
    assert cc_errors(out) == []


def test_after_a_switch_the_lag_starts_again_so_the_switch_is_not_slowed_by_it() -> None:
    """Given A's output trails by its keyframe hold, When B takes over with small frames, Then B's entry
    goes out as soon as its keyframe is complete, not a lag later."""
    a = Upstream(key_packets=60, gop=5)
    splicer = Splicer(early_after_s=None)
    paced(splicer, a.stream(12), 0.0)
    assert splicer.lag_s > 0.02
    splicer.switch(1.0)
    assert splicer.lag_s == 0
    b_fed = B_upstream().stream(10)
    _, times = paced(splicer, b_fed, 1.0)
    entry = next(n for n, p in enumerate(b_fed) if pid_of(p) == 0x1E1 and p[1] & 0x40)
    following = next(n for n, p in enumerate(b_fed) if n > entry and pid_of(p) == 0x1E1 and p[1] & 0x40)
    assert times[0] <= 1.0 + (following // 2 + 1) / 1000, "B's entry left when its next PES start came"
    assert splicer.lag_s < 0.01


def test_entry_sent_only_once_the_entry_keyframe_itself_went_out() -> None:
    """The session's switch time ends at entry_sent: not when the keyframe starts arriving (entered),
    but when it went out whole, with our PAT/PMT before it."""
    splicer = Splicer(early_after_s=None)
    paced(splicer, Upstream().stream(8), 0.0)
    splicer.switch(1.0)
    fed = B_upstream(key_packets=60).stream(5)
    key = next(n for n, p in enumerate(fed) if pid_of(p) == 0x1E1 and p[1] & 0x40)
    out, _ = paced(splicer, fed[: key + 30], 1.0)
    assert splicer.entered and not splicer.entry_sent, "the keyframe is still arriving: held"
    assert not any(pid_of(p) == 0x100 and p[1] & 0x40 and p[5] & 0x40 for p in out), "no keyframe yet"
    more, _ = paced(splicer, fed[key + 30 :], 1.1)
    assert splicer.entry_sent
    both = out + more
    k = next(n for n, p in enumerate(both) if pid_of(p) == 0x100 and p[1] & 0x40 and p[5] & 0x40)
    assert k >= len(out) and [pid_of(p) for p in both[k - 2 : k]] == [0, 0x1000], "our PAT/PMT before it"


def test_the_lag_never_holds_more_than_lag_bytes_max() -> None:
    """Given tiny reads (a packet each), the lag counted in reads is long: it is bounded in bytes."""
    fed = Upstream(key_packets=60, gop=5).stream(30)
    unbounded, bounded = Splicer(early_after_s=None), Splicer(early_after_s=None, lag_bytes_max=20 * TS)
    left = []
    for splicer in (unbounded, bounded):
        out, _ = paced(splicer, fed, 0.0, per_ms=1)
        left.append(len(fed) - len(out))
    assert left[0] > 60, "the default keeps the keyframe's ~60 reads back"
    assert left[1] <= 20 + 3 + 2, "bounded: lag_bytes_max plus the last frame, still arriving"


def test_poll_lets_out_what_fell_due_while_the_upstream_was_silent() -> None:
    fed = Upstream(key_packets=60, gop=5).stream(12)
    splicer = Splicer(early_after_s=None)
    out, _ = paced(splicer, fed, 0.0)
    last_read = (len(fed) - 1) // 2 / 1000
    assert splicer.poll(last_read) == [], "nothing more is due at the last read: it trails by the lag"
    late = split(join(splicer.poll(last_read + splicer.lag_s + 0.001)))
    last_start = max(n for n, p in enumerate(fed) if pid_of(p) == 0x100 and p[1] & 0x40)
    assert len(out) + len(late) == last_start, "all but the last frame, held until its end is known"
    assert cc_errors(out + late) == []
    assert splicer.poll(last_read + 5.0) == [], "a silent upstream's unfinished frame never lapses out"


def test_psi_counters_follow_the_output_order_when_one_read_holds_many_psi_packets() -> None:
    """Given whole streams in one read each (a provider's burst at connect, 1 MiB reads), Then our
    inserted PAT/PMT and the upstream's own are numbered in the order they go out (a switch too)."""
    splicer = Splicer()
    out = split(join(splicer.feed([b"".join(Upstream().stream(16)[:100])], 0.0)))
    splicer.switch(1.0)
    out += split(join(splicer.feed([b"".join(B_upstream().stream(10))], 1.0)))
    assert sum(1 for p in out if pid_of(p) == 0) >= 5
    assert cc_errors(out) == []


def test_foreign_pids_are_dropped_and_null_packets_pass() -> None:
    packets = Upstream().stream(6)
    packets.insert(9, ts_packet(0x11, b"\x42" * 20))  # SDT
    packets.insert(12, ts_packet(NULL_PID, b"\xff" * 184))
    out = run(Splicer(), packets)
    assert 0x11 not in {pid_of(p) for p in out}
    assert NULL_PID in {pid_of(p) for p in out}


# --- Splicer: continuity, timeline ----------------------------------------------------------------------


def two_upstreams(cut_a: int, start_b: int, **b_kw: object) -> tuple[Splicer, list[bytes]]:
    splicer = Splicer()
    out = run(splicer, Upstream().stream(20)[:cut_a], now=0.0, chunk=5)
    splicer.switch(1.0)
    out += run(splicer, B_upstream(**b_kw).stream(20, start=start_b), now=1.0, chunk=9)
    return splicer, out


def test_continuity_counters_continue_across_a_switch() -> None:
    _, out = two_upstreams(cut_a=57, start_b=3)
    assert cc_errors(out) == []


def test_only_the_first_pcr_packet_after_a_switch_has_discontinuity_indicator() -> None:
    _, out = two_upstreams(cut_a=57, start_b=3)
    flagged = [n for n, p in enumerate(out) if pcr_of(p) is not None and p[5] & 0x80]
    assert len(flagged) == 1
    n = flagged[0]
    assert [pid_of(p) for p in out[n - 2 : n + 1]] == [0, 0x1000, 0x100], "it is B's entry packet"
    assert any(pcr_of(p) is not None for p in out[:n]), "A's PCRs went out before, unflagged"


def test_pts_dts_pcr_continue_monotonically_one_frame_after_the_last_output() -> None:
    _splicer, out = two_upstreams(cut_a=57, start_b=3)
    dts = video_dts(out, 0x100)
    assert all(0 < b - a < 90000 for a, b in itertools.pairwise(dts)), dts
    steps = [b - a for a, b in itertools.pairwise(dts)]
    assert set(steps) == {3600}, "the new upstream starts exactly one frame after the last output frame"
    pcrs = [pcr_of(p) for p in out if pcr_of(p) is not None]
    assert all(0 < b - a < 90000 for a, b in itertools.pairwise(pcrs))
    audio = [t for p in out if pid_of(p) == 0x101 for t in [pes_times(p)[0]] if t is not None]
    assert all(b > a for a, b in itertools.pairwise(audio))


def test_rebase_wraps_modulo_2_33() -> None:
    """Given the old timeline just before the 33-bit wrap, Then the new one continues across it."""
    splicer = Splicer()
    out = run(splicer, Upstream(t0=PTS_MODULUS - 6 * 3600).stream(5))
    splicer.switch(1.0)
    out += run(splicer, B_upstream().stream(10), now=1.0)
    dts = video_dts(out, 0x100)
    assert dts[0] == PTS_MODULUS - 6 * 3600 and min(dts) < 10 * 3600, "crossed the wrap"
    assert all((b - a) % PTS_MODULUS == 3600 for a, b in itertools.pairwise(dts))


def test_an_unfinished_pes_of_a_dying_upstream_never_reaches_the_client() -> None:
    """Given upstream A dies one packet into a video frame, When we switch, Then that frame is dropped."""
    up = Upstream()
    packets = up.stream(8)
    last_start = max(n for n, p in enumerate(packets) if pid_of(p) == 0x100 and p[1] & 0x40)
    cut = last_start + 2  # two of the frame's three packets arrived
    splicer = Splicer()
    out = run(splicer, packets[:cut])
    cut_dts = pes_times(packets[last_start])[1]
    assert cut_dts not in video_dts(out, 0x100), "held: its end has not been seen"
    splicer.switch(1.0)
    out += run(splicer, B_upstream().stream(10), now=1.0)
    assert cut_dts - 3600 in video_dts(out, 0x100), "the previous, complete frame went out"
    # B's keyframe takes the dropped frame's place on the timeline; A's frame 7 itself never went out.
    in_slot = [p for p in out if pid_of(p) == 0x100 and pes_times(p)[1] == cut_dts]
    assert len(in_slot) == 1 and in_slot[0][5] & 0x40, "the one PES at that DTS is B's keyframe"
    assert cc_errors(out) == []
    # Every video PES that went out is whole: 3 packets.
    starts = [n for n, p in enumerate(out) if pid_of(p) == 0x100 and p[1] & 0x40]
    counts = [sum(1 for p in out[a:b] if pid_of(p) == 0x100) for a, b in itertools.pairwise(starts)]
    assert set(counts) == {3}


def test_an_unfinished_pes_is_dropped_even_when_the_switch_comes_after_a_long_stall() -> None:
    """Given A stalls mid-frame and the stall is detected 5 s later (longer than hold_max_s), When we
    switch, Then the half-sent frame is still dropped: found in the demo, where it decoded as garbage."""
    up = Upstream()
    packets = up.stream(8)
    last_start = max(n for n, p in enumerate(packets) if pid_of(p) == 0x100 and p[1] & 0x40)
    splicer = Splicer()
    out = run(splicer, packets[: last_start + 2])
    cut_dts = pes_times(packets[last_start])[1]
    splicer.switch(5.0)  # the stall timeout later: nothing was fed meanwhile
    out += run(splicer, B_upstream().stream(10), now=5.0)
    starts = [n for n, p in enumerate(out) if pid_of(p) == 0x100 and p[1] & 0x40]
    counts = [sum(1 for p in out[a:b] if pid_of(p) == 0x100) for a, b in itertools.pairwise(starts)]
    assert set(counts) == {3}, "every video PES that went out is whole"
    in_slot = [p for p in out if pid_of(p) == 0x100 and pes_times(p)[1] == cut_dts]
    assert len(in_slot) == 1 and in_slot[0][5] & 0x40, "the one PES at that DTS is B's keyframe"


def test_a_complete_bounded_audio_pes_is_not_held() -> None:
    """Audio PES carry PES_packet_length: once complete they go out, they do not wait for the next one."""
    up = Upstream(video_type=0)
    splicer = Splicer()
    out = run(splicer, up.stream(3, video=False), chunk=100)
    assert sum(1 for p in out if pid_of(p) == 0x101) == 6


# --- Splicer: keyframe gating ---------------------------------------------------------------------------


def test_keyframe_gating_drops_packets_before_the_random_access_point() -> None:
    splicer = Splicer()
    run(splicer, Upstream().stream(10))
    splicer.switch(1.0)
    b = B_upstream()
    pre = run(splicer, b.stream(3, start=2), now=1.1)  # frames 2..4: no keyframe
    assert not splicer.entered
    assert {pid_of(p) for p in pre} <= {0x101}, "only A's complete leftovers (audio) go out meanwhile"
    out = run(splicer, b.stream(5, start=5), now=1.3)
    assert splicer.entered
    assert splicer.last_entry_wait_s == pytest.approx(0.2)
    first_video = next(p for p in out if pid_of(p) == 0x100)
    assert first_video[1] & 0x40 and first_video[5] & 0x40


@pytest.mark.parametrize("video_type", [0x1B, 0x02])
def test_keyframe_found_in_the_pes_payload_without_rai(video_type: int) -> None:
    """H.264 IDR/SPS or MPEG-2 sequence header/I-picture, when the upstream sets no RAI."""
    splicer = Splicer()
    out = run(splicer, Upstream(rai=False, video_type=video_type).stream(10, start=1))
    first_video = next(p for p in out if pid_of(p) == 0x100)
    assert pes_times(first_video)[1] == 900_000 + 5 * 3600


def test_without_keyframes_entry_happens_after_keyframe_wait_s() -> None:
    splicer = Splicer(keyframe_wait_s=1.0)
    up = Upstream(gop=1000)
    assert run(splicer, up.stream(4, start=1), now=10.0) == []
    assert run(splicer, up.stream(4, start=5), now=10.9) == [] and not splicer.entered
    out = run(splicer, up.stream(4, start=9), now=11.0)
    assert splicer.entered and splicer.last_entry_wait_s == pytest.approx(1.0)
    assert [pid_of(p) for p in out[:3]] == [0, 0x1000, 0x100]
    assert out[2][1] & 0x40, "entry still happens at a PES start"


# --- Splicer: bridge, health, passthrough ---------------------------------------------------------------


def test_bridge_sends_nothing_before_the_first_output_then_valid_null_packets_and_psi() -> None:
    splicer = Splicer()
    assert splicer.bridge(0.0) == b""
    out = run(splicer, Upstream().stream(6))
    first = split(splicer.bridge(5.0))
    again = split(splicer.bridge(5.1))
    assert [pid_of(p) for p in first[:2]] == [0, 0x1000]
    nulls = [p for p in first + again if pid_of(p) == NULL_PID]
    assert len(nulls) == 14
    assert all(p[3] & 0x30 == 0x10 and p[4:] == b"\xff" * 184 and p[0] == 0x47 for p in nulls)
    assert not any(pid_of(p) in (0, 0x1000) for p in again), "PSI at a low rate"
    assert cc_errors(out + first + again) == []


def test_passthrough_only_aligns() -> None:
    packets = Upstream().stream(6)
    splicer = Splicer(enabled=False)
    out = run(splicer, packets)
    splicer.switch(1.0)
    out += run(splicer, B_upstream().stream(3), now=1.0)
    assert out == packets + B_upstream().stream(3)
    assert splicer.health(100.0) is None


def test_health_reports_novideo_when_video_is_silent_while_audio_flows() -> None:
    splicer = Splicer(no_video_s=3.0)
    up = Upstream()
    run(splicer, up.stream(6), now=0.0)
    assert splicer.health(0.5) is None
    for t in (1.0, 2.0, 3.0, 3.5):
        run(splicer, up.stream(2, start=int(t * 10), video=False), now=t)
    assert splicer.health(2.5) is None
    assert splicer.health(3.5) == "NoVideo"


def test_health_reports_novideo_when_the_new_pmt_has_no_video() -> None:
    splicer = Splicer()
    run(splicer, Upstream().stream(6))
    splicer.switch(1.0)
    run(splicer, B_upstream(video_type=0).stream(3), now=1.0)
    assert splicer.health(1.1) == "NoVideo"


def test_health_is_quiet_when_nothing_flows() -> None:
    """A full stall (no audio either) is the stall detector's business, not NoVideo."""
    splicer = Splicer()
    run(splicer, Upstream().stream(6), now=0.0)
    assert splicer.health(10.0) is None


# --- properties -----------------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cut_a=st.integers(0, 110),
    start_b=st.integers(0, 12),
    cut_b=st.integers(20, 110),
    start_c=st.integers(0, 12),
    chunks=st.lists(st.integers(1, 2000), min_size=1, max_size=8),
    b_types=st.sampled_from([(0x1B, 0x0F), (0x02, 0x03)]),
)
def test_splicer_output_is_whole_valid_packets_with_clean_cc_and_timeline(
    cut_a: int, start_b: int, cut_b: int, start_c: int, chunks: list[int], b_types: tuple[int, int]
) -> None:
    """Whatever the chunking and the switch points: whole 0x47 packets, no CC error, monotonic DTS per PID,
    and no truncated PES (video PES are 3 packets, audio PES 2, in these upstreams)."""
    splicer = Splicer(hold_max_s=1e9)
    out: list[bytes | memoryview] = []
    sources = [
        b"".join(Upstream().stream(16)[:cut_a]),
        b"".join(B_upstream(video_type=b_types[0], audio_type=b_types[1]).stream(16, start=start_b)[:cut_b]),
        b"".join(Upstream(t0=77).stream(16, start=start_c)),
    ]
    now = 0.0
    for k, data in enumerate(sources):
        if k:
            splicer.switch(now)
        aligner = PacketAligner(sync_packets=3)
        pos, i = 0, 0
        while pos < len(data):
            step = chunks[i % len(chunks)]
            now += 0.001
            out += splicer.feed(aligner.feed(data[pos : pos + step]), now)
            pos, i = pos + step, i + 1
        out.append(splicer.bridge(now))
    out += splicer.poll(now + 60)  # the end: what still trailed by the lag
    blob = join(out)
    assert len(blob) % TS == 0 and blob[::TS] == b"\x47" * (len(blob) // TS)
    packets = split(blob)
    assert cc_errors(packets) == []
    pats = sections_on(packets, 0)
    psi = {0, NULL_PID} | {pid for _, pid in parse_pat(pats[0])[2]} if pats else {0, NULL_PID}
    for pid in {pid_of(p) for p in packets} - psi:
        dts = video_dts(packets, pid)
        assert all(0 < (b - a) % PTS_MODULUS < 90000 * 3 for a, b in itertools.pairwise(dts)), (
            hex(pid),
            dts,
        )
    sizes: dict[int, list[int]] = {}
    for p in packets:
        if pid_of(p) in psi:
            continue
        runs = sizes.setdefault(pid_of(p), [])
        if p[1] & 0x40:
            runs.append(0)
        assert runs, "an ES starts at a PES start"
        runs[-1] += 1
    for pid, runs in sizes.items():
        assert set(runs) <= {3 if pid in (0x100, 0x1E1) else 2}, (hex(pid), runs)


# --- real media -----------------------------------------------------------------------------------------


def _remux_like_b(src: Path) -> Path:
    """ts_file's H.264/AAC remuxed in the other provider's layout: 0x1E1/0x1E2, PMT 0x1E0, service 7."""
    out = MEDIA_DIR / f"{src.stem}-as-b.ts"
    if out.exists() and out.stat().st_size > 0:
        return out
    tmp = out.with_suffix(f".{os.getpid()}.tmp")
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(src), "-map", "0", "-c", "copy"]
    cmd += ["-streamid", "0:0x1e1", "-streamid", "1:0x1e2", "-mpegts_pmt_start_pid", "0x1E0"]
    cmd += ["-mpegts_service_id", "7", "-output_ts_offset", "1000", "-f", "mpegts", str(tmp)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=60)
    tmp.replace(out)
    return out


def _splice_files(segments: list[tuple[Path, float, float]], tmp_path: Path, enabled: bool = True) -> Path:
    """Relay each file's [a, b) fraction (cut mid-packet, i.e. mid-PES and mid-GOP) with a switch between."""
    splicer = Splicer(enabled=enabled)
    out: list[bytes | memoryview] = []
    now = 0.0
    for k, (path, a, b) in enumerate(segments):
        if k:
            splicer.switch(now)
        data = path.read_bytes()
        data = data[int(len(data) * a) + 77 : int(len(data) * b) + 33]
        aligner = PacketAligner()
        for i in range(0, len(data), 1500):
            now += 0.004
            out += splicer.feed(aligner.feed(data[i : i + 1500]), now)
        assert splicer.entered, f"segment {k} never entered"
    out += splicer.poll(now + 60)  # the end: the upstream went silent, what trailed by the lag goes
    target = tmp_path / "out.ts"
    target.write_bytes(join(out))
    return target


def _ffmpeg_errors(path: Path) -> list[str]:
    proc = subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-i", str(path), "-f", "null", "-"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return [line for line in proc.stderr.splitlines() if line.strip()]


def _streams(path: Path) -> list[tuple[str, str]]:
    proc = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "stream=codec_type,codec_name", "-of", "json", str(path)],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return [(s["codec_type"], s["codec_name"]) for s in json.loads(proc.stdout)["streams"]]


def _non_monotonic_dts(path: Path) -> list[str]:
    """What `-v error` does not show: a DTS that does not increase within a stream (a transcoder desyncs)."""
    proc = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "packet=stream_index,dts", "-of", "json", str(path)],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    last: dict[int, int] = {}
    bad = []
    for packet in json.loads(proc.stdout)["packets"]:
        s, dts = packet["stream_index"], packet.get("dts")
        if dts is None:
            continue
        if s in last and dts <= last[s]:
            bad.append(f"stream {s}: {last[s]} -> {dts}")
        last[s] = dts
    return bad


def test_real_media_same_codecs_other_pids_play_as_one_program(ts_file: Path, tmp_path: Path) -> None:
    """Given A (H.264/AAC, 0x100/0x101) and the same codecs on B's PIDs/service/timeline,
    When the relay switches A -> B -> A mid-frame and mid-GOP,
    Then ffmpeg reports no error and sees one video + one audio stream."""
    require_ffmpeg()
    other = _remux_like_b(ts_file)
    out = _splice_files([(ts_file, 0.0, 0.45), (other, 0.3, 0.8), (ts_file, 0.55, 1.0)], tmp_path)
    assert _ffmpeg_errors(out) == []
    assert _non_monotonic_dts(out) == []
    assert sorted(_streams(out)) == [("audio", "aac"), ("video", "h264")]


def test_real_media_codec_change_decodes_cleanly(ts_file: Path, ts_file_mpeg2: Path, tmp_path: Path) -> None:
    """Given A (H.264/AAC) and B (MPEG-2/MP2, other PIDs, service 7, +1000 s), When A -> B -> A,
    Then ffmpeg reports no error. The client sees one stream per codec: ffmpeg keeps the codec of a PID
    it knows, so a changed codec must get a PID (hence a stream) of its own to decode at all."""
    require_ffmpeg()
    out = _splice_files([(ts_file, 0.0, 0.45), (ts_file_mpeg2, 0.2, 0.7), (ts_file, 0.55, 1.0)], tmp_path)
    assert _ffmpeg_errors(out) == []
    assert _non_monotonic_dts(out) == []
    assert sorted(_streams(out)) == [
        ("audio", "aac"),
        ("audio", "mp2"),
        ("video", "h264"),
        ("video", "mpeg2video"),
    ]


def test_real_media_passthrough_is_what_the_splice_fixes(ts_file: Path, tmp_path: Path) -> None:
    """The same switches without the splice: the client sees the errors the splice removes (recorded)."""
    require_ffmpeg()
    other = _remux_like_b(ts_file)
    out = _splice_files(
        [(ts_file, 0.0, 0.45), (other, 0.3, 0.8), (ts_file, 0.55, 1.0)], tmp_path, enabled=False
    )
    assert len(_ffmpeg_errors(out)) > 0
