"""The XMLTV guide served at /xmltv.xml: fetched, re-keyed to the relay's channel ids, cached on disk.

Owns: reading the guide sources (`guide:` files and URLs, else each active account's xmltv.php),
rewriting them into one XMLTV file whose channels are exactly the configured ones (ids from
`hdhomerun.guide_id`; the DTD-valid rendering, the provider logos and the placeholder programmes for
channels without any are relay.sources.xmltv's), and keeping that file and a gzip'd sibling on disk,
rebuilt in a worker thread every `refresh_h` hours.

Theory of operation: a build streams each source through `ElementTree.iterparse`, clearing every
element once handled, and appends the kept programmes to a temporary body file; then it writes the
header and the channels, copies the body behind them into both outputs, and renames them into place.
A guide of any size therefore costs a few element trees of memory, and a reader that already opened
the old file keeps reading it. A failed build keeps the previous files.

Must never: hold a whole guide in memory, block the event loop, or put account credentials in a log
line or an error (URLs are redacted, error texts scrubbed).

Over 400 lines because building, caching and the child-process build share the file protocol (temporary
body, rename into place).
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import logging
import multiprocessing
import multiprocessing.process
import os
import re
import tempfile
import threading
import time
import urllib.parse
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from relay.config import ChannelConfig, Config, DummyGuideConfig
from relay.sources.fetch import (
    Cancelled,
    Opener,
    Reader,
    Source,
    describe,
    fetch_source,
    open_stream,
    redact_url,
    url_secrets,
)
from relay.sources.tls import account_ca_file
from relay.sources.xmltv import channel_xml, conform_programme, dummy_programmes
from relay.storage.files import group_id, restrict
from relay.tuner.hdhomerun import guide_id, sorted_channels

DEFAULT_REFRESH_H = 6.0
RETRY_AFTER_FAILURE_S = 900.0  # a failed refresh is retried sooner than the next regular one
CHUNK = 1 << 20


class GuideBuildError(Exception):
    """No guide source could be read; str() is safe to log (credentials scrubbed)."""


# ---------------------------------------------------------------------------------------------
# Sources (fetching, redaction and the size cap live in relay.sources.fetch)


def guide_sources(cfg: Config) -> list[Source]:
    """`guide:` entries in order; when there are none, each active account's xmltv.php."""
    out: list[Source] = []
    for g in cfg.guide.sources:
        if g.file is not None:
            p = cfg.path(g.file)
            out.append(Source(label=str(p), path=p))
        elif g.url is not None:
            out.append(Source(label=redact_url(g.url), url=g.url, secrets=url_secrets(g.url)))
    if out:
        return out
    for a in cfg.accounts:
        if not a.active:
            continue
        query = urllib.parse.urlencode({"username": a.username, "password": a.password})
        url = f"{a.url}/xmltv.php?{query}"
        out.append(
            Source(
                label=f"account {a.name} ({redact_url(url)})",
                url=url,
                user_agent=a.user_agent,
                secrets=(a.username, a.password, *url_secrets(a.url)),
                tls_verify=a.tls_verify,
                ca_file=account_ca_file(a, cfg.base_dir),
            )
        )
    return out


# ---------------------------------------------------------------------------------------------
# Rewriting

_TIME = re.compile(r"\s*(\d{4,14})\s*(?:([+-])(\d\d):?(\d\d)|(Z|UTC|GMT))?\s*")
_TIME_DEFAULTS = "0101000000"  # month, day, hour, minute, second for a timestamp prefix


def normalise_time(value: str) -> str | None:
    """An XMLTV timestamp as "YYYYMMDDhhmmss +hhmm" (a missing zone is UTC); None if unreadable."""
    m = _TIME.fullmatch(value)
    if m is None or len(m.group(1)) % 2:
        return None
    digits = m.group(1)
    digits += _TIME_DEFAULTS[len(digits) - 4 :]
    offset = f"{m.group(2)}{m.group(3)}{m.group(4)}" if m.group(2) else "+0000"
    return f"{digits} {offset}"


@dataclass
class _BuildState:
    relay_ids: dict[str, str]  # source channel id (config `id`) -> relay guide id
    claimed: dict[str, int] = field(default_factory=dict)  # source channel id -> index of its source
    icons: dict[str, str] = field(default_factory=dict)
    programmes: int = 0
    bad_times: int = 0
    invalid: int = 0  # programmes without a title: the DTD allows none


def top_level_elements(stream: Reader) -> Iterator[ET.Element]:
    """Each complete child of <tv> (channel, programme), parsed streaming; once the caller moves on,
    it is cleared, so memory stays at one element whatever the size of the guide."""
    depth = 0
    root: ET.Element | None = None
    for event, elem in ET.iterparse(stream, events=("start", "end")):
        if event == "start":
            if root is None:
                root = elem
            depth += 1
            continue
        depth -= 1
        if depth != 1 or root is None:
            continue  # inside a child of <tv>: handled with its parent; or </tv> itself
        yield elem
        root.clear()  # drop the handled child


def _copy_programmes(stream: Reader, index: int, state: _BuildState, out: TextIO) -> None:
    """Stream one source: keep the programmes of configured channels, re-keyed, into `out`.

    A channel's programmes come from the first source (in order) that has any, so two accounts
    serving the same guide do not double every programme.
    """
    for elem in top_level_elements(stream):
        if elem.tag == "programme":
            _keep_programme(elem, index, state, out)
        elif elem.tag == "channel":
            cid = elem.get("id")
            icon = elem.find("icon")
            if cid in state.relay_ids and cid not in state.icons and icon is not None and icon.get("src"):
                state.icons[cid] = icon.get("src", "")


def _keep_programme(elem: ET.Element, index: int, state: _BuildState, out: TextIO) -> None:
    src_id = elem.get("channel", "")
    relay_id = state.relay_ids.get(src_id)
    if relay_id is None or state.claimed.setdefault(src_id, index) != index:
        return
    start = normalise_time(elem.get("start", ""))
    if start is None:
        state.bad_times += 1
        return
    elem.set("start", start)
    elem.set("channel", relay_id)
    stop = elem.get("stop")
    if stop is not None:
        norm_stop = normalise_time(stop)
        if norm_stop is None:
            del elem.attrib["stop"]
        else:
            elem.set("stop", norm_stop)
    if not conform_programme(elem):
        state.invalid += 1
        return
    elem.tail = None
    out.write("  ")
    out.write(ET.tostring(elem, encoding="unicode"))
    out.write("\n")
    state.programmes += 1


_HEADER = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    '<!DOCTYPE tv SYSTEM "xmltv.dtd">\n'
    '<tv generator-info-name="relay">\n'
)


@dataclass(frozen=True)
class BuildReport:
    programmes: int
    channels: int
    channels_without_programmes: tuple[str, ...]  # config ids
    sources_ok: int
    errors: tuple[str, ...]  # one scrubbed line per failed source
    bad_times: int
    seconds: float
    dummies: int = 0  # channels given placeholder programmes
    invalid: int = 0  # source programmes dropped for want of a title


def build_guide(
    channels: Sequence[ChannelConfig],
    sources: Sequence[Source],
    xml_path: Path,
    gz_path: Path,
    *,
    opener: Opener | None = None,
    cancel: threading.Event | None = None,
    gid: int | None = None,
    icons: Mapping[str, str] | None = None,
    dummy: DummyGuideConfig | None = None,
    now: float | None = None,
) -> BuildReport:
    """Build the guide into xml_path and gz_path (blocking; run it in a worker thread).

    `icons` (channel id -> provider logo) is used where the guide source has no icon; `dummy`, when
    enabled, gives every channel without programmes placeholder ones from `now` on.

    Raises GuideBuildError, leaving the existing files alone, when there were sources and none
    could be read.
    """
    began = time.monotonic()
    cancel = cancel or threading.Event()
    ordered = sorted_channels(channels)
    state = _BuildState(relay_ids={ch.id: guide_id(ch) for ch in ordered})
    errors: list[str] = []
    ok = dummies = 0
    logos = icons or {}
    folder = xml_path.parent
    folder.mkdir(parents=True, exist_ok=True)
    temps: list[Path] = []

    def temp(suffix: str) -> Path:
        fd, name = tempfile.mkstemp(dir=folder, prefix=".xmltv-", suffix=suffix)  # 0600 already
        if gid is not None:
            restrict(fd, gid)  # storage.group: 0640 for it
        os.close(fd)
        temps.append(Path(name))
        return temps[-1]

    try:
        body = temp(".body.tmp")
        with body.open("w", encoding="utf-8", newline="\n") as out:
            for index, src in enumerate(sources):
                try:
                    raw = fetch_source(src, opener)
                    with raw:
                        _copy_programmes(open_stream(raw, cancel), index, state, out)
                    ok += 1
                except Cancelled:
                    raise
                except Exception as e:  # a source's failure is reported, the others still count
                    errors.append(src.scrub(f"{src.label}: {describe(e)}"))
            if dummy is not None and dummy.enabled:
                at = time.time() if now is None else now
                for ch in ordered:
                    if ch.id not in state.claimed:
                        out.writelines(dummy_programmes(ch, at, dummy.block_h, dummy.days))
                        dummies += 1
        if sources and not ok:
            raise GuideBuildError("; ".join(errors) or "no guide source could be read")
        xml_tmp, gz_tmp = temp(".xml.tmp"), temp(".gz.tmp")
        with xml_tmp.open("wb") as x, gzip.open(gz_tmp, "wb", compresslevel=6) as g:

            def put(data: bytes) -> None:
                x.write(data)
                g.write(data)

            put(_HEADER.encode())
            chans = (channel_xml(ch, state.icons.get(ch.id) or logos.get(ch.id)) for ch in ordered)
            put("".join(chans).encode())
            with body.open("rb") as b:
                while chunk := b.read(CHUNK):
                    put(chunk)
            put(b"</tv>\n")
        os.replace(xml_tmp, xml_path)
        os.replace(gz_tmp, gz_path)
    finally:
        for t in temps:
            with contextlib.suppress(FileNotFoundError):
                t.unlink()
    return BuildReport(
        programmes=state.programmes,
        channels=len(ordered),
        channels_without_programmes=tuple(ch.id for ch in ordered if ch.id not in state.claimed),
        sources_ok=ok,
        errors=tuple(errors),
        bad_times=state.bad_times,
        seconds=time.monotonic() - began,
        dummies=dummies,
        invalid=state.invalid,
    )


# ---------------------------------------------------------------------------------------------
def _build_in_child(
    channels: list[ChannelConfig],
    sources: list[Source],
    xml_path: Path,
    gz_path: Path,
    out: Any,
    extras: dict[str, Any] | None = None,
) -> None:
    """The body of the guide-build child process: build, then send ("ok", report) or ("error", text).

    A parent that died meanwhile (killed, or stopped mid-build) closed the pipe: the child then
    just ends, without a traceback in the relay's log.
    """
    try:
        try:
            report = build_guide(channels, sources, xml_path, gz_path, **(extras or {}))
            result: tuple[str, Any] = ("ok", report)
        except GuideBuildError as e:
            result = ("error", str(e))
        except Exception as e:  # anything else still reaches the parent as one scrubbed line
            result = ("error", f"unexpected {type(e).__name__}")
        with contextlib.suppress(OSError):  # BrokenPipeError: nobody to tell
            out.send(result)
    finally:
        with contextlib.suppress(OSError):
            out.close()


def _receive(conn: Any) -> tuple[str, Any]:
    try:
        return conn.recv()  # type: ignore[no-any-return]
    except EOFError:  # the child died (terminated at stop, or crashed) without an answer
        return ("error", "the guide build process ended without a result")


# The cache the server reads


@dataclass(frozen=True)
class GuideFiles:
    xml: Path  # serve with Content-Type: application/xml
    gz: Path  # the same document gzip'd: serve with Content-Encoding: gzip when accepted
    built_at: float  # Unix time, for Last-Modified


class GuideCache:
    """The on-disk /xmltv.xml, rebuilt in the background every `refresh_h` hours.

    `start()` makes sure a file exists at once (the previous run's, else a channels-only guide) and
    schedules the builds; `current()` is what the server opens and streams.
    """

    def __init__(
        self,
        cfg: Config,
        *,
        refresh_h: float = DEFAULT_REFRESH_H,
        cache_dir: Path | None = None,
        log: logging.Logger | None = None,
        opener: Opener | None = None,
        channels: Callable[[], Sequence[ChannelConfig]] | None = None,
        icons: Callable[[], Mapping[str, str]] | None = None,
    ) -> None:
        self._cfg = cfg
        self.channels = channels or (lambda: cfg.channels)  # the relay's channel list, synced ones too
        self.icons = icons or dict  # channel id -> provider logo, for channels whose guide has no icon
        self._refresh_s = refresh_h * 3600.0
        folder = cache_dir if cache_dir is not None else cfg.path(cfg.storage.database).parent
        self.xml_path = folder / "xmltv.xml"
        self.gz_path = folder / "xmltv.xml.gz"
        self._log = log or logging.getLogger("relay.sources.guide")
        self._opener = opener
        self._gid = group_id(cfg.storage.group)
        self._cancel = threading.Event()
        self._lock: asyncio.Lock | None = None
        self._task: asyncio.Task[None] | None = None
        self._child: multiprocessing.process.BaseProcess | None = None
        self.last_report: BuildReport | None = None
        self.last_error: str | None = None

    def current(self) -> GuideFiles | None:
        """The files to serve, or None before anything was built."""
        try:
            built = self.xml_path.stat().st_mtime
        except FileNotFoundError:
            return None
        return GuideFiles(self.xml_path, self.gz_path, built) if self.gz_path.exists() else None

    def path(self, gzipped: bool = False) -> Path | None:
        files = self.current()
        if files is None:
            return None
        return files.gz if gzipped else files.xml

    def _extras(self) -> dict[str, Any]:
        """build_guide's keyword arguments besides the sources (they cross a process boundary)."""
        return {"icons": dict(self.icons()), "dummy": self._cfg.guide.dummy, "gid": self._gid}

    def ensure_placeholder(self) -> None:
        """Write a channels-only guide if none is on disk (small, quick, synchronous)."""
        if self.current() is None:
            extras = {**self._extras(), "dummy": None}  # channels only: the first build adds the rest
            build_guide(self.channels(), (), self.xml_path, self.gz_path, cancel=self._cancel, **extras)

    def _build(self) -> BuildReport:
        return build_guide(
            self.channels(),
            guide_sources(self._cfg),
            self.xml_path,
            self.gz_path,
            opener=self._opener,
            cancel=self._cancel,
            **self._extras(),
        )

    async def _build_isolated(self) -> BuildReport:
        """Build in a child process: parsing 100 MB of XML in a thread would hold the GIL and stall the
        relay's event loop (measured: /health p99 116 ms, max 170 ms during a 50 MB build). A custom
        opener (tests) cannot cross a process boundary, so it keeps the thread."""
        if self._opener is not None:
            return await asyncio.to_thread(self._build)
        ctx = multiprocessing.get_context("spawn")  # never fork a process that runs threads
        receiver, sender = ctx.Pipe(duplex=False)
        args = (
            list(self.channels()),
            guide_sources(self._cfg),
            self.xml_path,
            self.gz_path,
            sender,
            self._extras(),
        )
        child = ctx.Process(target=_build_in_child, args=args, name="relay-guide-build", daemon=True)
        child.start()
        sender.close()
        self._child = child
        try:
            outcome = await asyncio.to_thread(_receive, receiver)
        finally:
            self._child = None
            receiver.close()
            if child.is_alive():
                child.terminate()
            await asyncio.to_thread(child.join, 5)
        kind, value = outcome
        if kind == "ok":
            return value
        raise GuideBuildError(value)

    async def refresh(self) -> bool:
        """Rebuild now, in a child process; True on success. Logs one line, plus one per failed source."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            try:
                report = await self._build_isolated()
            except GuideBuildError as e:
                self.last_error = str(e)
                self._log.warning("guide: refresh failed, keeping the previous guide: %s", e)
                return False
            except Cancelled:
                return False
            self.last_report, self.last_error = report, None
            self._log_report(report)
            return True

    def _log_report(self, r: BuildReport) -> None:
        for err in r.errors:
            self._log.warning("guide: source failed: %s", err)
        self._log.info(
            "guide: %d programmes for %d/%d channels from %d source(s) in %.1f s",
            r.programmes,
            r.channels - len(r.channels_without_programmes),
            r.channels,
            r.sources_ok,
            r.seconds,
        )
        if r.channels_without_programmes and r.sources_ok:
            shown = ", ".join(r.channels_without_programmes[:10])
            more = len(r.channels_without_programmes) - 10
            self._log.info(
                "guide: no programmes for channel id(s) %s%s (the id must equal the source's channel id)",
                shown,
                f" and {more} more" if more > 0 else "",
            )
        if r.bad_times:
            self._log.info("guide: dropped %d programme(s) with an unreadable start time", r.bad_times)
        if r.invalid:
            self._log.info("guide: dropped %d programme(s) without a title", r.invalid)
        if r.dummies:
            self._log.info("guide: placeholder programmes for %d channel(s) without guide data", r.dummies)

    async def _run(self) -> None:
        while True:
            ok = await self.refresh()
            await asyncio.sleep(self._refresh_s if ok else min(self._refresh_s, RETRY_AFTER_FAILURE_S))

    def start(self) -> asyncio.Task[None]:
        """Ensure a file to serve, then refresh now and every refresh_h hours in the background."""
        self._cleanup_temps()
        self._cancel = threading.Event()  # a build still finishing from before keeps its own flag
        try:
            self.ensure_placeholder()
        except OSError as e:
            self._log.warning("guide: cannot write %s (%s)", self.xml_path, e.strerror)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="guide-refresh")
        return self._task

    async def stop(self) -> None:
        """Stop refreshing; a build in progress gives up at its next chunk (a child is terminated)."""
        self._cancel.set()
        if self._child is not None and self._child.is_alive():
            self._child.terminate()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def _cleanup_temps(self) -> None:
        for stale in self.xml_path.parent.glob(".xmltv-*.tmp"):
            with contextlib.suppress(OSError):
                stale.unlink()
