"""`relay demo`: the relay on a built-in demo provider, so a newcomer sees (and hears) a failover.

Two fake Xtream accounts on 127.0.0.1 serve generated test-pattern MPEG-TS: account demo-a at a
440 Hz tone, demo-b at 880 Hz, so the switch is audible. Every `fault_every_s` the demo breaks the
primary of each watched channel (a drop, a stall, or a 503 for a while, in turn): the relay fails
over to the backup inside the same response, and upgrades back to the primary 30 s later. The demo's
providers talk to nothing but 127.0.0.1; the relay listens on --host (127.0.0.1 unless asked). It needs
ffmpeg to make its media, which is cached per user ($XDG_CACHE_HOME/relay/demo); the database and
events go to a fresh private folder, removed at exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from relay.config import ConfigError, parse

log = logging.getLogger("relay.cli.demo")

CLIP_SECONDS = 30


def make_clip(path: Path, *, tone_hz: int, pattern: str) -> Path:
    """A looping-friendly H.264 + AAC test clip, made once and cached."""
    if path.exists():
        return path
    if shutil.which("ffmpeg") is None:
        raise ConfigError("demo: ffmpeg is needed to make the demo's video (apt-get install ffmpeg)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.ts")
    cmd = [
        "ffmpeg", "-v", "error", "-y",
        "-f", "lavfi", "-i", f"{pattern}=size=640x360:rate=25",
        "-f", "lavfi", "-i", f"sine=frequency={tone_hz}:sample_rate=48000",
        "-t", str(CLIP_SECONDS),
        "-c:v", "libx264", "-preset", "veryfast", "-tune", "zerolatency", "-g", "25", "-b:v", "800k",
        "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "96k",
        "-f", "mpegts", "-mpegts_flags", "+resend_headers", str(tmp),
    ]  # fmt: skip
    subprocess.run(cmd, check=True)
    tmp.rename(path)
    return path


@dataclass
class DemoStream:
    clip: bytes
    mode: str = "ok"  # ok | error
    live: set[asyncio.StreamWriter] = field(default_factory=set)
    stalled: set[asyncio.StreamWriter] = field(default_factory=set)


class DemoProvider:
    """A tiny Xtream-like live endpoint: /live/{user}/{pass}/{id}.ts, paced at the clip's rate."""

    def __init__(self, username: str, password: str, streams: dict[int, bytes]) -> None:
        self.username = username
        self.password = password
        self.streams = {sid: DemoStream(clip) for sid, clip in streams.items()}
        self.server: asyncio.base_events.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        for s in self.streams.values():
            for w in list(s.live):
                w.close()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    def break_stream(self, sid: int, how: str) -> None:
        s = self.streams[sid]
        if how == "stall":
            s.stalled |= s.live
        else:
            for w in list(s.live):
                w.transport.abort()
        if how == "error":
            s.mode = "error"

    def heal(self, sid: int) -> None:
        self.streams[sid].mode = "ok"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            head = await reader.readuntil(b"\r\n\r\n")
            parts = head.split(b" ", 2)
            path = parts[1].decode("latin-1") if len(parts) > 1 else ""
            if path.startswith("/xmltv.php"):
                body = demo_guide().encode()
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/xml\r\nContent-Length: %d\r\n"
                    b"Connection: close\r\n\r\n%s" % (len(body), body)
                )
                return
            segs = path.split("?")[0].split("/")
            if len(segs) != 5 or segs[1] != "live" or (segs[2], segs[3]) != (self.username, self.password):
                writer.write(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                return
            sid = int(segs[4].removesuffix(".ts")) if segs[4].removesuffix(".ts").isdigit() else -1
            stream = self.streams.get(sid)
            if stream is None or stream.mode == "error":
                code = b"404 Not Found" if stream is None else b"503 Service Unavailable"
                writer.write(b"HTTP/1.1 " + code + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                return
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: video/mp2t\r\nConnection: close\r\n\r\n")
            stream.live.add(writer)
            try:
                await self._pace(stream, writer)
            finally:
                stream.live.discard(writer)
                stream.stalled.discard(writer)
        with contextlib.suppress(Exception):
            writer.close()

    async def _pace(self, stream: DemoStream, writer: asyncio.StreamWriter) -> None:
        clip = stream.clip
        rate = len(clip) / CLIP_SECONDS
        step = int(rate * 0.04) // 188 * 188 or 188
        loop = asyncio.get_running_loop()
        t0, sent, pos = loop.time(), 0, 0
        while not writer.is_closing():
            if writer in stream.stalled:
                await asyncio.sleep(0.1)
                continue
            end = min(pos + step, len(clip))
            writer.write(clip[pos:end])
            sent += end - pos
            pos = 0 if end >= len(clip) else end
            await writer.drain()
            delay = t0 + sent / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)


def media_dir(env: dict[str, str] | None = None) -> Path:
    """Where the generated clips are cached: the user's own cache folder, never a shared temp path."""
    e = os.environ if env is None else env
    base = Path(e["XDG_CACHE_HOME"]) if e.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return base / "relay" / "demo"


def demo_guide(hours: int = 24) -> str:
    """A day of hourly programmes for the demo channels, so Plex shows a guide too."""
    start = int(time.time()) // 3600 * 3600
    parts = ['<?xml version="1.0" encoding="UTF-8"?>\n<tv generator-info-name="relay demo">']
    for cid, name, _, _ in DEMO_CHANNELS:
        parts.append(f'<channel id="{cid}"><display-name>{name}</display-name></channel>')
    for cid, name, _, _ in DEMO_CHANNELS:
        for h in range(-1, hours):
            t0, t1 = (time.strftime("%Y%m%d%H%M%S +0000", time.gmtime(start + k * 3600)) for k in (h, h + 1))
            parts.append(
                f'<programme start="{t0}" stop="{t1}" channel="{cid}"><title>{name} test pattern</title>'
                "<desc>Breaks now and then; the relay keeps the picture.</desc></programme>"
            )
    parts.append("</tv>\n")
    return "\n".join(parts)


DEMO_CHANNELS = [("demo.one", "Demo One", "1", "testsrc2"), ("demo.two", "Demo Two", "2", "smptebars")]


async def run_demo(
    stop: asyncio.Event, *, host: str = "127.0.0.1", port: int = 5004, fault_every_s: float = 20.0
) -> None:
    home = Path(tempfile.mkdtemp(prefix="relay-demo-"))  # mode 0700: this run's, nobody else's
    try:
        await _run_demo(stop, home, host=host, port=port, fault_every_s=fault_every_s)
    finally:
        shutil.rmtree(home, ignore_errors=True)


async def _run_demo(stop: asyncio.Event, home: Path, *, host: str, port: int, fault_every_s: float) -> None:
    from relay.shell.app import ListenError, Relay

    media = media_dir()
    loop = asyncio.get_running_loop()
    clips: dict[str, dict[int, bytes]] = {"a": {}, "b": {}}
    for i, (_, _, _, pattern) in enumerate(DEMO_CHANNELS, start=1):
        for acc, tone in (("a", 440), ("b", 880)):
            path = media / f"{pattern}-{tone}.ts"
            await loop.run_in_executor(
                None, lambda p=path, t=tone, pat=pattern: make_clip(p, tone_hz=t, pattern=pat)
            )
            clips[acc][100 * i + (0 if acc == "a" else 1)] = path.read_bytes()
    providers = {
        acc: DemoProvider({"a": "alice", "b": "bob"}[acc], "demo-password", clips[acc]) for acc in ("a", "b")
    }
    for p in providers.values():
        await p.start()
    cfg = parse(
        {
            "server": {"host": host, "port": port},
            "storage": {"database": str(home / "relay.db"), "events": str(home / "events.jsonl")},
            "failover": {"upgrade_after_s": 30},
            "sync": {"on_start": False},  # the demo providers have streams and a guide, no player_api
            "accounts": [
                {
                    "name": f"demo-{acc}",
                    "url": f"http://127.0.0.1:{p.port}",
                    "username": {"a": "alice", "b": "bob"}[acc],
                    "password": "demo-password",
                }
                for acc, p in providers.items()
            ],
            "channels": [
                {
                    "id": cid,
                    "name": name,
                    "number": num,
                    "streams": [
                        {"account": "demo-a", "stream_id": 100 * i, "priority": 0},
                        {"account": "demo-b", "stream_id": 100 * i + 1, "priority": 1},
                    ],
                }
                for i, (cid, name, num, _) in enumerate(DEMO_CHANNELS, start=1)
            ],
        },
        base_dir=home,
    )
    relay = Relay(cfg)
    try:
        await relay.start()
    except ListenError as e:
        for p in providers.values():
            await p.close()
        raise ConfigError(e.describe("--host", "--port")) from None
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else f"[{host}]" if ":" in host else host
    base = f"http://{shown}:{relay.port}"
    log.info("demo: play %s/stream/demo.one (e.g. ffplay or VLC); 440 Hz = primary, 880 Hz = backup", base)
    if shown != host:
        log.info("demo: from another machine (a Plex on a NAS), use this machine's address, not %s", shown)
    log.info("demo: events go to %s (removed at exit)", home / "events.jsonl")
    faults = itertools.cycle(["drop", "stall", "error"])
    users = {"demo-a": providers["a"], "demo-b": providers["b"]}
    try:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), fault_every_s)
                break
            current = [
                (s.channel, c) for s in relay.sessions if (c := s.machine.current_candidate) is not None
            ]
            if not current:
                log.info("demo: nobody is watching; play %s/stream/demo.one to see a failover", base)
                continue
            for channel, cur in current:
                if cur.rank > 0:
                    log.info("demo: %s is on its backup; back to the primary 30 s after the switch", channel)
            on_primary = [cur for _, cur in current if cur.rank == 0]
            if not on_primary:
                continue
            how = next(faults)
            for cur in on_primary:
                provider = users[cur.account]
                log.info("demo: breaking %s, a primary being watched (%s)", cur.ref, how)
                provider.break_stream(cur.stream_id, how)
                if how == "error":
                    loop.call_later(fault_every_s / 2, provider.heal, cur.stream_id)
    finally:
        await relay.stop()
        for p in providers.values():
            await p.close()
