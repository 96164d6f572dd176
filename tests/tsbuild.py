"""Builders and inspectors for MPEG-TS tests: small but genuine programs, and what a client would check.

The builders make small but genuine programs (PAT, PMT, video PES with PCR, bounded audio PES), so each
acceptance criterion of the splice is a few lines: Given an upstream, When the session switches, Then
the client sees one continuous program. Used by tests/unit/ts/, tests/test_ts_media.py, the relay's
end-to-end tests and the benches.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from relay.ts import (
    NULL_PID,
    PTS_MODULUS,
    ElementaryStream,
    ProgramMap,
    Splicer,
    build_pat_section,
    build_pmt_section,
    packetize_section,
    read_pcr_base,
    read_timestamp,
    write_timestamp,
)

TS = 188


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


def two_upstreams(cut_a: int, start_b: int, **b_kw: object) -> tuple[Splicer, list[bytes]]:
    splicer = Splicer()
    out = run(splicer, Upstream().stream(20)[:cut_a], now=0.0, chunk=5)
    splicer.switch(1.0)
    out += run(splicer, B_upstream(**b_kw).stream(20, start=start_b), now=1.0, chunk=9)
    return splicer, out
