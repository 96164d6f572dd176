"""relay.ts.program: stable output PIDs, PMT versioning, PSI in place, foreign PIDs made null."""

from __future__ import annotations

from relay.ts import (
    NULL_PID,
    ElementaryStream,
    ProgramMap,
    Splicer,
    crc32_mpeg2,
    parse_pat,
    parse_pmt,
)
from relay.ts.continuity import Continuity
from relay.ts.program import OutputProgram, UpstreamState
from relay.ts.psi import SectionAssembler
from tests.tsbuild import (
    B_upstream,
    Upstream,
    cc_errors,
    pid_of,
    run,
    sections_on,
    ts_packet,
)


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


def test_foreign_pids_are_dropped_and_null_packets_pass() -> None:
    packets = Upstream().stream(6)
    packets.insert(9, ts_packet(0x11, b"\x42" * 20))  # SDT
    packets.insert(12, ts_packet(NULL_PID, b"\xff" * 184))
    out = run(Splicer(), packets)
    assert 0x11 not in {pid_of(p) for p in out}
    assert NULL_PID in {pid_of(p) for p in out}


# --- OutputProgram on its own ---------------------------------------------------------------------------


def _upstream(pmt_pid: int, *streams: ElementaryStream, number: int = 1) -> tuple[UpstreamState, ProgramMap]:
    return UpstreamState(pmt_pid=pmt_pid), ProgramMap(number, streams[0].elementary_PID, b"", streams)


def test_streams_map_by_type_and_order_and_a_new_type_gets_a_pid_of_its_own() -> None:
    program = OutputProgram(Continuity())
    a, a_map = _upstream(0x1000, ElementaryStream(0x1B, 0x100), ElementaryStream(0x0F, 0x101))
    program.map(a, a_map)
    program.publish(a)
    b, b_map = _upstream(
        0x1E0,
        ElementaryStream(0x0F, 0x1E2),  # listed first: order counts per type, not overall
        ElementaryStream(0x1B, 0x1E1),
        ElementaryStream(0x0F, 0x1E3),  # a second audio: a new output PID
        ElementaryStream(0x02, 0x100),  # MPEG-2 video on A's H.264 PID: must not share it
        number=7,
    )
    program.map(b, b_map)
    assert {pid: r.out.pid for pid, r in b.routes.items()} == {
        0x1E2: 0x101,
        0x1E1: 0x100,
        0x1E3: 0x1E3,
        0x100: 0x102,
    }
    assert b.routes[0x1E1].is_ref and not b.routes[0x1E2].is_ref, "the first video is the reference"
    assert b.routes[0x1E1].out is a.routes[0x100].out, "one output stream state per output PID"
    packets = program.publish(b)
    assert program.pmt_version == 1 and program.program_number == 1 and program.pmt_pid == 0x1000
    assert parse_pat(SectionAssembler().push(packets[0])[0])[2] == [(1, 0x1000)], "the PAT never changes"


def test_publish_bumps_the_version_only_when_the_output_pmt_changes() -> None:
    program = OutputProgram(Continuity())
    a, a_map = _upstream(0x1000, ElementaryStream(0x1B, 0x100), ElementaryStream(0x0F, 0x101))
    program.map(a, a_map)
    program.publish(a)
    b, b_map = _upstream(0x1E0, ElementaryStream(0x1B, 0x1E1), ElementaryStream(0x0F, 0x1E2), number=7)
    program.map(b, b_map)
    program.publish(b)
    assert program.pmt_version == 0, "same types on other PIDs: the output PMT is the same"
    c, c_map = _upstream(0x1E0, ElementaryStream(0x1B, 0x1E1))
    program.map(c, c_map)
    program.publish(c)
    assert program.pmt_version == 1 and [es.elementary_PID for es in program.pmt.streams] == [0x100]


def test_a_new_codec_is_kept_out_when_it_can_be_transcoded() -> None:
    asked: list[tuple[object, object]] = []
    program = OutputProgram(Continuity(), lambda want, have: asked.append((want, have)) is None)
    a, a_map = _upstream(0x1000, ElementaryStream(0x1B, 0x100), ElementaryStream(0x0F, 0x101))
    program.map(a, a_map)
    program.publish(a)
    b, b_map = _upstream(0x1E0, ElementaryStream(0x02, 0x1E1), ElementaryStream(0x0F, 0x1E2))
    program.map(b, b_map)
    assert b.codec_change and b.routes == {} and asked == [((0x1B, 0x0F), (0x02, 0x0F))]
