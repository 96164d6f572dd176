"""Cost and effect of the MPEG-TS splice (issue 4), on real media. Prints one JSON object.

- ``throughput_MB_s``: one core, median of ``--runs``, each over ``--mbytes`` of a 5 Mbit/s 720p H.264/AAC
  CBR stream read in ``--chunk``-byte reads (not packet-aligned): a plain copy (bytes join of each read),
  the PacketAligner alone, aligner + Splicer on the first upstream, and aligner + Splicer after a switch
  to the same media on other PIDs and timestamps (PID remap, continuity_counter delta, PTS/DTS/PCR rebase).
- ``keyframe_wait_s``: after a switch at a random byte of the media (fed in 1316-byte reads, paced by its
  PCR clock), how long the Splicer waits for PAT/PMT and a random-access point: p50/p99/max, and how many
  switches hit ``keyframe_wait_s`` and entered at a non-keyframe. For a 2 s and a 1 s GOP.
- ``client``: ffmpeg error lines, non-monotonic DTS and stream counts over the same random switch
  sequences (mid-frame, mid-GOP) with the splice and without it (alignment only).

    python -m bench.splice [--runs 7] [--switches 300] [--chunk 65536]   (or python bench/splice.py)
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from relay.ts import PacketAligner, Splicer, read_pcr_base
from tests.media import MEDIA_DIR, make_ts

TS = 188
HD_SECONDS = 12
HD_ARGS = [
    "-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=25",
    "-f", "lavfi", "-i", "sine=frequency=1000:sample_rate=48000",
    "-map", "0:v", "-map", "1:a", "-t", str(HD_SECONDS),
    "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-g", "50", "-keyint_min", "50",
    "-sc_threshold", "0", "-b:v", "4M", "-maxrate", "4M", "-bufsize", "2M", "-c:a", "aac", "-b:a", "128k",
    "-f", "mpegts", "-muxrate", "5M", "-pat_period", "0.1",
]  # fmt: skip
OTHER_LAYOUT = [
    "-streamid", "0:0x1e1", "-streamid", "1:0x1e2", "-mpegts_pmt_start_pid", "0x1E0",
    "-mpegts_service_id", "7", "-output_ts_offset", "1000", "-muxrate", "5M",
]  # fmt: skip


def _ffmpeg(args: list[str], out: Path) -> Path:
    """Run ffmpeg once into the gitignored media cache; reuse the file afterwards."""
    if out.exists() and out.stat().st_size > 0:
        return out
    MEDIA_DIR.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.ts")
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *args, str(tmp)], check=True, timeout=300)
    tmp.replace(out)
    return out


def hd_media() -> tuple[Path, Path]:
    """The 720p CBR stream, and the same stream on another provider's PIDs, service id and timeline."""
    a = _ffmpeg(HD_ARGS, MEDIA_DIR / "bench-hd-720p-5M-gop2s.ts")
    b = _ffmpeg(
        ["-i", str(a), "-map", "0", "-c", "copy", *OTHER_LAYOUT, "-f", "mpegts"],
        MEDIA_DIR / "bench-hd-other.ts",
    )
    return a, b


# --- throughput -----------------------------------------------------------------------------------------


def _reads(data: bytes, chunk: int, total: int) -> list[bytes]:
    blob = data * (total // len(data) + 1)
    return [blob[i : i + chunk] for i in range(0, total, chunk)]


def _copy(reads: list[bytes], byterate: float) -> None:
    for r in reads:
        b"".join([memoryview(r)])


def _aligner(reads: list[bytes], byterate: float) -> None:
    aligner = PacketAligner()
    for r in reads:
        b"".join(aligner.feed(r))


def _splice(reads: list[bytes], byterate: float, splicer: Splicer | None = None, now: float = 0.0) -> None:
    splicer = splicer or Splicer()
    aligner = PacketAligner()
    for r in reads:
        now += len(r) / byterate
        b"".join(splicer.feed(aligner.feed(r), now))


def throughput(a: bytes, b: bytes, chunk: int, mbytes: int, runs: int) -> dict[str, Any]:
    total = mbytes * 1_000_000
    byterate = 5_000_000 / 8
    reads_a, reads_b = _reads(a, chunk, total), _reads(b, chunk, total)

    def after_switch(reads: list[bytes], rate: float) -> Callable[[], None]:
        splicer = Splicer()
        _splice(_reads(a, chunk, 2_000_000), rate, splicer)
        splicer.switch(10.0)
        return lambda: _splice(reads, rate, splicer, 10.0)

    cases: dict[str, Callable[[], Callable[[], None]]] = {
        "copy": lambda: lambda: _copy(reads_a, byterate),
        "aligner": lambda: lambda: _aligner(reads_a, byterate),
        "splice_first_upstream": lambda: lambda: _splice(reads_a, byterate),
        "splice_after_switch": lambda: after_switch(reads_b, byterate),
    }
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(runs):
        for name, make in cases.items():
            job = make()
            t = time.perf_counter()
            job()
            samples[name].append(total / (time.perf_counter() - t) / 1e6)
    medians = {name: round(statistics.median(v), 1) for name, v in samples.items()}
    return {
        "chunk_bytes": chunk,
        "mbytes_per_run": mbytes,
        "runs": runs,
        "median": medians,
        "relative_to_copy": {k: round(v / medians["copy"], 4) for k, v in medians.items()},
        "splice_vs_aligner": round(medians["splice_after_switch"] / medians["aligner"], 3),
    }


# --- keyframe wait --------------------------------------------------------------------------------------


def packet_times(data: bytes) -> list[float]:
    """Seconds of each packet on the stream's PCR clock (interpolated between PCRs): real-time pacing."""
    n = len(data) // TS
    marks: list[tuple[int, float]] = []
    for i in range(n):
        o = i * TS
        if data[o + 3] & 0x20 and data[o + 4] >= 7 and data[o + 5] & 0x10:
            marks.append((i, read_pcr_base(data, o + 6) / 90000))
    times = [0.0] * n
    for (i0, t0), (i1, t1) in itertools.pairwise(marks):
        for i in range(i0, i1 + 1):
            times[i] = t0 + (t1 - t0) * (i - i0) / (i1 - i0)
    first, last = marks[0], marks[-1]
    rate = (last[1] - first[1]) / max(last[0] - first[0], 1)
    for i in range(first[0]):
        times[i] = first[1] - (first[0] - i) * rate
    for i in range(last[0], n):
        times[i] = last[1] + (i - last[0]) * rate
    return [t - times[0] for t in times]


def keyframe_waits(data: bytes, switches: int, keyframe_wait_s: float, seed: int) -> dict[str, Any]:
    """Switch to the media at random bytes; return the distribution of Splicer.last_entry_wait_s."""
    rng = random.Random(seed)
    times = packet_times(data)
    splicer = Splicer(keyframe_wait_s=keyframe_wait_s)
    _splice(_reads(data, 1316, len(data) // 4), len(data) / times[-1], splicer)
    waits: list[float] = []
    never = 0
    now = 100.0
    horizon = times[-1] - keyframe_wait_s - 2.5  # leave room for a GOP after the latest start
    for _ in range(switches):
        splicer.switch(now)
        start = rng.randrange(0, int(len(data) * horizon / times[-1]))
        aligner = PacketAligner()
        base = times[start // TS]
        for pos in range(start, len(data), 1316):
            t = now + times[min((pos + 1316) // TS, len(times) - 1)] - base
            splicer.feed(aligner.feed(data[pos : pos + 1316]), t)
            if splicer.entered:
                break
        now = t + 1.0
        if splicer.entered and splicer.last_entry_wait_s is not None:
            waits.append(splicer.last_entry_wait_s)
        else:
            never += 1
    waits.sort()
    pct = statistics.quantiles(waits, n=100, method="inclusive")
    return {
        "switches": switches,
        "keyframe_wait_s": keyframe_wait_s,
        "p50": round(pct[49], 3),
        "p99": round(pct[98], 3),
        "max": round(waits[-1], 3),
        "mean": round(statistics.fmean(waits), 3),
        "hit_keyframe_wait_s": sum(1 for w in waits if w >= keyframe_wait_s),
        "never_entered": never,
    }


# --- what the client sees -------------------------------------------------------------------------------


def _client_view(path: Path) -> dict[str, int]:
    decode = subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-i", str(path), "-f", "null", "-"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    entries = "packet=stream_index,dts:stream=codec_type"
    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", entries, "-of", "json", str(path)],
        capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    info = json.loads(probe.stdout)
    last: dict[int, int] = {}
    backwards = 0
    for p in info.get("packets", []):
        s, dts = p["stream_index"], p.get("dts")
        if dts is not None:
            backwards += s in last and dts <= last[s]
            last[s] = dts
    types = [s.get("codec_type") for s in info.get("streams", [])]
    return {
        "ffmpeg_error_lines": sum(1 for line in decode.stderr.splitlines() if line.strip()),
        "non_monotonic_dts": backwards,
        "video_streams": types.count("video"),
        "audio_streams": types.count("audio"),
    }


def client_errors(a: bytes, b: bytes, trials: int, seed: int) -> dict[str, Any]:
    """Random switch sequences A/B/A/B (1.5-3 s each, cut anywhere) with and without the splice.

    With the default keyframe_wait_s (1 s) on this 2 s GOP about half the switches give up waiting and
    enter at a non-keyframe, which the decoder reports; with keyframe_wait_s above the GOP it never does.
    """
    rng = random.Random(seed)
    variants: dict[str, Callable[[], Splicer]] = {
        "splice_keyframe_wait_1s": lambda: Splicer(keyframe_wait_s=1.0),
        "splice_keyframe_wait_2.5s": lambda: Splicer(keyframe_wait_s=2.5),
        "plain": lambda: Splicer(enabled=False),
    }
    totals: dict[str, dict[str, int]] = {name: {} for name in variants}
    switches = 0
    with tempfile.TemporaryDirectory() as tmp:
        for trial in range(trials):
            segments = []
            for k in range(4):
                data = a if k % 2 == 0 else b
                size = int(len(data) * rng.uniform(1.5, 3.0) / HD_SECONDS)
                start = rng.randrange(0, len(data) - size)
                segments.append(data[start : start + size])
            switches += len(segments) - 1
            for mode, make in variants.items():
                splicer = make()
                out: list[bytes | memoryview] = []
                now = 0.0
                for k, seg in enumerate(segments):
                    if k:
                        splicer.switch(now)
                    aligner = PacketAligner()
                    for i in range(0, len(seg), 65536):
                        now += 65536 / 625_000
                        out += splicer.feed(aligner.feed(seg[i : i + 65536]), now)
                # the recording's end: what still trailed by the lag (else its last frame is cut by the
                # end of the file, not by a switch: the 10-12 error lines with keyframe_wait_s 2.5)
                out += splicer.poll(now + 60)
                path = Path(tmp) / f"{mode}-{trial}.ts"
                path.write_bytes(b"".join(out))
                for key, value in _client_view(path).items():
                    if key.endswith("_streams"):
                        totals[mode][f"max_{key}"] = max(totals[mode].get(f"max_{key}", 0), value)
                    else:
                        totals[mode][key] = totals[mode].get(key, 0) + value
    return {"trials": trials, "switches": switches, **totals}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--mbytes", type=int, default=64, help="stream bytes per throughput run (MB)")
    parser.add_argument("--chunk", type=int, default=65536, help="bytes per upstream read")
    parser.add_argument("--switches", type=int, default=300)
    parser.add_argument("--trials", type=int, default=8, help="switch sequences decoded by ffmpeg")
    parser.add_argument("--seed", type=int, default=4)
    args = parser.parse_args(argv)
    if shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None:
        print("bench.splice needs ffmpeg and ffprobe", file=sys.stderr)
        return 2
    path_a, path_b = hd_media()
    a, b = path_a.read_bytes(), path_b.read_bytes()
    gop1s = make_ts(12).read_bytes()  # H.264/AAC 400 kbit/s, keyframe every 25 frames (1 s)
    result = {
        "python": sys.version.split()[0],
        "media": {"hd": path_a.name, "mbit_s": 5, "seconds": HD_SECONDS, "gop_s": 2, "null_packets": "13%"},
        "throughput_MB_s": throughput(a, b, args.chunk, args.mbytes, args.runs),
        "keyframe_wait_s": {
            "gop_2s": keyframe_waits(a, args.switches, 1.0, args.seed),
            "gop_1s": keyframe_waits(gop1s, args.switches, 1.0, args.seed),
        },
        "client": client_errors(a, b, args.trials, args.seed),
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
