"""The operator's commands: `relay sync`, `channels`, `map`, `unmap`, `events`, for a person at a terminal.

Owns: argument parsing for these subcommands and their plain-text output (tables, one-line errors,
exit 2 for a user mistake). The work itself lives in relay.sources.sync, relay.storage.store and
relay.core.mapping.

Must never: print a password or a stream URL. Streams are named `account/stream_id`; every provider
text reaching here was scrubbed where it was made (relay.sources.xtream, relay.sources.m3u,
relay.sources.guide), and events hold none.

Over 400 lines because each subcommand is its parser plus its table; they share the loading and the one-
line errors.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

import orjson

from relay import config as config_mod
from relay.config import Config, ConfigError
from relay.core.mapping import fold, matches, quality_of
from relay.storage.files import group_id
from relay.storage.store import MappedStream, MappingError, Store

LEVELS = {"debug": 0, "info": 1, "warn": 2, "warning": 2, "error": 3}
NAME_WIDTH = 32


def _fail(message: str) -> int:
    print(f"relay: {message}", file=sys.stderr)
    return 2


def _load(args: argparse.Namespace) -> Config:
    return config_mod.load(config_mod.resolve_path(args.config))


def _open_store(cfg: Config) -> Store:
    """The relay's database with the config's accounts and channels in it (what `serve` does first)."""
    db = cfg.path(cfg.storage.database)
    db.parent.mkdir(parents=True, exist_ok=True)
    store = Store(db, gid=group_id(cfg.storage.group))
    store.sync_config(cfg)
    return store


def _with_store(args: argparse.Namespace, work: Callable[[Config, Store], int]) -> int:
    try:
        cfg = _load(args)
    except ConfigError as e:
        return _fail(str(e))
    store = _open_store(cfg)
    try:
        return work(cfg, store)
    except MappingError as e:
        return _fail(str(e))
    finally:
        store.close()


def _clip(text: str, width: int = NAME_WIDTH) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _table(rows: list[list[str]], out: TextIO) -> None:
    """Left-aligned columns, two spaces apart; the last column is not padded."""
    if not rows:
        return
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        cells = [c.ljust(w) for c, w in zip(r, widths, strict=False)] + [r[-1]]
        print("  ".join(cells).rstrip(), file=out)


# ---- relay sync ----------------------------------------------------------------------------------------


class _Progress:
    """Counted lines on a TTY, rewritten in place; nothing elsewhere."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.last = 0.0

    def __call__(self, what: str, n: int) -> None:
        now = time.monotonic()
        if n and now - self.last < 0.1:
            return
        self.last = now
        self.out.write(f"\r\x1b[K{what}{f': {n}' if n else ' ...'}")
        self.out.flush()

    def done(self) -> None:
        self.out.write("\r\x1b[K")
        self.out.flush()


def cmd_sync(args: argparse.Namespace) -> int:
    from relay.sources.sync import lineup_warning, sync_once
    from relay.storage.eventlog import EventLog

    try:
        cfg = _load(args)
        config_mod.require_env(cfg)  # a sync logs in to the providers (channels/map/events do not)
    except ConfigError as e:
        return _fail(str(e))
    if not args.verbose:  # the summary below says it all; warnings of other modules still show
        logging.getLogger("relay.sources.sync").setLevel(logging.ERROR)
        logging.getLogger("relay.storage.eventlog").setLevel(logging.ERROR)
    _open_store(cfg).close()
    progress = _Progress(sys.stderr) if sys.stderr.isatty() else None

    async def run() -> Any:
        events = EventLog(cfg.path(cfg.storage.events), cfg.path(cfg.storage.database))
        await events.open()
        try:
            return await sync_once(cfg, cfg.path(cfg.storage.database), events, progress=progress)
        finally:
            await events.close()

    try:
        report = asyncio.run(run())
    except KeyboardInterrupt:
        print("\nrelay: sync interrupted; what was written is complete", file=sys.stderr)
        return 130
    if progress is not None:
        progress.done()
    if report is None:
        return _fail("sync failed (see the line above)")
    rows = [["ACCOUNT", "STATE", "STREAMS", "NOTES"]]
    for a in report.accounts:
        notes = [a.via] if a.via else []
        if a.max_connections is not None:
            notes.append(f"max_connections {a.max_connections}")
        if a.exp_date and a.state == "ok":
            notes.append(f"expires {time.strftime('%Y-%m-%d', time.gmtime(a.exp_date))}")
        if a.detail:
            notes.append(a.detail)
        state = {"no_api": "no API", "down": "API down", "off": "off"}.get(a.state, a.state)
        rows.append([a.name, state, str(a.streams), "; ".join(notes)])
    _table(rows, sys.stdout)
    _print_skip_counts(report.accounts)
    g, m = report.guide, report.mapping
    print(f"guide: {g.channels} channels from {g.sources_ok}/{g.sources} source(s)")
    for err in g.errors:
        print(f"  failed: {err}")
    print(
        f"mapping: {m.served} guide channel(s) served, {m.mapped_streams} stream(s) mapped to"
        f" {m.mapped_channels} channel(s); {m.unmapped_streams} stream(s) unmapped,"
        f" {m.ambiguous_streams} ambiguous"
    )
    if m.channels_without_streams:
        shown = ", ".join(m.channels_without_streams[:8])
        more = len(m.channels_without_streams) - 8
        print(f"  no stream for: {shown}{f' and {more} more' if more > 0 else ''}")
    if m.guide_without_streams:
        shown = ", ".join(m.guide_without_streams[:8])
        more = len(m.guide_without_streams) - 8
        print(
            f"  {len(m.guide_without_streams)} guide channel(s) without any stream:"
            f" {shown}{f' and {more} more' if more > 0 else ''}"
        )
    if m.unmapped_streams or m.ambiguous_streams or m.channels_without_streams or m.guide_without_streams:
        print("  (relay channels --unmapped lists them)")
    print(f"lineup: {m.lineup} channel(s)")
    warning = lineup_warning(cfg, report)
    if warning is not None:
        print(f"warning: {warning}")
    print(f"done in {report.seconds:.1f} s")
    worked = any(a.state == "ok" for a in report.accounts) or g.sources_ok
    return 0 if worked or not (report.accounts or g.sources) else 1


def _print_skip_counts(accounts: list[Any]) -> None:
    """Every entry an import left out, counted by reason: nothing is dropped silently."""
    for a in accounts:
        if a.skipped:
            counts = ", ".join(f"{n} {reason}" for reason, n in sorted(a.skipped.items()))
            print(f"skipped: {a.name}: {sum(a.skipped.values())} entries ({counts})")
    if any(a.skipped for a in accounts):
        print("  (relay channels --skipped lists them)")


def _print_skipped(store: Store) -> None:
    """`relay channels --skipped`: each entry the last imports left out, by name, never its URL."""
    skips = store.skips()
    print(f"Entries not imported: {len(skips)}")
    _table([["", acc, src, reason, _clip(name)] for acc, src, reason, name in skips], sys.stdout)


# ---- relay channels ------------------------------------------------------------------------------------


def _stream_label(s: MappedStream) -> list[str]:
    flags = [s.source] + ([] if s.active else ["inactive"])
    return [f"{s.account}/{s.stream_id}", quality_of(s.name) or "-", ",".join(flags), _clip(s.name or "")]


def cmd_channels(args: argparse.Namespace) -> int:
    from relay.sources.sync import channel_list

    def work(cfg: Config, store: Store) -> int:
        channels = channel_list(cfg, store)
        by_channel: dict[str, list[MappedStream]] = defaultdict(list)
        for s in store.mapped_streams():
            by_channel[s.channel_id].append(s)
        if args.search is not None or args.group is not None:
            _print_search(store, by_channel, args.search or "", args.group)
            return 0
        if args.unmapped:
            _print_unmapped(store, channels, by_channel)
            _print_guide_without_streams(cfg, store)
            return 0
        if args.skipped:
            _print_skipped(store)
            return 0
        rows = [["NUMBER", "CHANNEL", "NAME", "#", "STREAM", "QUALITY", "SOURCE", "STREAM NAME"]]
        for ch in channels:
            streams = by_channel.get(ch.id, [])
            head = [ch.number, ch.id, _clip(ch.name)]
            if not streams:
                rows.append([*head, "-", "(no stream)", "", "", ""])
            for i, s in enumerate(streams, 1):
                rows.append([*(head if i == 1 else ["", "", ""]), str(i), *_stream_label(s)])
        _table(rows, sys.stdout)
        total = sum(len(by_channel.get(c.id, [])) for c in channels)
        print(f"{len(channels)} channel(s), {total} stream(s); streams are tried in the order shown")
        return 0

    return _with_store(args, work)


def _print_unmapped(store: Store, channels: list[Any], by_channel: dict[str, list[MappedStream]]) -> None:
    empty = [c for c in channels if not by_channel.get(c.id)]
    print(f"Channels without a stream: {len(empty)}")
    _table([["", c.number, c.id, _clip(c.name)] for c in empty], sys.stdout)
    used = {(s.account, s.stream_id) for streams in by_channel.values() for s in streams}
    loose = [s for s in store.streams() if s.name is not None and (s.account, s.stream_id) not in used]
    print(f"Streams on no channel: {len(loose)}")
    rows = [
        [
            "",
            f"{s.account}/{s.stream_id}",
            quality_of(s.name) or "-",
            _clip(s.name or ""),
            f"[{_clip(s.category or '-', 24)}]",
            f"epg id: {s.epg_channel_id}" if s.epg_channel_id else "",
        ]
        for s in loose
    ]
    _table(rows, sys.stdout)
    if loose:
        print("Map one by hand: relay map CHANNEL ACCOUNT/STREAM_ID --priority N")


def _print_guide_without_streams(cfg: Config, store: Store) -> None:
    from relay.sources.sync import guide_channels_without_streams

    empty = guide_channels_without_streams(store, cfg)
    print(f"Guide channels without any stream: {len(empty)}")
    _table([["", cid, _clip(name)] for cid, name in empty], sys.stdout)


def _print_search(
    store: Store, by_channel: dict[str, list[MappedStream]], text: str, group: str | None
) -> None:
    """Provider streams whose name contains `text` (case and accents aside), in a category matching
    `group` (a glob, "re:REGEX", or a part of the name), with the channels they are on."""
    on: dict[tuple[str, int], list[str]] = defaultdict(list)
    for cid, streams in by_channel.items():
        for s in streams:
            on[(s.account, s.stream_id)].append(cid)
    needle = fold(text)
    found = [
        s
        for s in store.streams()
        if s.name is not None
        and needle in fold(s.name)
        and (group is None or _group_matches(group, s.category or ""))
    ]
    rows = [["STREAM", "QUALITY", "NAME", "GROUP", "EPG ID", "ON CHANNEL"]]
    for s in found:
        rows.append(
            [
                f"{s.account}/{s.stream_id}",
                quality_of(s.name) or "-",
                _clip(s.name or ""),
                _clip(s.category or "-", 24),
                s.epg_channel_id or "-",
                ",".join(on.get((s.account, s.stream_id), [])) or "-",
            ]
        )
    _table(rows, sys.stdout)
    print(f"{len(found)} stream(s); map one with: relay map CHANNEL ACCOUNT/STREAM_ID --priority N")


def _group_matches(pattern: str, category: str) -> bool:
    if pattern.startswith("re:") or any(c in pattern for c in "*?["):
        return matches(pattern, category)
    return fold(pattern) in fold(category)


# ---- relay map / unmap ---------------------------------------------------------------------------------


def _resolve(cfg: Config, store: Store, channel: str, ref: str) -> tuple[str, str, int]:
    """(channel id, account, stream id) from what a person typed: an id or a number, account/id."""
    from relay.sources.sync import channel_list

    channels = channel_list(cfg, store)
    ids = {c.id for c in channels}
    by_number = {c.number: c.id for c in channels}
    known = {r.id for r in store.guide_channels()}
    cid = channel if channel in ids or channel in known else by_number.get(channel)
    if cid is None:
        raise MappingError(f"unknown channel {channel!r} (relay channels lists them)")
    account, _, sid = ref.rpartition("/")
    if not account or not sid.isdigit():
        raise MappingError(f"{ref!r}: give the stream as ACCOUNT/STREAM_ID, e.g. provider-a/1234")
    if account not in {a.name for a in cfg.accounts}:
        raise MappingError(f"unknown account {account!r}")
    return cid, account, int(sid)


def cmd_map(args: argparse.Namespace) -> int:
    def work(cfg: Config, store: Store) -> int:
        if args.priority < 0:
            raise MappingError("--priority: 0 or more (0 is tried first)")
        cid, account, sid = _resolve(cfg, store, args.channel, args.stream)
        store.map_manual(cid, account, sid, args.priority)
        print(f"{cid}: {account}/{sid} at priority {args.priority} (manual: a sync keeps it)")
        return 0

    return _with_store(args, work)


def cmd_unmap(args: argparse.Namespace) -> int:
    def work(cfg: Config, store: Store) -> int:
        cid, account, sid = _resolve(cfg, store, args.channel, args.stream)
        was = store.unmap(cid, account, sid)
        what = f"removed the {was} mapping" if was else "was not mapped"
        print(f"{cid}: {account}/{sid} {what}; a sync will not map it again (relay map undoes this)")
        return 0

    return _with_store(args, work)


# ---- relay events --------------------------------------------------------------------------------------


def _event_line(e: dict[str, Any]) -> str:
    ts = str(e.get("timestamp", "")).replace("T", " ")
    ts = ts[:19] + "Z" if len(ts) >= 19 else ts
    level = str(e.get("level", "")).upper()
    return f"{ts} {level:<5} {e.get('category', ''):<9} {e.get('message', '')}"


def _wanted(e: Any, channel: str | None, min_level: int) -> bool:
    if not isinstance(e, dict):
        return False
    if channel is not None and e.get("channel") != channel:
        return False
    return LEVELS.get(str(e.get("level", "info")), 1) >= min_level


def _parse(line: bytes) -> Any:
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:
        return None  # a line torn by a crash: never an event


def _follow(path: Path, offset: int, poll_s: float = 0.25) -> Iterator[bytes]:
    """Lines appended to `path` from `offset` on; starts over when the file is replaced or truncated."""
    buf = b""
    ident = None
    while True:
        try:
            st = path.stat()
        except FileNotFoundError:
            time.sleep(poll_s)
            continue
        if (ident is not None and (st.st_ino, st.st_dev) != ident) or st.st_size < offset:
            offset, buf = 0, b""
        ident = (st.st_ino, st.st_dev)
        if st.st_size > offset:
            with path.open("rb") as f:
                f.seek(offset)
                data = f.read()
            offset += len(data)
            buf += data
            *lines, buf = buf.split(b"\n")
            yield from lines
        else:
            time.sleep(poll_s)


def cmd_events(args: argparse.Namespace) -> int:
    try:
        cfg = _load(args)
    except ConfigError as e:
        return _fail(str(e))
    min_level = LEVELS.get(args.level.lower()) if args.level else 0
    if min_level is None:
        return _fail(f"--level: one of info, warn, error (not {args.level!r})")
    path = cfg.path(cfg.storage.events)
    last: deque[dict[str, Any]] = deque(maxlen=max(args.limit, 0))
    offset = 0
    if path.exists():
        with path.open("rb") as f:
            for line in f:
                if line.endswith(b"\n"):
                    offset += len(line)
                    e = _parse(line)
                    if _wanted(e, args.channel, min_level):
                        last.append(e)
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C ends it cleanly, also while the tail prints
        for e in last:
            print(_event_line(e))
        if not args.follow:
            if not path.exists():
                print(f"relay: no events yet ({path})", file=sys.stderr)
            return 0
        sys.stdout.flush()
        with contextlib.suppress(BrokenPipeError):
            for line in _follow(path, offset):
                e = _parse(line)
                if _wanted(e, args.channel, min_level):
                    print(_event_line(e), flush=True)
    return 0


# ---- registration --------------------------------------------------------------------------------------


def add_parsers(sub: Any) -> None:
    """Register the subcommands on relay.cli.main's parser."""
    help_config = "config file (default: $RELAY_CONFIG, else ./config.yaml)"
    p = sub.add_parser("sync", help="import the accounts' streams and the guide's channels, then map them")
    p.add_argument("--config", help=help_config)
    p.set_defaults(func=cmd_sync)
    p = sub.add_parser("channels", help="list the channels and their streams in the order they are tried")
    p.add_argument("--config", help=help_config)
    p.add_argument(
        "--unmapped",
        action="store_true",
        help="list channels without a stream, guide channels no stream carries, and streams on none",
    )
    p.add_argument("--skipped", action="store_true", help="list the entries the last sync left out, and why")
    p.add_argument("--search", metavar="TEXT", help="find provider streams whose name contains TEXT")
    p.add_argument("--group", metavar="G", help="with --search: only streams in a category matching G")
    p.set_defaults(func=cmd_channels)
    p = sub.add_parser(
        "map",
        help="map a stream to a channel by hand (kept by every sync; the config file wins over it)",
    )
    p.add_argument("channel", help="channel id or number")
    p.add_argument("stream", help="ACCOUNT/STREAM_ID")
    p.add_argument("--priority", type=int, default=0, help="lower is tried first (default 0)")
    p.add_argument("--config", help=help_config)
    p.set_defaults(func=cmd_map)
    p = sub.add_parser("unmap", help="remove a stream from a channel; a sync will not map it again")
    p.add_argument("channel", help="channel id or number")
    p.add_argument("stream", help="ACCOUNT/STREAM_ID")
    p.add_argument("--config", help=help_config)
    p.set_defaults(func=cmd_unmap)
    p = sub.add_parser("events", help="show the event log (failovers, sessions, accounts)")
    p.add_argument("--config", help=help_config)
    p.add_argument("--follow", "-f", action="store_true", help="keep printing new events")
    p.add_argument("--channel", help="only this channel's events")
    p.add_argument("--level", help="this level and above: info, warn, error")
    p.add_argument("--limit", type=int, default=50, help="how many past events (default 50)")
    p.set_defaults(func=cmd_events)
