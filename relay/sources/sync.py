"""Account sync: import every account's live streams and the guide's channels, then map them.

Theory of operation. A sync is one blocking function, `run_sync`, run in a worker thread on its own
SQLite connection. For each account of the config, in order, it logs in on `player_api.php`:
- a line the panel calls unauthorised, expired, banned or disabled is marked inactive (sessions
  skip it) and its last import is kept, so it comes back whole the day it is renewed; the next
  check is the next sync, never a retry loop, and an event is written only when the state changes;
- a usable line has its live categories and streams imported (`xtream_channels`), plus its `m3u:`
  playlist if it has one; a panel without player_api (404) uses only the playlist;
- an API that is down (timeout, 5xx, not JSON, an empty list where there were streams) keeps the
  last good import.
Then the guide's `<channel>`s are imported, streaming, from the same sources `/xmltv.xml` is built
from, and `relay.core.mapping` maps streams to channels. Config and manual mappings are never touched.
`start_sync` runs this at start and every `sync.interval_h` as a background task; `channel_list`
is what the relay serves: the config's channels, then the guide channels the last sync selected.

Must never: block the event loop, drop a good import because an API failed, or put a credential in
a log line, an event or an error (every text from a provider call is scrubbed at its source).

Over 400 lines because one sync pass (accounts, M3U, guide channels, mapping, the report) reads best in
the order it runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from relay.config import AccountConfig, ChannelConfig, Config
from relay.core.events import AccountActive, AccountInactive, Event
from relay.core.mapping import (
    QUALITY_ORDER,
    GuideChannel,
    assign_numbers,
    auto_map,
    matches,
    quality_of,
    select_channels,
)
from relay.sources.fetch import Source, fetch_source
from relay.sources.fetch import describe as describe_error
from relay.sources.fetch import open_stream as open_source  # the reader: gunzip, size cap, cancel
from relay.sources.guide import guide_sources, top_level_elements
from relay.sources.m3u import M3uError, M3uImport, read_m3u_import
from relay.sources.xtream import LiveStream, NoXtreamApi, XtreamClient, XtreamError
from relay.storage.eventlog import EventLog
from relay.storage.store import Store

log = logging.getLogger("relay.sources.sync")

Progress = Callable[[str, int], None]  # (what, how many so far): a CLI shows it on a TTY
ClientFor = Callable[[AccountConfig, Path], XtreamClient]  # a cluster shares player_api (relay.cluster.sync)
PROGRESS_EVERY = 1000


class SyncCancelled(Exception):
    """The relay is stopping: the sync gave up between two steps, every write before it complete."""


@dataclass
class AccountResult:
    """What a sync did with one account; `detail` is scrubbed and safe to print."""

    name: str
    state: str  # ok, inactive, no_api, down, off
    detail: str = ""
    streams: int = 0  # streams the account has now (imported, or kept from the last good import)
    via: str = ""  # player_api, m3u, player_api+m3u; "" when the last import was kept
    reason: str | None = None  # inactive: unauthorised, expired, banned, disabled
    was: str | None = None  # the inactive reason before this sync
    exp_date: int | None = None
    max_connections: int | None = None
    active_cons: int | None = None  # the panel's count of this line's open connections, at the call
    skipped: dict[str, int] = field(default_factory=dict)  # entries left out of the import, by reason


@dataclass
class GuideResult:
    channels: int = 0
    sources: int = 0
    sources_ok: int = 0
    errors: list[str] = field(default_factory=list)  # scrubbed, one per failed source


@dataclass
class MapResult:
    served: int = 0  # guide channels that are relay channels now
    mapped_channels: int = 0  # channels (config and guide) with an automatic mapping
    mapped_streams: int = 0
    unmapped_streams: int = 0
    ambiguous_streams: int = 0
    channels_without_streams: list[str] = field(default_factory=list)  # config or included ids
    lineup: int = 0  # channels the relay serves: the config's and the guide's it selected
    guide_without_streams: list[str] = field(default_factory=list)  # guide channels no stream carries


@dataclass
class SyncReport:
    accounts: list[AccountResult] = field(default_factory=list)
    guide: GuideResult = field(default_factory=GuideResult)
    mapping: MapResult = field(default_factory=MapResult)
    seconds: float = 0.0

    def summary(self) -> str:
        """One line for the log."""
        ok = sum(a.state == "ok" for a in self.accounts)
        m = self.mapping
        return (
            f"{ok}/{len(self.accounts)} account(s) imported, {self.guide.channels} guide channel(s),"
            f" {m.served} channel(s) from the guide, {m.mapped_streams} stream(s) mapped,"
            f" {m.unmapped_streams + m.ambiguous_streams} unmapped, in {self.seconds:.1f} s"
        )

    def events(self) -> list[Event]:
        """One event for each account whose state changed."""
        out: list[Event] = []
        for a in self.accounts:
            if a.state == "inactive" and a.reason != a.was:
                exp = _date(a.exp_date) if a.exp_date else None
                out.append(AccountInactive(account=a.name, reason=a.reason, exp_date=exp))
            elif a.state == "ok" and a.was is not None:
                out.append(AccountActive(account=a.name, was=a.was))
        return out


def _date(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d")


def _check(cancel: threading.Event) -> None:
    if cancel.is_set():
        raise SyncCancelled


# ---- accounts ----------------------------------------------------------------------------------------


def sync_account(
    store: Store,
    cfg: Config,
    acc: AccountConfig,
    *,
    cancel: threading.Event,
    now: float,
    client_for: ClientFor = XtreamClient.for_account,
) -> AccountResult:
    """Log in, then import the account's streams, or keep the last import (see the module doc)."""
    res = AccountResult(acc.name, "off")
    if not acc.active:
        res.detail = "active: false in the config"
        return res
    client = client_for(acc, cfg.base_dir)
    api: list[LiveStream] | None = None
    api_skips: list[tuple[str, str]] = []
    api_state = "ok"
    try:
        info = client.user_info()
        res.reason = info.problem(now)
        res.exp_date, res.max_connections = info.exp_date, info.max_connections
        res.active_cons = info.active_cons
        store.set_output_formats(acc.name, info.allowed_output_formats)
        res.was = store.set_account_state(
            acc.name,
            inactive_reason=res.reason,
            status=info.status or None,
            exp_date=info.exp_date,
            api_max_connections=info.max_connections,
            explicit_max="max_connections" in acc.model_fields_set,
        )
        if res.reason is not None:
            res.state, res.streams = "inactive", store.stream_count(acc.name)
            res.detail = res.reason + (
                f" ({_date(info.exp_date)})" if res.reason == "expired" and info.exp_date else ""
            )
            return res
        _check(cancel)
        try:
            categories = client.live_categories()
        except XtreamError:
            categories = {}  # streams still import; their category shows as its id
        _check(cancel)
        api, api_skips = client.live_streams_report(categories)
    except NoXtreamApi as e:
        api_state, res.detail = "no_api", str(e)
    except XtreamError as e:
        api_state, res.detail = "down", str(e)
    _check(cancel)
    streams = list(api or [])
    via = ["player_api"] if api is not None else []
    skips = [("player_api", reason, name) for reason, name in api_skips]
    urls: dict[int, str] = {}
    if acc.m3u:
        try:
            extra = read_m3u_import(acc, cfg.base_dir, cancel=cancel)
        except M3uError as e:
            res.detail = "; ".join(filter(None, (res.detail, f"m3u: {e}")))
        else:
            streams, urls, m3u_skips = _merge_m3u(streams, extra)
            skips += m3u_skips
            via.append("m3u")
    _check(cancel)
    before = store.stream_count(acc.name)
    if not via or (not streams and before):
        res.state = api_state if api_state != "ok" else "down"
        if via and not streams:
            res.detail = "the panel listed no live streams"
        res.streams = before
        return res
    res.state, res.via = "ok", "+".join(via)
    res.streams = store.import_streams(
        acc.name, ((s.stream_id, s.name, s.epg_channel_id, s.category, s.icon) for s in streams)
    )
    store.set_stream_urls(acc.name, {s.stream_id: urls.get(s.stream_id) for s in streams})
    store.replace_skips(acc.name, skips)
    res.skipped = dict(Counter(reason for _, reason, _ in skips))
    if skips:
        log.info(
            "sync: account %s: %d entries not imported (%s); relay channels --skipped lists them",
            acc.name,
            len(skips),
            ", ".join(f"{n} {r}" for r, n in sorted(res.skipped.items())),
        )
    return res


def _merge_m3u(
    streams: list[LiveStream], extra: M3uImport
) -> tuple[list[LiveStream], dict[int, str], list[tuple[str, str, str]]]:
    """player_api's streams, then the M3U's others; an M3U entry player_api lists too is a duplicate."""
    have = {s.stream_id for s in streams}
    skips = [("m3u", reason, name) for reason, name in extra.skips]
    out = list(streams)
    urls: dict[int, str] = {}
    for s in extra.streams:
        if s.stream_id in have:
            skips.append(("m3u", "duplicate", s.name))
            continue
        have.add(s.stream_id)
        out.append(s)
        if s.stream_id in extra.urls:
            urls[s.stream_id] = extra.urls[s.stream_id]
    return out, urls, skips


def _log_account(res: AccountResult) -> None:
    """One line per account and sync."""
    name, detail = res.name, res.detail
    if res.state == "ok":
        log.info(
            "sync: account %s: %d streams from %s%s",
            name,
            res.streams,
            res.via,
            f" ({detail})" * bool(detail),
        )
    elif res.state == "inactive":
        log.warning("sync: account %s is %s: marked inactive until a sync finds it usable", name, detail)
    elif res.state == "no_api":
        log.info("sync: account %s: nothing imported, keeping %d streams (%s)", name, res.streams, detail)
    elif res.state == "down":
        log.warning(
            "sync: account %s: API unusable, keeping the last %d streams (%s)", name, res.streams, detail
        )


# ---- guide channels ----------------------------------------------------------------------------------


def iter_guide_channels(stream: Any) -> Iterator[tuple[str, tuple[str, ...], str | None]]:
    """(id, display names, icon) of each <channel>, streaming; numeric display names go last."""
    for elem in top_level_elements(stream):
        if elem.tag != "channel":
            continue
        cid = (elem.get("id") or "").strip()
        if not cid:
            continue
        names = [t for d in elem.iter("display-name") if (t := (d.text or "").strip())]
        names.sort(key=lambda n: n.replace(".", "").isdigit())  # "101" is a number, not a name
        icon = elem.find("icon")
        yield cid, tuple(names) or (cid,), (icon.get("src") or None) if icon is not None else None


def _open(src: Source) -> IO[bytes]:
    return fetch_source(src)


def import_guide(
    store: Store, cfg: Config, *, skip_accounts: set[str], cancel: threading.Event, progress: Progress | None
) -> GuideResult:
    """Import the guide channels; a source that fails is reported, and if none could be read the
    last import stays as it was."""
    active = tuple(a for a in cfg.accounts if a.name not in skip_accounts)
    sources = guide_sources(cfg.model_copy(update={"accounts": active}))
    res = GuideResult(sources=len(sources))
    found: dict[str, tuple[tuple[str, ...], str | None]] = {}
    seen = 0
    for src in sources:
        _check(cancel)
        try:
            with _open(src) as raw:
                for cid, names, icon in iter_guide_channels(open_source(raw, cancel)):
                    found.setdefault(cid, (names, icon))  # the first source names a channel
                    seen += 1
                    if progress is not None and seen % PROGRESS_EVERY == 0:
                        progress("guide channels", seen)
            res.sources_ok += 1
        except Exception as e:  # one source's failure is reported; the others still count
            _check(cancel)
            res.errors.append(src.scrub(f"{src.label}: {describe_error(e)}"))
    _check(cancel)
    if res.sources_ok:
        res.channels = store.import_guide_channels(
            ((cid, names, icon) for cid, (names, icon) in found.items()),
            complete=res.sources_ok == len(sources),
        )
    for err in res.errors:
        log.warning("sync: guide source failed: %s", err)
    return res


# ---- mapping -----------------------------------------------------------------------------------------


def remap(store: Store, cfg: Config) -> MapResult:
    """Rebuild the automatic mappings and the set of guide channels the relay serves."""
    rows = store.guide_channels()
    owned = {c.id for c in cfg.channels if c.streams}  # config mappings win: matched, never written
    config_names = {c.id: c.name for c in cfg.channels}
    targets = [
        GuideChannel(r.id, (config_names[r.id], *r.names) if r.id in config_names else r.names)
        for r in rows
        if r.in_guide or r.id in config_names
    ]
    streams = store.streams()
    fixed = store.fixed_pairs()
    result = auto_map(targets, streams, [a.name for a in cfg.accounts], fixed=fixed, blocked=store.blocks())
    by_key = {s.key: s for s in streams}
    categories: dict[str, set[str]] = defaultdict(set)
    best: dict[str, int] = {}
    for m in result.mappings:
        s = by_key[m.stream_key]
        if s.category:
            categories[m.channel_id].add(s.category)
        q = QUALITY_ORDER.index(quality_of(s.name))
        best[m.channel_id] = min(best.get(m.channel_id, q), q)
    manual = {ch for ch, _ in fixed if ch not in config_names}
    rule = cfg.channels_from_guide
    guide_only = [t for t in targets if t.id not in config_names]
    selected = select_channels(
        guide_only,
        result.channels() | manual,
        categories,
        include=rule.include,
        groups=rule.groups,
        exclude=rule.exclude,
    )
    numbers = assign_numbers(
        selected,
        {r.id: r.number for r in rows},
        {c.number for c in cfg.channels},
        start=rule.numbering.start,
    )
    keep = {t.id for t in selected} | (set(config_names) - owned)  # a stream matching an owned one: dropped
    mappings = [m for m in result.mappings if m.channel_id in keep]
    store.write_auto_mappings(
        ((m.channel_id, m.stream_key, m.priority, m.primary) for m in mappings),
        ((t.id, numbers[t.id], QUALITY_ORDER[best.get(t.id, 3)] != "SD") for t in selected),
    )
    mapped = {m.channel_id for m in mappings} | {ch for ch, _ in fixed}
    wanted = [c.id for c in cfg.channels] + [
        t.id for t in guide_only if any(matches(p, n) for p in rule.include for n in (t.id, *t.names))
    ]
    carried = result.channels() | manual  # guide channels some stream carries, served or not
    return MapResult(
        lineup=len({c.id for c in cfg.channels} | {t.id for t in selected}),
        guide_without_streams=sorted(t.id for t in guide_only if t.id not in carried),
        served=len(selected),
        mapped_channels=len({m.channel_id for m in mappings}),
        mapped_streams=len(mappings),
        unmapped_streams=len(result.unmapped),
        ambiguous_streams=len(result.ambiguous),
        channels_without_streams=[cid for cid in dict.fromkeys(wanted) if cid not in mapped],
    )


def guide_channels_without_streams(store: Store, cfg: Config) -> list[tuple[str, str]]:
    """(id, name) of the guide channels no stream carries: none maps to them automatically and none
    by hand. The same rules as `remap`, read-only (for `relay channels --unmapped`)."""
    config_ids = {c.id for c in cfg.channels}
    rows = [r for r in store.guide_channels() if r.in_guide and r.id not in config_ids]
    targets = [GuideChannel(r.id, r.names) for r in rows]
    fixed = store.fixed_pairs()
    result = auto_map(targets, store.streams(), [a.name for a in cfg.accounts], fixed=fixed)
    carried = result.channels() | {ch for ch, _ in fixed}
    return [(r.id, r.display_name) for r in rows if r.id not in carried]


# ---- one sync, and the background task ---------------------------------------------------------------


def run_sync(
    cfg: Config,
    db_path: Path,
    *,
    cancel: threading.Event | None = None,
    progress: Progress | None = None,
    now: Callable[[], float] = time.time,
    client_for: ClientFor = XtreamClient.for_account,
) -> SyncReport:
    """One whole sync (blocking: run it in a worker thread). Raises SyncCancelled when cancelled."""
    began = time.monotonic()
    cancel = cancel or threading.Event()
    report = SyncReport()
    store = Store(db_path)
    try:
        for acc in cfg.accounts:
            _check(cancel)
            if progress is not None:
                progress(f"account {acc.name}", 0)
            res = sync_account(store, cfg, acc, cancel=cancel, now=now(), client_for=client_for)
            _log_account(res)
            report.accounts.append(res)
        skip = {a.name for a in report.accounts if a.state in ("inactive", "no_api")}  # no xmltv.php either
        report.guide = import_guide(store, cfg, skip_accounts=skip, cancel=cancel, progress=progress)
        _check(cancel)
        if progress is not None:
            progress("mapping", 0)
        report.mapping = remap(store, cfg)
    finally:
        store.close()
    report.seconds = time.monotonic() - began
    return report


def lineup_warning(cfg: Config, report: SyncReport) -> str | None:
    """One line when the lineup is larger than `tuner.lineup_warn` (0: never)."""
    size, limit = report.mapping.lineup, cfg.tuner.lineup_warn
    if not limit or size <= limit:
        return None
    return (
        f"the lineup has {size} channels, more than tuner.lineup_warn ({limit}): Plex's DVR is reported to"
        " handle about 480 per tuner; narrow it with channels_from_guide.include, .groups or .exclude"
    )


def scrub_all(cfg: Config, text: str) -> str:
    """`text` without any account's username or password: for errors nobody expected."""
    secrets = tuple(s for a in cfg.accounts for s in (a.username, a.password))
    return Source(label="", secrets=secrets).scrub(text)


def emit_events(report: SyncReport, events: EventLog | None) -> None:
    if events is None:
        return
    for event in report.events():
        events.emit(event)


async def sync_once(
    cfg: Config,
    db_path: Path,
    events: EventLog | None = None,
    *,
    progress: Progress | None = None,
    client_for: ClientFor = XtreamClient.for_account,
) -> SyncReport | None:
    """Run one sync in a worker thread and write its events; None if it failed (logged, scrubbed)."""
    cancel = threading.Event()
    try:
        report = await asyncio.to_thread(
            run_sync, cfg, db_path, cancel=cancel, progress=progress, client_for=client_for
        )
    except asyncio.CancelledError:
        cancel.set()  # the thread stops at its next step; its transaction rolls back
        raise
    except SyncCancelled:
        return None
    except Exception as e:  # a bug must not end the periodic task, nor leak a password
        log.error("sync failed: %s", scrub_all(cfg, f"{type(e).__name__}: {e}"))
        return None
    emit_events(report, events)
    log.info("sync: %s", report.summary())
    warning = lineup_warning(cfg, report)
    if warning is not None:
        log.warning("sync: %s", warning)
    return report


async def _sync_forever(
    cfg: Config, db_path: Path, events: EventLog | None, on_synced: Callable[[SyncReport], None] | None
) -> None:
    interval = cfg.sync.interval_h * 3600.0
    if not cfg.sync.on_start:
        await asyncio.sleep(interval)
    while True:
        report = await sync_once(cfg, db_path, events)
        if report is not None and on_synced is not None:
            on_synced(report)
        await asyncio.sleep(interval)


def start_sync(
    cfg: Config,
    store: Store,
    events: EventLog | None,
    on_synced: Callable[[SyncReport], None] | None = None,
) -> asyncio.Task[None] | None:
    """The background sync of `serve`: at start (sync.on_start) and every sync.interval_h.

    `on_synced` runs on the loop after each sync that completed: where the relay re-reads
    `channel_list` and `account_limits`. None when there is nothing to sync (no account, no guide).
    """
    if not cfg.accounts and not cfg.guide.sources:
        return None
    task = _sync_forever(cfg, store.path, events, on_synced)
    return asyncio.get_running_loop().create_task(task, name="account-sync")


async def stop_sync(task: asyncio.Task[None] | None) -> None:
    """Cancel the background sync; a sync in progress stops at its next step."""
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


# ---- what the relay serves ---------------------------------------------------------------------------


def channel_list(cfg: Config, store: Store, *, include_disabled: bool = False) -> list[ChannelConfig]:
    """The relay's channels: the config's, exactly as written, then the guide channels the last sync
    selected, by number. With no sync data this is `cfg.channels`. Channels the web page disabled are
    left out (of the lineup, the guide and /stream/) unless `include_disabled`.

    Guide channels keep their XMLTV id (so `Store.candidates(id)` and the guide re-keying find them),
    which may hold characters the config's id rule refuses; the server unquotes /stream/ paths and
    the lineup uses /auto/v{number}, so they are built without that check.
    """
    out = list(cfg.channels)
    ids = {c.id for c in out}
    numbers = {c.number for c in out}
    for cid, name, number, hd in store.served_channels():
        if cid in ids or number in numbers:
            continue
        out.append(ChannelConfig.model_construct(id=cid, name=name, number=number, hd=hd, streams=()))
        ids.add(cid)
        numbers.add(number)
    if include_disabled:
        return out
    disabled = store.disabled_channels()
    return [c for c in out if c.id not in disabled] if disabled else out


def account_limits(cfg: Config, store: Store) -> dict[str, int]:
    """max_connections per account: the config's when set, else what the panel reported."""
    stored = store.account_limits()
    return {a.name: stored.get(a.name, a.max_connections) for a in cfg.accounts}
