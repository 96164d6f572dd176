"""MPEG-TS alignment and seamless splicing, sans-IO: bytes in, bytes out.

This module owns everything the relay does *inside* the transport stream. It never touches a socket,
an event loop or a clock: time comes in as `now` (seconds, any monotonic origin), so every rule below
is a unit test. Names follow ISO/IEC 13818-1 (continuity_counter, discontinuity_indicator, PAT, PMT...).

Public API
----------
``PacketAligner(sync_packets=5)``, one per upstream connection:
    ``feed(data) -> list[memoryview]``: whole 188-byte packets, as views sliced from ``data`` without
    copying (only the <=187-byte carry-over of the previous call is copied). Sync is 0x47 at a 188-byte
    stride over ``sync_packets`` packets; after garbage it resyncs and never emits a partial packet.
    ``synced: bool`` and ``garbage_bytes: int`` (bytes discarded) let the caller fail an upstream that
    never syncs (an HTML page sent with HTTP 200).

``Splicer(keyframe_wait_s=1.0, no_video_s=3.0, enabled=True)``, one per channel session; it owns the
output program the client sees:
    ``feed(packets, now) -> list[bytes | memoryview]``: aligned packets of the current upstream in,
    packets ready to write out (empty while waiting for PSI or a keyframe, or while holding a PES).
    The returned views stay valid; nothing is written into the caller's buffers.
    ``switch(now)``: the next packets fed come from a new upstream (failover or upgrade). The current
    unfinished PES of each stream is dropped; the rest goes out with the next ``feed``/``bridge``.
    ``entered: bool``: the current upstream's clean entry is done (PAT+PMT then a keyframe went out);
    ``last_entry_wait_s``: how long that took. ``entry_sent``: that entry (its keyframe, whole) went out,
    which is when the session's switch time ends.
    ``bridge(now) -> bytes``: null packets (plus PAT/PMT every ``bridge_psi_interval_s``) to keep a
    client's demuxer fed during a gap; b"" until the session's first real output.
    ``health(now) -> str | None``: ``"NoVideo"`` when the program had video and the current upstream's
    video PID is silent for ``no_video_s`` while audio flows, or its PMT has no video stream.
    ``enabled=False``: passthrough (alignment only) so the difference can be measured.

Theory of operation (Splicer)
-----------------------------
- Output PIDs are stable. The first upstream's PMT PID, program_number and elementary PIDs become the
  output's. A later upstream's elementary streams are matched *by stream type and order* onto those
  output PIDs. A stream type never seen before gets a PID of its own: ffmpeg keeps the codec of a PID
  it already knows, so H.264 -> MPEG-2 on one PID decodes as garbage, while a new PID becomes a new,
  correctly decoded stream. The PMT is regenerated (CRC-32/MPEG-2) and its version_number is bumped
  only when its content really changes. The PAT never changes.
- continuity_counter: each output PID continues from where the client saw it. A per-PID delta is
  fixed at entry and added to the upstream's own counters, so an upstream's own CC errors stay visible.
- Timeline: the first upstream's timestamps pass unchanged. A later one is rebased so that its first
  video DTS lands one frame after the last output video DTS (mod 2^33); PCR, PTS and DTS all get the
  same offset, and the first PCR packet after a switch carries discontinuity_indicator. Other streams
  enter at their first PES whose rebased PTS is after their last output PTS (monotonic per PID).
- Hold: output is released up to the earliest start of a PES that is not known to be complete (video:
  until its next PES starts, i.e. one frame; audio: until PES_packet_length bytes arrived). At a
  switch those unfinished PES are dropped, so a frame cut by a dying upstream never reaches the client.
  A hold older than ``hold_max_s`` lapses, so a stuck PID cannot stall the output. A PES held longer
  than ``early_after_s`` (a large keyframe arriving at the stream's pace) stops holding the other
  PIDs: their packets behind it go out ahead of it, each PID in its own order (``_send_ahead``).
- Lag: a frame is let out only once complete, so a large keyframe arriving at the stream's pace would
  leave the client without bytes while it arrives (62 kB at 8 Mbit/s: ~60 ms). The output therefore
  trails the upstream by the longest frame hold seen in the last ``lag_window_s``, counted in reads
  plus one spare (at most ``lag_bytes_max``): each read lets out the read that many reads before it,
  so bytes leave at the pace they came. Counting reads, not seconds, matters: compared at jittery read
  times, a lag in seconds lets out nothing at one read and two at the next, doubling a gap. After a
  switch the lag starts at zero: the entry keyframe is held whole during the switch anyway, and that
  hold is the new lag. ``poll(now)`` lets out what trailed by the lag once the upstream went silent.
- Clean entry: after a switch nothing goes out until the PMT is known and a video PES starts at a
  random-access point (random_access_indicator, or an H.264 IDR/SPS, HEVC IRAP/VPS/SPS, MPEG-2 sequence
  header/GOP/I-picture in its first packet). Our PAT and PMT go out right before it. After
  ``keyframe_wait_s`` from the upstream's first packet, any video PES start is accepted.
- PSI: our PAT/PMT replace the upstream's, in place where it was (one packet each). When the session's
  first upstream sends exactly the PAT/PMT we would (same PIDs, same content), its own packets pass
  untouched ("native"), each still compared with ours; the first difference ends that.
- In place: given ``region=(buf, start)`` the splice rewrites headers in the caller's buffer (the
  upstream's ReadBuffer, relay/buffers.py) instead of a copy.
- Fast path: between switches a chunk is handled column-wise: header bytes 1-3 of all packets are
  gathered with strided slices of the bytearray, classified by PID through 256-entry translate tables
  and big-integer lane arithmetic, and written back in place. Only PES starts, PCRs, PSI and unknown
  PIDs are looked at one by one (a few per frame; where no PES header needs rewriting, only each
  stream's last two PES starts of a chunk); a bounded audio PES is counted to its end by walking its
  packets with bytes.find on the class column. Packets of PIDs outside the program (SDT, EIT, other
  services) become null packets in place; null packets pass.
"""

from __future__ import annotations

import functools
import math
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

TS_PACKET_SIZE = 188
SYNC_BYTE = 0x47
PAT_PID = 0x0000
NULL_PID = 0x1FFF
PTS_MODULUS = 1 << 33  # PTS/DTS and the PCR base are 33-bit counters of a 90 kHz clock
LAG_MIN_HOLD_S = 0.005  # a frame held for less than this leaves no gap worth a lag
# until a keyframe's hold was learned (an entry mid-GOP, after keyframe_wait_s), the lag is at least
# this: learned from small frames alone, the first keyframe would outgrow it and leave a gap
LAG_PRIOR_S = 0.1
NO_VIDEO = "NoVideo"

NULL_PACKET = bytes([SYNC_BYTE, 0x1F, 0xFF, 0x10]) + b"\xff" * 184  # AFC=01 payload only, as 13818-1 wants

_PKT = TS_PACKET_SIZE
_SYNC = bytes([SYNC_BYTE])
_DEFAULT_FRAME = 3600  # 90 kHz ticks of one 25 fps frame, until a stream shows its own
_HALF = PTS_MODULUS >> 1

VIDEO_STREAM_TYPES = frozenset({0x01, 0x02, 0x10, 0x1B, 0x1F, 0x20, 0x24, 0x33, 0x42, 0xD1, 0xEA})
AUDIO_STREAM_TYPES = frozenset({0x03, 0x04, 0x0F, 0x11, 0x1C, 0x2D, 0x81, 0x82, 0x83, 0x84, 0x85, 0x87})
_AUDIO_DESCRIPTORS = frozenset({0x6A, 0x7A, 0x7B, 0x7C})  # AC-3, E-AC-3, DTS, AAC (DVB, on type 0x06)
_SUBTITLE_DESCRIPTORS = frozenset({0x56, 0x59})  # teletext, DVB subtitles
_NO_PES_HEADER = frozenset({0xBC, 0xBE, 0xBF, 0xF0, 0xF1, 0xF2, 0xF8, 0xFF})  # stream_ids without PTS fields


# --- CRC-32/MPEG-2 ------------------------------------------------------------------------------------


def _crc_table() -> tuple[int, ...]:
    table = []
    for i in range(256):
        crc = i << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7) if crc & 0x80000000 else crc << 1
        table.append(crc & 0xFFFFFFFF)
    return tuple(table)


_CRC_TABLE = _crc_table()


def crc32_mpeg2(data: bytes | bytearray | memoryview) -> int:
    """CRC-32/MPEG-2 (poly 0x04C11DB7, init ~0, no reflection); 0 over a whole section means intact."""
    crc = 0xFFFFFFFF
    table = _CRC_TABLE
    for b in bytes(data):
        crc = ((crc << 8) & 0xFFFFFFFF) ^ table[(crc >> 24) ^ b]
    return crc


# --- Packet alignment ----------------------------------------------------------------------------------


def _byte_view(data: bytes | bytearray | memoryview) -> memoryview:
    view = memoryview(data)
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


class PacketAligner:
    """Cuts one upstream's byte stream into whole TS packets; one instance per upstream connection.

    Zero-copy when synced: the output views are slices of the input, checked with one strided slice per
    call (every 188th byte must be 0x47). A packet whose successor's sync byte is wrong is dropped with
    the garbage (it was probably cut short). A packet that ends a call is emitted when its own sync byte
    is right; its successor is checked on the next call.
    """

    def __init__(self, sync_packets: int = 5) -> None:
        if sync_packets < 2:
            raise ValueError("sync_packets must be >= 2")
        self.sync_packets = sync_packets
        self.synced = False
        self.garbage_bytes = 0
        self._carry = b""  # synced: a packet's first <188 bytes; unsynced: bytes still to search
        self._data: bytes | bytearray | None = None  # the caller's buffer during feed

    def feed(self, data: bytes | bytearray | memoryview) -> list[memoryview]:
        """Return the whole packets completed by ``data``, as few views as possible."""
        view: memoryview | None = _byte_view(data)
        # every view worked on below is a suffix of ``data``: its sync bytes can be sliced from ``data``
        # itself, ~7x cheaper than a strided memoryview slice
        self._data = data if isinstance(data, bytes | bytearray) else None
        out: list[memoryview] = []
        while view is not None:
            if not self.synced:
                view = self._search(view)
                if view is None:
                    break
            view = self._aligned(view, out)
        self._data = None
        return out

    def feed_region(self, buf: bytearray, start: int, end: int) -> tuple[list[memoryview], int, bool]:
        """Like ``feed(buf[start:end])`` for a caller that keeps its unconsumed bytes in place.

        Returns the whole packets, how far the input was consumed (the caller presents
        ``buf[consumed:end]`` again, followed by what it reads next, so a packet cut by a read stays in
        one piece and nothing is copied), and whether the packets are exactly ``buf[start:consumed]``
        (then a splice may rewrite them there). Garbage and resync fall back to ``feed``.
        """
        if self.synced and not self._carry:
            syncs = bytes(buf[start:end:_PKT])  # every packet start in the range, the partial one too
            if not syncs.strip(_SYNC):
                whole = start + (end - start) // _PKT * _PKT
                return ([memoryview(buf)[start:whole]] if whole > start else []), whole, whole > start
        views = self.feed(memoryview(buf)[start:end])
        consumed = end
        carry = self._carry
        if self.synced and carry and len(carry) <= end - start and buf[end - len(carry) : end] == carry:
            self._carry = b""  # back to in-place: the partial packet stays in the caller's buffer
            consumed = end - len(carry)
        in_place = len(views) == 1 and views[0].obj is buf and len(views[0]) == consumed - start
        return views, consumed, in_place

    def _syncs(self, view: memoryview, stop: int) -> bytes:
        """Every 188th byte of ``view[:stop]``."""
        data = self._data
        if data is None:
            return bytes(view[0:stop:_PKT])
        start = len(data) - len(view)
        return bytes(data[start : start + stop : _PKT])

    def _search(self, view: memoryview) -> memoryview | None:
        """Find sync_packets sync bytes at a 188 stride; return the data from there, or keep a tail.

        The input is scanned through small windows and confirmed with strided slices, so the data
        returned once synced is still a view of the caller's bytes.
        """
        k = self.sync_packets
        span = (k - 1) * _PKT + 1
        want = _SYNC * k
        carry = self._carry
        self._carry = b""
        if carry:  # a candidate may start in the tail kept from the previous call
            head = carry + bytes(view[:span])
            i = head.find(_SYNC)
            while 0 <= i < len(carry):
                if len(head) - i < span:
                    self.garbage_bytes += i
                    self._carry = head[i:]
                    return None
                if head[i : i + span : _PKT] == want:
                    self.garbage_bytes += i
                    self.synced = True
                    self._carry = carry[i:]
                    return view
                i = head.find(_SYNC, i + 1)
            self.garbage_bytes += len(carry)
        size = len(view)
        pos, window = 0, 1024
        while pos < size:
            win = bytes(view[pos : pos + window])
            j = win.find(_SYNC)
            while j >= 0:
                i = pos + j
                if size - i < span:
                    self.garbage_bytes += i
                    self._carry = bytes(view[i:])
                    return None
                if bytes(view[i : i + span : _PKT]) == want:
                    self.garbage_bytes += i
                    self.synced = True
                    return view[i:]
                j = win.find(_SYNC, j + 1)
            pos += len(win)
            window = min(window * 2, 1 << 16)
        self.garbage_bytes += size
        return None

    def _aligned(self, view: memoryview, out: list[memoryview]) -> memoryview | None:
        """Emit packets of synced data; return the rest to search again if sync is lost, else None."""
        if self._carry:
            carry = self._carry
            need = -len(carry) % _PKT
            if len(view) < need:
                self._carry += bytes(view)
                return None
            self._carry = b""
            head = carry + bytes(view[:need])
            syncs = head[::_PKT] + bytes(view[need : need + 1])
            if syncs != _SYNC * len(syncs):
                return self._lost(memoryview(head + bytes(view[need:])), syncs, out)
            out.append(memoryview(head))
            view = view[need:]
        size = len(view)
        whole = size - size % _PKT
        syncs = self._syncs(view, size)
        if not syncs.strip(_SYNC):
            if whole:
                out.append(view[:whole])
            if size > whole:
                self._carry = bytes(view[whole:])
            return None
        return self._lost(view, syncs, out)

    def _lost(self, view: memoryview, syncs: bytes, out: list[memoryview]) -> memoryview:
        """Sync byte missing at a packet boundary: emit the packets before the cut one, search the rest."""
        bad = len(syncs) - len(syncs.lstrip(_SYNC))  # first packet whose sync byte is wrong
        good = max(bad - 1, 0)  # the packet before it was cut short: not emitted
        if good:
            out.append(view[: good * _PKT])
        self.synced = False
        skip = 1 if bad else 0
        self.garbage_bytes += skip
        return view[good * _PKT + skip :]


# --- PSI: sections, PAT, PMT ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ElementaryStream:
    """One row of a PMT's elementary stream loop."""

    stream_type: int
    elementary_PID: int
    ES_info: bytes = b""


@dataclass(frozen=True)
class ProgramMap:
    """The content of a PMT section (version_number aside: the Splicer owns the output's)."""

    program_number: int
    PCR_PID: int
    program_info: bytes = b""
    streams: tuple[ElementaryStream, ...] = ()

    @property
    def has_video(self) -> bool:
        return any(stream_kind(es.stream_type, es.ES_info) == "video" for es in self.streams)


def _descriptor_tags(info: bytes) -> list[int]:
    tags, i = [], 0
    while i + 2 <= len(info):
        tags.append(info[i])
        i += 2 + info[i + 1]
    return tags


def stream_kind(stream_type: int, es_info: bytes = b"") -> str:
    """'video', 'audio' or 'data': what the hold, the keyframe gate and the NoVideo check care about."""
    if stream_type in VIDEO_STREAM_TYPES:
        return "video"
    if stream_type in AUDIO_STREAM_TYPES:
        return "audio"
    if stream_type == 0x06 and _AUDIO_DESCRIPTORS.intersection(_descriptor_tags(es_info)):
        return "audio"
    return "data"


def _es_key(es: ElementaryStream) -> tuple[int, ...]:
    """What must match for two upstreams' streams to share an output PID: type (+ codec descriptor)."""
    if es.stream_type == 0x06:
        tags = sorted(
            _AUDIO_DESCRIPTORS.union(_SUBTITLE_DESCRIPTORS).intersection(_descriptor_tags(es.ES_info))
        )
        return (0x06, *tags)
    return (es.stream_type,)


def _section(table_id: int, id_ext: int, version: int, body: bytes) -> bytes:
    """A long-form PSI section (section_syntax_indicator=1, one section) with its CRC_32."""
    length = 5 + len(body) + 4
    head = bytes(
        [
            table_id,
            0xB0 | (length >> 8),
            length & 0xFF,
            id_ext >> 8,
            id_ext & 0xFF,
            0xC1 | ((version & 0x1F) << 1),  # reserved, version_number, current_next_indicator=1
            0,
            0,
        ]
    )
    data = head + body
    return data + crc32_mpeg2(data).to_bytes(4, "big")


def build_pat_section(
    transport_stream_id: int, programs: Iterable[tuple[int, int]], version: int = 0
) -> bytes:
    """PAT (table_id 0x00) from (program_number, program_map_PID) pairs."""
    body = b"".join(bytes([n >> 8, n & 0xFF, 0xE0 | (pid >> 8), pid & 0xFF]) for n, pid in programs)
    return _section(0x00, transport_stream_id, version, body)


def build_pmt_section(program: ProgramMap, version: int = 0) -> bytes:
    """PMT (table_id 0x02) for ``program``."""
    info = program.program_info
    body = bytearray(
        [0xE0 | (program.PCR_PID >> 8), program.PCR_PID & 0xFF, 0xF0 | (len(info) >> 8), len(info) & 0xFF]
    )
    body += info
    for es in program.streams:
        pid, es_info = es.elementary_PID, es.ES_info
        body += bytes(
            [es.stream_type, 0xE0 | (pid >> 8), pid & 0xFF, 0xF0 | (len(es_info) >> 8), len(es_info) & 0xFF]
        )
        body += es_info
    return _section(0x02, program.program_number, version, bytes(body))


def parse_pat(section: bytes) -> tuple[int, int, list[tuple[int, int]]]:
    """(transport_stream_id, version_number, [(program_number, PID)]) of a CRC-checked PAT section."""
    if section[0] != 0x00:
        raise ValueError("not a PAT section")
    end = len(section) - 4
    programs = [
        (int.from_bytes(section[i : i + 2], "big"), ((section[i + 2] & 0x1F) << 8) | section[i + 3])
        for i in range(8, end - 3, 4)
    ]
    return int.from_bytes(section[3:5], "big"), (section[5] >> 1) & 0x1F, programs


def parse_pmt(section: bytes) -> tuple[ProgramMap, int]:
    """(ProgramMap, version_number) of a CRC-checked PMT section."""
    if section[0] != 0x02:
        raise ValueError("not a PMT section")
    end = len(section) - 4
    info_len = ((section[10] & 0x0F) << 8) | section[11]
    i = 12 + info_len
    streams = []
    while i + 5 <= end:
        es_len = ((section[i + 3] & 0x0F) << 8) | section[i + 4]
        pid = ((section[i + 1] & 0x1F) << 8) | section[i + 2]
        streams.append(ElementaryStream(section[i], pid, bytes(section[i + 5 : i + 5 + es_len])))
        i += 5 + es_len
    program = ProgramMap(
        program_number=int.from_bytes(section[3:5], "big"),
        PCR_PID=((section[8] & 0x1F) << 8) | section[9],
        program_info=bytes(section[12 : 12 + info_len]),
        streams=tuple(streams),
    )
    return program, (section[5] >> 1) & 0x1F


def packetize_section(pid: int, section: bytes, continuity_counter: int = 0) -> list[bytearray]:
    """TS packets carrying one section (pointer_field 0, 0xFF stuffing); CCs count up from the given one."""
    data = b"\x00" + section
    packets = []
    for n, i in enumerate(range(0, len(data), 184)):
        chunk = data[i : i + 184]
        head = bytes(
            [
                SYNC_BYTE,
                (0x40 if i == 0 else 0) | (pid >> 8),
                pid & 0xFF,
                0x10 | ((continuity_counter + n) & 0x0F),
            ]
        )
        packets.append(bytearray(head + chunk + b"\xff" * (184 - len(chunk))))
    return packets


class SectionAssembler:
    """Reassembles the PSI sections of one PID; returns each complete, CRC-checked section that differs
    from the previous one (PSI repeats every ~100 ms: identical repeats are not checked or parsed again)."""

    __slots__ = ("_active", "_buf", "_last")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._active = False
        self._last = b""

    def push(self, packet: bytes | bytearray | memoryview) -> list[bytes]:
        afc = (packet[3] >> 4) & 3
        if not afc & 1:
            return []
        p = 4 + (1 + packet[4] if afc & 2 else 0)
        if p >= _PKT:
            return []
        payload = bytes(packet[p:_PKT])
        out: list[bytes] = []
        if packet[1] & 0x40:
            pointer = payload[0]
            if self._active:
                self._buf += payload[1 : 1 + pointer]
                out += self._drain()
            self._buf = bytearray(payload[1 + pointer :])
            self._active = True
        elif self._active:
            self._buf += payload
        else:
            return out
        out += self._drain()
        if len(self._buf) > 4096:  # no PSI section is that long: lost a start, wait for the next
            self._buf.clear()
            self._active = False
        return out

    def _drain(self) -> list[bytes]:
        out = []
        buf = self._buf
        while len(buf) >= 3:
            if buf[0] == 0xFF:  # stuffing: nothing more in this unit
                buf.clear()
                self._active = False
                break
            length = 3 + (((buf[1] & 0x0F) << 8) | buf[2])
            if len(buf) < length:
                break
            section = bytes(buf[:length])
            del buf[:length]
            if section != self._last and length > 7 and crc32_mpeg2(section) == 0:
                self._last = section
                out.append(section)
        return out


# --- PES, PCR, keyframes -------------------------------------------------------------------------------


def read_timestamp(b: bytes | bytearray | memoryview, o: int) -> int:
    """A 33-bit PTS/DTS from its 5-byte PES header field at offset ``o``."""
    return ((b[o] >> 1) & 0x07) << 30 | b[o + 1] << 22 | (b[o + 2] >> 1) << 15 | b[o + 3] << 7 | b[o + 4] >> 1


def write_timestamp(b: bytearray | memoryview, o: int, value: int) -> None:
    """Rewrite a PTS/DTS field in place, keeping its 4-bit prefix and marker bits."""
    b[o] = (b[o] & 0xF0) | ((value >> 29) & 0x0E) | 1
    b[o + 1] = (value >> 22) & 0xFF
    b[o + 2] = ((value >> 14) & 0xFE) | 1
    b[o + 3] = (value >> 7) & 0xFF
    b[o + 4] = ((value << 1) & 0xFE) | 1


def read_pcr_base(b: bytes | bytearray | memoryview, o: int) -> int:
    """The 33-bit program_clock_reference_base at offset ``o`` (the 9-bit extension is left alone)."""
    return b[o] << 25 | b[o + 1] << 17 | b[o + 2] << 9 | b[o + 3] << 1 | b[o + 4] >> 7


def write_pcr_base(b: bytearray | memoryview, o: int, base: int) -> None:
    b[o] = (base >> 25) & 0xFF
    b[o + 1] = (base >> 17) & 0xFF
    b[o + 2] = (base >> 9) & 0xFF
    b[o + 3] = (base >> 1) & 0xFF
    b[o + 4] = ((base & 1) << 7) | (b[o + 4] & 0x7F)


def payload_offset(b: bytes | bytearray | memoryview, off: int = 0) -> int:
    """Offset (from the packet start) of the payload; >= 188 when the packet carries none."""
    afc = (b[off + 3] >> 4) & 3
    if not afc & 1:
        return _PKT
    return 4 + (1 + b[off + 4] if afc & 2 else 0)


def is_random_access(
    b: bytes | bytearray | memoryview, off: int, stream_type: int, pes: int | None = None
) -> bool:
    """Whether the packet at ``off`` starts a PES at a point a decoder can start from.

    True on random_access_indicator, else on what the first packet's PES payload shows: H.264 IDR or
    SPS, HEVC IRAP/VPS/SPS, MPEG-2 sequence header, GOP header or I-picture. Encoders put parameter
    sets in front of every keyframe, so a keyframe whose first packet shows none relies on the RAI.
    """
    if (b[off + 3] & 0x20) and b[off + 4] and b[off + 5] & 0x40:
        return True
    p = payload_offset(b, off) if pes is None else pes
    if p + 9 > _PKT:
        return False
    es = bytes(b[off + p + 9 + b[off + p + 8] : off + _PKT])
    i = es.find(b"\x00\x00\x01")
    while 0 <= i < len(es) - 3:
        code = es[i + 3]
        if stream_type == 0x1B:
            if code & 0x1F in (5, 7):
                return True
        elif stream_type == 0x24:
            if 16 <= (code >> 1) & 0x3F <= 23 or (code >> 1) & 0x3F in (32, 33):
                return True
        elif stream_type in (0x01, 0x02):
            if code in (0xB3, 0xB8) or (code == 0 and i + 5 < len(es) and (es[i + 5] >> 3) & 7 == 1):
                return True
        else:
            return False
        i = es.find(b"\x00\x00\x01", i + 3)
    return False


def _later(a: int, b: int) -> bool:
    """a is after b on the 33-bit wrapping 90 kHz clock."""
    return 0 < (a - b) % PTS_MODULUS < _HALF


# --- Splicer state -------------------------------------------------------------------------------------


@dataclass(slots=True)
class _OutStream:
    """Per output PID: what the client's demuxer has seen; survives switches."""

    pid: int
    last_cc: int | None = None  # continuity_counter of the last packet let through
    next_cc: int | None = None  # set at a switch: what the next payload packet must carry
    pes_start: int | None = None  # output index of the current PES while it is held
    pes_start_time: float = 0.0
    pes_start_read: int = 0  # the Splicer's read count when it began
    pes_key: bool = False  # it starts at a random-access point (looked at until a keyframe was learned)
    pes_cc: int = 0  # continuity_counter of that PES's first packet
    pes_remaining: int = -1  # bytes still due of a bounded audio PES; -1: unbounded
    pes_chunk: int = -1  # which chunk its first packet was in, and where (packet index)
    pes_index: int = 0
    cur_pts: int | None = None
    cur_dts: int | None = None
    prev_pts: int | None = None
    prev_dts: int | None = None
    frame: int = _DEFAULT_FRAME  # the last step between PES starts: one video frame
    span: int = 0  # the largest such step: how far one PES (e.g. several audio frames) may reach


@dataclass(slots=True)
class _Route:
    """How one upstream PID goes out."""

    src_pid: int
    out: _OutStream
    stream_type: int
    kind: str  # video | audio | data | pcr
    is_ref: bool = False
    entered: bool = False
    cc_delta: int = 0


@dataclass(slots=True)
class _Tables:
    """Translate tables of the fast path for the current routes (class = hi code << 4 | lo code)."""

    hi: bytes
    lo: bytes
    kind: bytes  # per class: 0 rewritten column-wise, 1 each packet looked at
    new_hi: bytes
    new_lo: bytes
    delta: bytes
    identity: bool
    tracked: list[tuple[int, _OutStream]]  # class byte -> output stream, for last_cc
    counted: list[tuple[int, _OutStream]]  # audio classes: bounded PES are counted to their end
    psi: list[tuple[int, bytes]]  # class, _psi_key of ours: PSI that passes as the upstream sent it


@dataclass(slots=True)
class _Upstream:
    """What the Splicer knows of the current upstream; replaced at every switch."""

    pat: SectionAssembler = field(default_factory=SectionAssembler)
    pmt: SectionAssembler = field(default_factory=SectionAssembler)
    program_number: int | None = None
    pmt_pid: int | None = None
    transport_stream_id: int = 1
    program: ProgramMap | None = None
    routes: dict[int, _Route] = field(default_factory=dict)
    entered: bool = False
    offset: int = 0
    t0: float | None = None
    tables: _Tables | None = None
    video_seen: float | None = None
    audio_seen: float | None = None
    psi_last: dict[int, tuple[bytes, int]] = field(default_factory=dict)  # PID -> (_psi_key, cc)
    psi_native: set[int] = field(default_factory=set)  # its PSI equals ours: passes untouched
    codec_change: bool = False  # its video/audio codec differs from the output's: kept out (transcoder)
    keyframe_held: bool = False  # a keyframe's hold has been learned: the lag has seen the largest frames
    entry_index: int | None = None  # output index of the keyframe it entered with


_KEEP = 1
_RESTART = 2

_PUSI_T = bytes(1 if b & 0x40 else 0 for b in range(256))
_AF_T = bytes(1 if b & 0x20 else 0 for b in range(256))
_PCRF_T = bytes(1 if b & 0x10 else 0 for b in range(256))
_TOP3_T = bytes(b & 0xE0 for b in range(256))
_LOW4_T = bytes(b & 0x0F for b in range(256))
_HIGH4_T = bytes(b & 0xF0 for b in range(256))
_MASKS: dict[int, int] = {}


def _mask0f(n: int) -> int:
    m = _MASKS.get(n)
    if m is None:
        m = _MASKS[n] = int.from_bytes(b"\x0f" * n, "little")
    return m


@functools.cache
def _pid_hi_table(hi: int) -> bytes:
    """translate table: header byte 1 -> 1 when its PID bits are ``hi``."""
    return bytes(1 if b & 0x1F == hi else 0 for b in range(256))


@functools.cache
def _pid_lo_table(lo: int) -> bytes:
    return bytes(1 if b == lo else 0 for b in range(256))


def _first_types(program: ProgramMap | None) -> tuple[int | None, int | None]:
    if program is None:
        return None, None
    kinds = [(stream_kind(es.stream_type, es.ES_info), es.stream_type) for es in program.streams]
    video = next((t for k, t in kinds if k == "video"), None)
    return video, next((t for k, t in kinds if k == "audio"), None)


def _runs_without(seg: memoryview, first: int, skip: Callable[[int, int], bool]) -> list[memoryview]:
    """The runs of ``seg``'s packets (output indexes from ``first``) between those ``skip(index, PID)``."""
    out: list[memoryview] = []
    run = 0
    for j in range(len(seg) // _PKT):
        o = j * _PKT
        if skip(first + j, ((seg[o + 1] & 0x1F) << 8) | seg[o + 2]):
            if j > run:
                out.append(seg[run * _PKT : o])
            run = j + 1
    if len(seg) > run * _PKT:
        out.append(seg[run * _PKT :])
    return out


def _psi_key(packet: bytes | bytearray | memoryview) -> bytes:
    """A PSI packet without its continuity_counter: equal keys mean the same packet for a demuxer."""
    return bytes(packet[1:3]) + bytes((packet[3] & 0xF0,)) + bytes(packet[4:_PKT])


def _ones(lanes: bytes) -> list[int]:
    """Indexes of the 1 bytes in a column of 0/1 lanes (memchr-fast, unlike a regex scan)."""
    out = []
    j = lanes.find(1)
    while j >= 0:
        out.append(j)
        j = lanes.find(1, j + 1)
    return out


def _ints(*cols: bytes) -> list[int]:
    return [int.from_bytes(c, "little") for c in cols]


class Splicer:
    """Owns the output program of one channel session; see the module docstring for the rules."""

    def __init__(
        self,
        keyframe_wait_s: float = 1.0,
        no_video_s: float = 3.0,
        enabled: bool = True,
        *,
        hold_max_s: float = 1.0,
        bridge_psi_interval_s: float = 0.5,
        bridge_null_packets: int = 7,
        early_after_s: float | None = 0.03,
        frame_hold: bool = True,
        lag_window_s: float = 30.0,
        lag_bytes_max: int = 2 << 20,
        transcodable: Callable[[tuple[int | None, int | None], tuple[int | None, int | None]], bool]
        | None = None,
    ) -> None:
        self.keyframe_wait_s = keyframe_wait_s
        self.no_video_s = no_video_s
        self.enabled = enabled
        self.hold_max_s = hold_max_s
        self.bridge_psi_interval_s = bridge_psi_interval_s
        self.bridge_null_packets = bridge_null_packets
        # a PES held longer than this (a large keyframe arriving at the stream's pace) no longer holds
        # the other PIDs: their packets behind it go out ahead of it; None: strict order
        self.early_after_s = early_after_s
        self.frame_hold = frame_hold  # False: frames go out as they arrive; a cut one reaches the client
        # the output trails the upstream by the longest frame hold (in reads) of the last lag_window_s,
        # so that held frames come out at the pace they came in (never more than lag_bytes_max behind)
        self.lag_window_s = lag_window_s
        self._lag_packets = max(lag_bytes_max // _PKT, 1)
        self._reads = 0  # reads fed
        self._spans: deque[tuple[float, int]] = deque()  # (when, reads a frame was held) a sliding max
        self._arrivals: deque[tuple[int, float]] = deque()  # (held output index after a read, its time)
        self._due = 0  # held output before this index has waited out the lag
        self._released = 0  # output before this index went out
        self._step = 0.0  # average time between reads
        self._keep = 0  # the lag in reads
        self._last_feed: float | None = None
        # transcodable(output's (video, audio) stream types, upstream's) is True: an upstream whose
        # video or audio codec differs from the output's never enters (its bytes are to be re-encoded
        # to the output's codecs and fed as the next upstream); else the new codec gets its own PIDs
        self.transcodable = transcodable
        self._moved: set[int] = set()  # output indexes of held packets already sent ahead
        self._early_next = 0  # held packets from this index on were not looked at yet
        self._early_stuck: set[int] = set()  # PIDs with a packet that must wait: later ones wait too
        self.dropped_packets = 0  # upstream packets not let through (entry, unfinished PES, foreign PIDs)
        self.switches = 0
        self.last_entry_wait_s: float | None = None
        self._src = _Upstream()
        self._outs: dict[int, _OutStream] = {}
        self._slots: dict[tuple[int, ...], list[int]] = {}
        self._used_pids: set[int] = set()
        self._program_number: int | None = None
        self._pmt_pid: int | None = None
        self._pat_packets: list[bytearray] = []
        self._pmt: ProgramMap | None = None
        self._pmt_version = 0
        self._pmt_packets: list[bytearray] = []
        self._psi_cc: dict[int, int] = {}
        self._held: deque[tuple[int, memoryview | bytearray]] = deque()
        self._ready: list[bytes | memoryview] = []  # due at once (the old upstream's, at a switch)
        # PSI packets in the held output: ours written in place (stamped when released), or the
        # upstream's own passing unchanged (``native``: their counter becomes ours when released)
        self._marks: deque[tuple[int, memoryview, bool]] = deque()
        self._out_next = 0
        self._timeline_end: int | None = None
        self._pending_di = False
        self._started = False
        self._had_video = False
        self._last_bridge_psi: float | None = None
        self._chunks = 0  # serial number of the chunk being processed

    # --- public ---------------------------------------------------------------------------------------

    @property
    def entered(self) -> bool:
        """The current upstream's clean entry is done: from here on its packets go out."""
        return self._src.entered or not self.enabled

    @property
    def entry_sent(self) -> bool:
        """The current upstream's entry (PAT/PMT, then its keyframe) went out: the client has it."""
        entry = self._src.entry_index
        return not self.enabled or (entry is not None and self._released > entry)

    @property
    def codec_change(self) -> bool:
        """The current upstream's codecs differ from the output's and it is held out (transcodable)."""
        return self._src.codec_change

    def output_types(self) -> tuple[int | None, int | None]:
        """stream_type of the output program's first video and first audio stream."""
        return _first_types(self._pmt)

    def upstream_types(self) -> tuple[int | None, int | None]:
        """stream_type of the current upstream's first video and first audio stream."""
        return _first_types(self._src.program)

    @property
    def pmt_version(self) -> int:
        return self._pmt_version

    def feed(
        self,
        packets: Sequence[bytes | bytearray | memoryview],
        now: float,
        region: tuple[bytearray, int] | None = None,
    ) -> list[bytes | memoryview]:
        """Take whole packets of the current upstream; return what is ready to write, in order.

        ``region=(buf, start)``: ``packets`` is the one view ``buf[start:start + len]`` and the caller
        hands those bytes over, so headers are rewritten in ``buf`` itself instead of in a copy.
        """
        if not self.enabled:
            out_pass: list[bytes | memoryview] = [
                p if isinstance(p, bytes | memoryview) else bytes(p) for p in packets
            ]
            self._started = self._started or any(len(p) for p in out_pass)
            return out_pass
        src = self._src
        if src.t0 is None:
            src.t0 = now
        out: list[bytes | memoryview] = []
        self._drain_ready(out)
        if packets:
            if region is not None and len(packets) == 1:
                buf, start = region
                stop = start + len(packets[0])
            else:
                buf, start = bytearray().join(packets), 0
                stop = len(buf)
            if (stop - start) % _PKT:
                raise ValueError("Splicer.feed takes whole 188-byte packets (use PacketAligner)")
            view = memoryview(buf)
            pos: int | None = start
            while pos is not None and pos < stop:
                pos = self._chunk(buf, view, pos, stop, now)
            if self.frame_hold:
                self._arrivals.append((self._out_next, now))
                self._reads += 1
                if self._last_feed is not None:
                    gap = min(now - self._last_feed, 0.1)
                    self._step = gap if self._step <= 0 else self._step + (gap - self._step) / 4
                self._last_feed = now
        self._release(out, now)
        if out:
            self._started = True
        return out

    def poll(self, now: float) -> list[bytes | memoryview]:
        """What became due without new input (the lag ran out while the upstream was silent)."""
        out: list[bytes | memoryview] = []
        if self.enabled and self._src.t0 is not None:
            self._drain_ready(out)
            self._release(out, now, polled=True)
        return out

    @property
    def lag_s(self) -> float:
        """How far the output trails the upstream, so that frames held whole do not leave gaps."""
        return self._keep * self._step

    def switch(self, now: float) -> None:
        """The next packets fed come from another upstream: drop unfinished PES, expect a clean entry."""
        self.switches += 1
        if not self.enabled:
            return
        self._finish_upstream(now)
        self._src = _Upstream()
        # the new upstream's entry keyframe is held whole anyway: the client waits for it during the
        # switch, and that wait is the new lag, learned again from this upstream's frames
        self._keep = 0
        self._spans.clear()

    def join_prefix(self) -> bytes:
        """PAT and PMT for a client joining mid-stream.

        Each packet repeats the last continuity_counter sent on its PID: the joiner's first packet on
        that PID (any value is accepted there), and the next regular one continues it. b"" until there
        is an output program, and in passthrough mode (the joiner then waits for the stream's own PSI).
        """
        if not self.enabled or not self._pat_packets or not self._started:
            return b""
        out = bytearray()
        for p in (*self._pat_packets, *self._pmt_packets):
            q = bytearray(p)
            cc = self._psi_cc.get(((q[1] & 0x1F) << 8) | q[2])
            if cc is not None:
                q[3] = (q[3] & 0xF0) | cc
            out += q
        return bytes(out)

    def keyframe_offset(self, data: bytes | bytearray | memoryview) -> int | None:
        """Byte offset in an output chunk of the first video packet a decoder can start from.

        A joining client is sent output from there on. None when the chunk has none (or, in
        passthrough mode or without video, the chunk's start: there is nothing better to wait for).
        """
        pmt = self._pmt
        if not self.enabled or pmt is None:
            return 0
        video = [es for es in pmt.streams if stream_kind(es.stream_type, es.ES_info) == "video"]
        if not video:
            return 0
        pid, stype = video[0].elementary_PID, video[0].stream_type
        hi, lo = 0x40 | (pid >> 8), pid & 0xFF  # payload_unit_start_indicator set, on that PID
        for off in range(0, len(data) - _PKT + 1, _PKT):
            if data[off + 1] & 0x5F == hi and data[off + 2] == lo and is_random_access(data, off, stype):
                return off
        return None

    def bridge(self, now: float) -> bytes:
        """Packets that keep a client fed during a gap; b"" before the session's first real output."""
        if not self._started:
            return b""
        parts: list[bytes | memoryview] = []
        self._drain_ready(parts)
        if (
            self.enabled
            and self._pat_packets
            and (self._last_bridge_psi is None or now - self._last_bridge_psi >= self.bridge_psi_interval_s)
            and not any(native for _, _, native in self._marks)  # their counters are fixed: keep order
        ):
            self._last_bridge_psi = now
            for p in (*self._pat_packets, *self._pmt_packets):
                parts.append(self._stamp(bytearray(p)))
        parts.append(NULL_PACKET * self.bridge_null_packets)
        return b"".join(parts)

    def health(self, now: float) -> str | None:
        """``"NoVideo"`` when the current upstream lost the video the program had; else None."""
        if not self.enabled:
            return None
        src = self._src
        if src.program is None:
            return None
        if not src.program.has_video:
            return NO_VIDEO if self._had_video else None
        if src.audio_seen is None or now - src.audio_seen > self.no_video_s:
            return None  # no audio either: a stall, not this check's business
        since = src.video_seen if src.video_seen is not None else src.t0
        if since is not None and now - since >= self.no_video_s:
            return NO_VIDEO
        return None

    # --- output bookkeeping ---------------------------------------------------------------------------

    def _stamp(self, packet: bytearray | memoryview) -> bytearray | memoryview:
        """Give a generated PSI packet its continuity_counter at the moment it goes out."""
        pid = ((packet[1] & 0x1F) << 8) | packet[2]
        cc = (self._psi_cc.get(pid, -1) + 1) & 0x0F
        self._psi_cc[pid] = cc
        packet[3] = (packet[3] & 0xF0) | cc
        return packet

    def _settle(self, packet: memoryview, native: bool) -> None:
        """A held PSI packet goes out: stamp ours; follow the upstream's counter for its own."""
        if native:
            self._psi_cc[((packet[1] & 0x1F) << 8) | packet[2]] = packet[3] & 0x0F
        else:
            self._stamp(packet)

    def _settle_to(self, index: int) -> None:
        """Number the PSI packets of the held output before ``index``: counters go in output order."""
        marks = self._marks
        while marks and marks[0][0] < index:
            _, packet, native = marks.popleft()
            self._settle(packet, native)

    def _drain_ready(self, out: list[bytes | memoryview]) -> None:
        out += self._ready
        self._ready.clear()

    def _keep_reads(self, now: float, polled: bool) -> int:
        """How many of the latest reads stay held: the lag, counted in reads.

        Output leaves when reads come, so the lag is kept as a number of reads (one in, one out):
        a lag in seconds compared at jittery read times would let out nothing at one read and two at
        the next, doubling a gap. ``polled``: no read came for longer than the lag (a silent
        upstream), so what is older than the lag goes.
        """
        if polled:
            last = self._last_feed if self._last_feed is not None else now
            lag = self.lag_s
            if now - last <= max(lag, 2 * self._step):
                return len(self._arrivals)  # reads still come: they let the output out
            return sum(1 for _, when in self._arrivals if when > now - lag)
        return self._keep

    def _due_limit(self, now: float, done: int, polled: bool = False) -> int:
        """Held output before this index has trailed its read by the lag (or by lag_bytes_max).

        A read is forgotten only once released whole (up to ``done``, where the frame hold ends): the
        reads of a frame still arriving keep their places, so when its completion teaches a longer
        lag, they leave at their own pace, not in a burst.
        """
        arrivals = self._arrivals
        keep, floor = self._keep_reads(now, polled), self._out_next - self._lag_packets
        while arrivals and (len(arrivals) > keep or arrivals[0][0] <= floor):
            end = arrivals[0][0]
            if end > done:
                return end
            self._due = end
            arrivals.popleft()
        return self._due if arrivals else self._out_next

    def _due_after(self) -> int:
        """How far the held output is due, past a frame still held (what send-ahead may look at)."""
        arrivals = self._arrivals
        keep, floor = self._keep, self._out_next - self._lag_packets
        upto = self._due
        for k, (end, _) in enumerate(arrivals):
            if len(arrivals) - k <= keep and end > floor:
                return upto
            upto = end
        return self._out_next

    def _learn_lag(self, reads: int, now: float) -> None:
        """A frame was held for ``reads`` reads before it was complete: keep that many reads back.

        Held frames then leave at the pace they arrived instead of in a burst after a gap (a 62 kB
        keyframe at 8 Mbit/s takes ~60 ms to arrive; a frame hold without lag leaves the client
        without bytes for that long). Counted in reads, with one to spare: each step up is itself
        one read with nothing to let out, so it steps up only for a frame the count did not cover.
        """
        spans = self._spans
        while spans and spans[-1][1] <= reads:
            spans.pop()
        spans.append((now, reads))
        while spans[0][0] < now - self.lag_window_s:
            spans.popleft()
        need = spans[0][1]  # a frame held for this many reads leaves no gap when keep >= need
        if not self._src.keyframe_held and self._step > 0:
            need = max(need, math.ceil(LAG_PRIOR_S / self._step) - 1)
        if need > self._keep or need + 2 < self._keep:
            self._keep = need + 1 if need else 0

    def _release(self, out: list[bytes | memoryview], now: float, polled: bool = False) -> None:
        """Emit held output up to the earliest start of a PES not known to be complete, once due.

        A hold older than hold_max_s ends, but only while packets flow (not ``polled``): when nothing
        arrives, the upstream may have died mid-frame, and the switch drops that frame.
        """
        limit = self._out_next
        since = now
        for route in self._src.routes.values():
            o = route.out
            if o.pes_start is not None and route.entered:
                if not polled and now - o.pes_start_time > self.hold_max_s:
                    o.pes_start = None  # a stuck PID must not stall the program
                elif o.pes_start < limit:
                    limit, since = o.pes_start, o.pes_start_time
        frames_done = limit
        due = self._due_limit(now, frames_done, polled)
        limit = min(limit, due)
        held = self._held
        while held and held[0][0] < limit:
            idx, seg = held[0]
            if isinstance(seg, bytearray):
                self._settle_to(idx)
                out.append(bytes(self._stamp(seg)))
                held.popleft()
                continue
            count = len(seg) // _PKT
            if idx + count <= limit:
                self._settle_to(idx + count)
                self._emit(out, idx, seg)
                held.popleft()
            else:
                k = limit - idx
                self._settle_to(limit)
                self._emit(out, idx, seg[: k * _PKT])
                held[0] = (limit, seg[k * _PKT :])
                break
        self._settle_to(limit)
        self._released = max(self._released, limit)
        if not held or limit >= self._early_next:
            self._early_next = limit  # a new hold (or none): nothing behind it was looked at
            self._early_stuck.clear()
        if (
            held
            and self.early_after_s is not None
            and frames_done < due
            and now - since >= self.lag_s + self.early_after_s
        ):
            self._send_ahead(out, self._due_after())

    def _emit(self, out: list[bytes | memoryview], idx: int, seg: memoryview) -> None:
        """Out goes a held segment, but for the packets already sent ahead of it."""
        moved = self._moved
        if not moved:
            out.append(seg)
            return
        out += _runs_without(seg, idx, lambda i, _pid: i in moved)
        moved.difference_update(range(idx, idx + len(seg) // _PKT))

    def _send_ahead(self, out: list[bytes | memoryview], upto: int) -> None:
        """A PES held for long: send the other PIDs' packets behind it now, in their own order.

        A large keyframe arrives at the stream's pace (~60 ms for 60 kB at 8 Mbit/s) and is held
        whole; audio, null and PCR packets that arrived meanwhile go out at once instead of waiting
        with it, so the client keeps receiving. Packets of a PID still holding a PES of its own wait,
        and so does everything after them on that PID (per-PID order is kept); PSI and our inserted
        packets keep their place.
        """
        holding = {
            route.out.pid
            for route in self._src.routes.values()
            if route.entered and route.out.pes_start is not None
        }
        stuck = self._early_stuck
        stuck.update(holding, (PAT_PID, self._pmt_pid or PAT_PID))
        moved = self._moved
        picked: list[memoryview] = []
        first = self._early_next
        for idx, seg in self._held:
            if idx >= upto:
                break
            if isinstance(seg, bytearray):
                continue
            count = min(len(seg) // _PKT, upto - idx)
            if idx + count <= first:
                continue
            skip = max(first - idx, 0)
            part = seg[skip * _PKT : count * _PKT]
            n = count - skip
            hi, lo = bytes(part[1::_PKT]), bytes(part[2::_PKT])
            waits = 0
            for pid in stuck:
                h = int.from_bytes(hi.translate(_pid_hi_table(pid >> 8)), "little")
                waits |= h & int.from_bytes(lo.translate(_pid_lo_table(pid & 0xFF)), "little")
            run = 0
            for j in [*_ones(waits.to_bytes(n, "little")), n]:  # runs between the packets that wait
                if j > run:
                    picked.append(part[run * _PKT : j * _PKT])
                    moved.update(range(idx + skip + run, idx + skip + j))
                run = j + 1
        self._early_next = max(first, upto)
        if picked:
            out.append(b"".join(picked))  # a copy: these bytes also stay in the held segments, skipped

    def _finish_upstream(self, now: float) -> None:
        """At a switch: drop each stream's unfinished PES, fix CC and timeline carry-over."""
        src = self._src
        dropping: dict[int, int] = {}
        for route in src.routes.values():
            o = route.out
            # unfinished, however old: after a stall the switch comes stall_timeout_s later, and the
            # PES the dead upstream left half-sent must not reach the client (a hold that lapsed while
            # the stream flowed has no pes_start any more)
            if route.entered and o.pes_start is not None:
                dropping[o.pid] = o.pes_start
        moved = self._moved

        def gone(i: int, pid: int) -> bool:
            if i in moved:
                return True  # sent ahead already
            start = dropping.get(pid)
            if start is None or i < start:
                return False
            self.dropped_packets += 1  # the dead upstream's unfinished PES
            return True

        for idx, seg in self._held:
            if isinstance(seg, bytearray):
                self._settle_to(idx)
                self._ready.append(bytes(self._stamp(seg)))
                continue
            self._settle_to(idx + len(seg) // _PKT)
            if not (dropping or moved):
                self._ready.append(seg)
            else:
                self._ready += _runs_without(seg, idx, gone)
        self._settle_to(self._out_next)
        self._held.clear()
        self._arrivals.clear()
        moved.clear()
        self._early_stuck.clear()
        self._early_next = self._out_next
        ref_end: int | None = None  # the timeline continues one frame after the last reference DTS...
        ends: list[int] = []  # ...or, if the reference left nothing, after the latest other stream
        for route in src.routes.values():
            if not route.entered:
                continue
            o = route.out
            if o.pid in dropping:
                o.next_cc = o.pes_cc
                o.cur_pts, o.cur_dts = o.prev_pts, o.prev_dts
                o.prev_pts = o.prev_dts = None
            elif o.last_cc is not None:
                o.next_cc = (o.last_cc + 1) & 0x0F
            o.pes_start = None
            o.pes_remaining = -1
            if o.cur_dts is None:
                continue
            if route.is_ref:
                ref_end = (o.cur_dts + o.frame) % PTS_MODULUS
            else:
                ends.append((o.cur_dts + max(o.span, o.frame)) % PTS_MODULUS)
        if ref_end is not None:
            self._timeline_end = ref_end
        else:
            for end in ends:
                if self._timeline_end is None or _later(end, self._timeline_end):
                    self._timeline_end = end
        if src.entered:
            self._pending_di = True

    # --- program mapping ------------------------------------------------------------------------------

    def _allocate(self, preferred: int) -> int:
        reserved = self._used_pids | {self._pmt_pid or -1}
        if 0x20 <= preferred < NULL_PID and preferred not in reserved:
            pid = preferred
        else:
            pid = 0x100
            while pid in reserved:
                pid += 1
        self._used_pids.add(pid)
        return pid

    def _out(self, pid: int) -> _OutStream:
        o = self._outs.get(pid)
        if o is None:
            o = self._outs[pid] = _OutStream(pid)
        return o

    def _set_program(self, src: _Upstream, program: ProgramMap) -> None:
        """Map an upstream's program onto output PIDs (by stream type and order); keep routes that stay."""
        if self._program_number is None:
            self._program_number = program.program_number
            self._pmt_pid = src.pmt_pid
            self._pat_packets = packetize_section(
                PAT_PID,
                build_pat_section(src.transport_stream_id, [(program.program_number, src.pmt_pid or 0)]),
            )
        if self.transcodable is not None and self._pmt is not None and not src.entered:
            known = {key for key in self._slots if key != (-1,)}
            kinds = {stream_kind(es.stream_type, es.ES_info) for es in self._pmt.streams}
            firsts = [
                next((es for es in program.streams if stream_kind(es.stream_type, es.ES_info) == k), None)
                for k in ("video", "audio")
                if k in kinds
            ]
            if any(es is not None and _es_key(es) not in known for es in firsts) and self.transcodable(
                _first_types(self._pmt), _first_types(program)
            ):
                src.codec_change, src.program, src.routes, src.tables = True, program, {}, None
                return
        old = src.routes
        routes: dict[int, _Route] = {}
        ordinal: dict[tuple[int, ...], int] = {}
        for es in program.streams:
            if es.elementary_PID in routes or es.elementary_PID in (PAT_PID, NULL_PID, src.pmt_pid):
                continue
            key = _es_key(es)
            n = ordinal.get(key, 0)
            ordinal[key] = n + 1
            pids = self._slots.setdefault(key, [])
            if n == len(pids):
                pids.append(self._allocate(es.elementary_PID))
            out_pid = pids[n]
            kind = stream_kind(es.stream_type, es.ES_info)
            prev = old.get(es.elementary_PID)
            if prev is not None and prev.out.pid == out_pid and prev.kind == kind:
                route = prev
                route.stream_type = es.stream_type
                route.is_ref = False
            else:
                route = _Route(es.elementary_PID, self._out(out_pid), es.stream_type, kind)
            routes[es.elementary_PID] = route
        # The reference stream sets the entry point and the timeline: the first video, else the first audio.
        ref = next((r for r in routes.values() if r.kind == "video"), None)
        ref = ref or next((r for r in routes.values() if r.kind == "audio"), None)
        if ref is not None:
            ref.is_ref = True
        pcr = program.PCR_PID
        if pcr != NULL_PID and pcr not in routes and pcr not in (PAT_PID, src.pmt_pid):
            pids = self._slots.setdefault((-1,), [])
            if not pids:
                pids.append(self._allocate(pcr))
            prev = old.get(pcr)
            routes[pcr] = (
                prev if prev is not None and prev.kind == "pcr" else _Route(pcr, self._out(pids[0]), 0, "pcr")
            )
        src.routes = routes
        src.program = program
        src.tables = None
        if program.has_video:
            self._had_video = True

    def _output_program(self, src: _Upstream) -> ProgramMap:
        program = src.program
        assert program is not None and self._program_number is not None
        streams = tuple(
            ElementaryStream(es.stream_type, src.routes[es.elementary_PID].out.pid, es.ES_info)
            for es in program.streams
            if es.elementary_PID in src.routes and src.routes[es.elementary_PID].kind != "pcr"
        )
        pcr = program.PCR_PID
        out_pcr = src.routes[pcr].out.pid if pcr in src.routes else NULL_PID
        return ProgramMap(self._program_number, out_pcr, program.program_info, streams)

    def _publish(self, src: _Upstream) -> list[bytearray]:
        """Make the upstream's program the output's; return PAT+PMT packets to send now."""
        program = self._output_program(src)
        if self._pmt is not None and program != self._pmt:
            self._pmt_version = (self._pmt_version + 1) & 0x1F
        if program != self._pmt or not self._pmt_packets:
            self._pmt = program
            self._pmt_packets = packetize_section(
                self._pmt_pid or 0, build_pmt_section(program, self._pmt_version)
            )
        return [bytearray(p) for p in (*self._pat_packets, *self._pmt_packets)]

    def _build_tables(self, src: _Upstream) -> _Tables:
        """Translate tables for the fast path: which PIDs pass column-wise, and how they are rewritten."""
        pids = {PAT_PID, NULL_PID, *src.routes}
        if src.pmt_pid is not None:
            pids.add(src.pmt_pid)
        his = sorted({p >> 8 for p in pids})[:15]
        los = sorted({p & 0xFF for p in pids})[:15]
        hi_code = {h: i + 1 for i, h in enumerate(his)}
        lo_code = {v: i + 1 for i, v in enumerate(los)}
        kind = bytearray(b"\x01" * 256)
        new_hi = bytearray(256)
        new_lo = bytearray(256)
        delta = bytearray(256)
        identity = True
        tracked: list[tuple[int, _OutStream]] = []
        counted: list[tuple[int, _OutStream]] = []
        psi: list[tuple[int, bytes]] = []
        for pid in pids:
            h, v = hi_code.get(pid >> 8), lo_code.get(pid & 0xFF)
            if h is None or v is None:
                continue  # more than 15 distinct PID bytes: this PID takes the per-packet path
            c = h << 4 | v
            if pid == NULL_PID:
                kind[c], new_hi[c], new_lo[c] = 0, 0x1F, 0xFF
                continue
            if pid in src.psi_native and pid in (PAT_PID, src.pmt_pid):
                ours = self._pat_packets if pid == PAT_PID else self._pmt_packets
                kind[c], new_hi[c], new_lo[c] = 0, pid >> 8, pid & 0xFF
                psi.append((c, _psi_key(ours[0])))
                continue
            route = src.routes.get(pid)
            if route is None or not route.entered or route.kind == "pcr":
                continue
            kind[c] = 0
            if route.kind == "audio":
                counted.append((c, route.out))
            out_pid = route.out.pid
            new_hi[c], new_lo[c], delta[c] = out_pid >> 8, out_pid & 0xFF, route.cc_delta
            identity = identity and out_pid == pid and route.cc_delta == 0
            tracked.append((c, route.out))
        return _Tables(
            hi=bytes(hi_code.get(b & 0x1F, 0) << 4 for b in range(256)),
            lo=bytes(lo_code.get(b, 0) for b in range(256)),
            kind=bytes(kind),
            new_hi=bytes(new_hi),
            new_lo=bytes(new_lo),
            delta=bytes(delta),
            identity=identity,
            tracked=tracked,
            counted=counted,
            psi=psi,
        )

    # --- per chunk ------------------------------------------------------------------------------------

    def _chunk(self, whole: bytearray, view: memoryview, base: int, size: int, now: float) -> int | None:
        """Process whole packets from ``base`` in place; return where to go on when the routes changed.

        Header columns are cut from the bytearray itself: an extended slice of a bytearray is ~7x
        cheaper than one of a memoryview.
        """
        buf = view[base:size]
        n = (size - base) // _PKT
        self._chunks += 1
        b1 = bytes(whole[base + 1 : size : _PKT])
        b2 = bytes(whole[base + 2 : size : _PKT])
        b3 = bytes(whole[base + 3 : size : _PKT])
        src = self._src
        cls = b""
        new_b3 = b""
        tables: _Tables | None = None
        psi_stop: dict[int, int] = {}
        positions: Iterable[int]
        if src.entered:
            tables = src.tables or self._build_tables(src)
            src.tables = tables
            hi, lo = _ints(b1.translate(tables.hi), b2.translate(tables.lo))
            clsi = hi | lo
            cls = clsi.to_bytes(n, "little")
            kind, pusi = _ints(cls.translate(tables.kind), b1.translate(_PUSI_T))
            special = kind
            rebase = src.offset or self._pending_di
            if rebase:
                af, pcrf = _ints(b3.translate(_AF_T), bytes(whole[base + 5 : size : _PKT]).translate(_PCRF_T))
                special |= af & pcrf | pusi
            positions = _ones(special.to_bytes(n, "little")) if special else []
            if pusi and not rebase:
                # Nothing to rewrite in a PES header: only each stream's last two PES starts matter (the
                # one held now, and the step from the one before it: the frame duration).
                starts = (clsi & pusi * 0xFF).to_bytes(n, "little")
                for c, _o in tables.tracked:
                    j = starts.rfind(c)
                    if j >= 0:
                        positions.append(j)
                        j = starts.rfind(c, 0, j)
                        if j >= 0:
                            positions.append(j)
            for c, key in tables.psi:  # native PSI: each packet must still equal ours, else look at it
                j = cls.find(c)
                while j >= 0:
                    if _psi_key(view[base + j * _PKT : base + (j + 1) * _PKT]) != key:
                        positions.append(j)
                        psi_stop[c] = j
                        break
                    j = cls.find(c, j + 1)
            positions.sort()
            if not tables.identity:
                top, pid_hi, low, add, high = _ints(
                    b1.translate(_TOP3_T),
                    cls.translate(tables.new_hi),
                    b3.translate(_LOW4_T),
                    cls.translate(tables.delta),
                    b3.translate(_HIGH4_T),
                )
                whole[base + 1 : size : _PKT] = (top | pid_hi).to_bytes(n, "little")
                whole[base + 2 : size : _PKT] = cls.translate(tables.new_lo)
                new_b3 = ((low + add) & _mask0f(n) | high).to_bytes(n, "little")
                whole[base + 3 : size : _PKT] = new_b3
            else:
                new_b3 = b3
        else:
            positions = range(n)

        held = self._held
        out_next = self._out_next
        seg_start = 0
        insert: list[bytearray] = []
        end = n
        restart = False
        for i in positions:
            r = self._packet(buf, i * _PKT, b1[i], b2[i], b3[i], out_next + i - seg_start, now, insert)
            if insert or not r & _KEEP:
                if i > seg_start:
                    held.append((out_next, buf[seg_start * _PKT : i * _PKT]))
                    out_next += i - seg_start
                for p in insert:
                    held.append((out_next, p))
                    out_next += 1
                insert.clear()
                seg_start = i if r & _KEEP else i + 1
                if not r & _KEEP:
                    self.dropped_packets += 1
            if r & _RESTART:
                end = i + 1
                restart = True
                break
        if end > seg_start:
            held.append((out_next, buf[seg_start * _PKT : end * _PKT]))
            out_next += end - seg_start
        self._out_next = out_next
        if tables is not None:
            for c, o in tables.tracked:
                j = cls.rfind(c, 0, end)
                if j >= 0 and new_b3:
                    o.last_cc = new_b3[j] & 0x0F
            for c, o in tables.counted:
                if o.pes_remaining > 0:
                    self._count_pes(buf, cls, b3, c, o, end)
            marks = self._marks
            for (
                c,
                _,
            ) in tables.psi:  # the last native PSI packet let through: its counter is the one to follow
                j = cls.rfind(c, 0, min(end, psi_stop.get(c, end)))
                if j >= 0:
                    marks.append((max(out_next - (end - j), 0), buf[j * _PKT : (j + 1) * _PKT], True))
                    if len(marks) > 1 and marks[-2][0] > marks[-1][0]:
                        marks = self._marks = deque(sorted(marks, key=lambda m: m[0]))
        if not restart or end >= n:
            return None
        rest = base + end * _PKT
        if tables is not None and not tables.identity:  # undo the column rewrite of the rest
            whole[rest + 1 : size : _PKT] = b1[end:]
            whole[rest + 2 : size : _PKT] = b2[end:]
            whole[rest + 3 : size : _PKT] = b3[end:]
        return rest

    def _count_pes(self, buf: memoryview, cls: bytes, b3: bytes, c: int, o: _OutStream, end: int) -> None:
        """Count a bounded PES's payload through this chunk's packets of its class; release it when whole."""
        j = o.pes_index + 1 if o.pes_chunk == self._chunks else 0
        remaining = o.pes_remaining
        while (j := cls.find(c, j, end)) >= 0:
            h3 = b3[j]
            if h3 & 0x10:
                remaining -= _PKT - (5 + buf[j * _PKT + 4] if h3 & 0x20 else 4)
                if remaining <= 0:
                    o.pes_start = None
                    remaining = -1
                    break
            j += 1
        o.pes_remaining = remaining

    def _packet(
        self,
        buf: memoryview,
        off: int,
        h1: int,
        h2: int,
        h3: int,
        out_index: int,
        now: float,
        insert: list[bytearray],
    ) -> int:
        """One packet that the column pass cannot settle; rewrites it in place, returns _KEEP/_RESTART."""
        src = self._src
        pid = ((h1 & 0x1F) << 8) | h2
        if pid == PAT_PID:
            return self._on_pat(buf[off : off + _PKT], out_index, insert)
        if pid == src.pmt_pid:
            return self._on_pmt(buf[off : off + _PKT], out_index, insert)
        route = src.routes.get(pid)
        if route is None:
            if not src.entered:
                return 0
            if pid != NULL_PID:  # a PID outside the program (SDT, EIT, another service): make it a null
                buf[off + 1], buf[off + 2], buf[off + 3] = 0x1F, 0xFF, 0x10  # packet, in place
                self.dropped_packets += 1
            return _KEEP
        kind = route.kind
        pusi = h1 & 0x40
        if pusi:
            if kind == "video":
                src.video_seen = now
            elif kind == "audio":
                src.audio_seen = now
        result = _KEEP
        o = route.out
        if not route.entered:
            if kind == "pcr":
                if not src.entered:
                    return 0
            elif not pusi or not self._enter(src, route, buf, off, now, insert):
                return 0
            if src.entry_index is None and src.entered:
                src.entry_index = out_index + len(insert)  # the keyframe, after our PAT/PMT
            if o.next_cc is None:  # a PID the client has not seen yet: keep the upstream's counter
                route.cc_delta = 0
            else:  # a packet without payload repeats the previous counter
                route.cc_delta = (o.next_cc - (0 if h3 & 0x10 else 1) - h3) & 0x0F
            route.entered = True
            src.tables = None
            result |= _RESTART
        cc = ((h3 & 0x0F) + route.cc_delta) & 0x0F
        out_pid = o.pid
        buf[off + 1] = (h1 & 0xE0) | (out_pid >> 8)
        buf[off + 2] = out_pid & 0xFF
        buf[off + 3] = (h3 & 0xF0) | cc
        o.last_cc = cc
        af = h3 & 0x20 and buf[off + 4]
        if af and buf[off + 5] & 0x10 and buf[off + 4] >= 7:
            if src.offset:
                write_pcr_base(buf, off + 6, (read_pcr_base(buf, off + 6) + src.offset) % PTS_MODULUS)
            if self._pending_di:
                buf[off + 5] |= 0x80
                self._pending_di = False
        if pusi and kind != "pcr":
            self._pes_start(route, buf, off, cc, out_index + len(insert), now)
        elif o.pes_remaining > 0 and h3 & 0x10 and src.tables is None:  # else _count_pes does it
            o.pes_remaining -= _PKT - (5 + buf[off + 4] if h3 & 0x20 else 4)
            if o.pes_remaining <= 0:
                o.pes_start = None
                o.pes_remaining = -1
        return result

    def _enter(
        self, src: _Upstream, route: _Route, buf: memoryview, off: int, now: float, insert: list[bytearray]
    ) -> bool:
        """Decide whether this PES start is where a stream of the new upstream enters the output."""
        p = payload_offset(buf, off)
        pts, dts = _pes_timestamps(buf, off, p)
        if not src.entered:
            if not route.is_ref or pts is None:
                return False
            if (
                route.kind == "video"
                and not is_random_access(buf, off, route.stream_type, p)
                and now - (src.t0 if src.t0 is not None else now) < self.keyframe_wait_s
            ):
                return False
            first = dts if dts is not None else pts
            src.offset = 0 if self._timeline_end is None else (self._timeline_end - first) % PTS_MODULUS
            insert.extend(self._publish(src))
            self._adopt_psi(src)
            src.entered = True
            self.last_entry_wait_s = now - (src.t0 if src.t0 is not None else now)
            return True
        last = route.out.cur_pts
        if pts is None or last is None:
            return True
        # Not before the end of the last PES that went out on this PID: its start plus one PES step.
        end = (last + route.out.span) % PTS_MODULUS
        return not _later(end, (pts + src.offset) % PTS_MODULUS)

    def _adopt_psi(self, src: _Upstream) -> None:
        """At a session's first entry: where the upstream's PAT/PMT equal ours, let them pass as they are.

        Our entry copies are numbered just before the upstream's next packet on each PID, so the
        counters run on; then nothing is rewritten on those PIDs (checked every ``psi_check_s``).
        """
        for pid, ours in ((PAT_PID, self._pat_packets), (self._pmt_pid, self._pmt_packets)):
            last = src.psi_last.get(pid) if pid is not None else None
            if (
                pid is not None
                and last is not None
                and len(ours) == 1
                and pid not in self._psi_cc
                and pid in (PAT_PID, src.pmt_pid)
                and last[0] == _psi_key(ours[0])
            ):
                src.psi_native.add(pid)
                self._psi_cc[pid] = (last[1] - 1) & 0x0F
        src.tables = None

    def _pes_start(
        self, route: _Route, buf: memoryview, off: int, cc: int, out_index: int, now: float
    ) -> None:
        """A PES begins: rebase its PTS/DTS, start holding it, learn the frame duration."""
        o = route.out
        p = payload_offset(buf, off)
        pts, dts = _pes_timestamps(buf, off, p)
        offset = self._src.offset
        if pts is not None:
            if offset:
                pts = (pts + offset) % PTS_MODULUS
                write_timestamp(buf, off + p + 9, pts)
                if dts is not None:
                    dts = (dts + offset) % PTS_MODULUS
                    write_timestamp(buf, off + p + 14, dts)
            d = dts if dts is not None else pts
            if o.cur_dts is not None:
                step = (d - o.cur_dts) % PTS_MODULUS
                if 0 < step < 90000:
                    o.frame = step
                    o.span = max(o.span, step)
            o.prev_pts, o.prev_dts = o.cur_pts, o.cur_dts
            o.cur_pts, o.cur_dts = pts, d
        if route.kind not in ("video", "audio") or not self.frame_hold:
            return
        src = self._src
        if route.kind == "video":
            if o.pes_start is not None:  # the frame before this one is complete
                held = now - o.pes_start_time >= LAG_MIN_HOLD_S  # a burst of reads: no one waited
                src.keyframe_held = src.keyframe_held or o.pes_key
                self._learn_lag(self._reads - o.pes_start_read if held else 0, now)
            o.pes_key = not src.keyframe_held and is_random_access(buf, off, route.stream_type, p)
        o.pes_start = out_index
        o.pes_start_time = now
        o.pes_start_read = self._reads
        o.pes_cc = cc
        o.pes_remaining = -1
        o.pes_chunk = self._chunks
        o.pes_index = off // _PKT
        if route.kind == "audio" and p + 6 <= _PKT:
            length = (buf[off + p + 4] << 8) | buf[off + p + 5]
            if length:
                o.pes_remaining = length + 6 - (_PKT - p)
                if o.pes_remaining <= 0:
                    o.pes_start = None
                    o.pes_remaining = -1

    def _in_place(
        self, packet: memoryview, ours: list[bytearray], out_index: int, insert: list[bytearray]
    ) -> int:
        """Put our PSI where the upstream's was: in place when it is one packet (no cut in the output)."""
        if len(ours) != 1:
            insert.extend(bytearray(p) for p in ours)
            return 0
        packet[:] = ours[0]
        self._marks.append((out_index, packet, False))
        return _KEEP

    def _native(self, pid: int, packet: memoryview, ours: list[bytearray], out_index: int) -> int:
        """A native PSI packet: _KEEP while it still equals ours; else leave native mode and restart."""
        src = self._src
        if len(ours) == 1 and _psi_key(packet) == _psi_key(ours[0]):
            self._marks.append((out_index, packet, True))
            return _KEEP
        src.psi_native.discard(pid)
        src.tables = None
        return _RESTART

    def _psi_seen(self, pid: int, packet: memoryview, ours: list[bytearray], out_index: int) -> int:
        """A PAT/PMT packet: _KEEP while native and equal; else remember it for _adopt_psi (0/_RESTART)."""
        src = self._src
        result = 0
        if pid in src.psi_native:
            result = self._native(pid, packet, ours, out_index)
            if result & _KEEP:
                return result
        src.psi_last[pid] = (_psi_key(packet), packet[3] & 0x0F)
        return result

    def _on_pat(self, packet: memoryview, out_index: int, insert: list[bytearray]) -> int:
        src = self._src
        result = self._psi_seen(PAT_PID, packet, self._pat_packets, out_index)
        if result & _KEEP:
            return result
        for section in src.pat.push(packet):
            tsid, _version, programs = parse_pat(section)
            programs = [(n, pid) for n, pid in programs if n != 0]
            if not programs:
                continue
            number, pmt_pid = programs[0]
            src.transport_stream_id = tsid
            if (number, pmt_pid) != (src.program_number, src.pmt_pid):
                src.program_number, src.pmt_pid = number, pmt_pid
                src.pmt = SectionAssembler()
                src.tables = None
        if src.entered:
            return result | self._in_place(packet, self._pat_packets, out_index, insert)
        return result

    def _on_pmt(self, packet: memoryview, out_index: int, insert: list[bytearray]) -> int:
        src = self._src
        assert src.pmt_pid is not None
        result = self._psi_seen(src.pmt_pid, packet, self._pmt_packets, out_index)
        if result & _KEEP:
            return result
        changed = False
        for section in src.pmt.push(packet):
            program, _version = parse_pmt(section)
            if program.program_number != src.program_number or program == src.program:
                continue
            self._set_program(src, program)
            if src.entered:
                insert.extend(self._publish(src)[len(self._pat_packets) :])
                changed = True
        if changed:
            return _RESTART
        if src.entered and packet[1] & 0x40:
            return result | self._in_place(packet, self._pmt_packets, out_index, insert)
        return result


def _pes_timestamps(b: bytes | bytearray | memoryview, off: int, p: int) -> tuple[int | None, int | None]:
    """(PTS, DTS) of the PES header starting at payload offset ``p``, when the first packet holds them."""
    o = off + p
    if p + 14 > _PKT or b[o] or b[o + 1] or b[o + 2] != 1 or b[o + 3] in _NO_PES_HEADER:
        return None, None
    flags = b[o + 7] >> 6
    if not flags & 2:
        return None, None
    pts = read_timestamp(b, o + 9)
    if flags == 3 and p + 19 <= _PKT:
        return pts, read_timestamp(b, o + 14)
    return pts, None
