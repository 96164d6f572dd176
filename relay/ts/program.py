"""Program routing: the output program's PIDs and PAT/PMT, and how each upstream's program maps onto it.

- Output PIDs are stable. The first upstream's PMT PID, program_number and elementary PIDs become the
  output's. A later upstream's elementary streams are matched *by stream type and order* onto those
  output PIDs. A stream type never seen before gets a PID of its own: ffmpeg keeps the codec of a PID
  it already knows, so H.264 -> MPEG-2 on one PID decodes as garbage, while a new PID becomes a new,
  correctly decoded stream. The PMT is regenerated (CRC-32/MPEG-2) and its version_number is bumped
  only when its content really changes. The PAT never changes.
- With ``transcodable`` set, an upstream whose first video or audio codec is new to the output never
  enters (``codec_change``): its bytes are to be re-encoded to the output's codecs and fed as the next
  upstream.
- PSI: our PAT/PMT replace the upstream's, in place where it was (one packet each). When the session's
  first upstream sends exactly the PAT/PMT we would (same PIDs, same content), its own packets pass
  untouched ("native"), each still compared with ours; the first difference ends that.

Per output PID the state the client's demuxer has seen is one ``OutStream`` (it survives switches);
per upstream PID its ``Route`` onto one; per upstream the ``UpstreamState`` (replaced at each switch).
The fields of ``OutStream`` belong to the concern named in their comments.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from relay.ts.continuity import Continuity
from relay.ts.packet import NULL_PID, PAT_PID
from relay.ts.psi import (
    ElementaryStream,
    ProgramMap,
    SectionAssembler,
    build_pat_section,
    build_pmt_section,
    es_key,
    packetize_section,
    parse_pat,
    parse_pmt,
    psi_key,
    stream_kind,
)
from relay.ts.timeline import DEFAULT_FRAME

if TYPE_CHECKING:
    from relay.ts.fastpath import Tables

KEEP = 1  # the packet stays in the output (else it is dropped)
RESTART = 2  # the routes changed: the rest of the read is processed again with new tables

Transcodable = Callable[[tuple[int | None, int | None], tuple[int | None, int | None]], bool]


@dataclass(slots=True)
class OutStream:
    """Per output PID: what the client's demuxer has seen; survives switches."""

    pid: int
    # continuity (relay/ts/continuity.py)
    last_cc: int | None = None  # continuity_counter of the last packet let through
    next_cc: int | None = None  # set at a switch: what the next payload packet must carry
    # hold (relay/ts/hold.py)
    pes_start: int | None = None  # output index of the current PES while it is held
    pes_start_time: float = 0.0
    pes_start_read: int = 0  # the lag's read count when it began
    pes_key: bool = False  # it starts at a random-access point (looked at until a keyframe was learned)
    pes_streamed: bool = False  # the current PES is an entry frame let out as it arrives (not held)
    pes_cc: int = 0  # continuity_counter of that PES's first packet
    pes_remaining: int = -1  # bytes still due of a bounded audio PES; -1: unbounded
    pes_chunk: int = -1  # which chunk its first packet was in, and where (packet index)
    pes_index: int = 0
    # timeline (relay/ts/timeline.py)
    cur_pts: int | None = None
    cur_dts: int | None = None
    prev_pts: int | None = None
    prev_dts: int | None = None
    frame: int = DEFAULT_FRAME  # the last step between PES starts: one video frame
    span: int = 0  # the largest such step: how far one PES (e.g. several audio frames) may reach


@dataclass(slots=True)
class Route:
    """How one upstream PID goes out."""

    src_pid: int
    out: OutStream
    stream_type: int
    kind: str  # video | audio | data | pcr
    is_ref: bool = False
    entered: bool = False
    cc_delta: int = 0


@dataclass(slots=True)
class UpstreamState:
    """What the Splicer knows of the current upstream; replaced at every switch."""

    pat: SectionAssembler = field(default_factory=SectionAssembler)
    pmt: SectionAssembler = field(default_factory=SectionAssembler)
    program_number: int | None = None
    pmt_pid: int | None = None
    transport_stream_id: int = 1
    program: ProgramMap | None = None
    routes: dict[int, Route] = field(default_factory=dict)
    entered: bool = False
    t0: float | None = None
    fed_at: float | None = None  # its last packets came at (relay/ts/health.py: NoMedia)
    tables: Tables | None = None
    video_seen: float | None = None
    audio_seen: float | None = None
    psi_last: dict[int, tuple[bytes, int]] = field(default_factory=dict)  # PID -> (psi_key, cc)
    psi_native: set[int] = field(default_factory=set)  # its PSI equals ours: passes untouched
    codec_change: bool = False  # its video/audio codec differs from the output's: kept out (transcoder)
    keyframe_held: bool = False  # a keyframe's hold has been learned: the lag has seen the largest frames
    entry_index: int | None = None  # output index of the keyframe it entered with
    streamed: int = 0  # video PES let out as they arrived since the entry (the entry frame and the next)


def first_types(program: ProgramMap | None) -> tuple[int | None, int | None]:
    """stream_type of a program's first video and first audio stream."""
    if program is None:
        return None, None
    kinds = [(stream_kind(es.stream_type, es.ES_info), es.stream_type) for es in program.streams]
    video = next((t for k, t in kinds if k == "video"), None)
    return video, next((t for k, t in kinds if k == "audio"), None)


class OutputProgram:
    """The output program one session's client sees, and each upstream's PAT/PMT mapped onto it."""

    def __init__(self, continuity: Continuity, transcodable: Transcodable | None = None) -> None:
        self.continuity = continuity
        self.transcodable = transcodable
        self.program_number: int | None = None
        self.pmt_pid: int | None = None
        self.pat_packets: list[bytearray] = []
        self.pmt: ProgramMap | None = None
        self.pmt_version = 0
        self.pmt_packets: list[bytearray] = []
        self.had_video = False  # some upstream's program had video (NoVideo when a later one has none)
        self._outs: dict[int, OutStream] = {}
        self._slots: dict[tuple[int, ...], list[int]] = {}  # es_key -> output PIDs, in order
        self._used_pids: set[int] = set()

    def video(self) -> ElementaryStream | None:
        """The output program's first video stream."""
        pmt = self.pmt
        if pmt is None:
            return None
        return next((es for es in pmt.streams if stream_kind(es.stream_type, es.ES_info) == "video"), None)

    # --- mapping --------------------------------------------------------------------------------------

    def _allocate(self, preferred: int) -> int:
        reserved = self._used_pids | {self.pmt_pid or -1}
        if 0x20 <= preferred < NULL_PID and preferred not in reserved:
            pid = preferred
        else:
            pid = 0x100
            while pid in reserved:
                pid += 1
        self._used_pids.add(pid)
        return pid

    def _out(self, pid: int) -> OutStream:
        o = self._outs.get(pid)
        if o is None:
            o = self._outs[pid] = OutStream(pid)
        return o

    def map(self, src: UpstreamState, program: ProgramMap) -> None:
        """Map an upstream's program onto output PIDs (by stream type and order); keep routes that stay."""
        if self.program_number is None:
            self.program_number = program.program_number
            self.pmt_pid = src.pmt_pid
            self.pat_packets = packetize_section(
                PAT_PID,
                build_pat_section(src.transport_stream_id, [(program.program_number, src.pmt_pid or 0)]),
            )
        if self.transcodable is not None and self.pmt is not None and not src.entered:
            known = {key for key in self._slots if key != (-1,)}
            kinds = {stream_kind(es.stream_type, es.ES_info) for es in self.pmt.streams}
            firsts = [
                next((es for es in program.streams if stream_kind(es.stream_type, es.ES_info) == k), None)
                for k in ("video", "audio")
                if k in kinds
            ]
            if any(es is not None and es_key(es) not in known for es in firsts) and self.transcodable(
                first_types(self.pmt), first_types(program)
            ):
                src.codec_change, src.program, src.routes, src.tables = True, program, {}, None
                return
        old = src.routes
        routes: dict[int, Route] = {}
        ordinal: dict[tuple[int, ...], int] = {}
        for es in program.streams:
            if es.elementary_PID in routes or es.elementary_PID in (PAT_PID, NULL_PID, src.pmt_pid):
                continue
            key = es_key(es)
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
                route = Route(es.elementary_PID, self._out(out_pid), es.stream_type, kind)
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
                prev if prev is not None and prev.kind == "pcr" else Route(pcr, self._out(pids[0]), 0, "pcr")
            )
        src.routes = routes
        src.program = program
        src.tables = None
        if program.has_video:
            self.had_video = True

    def _output_program(self, src: UpstreamState) -> ProgramMap:
        program = src.program
        assert program is not None and self.program_number is not None
        streams = tuple(
            ElementaryStream(es.stream_type, src.routes[es.elementary_PID].out.pid, es.ES_info)
            for es in program.streams
            if es.elementary_PID in src.routes and src.routes[es.elementary_PID].kind != "pcr"
        )
        pcr = program.PCR_PID
        out_pcr = src.routes[pcr].out.pid if pcr in src.routes else NULL_PID
        return ProgramMap(self.program_number, out_pcr, program.program_info, streams)

    def publish(self, src: UpstreamState) -> list[bytearray]:
        """Make the upstream's program the output's; return PAT+PMT packets to send now."""
        program = self._output_program(src)
        if self.pmt is not None and program != self.pmt:
            self.pmt_version = (self.pmt_version + 1) & 0x1F
        if program != self.pmt or not self.pmt_packets:
            self.pmt = program
            self.pmt_packets = packetize_section(
                self.pmt_pid or 0, build_pmt_section(program, self.pmt_version)
            )
        return [bytearray(p) for p in (*self.pat_packets, *self.pmt_packets)]

    # --- the upstream's PAT/PMT -----------------------------------------------------------------------

    def adopt_psi(self, src: UpstreamState) -> None:
        """At a session's first entry: where the upstream's PAT/PMT equal ours, let them pass as they are.

        Our entry copies are numbered just before the upstream's next packet on each PID, so the
        counters run on; then nothing is rewritten on those PIDs (each packet is still compared).
        """
        continuity = self.continuity
        for pid, ours in ((PAT_PID, self.pat_packets), (self.pmt_pid, self.pmt_packets)):
            last = src.psi_last.get(pid) if pid is not None else None
            if (
                pid is not None
                and last is not None
                and len(ours) == 1
                and continuity.last(pid) is None
                and pid in (PAT_PID, src.pmt_pid)
                and last[0] == psi_key(ours[0])
            ):
                src.psi_native.add(pid)
                continuity.adopt(pid, last[1])
        src.tables = None

    def _in_place(
        self, packet: memoryview, ours: list[bytearray], out_index: int, insert: list[bytearray]
    ) -> int:
        """Put our PSI where the upstream's was: in place when it is one packet (no cut in the output)."""
        if len(ours) != 1:
            insert.extend(bytearray(p) for p in ours)
            return 0
        packet[:] = ours[0]
        self.continuity.mark(out_index, packet, False)
        return KEEP

    def _native(
        self, src: UpstreamState, pid: int, packet: memoryview, ours: list[bytearray], out_index: int
    ) -> int:
        """A native PSI packet: KEEP while it still equals ours; else leave native mode and restart."""
        if len(ours) == 1 and psi_key(packet) == psi_key(ours[0]):
            self.continuity.mark(out_index, packet, True)
            return KEEP
        src.psi_native.discard(pid)
        src.tables = None
        return RESTART

    def _psi_seen(
        self, src: UpstreamState, pid: int, packet: memoryview, ours: list[bytearray], out_index: int
    ) -> int:
        """A PAT/PMT packet: KEEP while native and equal; else remember it for adopt_psi (0/RESTART)."""
        result = 0
        if pid in src.psi_native:
            result = self._native(src, pid, packet, ours, out_index)
            if result & KEEP:
                return result
        src.psi_last[pid] = (psi_key(packet), packet[3] & 0x0F)
        return result

    def on_pat(self, src: UpstreamState, packet: memoryview, out_index: int, insert: list[bytearray]) -> int:
        """An upstream PAT packet at output ``out_index``: learn its PMT PID; ours goes out in its place."""
        result = self._psi_seen(src, PAT_PID, packet, self.pat_packets, out_index)
        if result & KEEP:
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
            return result | self._in_place(packet, self.pat_packets, out_index, insert)
        return result

    def on_pmt(self, src: UpstreamState, packet: memoryview, out_index: int, insert: list[bytearray]) -> int:
        """An upstream PMT packet: map a changed program (publishing it once entered); ours in its place."""
        assert src.pmt_pid is not None
        result = self._psi_seen(src, src.pmt_pid, packet, self.pmt_packets, out_index)
        if result & KEEP:
            return result
        changed = False
        for section in src.pmt.push(packet):
            program, _version = parse_pmt(section)
            if program.program_number != src.program_number or program == src.program:
                continue
            self.map(src, program)
            if src.entered:
                insert.extend(self.publish(src)[len(self.pat_packets) :])
                changed = True
        if changed:
            return RESTART
        if src.entered and packet[1] & 0x40:
            return result | self._in_place(packet, self.pmt_packets, out_index, insert)
        return result
