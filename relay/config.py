"""The relay's configuration: the YAML schema, its defaults, and the one-line errors a user sees.

Every number of the failover policy lives here with its default and the reason for it; nothing
else in the package hard-codes a timing. Loading never prints a traceback for a user mistake: it
raises ConfigError with one line naming the key and the problem.

Over 400 lines because it is the schema: one section a concern of config.yaml, each key with its default
and reason, plus the loader's bounds.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from relay.core.policy import FailoverPolicy

DEFAULT_USER_AGENT = "VLC/3.0.20 LibVLC/3.0.20"  # some panels block library user agents

# Bounds on reading the config file itself (they cannot live in it): whatever the YAML, loading takes
# at most this much input, nesting and work. A hand-written config is a few kB, 5 levels deep and a few
# thousand nodes; the "billion laughs" (nine aliases of nine) would be 9**9 nodes once expanded.
MAX_CONFIG_BYTES = 1 << 20
MAX_CONFIG_DEPTH = 64  # nesting, counted through aliases too
MAX_CONFIG_NODES = 200_000  # every scalar, list and mapping, an alias counted as a copy of what it names


class ConfigError(Exception):
    """A user mistake in the configuration; str() is the one line to show."""


def http_url(v: str) -> str:
    if not re.match(r"^https?://[^/\s]+", v):
        raise ValueError("must be an http:// or https:// URL")
    return v


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerConfig(_Model):
    host: str = "0.0.0.0"
    port: int = Field(5004, ge=0, le=65535)
    max_head_bytes: int = Field(8192, ge=1024)  # a request head over this gets 431
    header_timeout_s: float = Field(10.0, gt=0)  # slowloris guard: head must complete within this
    linger_s: float = Field(5.0, ge=0)  # keep an upstream this long after its last client leaves
    client_buffer_bytes: int = Field(4 << 20, ge=64 << 10)  # a client this far behind the others is dropped
    client_stall_s: float = Field(30.0, gt=0)  # a client that reads nothing this long frees its provider slot
    # a viewer joining a running session gets PAT/PMT and the session's last GOP (from its last keyframe)
    # at once, kept up to this many bytes (a longer GOP: the joiner waits for the next keyframe); 0 = off
    join_gop_bytes: int = Field(3 << 20, ge=0)
    # gather a channel's output into one write per viewer per this interval (or write_coalesce_bytes):
    # fewer syscalls, at the cost of up to one interval more between two writes; 0 = a write per read
    write_interval_ms: float = Field(0.0, ge=0, le=1000)
    write_coalesce_bytes: int = Field(64 << 10, ge=1)  # ... or write as soon as this much is gathered
    max_clients: int = Field(1024, ge=1)  # open client connections; beyond it 503, so fds stay bounded


class StorageConfig(_Model):
    database: str = "relay.db"
    events: str = "events.jsonl"
    # the JSON lines rotate past this size (events.jsonl.1 ...); 0 = never (an outside logrotate + SIGHUP)
    events_max_bytes: int = Field(64 << 20, ge=0)
    events_keep: int = Field(5, ge=1)  # rotated JSON-lines files kept; the oldest beyond is deleted
    event_log_days: float = Field(90.0, ge=0)  # event_log rows older than this are deleted; 0 = kept forever
    group: str | None = None  # files the relay creates are 0600; with a group (name or gid): 0640, that group


class LimitsConfig(_Model):
    """What bounds the relay under hostile load: event floods, open files, a full disk."""

    # open files: beyond server.max_clients the relay keeps this many descriptors for itself (database,
    # event file, guide, discovery), besides four per provider connection it may hold
    fd_reserve: int = Field(64, ge=0)
    health_slots: int = Field(4, ge=0)  # connections past max_clients that may still ask /health
    health_wait_s: float = Field(0.25, gt=0)  # ... and how long one gets to send it before its 503
    # events: identical ones (channel, event, reason) within this window are written once, then once
    # more with `repeated`; 0 writes every one
    coalesce_window_s: float = Field(10.0, ge=0)
    # tunes of a failing channel (its last tune found no working stream, within failing_channel_s):
    # per client address, a burst of this many, then one per failing_tune_every_s; beyond that 429
    failing_tune_burst: int = Field(3, ge=1)
    failing_tune_every_s: float = Field(10.0, gt=0)
    failing_channel_s: float = Field(60.0, gt=0)
    tune_peers: int = Field(4096, ge=1)  # client addresses the tune limiter remembers (least recent go)
    # a sink (event file, database) that cannot write: retried this often, warned about at most this often
    sink_retry_s: float = Field(5.0, gt=0)
    sink_warn_every_s: float = Field(60.0, gt=0)
    sink_backlog: int = Field(50_000, ge=100)  # events kept for a failing sink; beyond, the oldest are lost


class FailoverConfig(_Model):
    connect_timeout_s: float = Field(1.0, gt=0)  # TCP connect + response head, per upstream attempt
    stall_timeout_s: float = Field(5.0, gt=0)  # no body bytes this long = StreamStall (the seed's 5 s)
    budget_s: float = Field(2.0, gt=0)  # detection -> first backup byte at the client (NFR2)
    upgrade_after_s: float = Field(60.0, gt=0)  # on a lower-priority stream, probe a better one after this
    cooldown_s: float = Field(30.0, ge=0)  # a stream that failed this recently is tried last at session start
    hedge_delay_s: float = Field(0.25, ge=0)  # head start of one candidate before the next is opened too
    hold_s: float = Field(0.0, ge=0)  # all failed mid-stream: hold the response open this long, retrying
    splice: bool = True  # rewrite the TS at a switch so the client's demuxer sees one program
    # hold each frame until it is complete, so a dying upstream's cut frame never reaches a decoder;
    # the output then trails the upstream by the longest hold (a large keyframe's arrival), no gap
    frame_hold: bool = True
    # a backup in other codecs than the client started with (H.264/AAC -> MPEG-2/MP2): re-encode it to
    # those codecs with ffmpeg while it is current; false (or no ffmpeg): it gets PIDs of its own
    transcode: bool = True
    keyframe_wait_s: float = Field(1.0, ge=0)  # after a switch, wait at most this for a keyframe
    no_video_s: float = Field(3.0, gt=0)  # video silent this long while audio flows = NoVideo failure
    # no video and no audio PES this long while packets flow (nulls, PSI only, a PMT never resolved) =
    # NoMedia: a zombie upstream that answers 200 and sends valid TS without a program in it
    no_media_s: float = Field(3.0, gt=0)
    # media time (PCR/PTS clock) delivered against wall time over this window; below slow_ratio =
    # StreamSlow, switched make-before-break (a stream at 0.7x never stalls, yet every player rebuffers)
    slow_window_s: float = Field(10.0, ge=1)
    slow_ratio: float = Field(0.9, gt=0, lt=1)
    # HLS: a master playlist's variant with the highest BANDWIDTH up to this (bits/s); None = the best
    hls_max_bandwidth: int | None = Field(None, ge=1)
    hls_live_edge: float = Field(3.0, ge=1)  # HLS: start this many target durations before the end (RFC)

    def policy(self) -> FailoverPolicy:
        """The plain value the sans-IO failover machine takes (it never sees pydantic); its fields
        are named as the keys here."""
        return FailoverPolicy(**{f.name: getattr(self, f.name) for f in dataclasses.fields(FailoverPolicy)})


class AccountConfig(_Model):
    name: str = Field(min_length=1)
    url: str
    username: str
    password: str
    active: bool = True
    max_connections: int = Field(1, ge=1)
    user_agent: str = DEFAULT_USER_AGENT
    tls_verify: bool = True  # https:// providers: check the certificate (off only for a self-signed panel)
    ca_file: str | None = None  # https:// providers: trust this PEM bundle (relative to the config file)
    m3u: str | None = None  # extra M3U source: URL, file, or "get.php" (this account's m3u_plus)
    # Xtream live streams as MPEG-TS or HLS; auto: ts unless the panel's allowed_output_formats lacks it
    output: Literal["ts", "m3u8", "auto"] = "auto"

    @field_validator("url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        return http_url(v).rstrip("/")


DIRECT_ACCOUNT = "direct"  # the slot ledger's name for `url:` streams given without an account


class StreamRef(_Model):
    """A channel's stream: `account` + `stream_id` (Xtream), or a `url` (TS or HLS, any server) that
    counts against `account`'s max_connections when one is given."""

    account: str | None = None
    stream_id: int | None = Field(None, ge=0)
    url: str | None = None
    priority: int = Field(0, ge=0)
    primary: bool = False

    @field_validator("url")
    @classmethod
    def _http_url(cls, v: str | None) -> str | None:
        return None if v is None else http_url(v)

    @model_validator(mode="after")
    def _one_kind(self) -> StreamRef:
        if (self.url is None) == (self.stream_id is None):
            raise ValueError("give either stream_id (with account) or url")
        if self.stream_id is not None and self.account is None:
            raise ValueError("stream_id needs an account")
        return self


class ChannelConfig(_Model):
    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)

    id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    number: str = Field(min_length=1)
    hd: bool = True
    streams: tuple[StreamRef, ...] = ()

    @field_validator("id")
    @classmethod
    def _path_safe(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9._~@+-]+", v):
            raise ValueError("may only use letters, digits and . _ ~ @ + - (it is part of a URL path)")
        return v

    @field_validator("number")
    @classmethod
    def _guide_number(cls, v: str) -> str:
        if not re.fullmatch(r"\d+(\.\d+)?", v):
            raise ValueError('must look like "101" or "5.1"')
        return v


class TunerConfig(_Model):
    device_id: str | None = None  # 8 hex digits; derived from the config path when absent
    friendly_name: str = "relay"
    tuner_count: int = Field(2, ge=1)
    base_url: str | None = None  # what Plex should use to reach us; else taken from the Host header
    # ModelNumber in discover.json, device.xml and /sys/hwmodel. Jellyfin (and Emby) treat a model
    # containing "HDTC" as an EXTEND (transcoding) tuner and offer ?transcode= profiles the relay
    # ignores; HDHR4-2US (CONNECT) claims no transcoding. FirmwareName follows the model.
    model: str = Field("HDHR4-2US", min_length=1, max_length=32, pattern=r"^[A-Za-z0-9_.-]+$")
    lineup_warn: int = Field(480, ge=0)  # more channels than this: a warning (Plex's DVR copes with ~480)


class DiscoveryConfig(_Model):
    udp: bool = True  # SiliconDust discovery on UDP 65001: answers requests only
    ssdp: bool = False  # multicasts unsolicited NOTIFYs on the LAN, so it is opt-in
    bind: str | None = None  # defaults to server.host


class GuideSource(_Model):
    url: str | None = None
    file: str | None = None

    @model_validator(mode="after")
    def _one_of(self) -> GuideSource:
        if (self.url is None) == (self.file is None):
            raise ValueError("give exactly one of url or file")
        return self


class DummyGuideConfig(_Model):
    """Placeholder programmes for lineup channels without guide data (Plex hides such channels)."""

    enabled: bool = True
    block_h: float = Field(2.0, gt=0, le=24)  # one programme, titled with the channel name, per block
    days: float = Field(3.0, gt=0, le=14)  # from the build time on


class GuideConfig(_Model):
    """`guide:` is a list of sources, or {sources: [...], refresh_h: N, dummy: {...}}."""

    sources: tuple[GuideSource, ...] = ()
    refresh_h: float = Field(6.0, gt=0)  # how often /xmltv.xml is rebuilt from its sources
    dummy: DummyGuideConfig = DummyGuideConfig()

    @model_validator(mode="before")
    @classmethod
    def _list_form(cls, data: Any) -> Any:
        return {"sources": data} if isinstance(data, list | tuple) else data


class NotifyTarget(_Model):
    url: str | None = None  # a webhook: each warn/error event POSTed as its JSON
    # issue 19: an apprise URL (discord://, tgram://, ntfy://, mailto://...): the events in words,
    # and accounts that expire within expiry_days
    apprise: str | None = None
    expiry_days: int = Field(7, ge=0)

    @field_validator("url")
    @classmethod
    def _http_url(cls, v: str | None) -> str | None:
        return None if v is None else http_url(v)

    @model_validator(mode="after")
    def _one_of(self) -> NotifyTarget:
        if (self.url is None) == (self.apprise is None):
            raise ValueError("give exactly one of url or apprise")
        return self


class SyncConfig(_Model):
    interval_h: float = Field(12.0, gt=0)  # provider lists change daily at most; more often only adds load
    on_start: bool = True  # sync when `serve` starts, so a fresh install has channels within a minute


class NumberingConfig(_Model):
    start: int = Field(1000, ge=1)  # guide channels are numbered from here, above hand-numbered ones


class ChannelsFromGuideConfig(_Model):
    """Which guide channels a sync makes relay channels; both lists empty: every one with a stream."""

    include: tuple[str, ...] = ()  # guide channel ids or display names; * and ? match anything
    groups: tuple[str, ...] = ()  # provider categories (group-title); * and ? match anything
    # never served, whatever include/groups say: ids, names or categories; globs, or regexes as
    # "re:PATTERN" (searched, case-insensitive)
    exclude: tuple[str, ...] = ()
    numbering: NumberingConfig = NumberingConfig()

    @field_validator("exclude")
    @classmethod
    def _regexes_compile(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for pattern in v:
            if pattern.startswith("re:"):
                try:
                    re.compile(pattern[3:])
                except re.error as e:
                    raise ValueError(f"{pattern!r} is not a valid regular expression ({e})") from None
        return v


# ---- the web page (relay/web) and the operators' metrics: issue 19 ---------------------------------------
SECRET_HASH = r"scrypt\$\d+\$\d+\$\d+\$[A-Za-z0-9_-]+\$[A-Za-z0-9_-]+"  # relay.web.auth.hash_secret's form


class UiConfig(_Model):
    """`ui:` the page at /ui. Secrets are stored only as hashes (`relay ui-hash` makes one)."""

    password: str | None = None  # scrypt$... of the login password
    token: str | None = None  # scrypt$... of an API token (Authorization: Bearer), also accepted at login
    public_status: bool = False  # Status, Timeline and the live feed readable without login
    session_h: float = Field(12.0, gt=0)  # a login lasts this long
    login_attempts: int = Field(5, ge=1)  # failed logins per client address within login_window_s
    login_window_s: float = Field(300.0, gt=0)
    status_interval_s: float = Field(2.0, gt=0)  # live feed: one status push to all viewers this often
    max_viewers: int = Field(500, ge=1)  # live-feed connections; beyond it 503

    @field_validator("password", "token")
    @classmethod
    def _hashed(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(SECRET_HASH, v):
            raise ValueError("must be a hash (scrypt$...), never the secret itself: run `relay ui-hash`")
        return v


class MetricsConfig(_Model):
    channel_label: bool = False  # relay_failovers gets a channel label (one series per channel)
    channel_label_max: int = Field(50, ge=1)  # at most this many channels labelled; the rest are "other"


# ---- end of issue 19's additions ------------------------------------------------------------------------


# ---- cluster: several relays as one tuner (docs/scaling.md, relay/cluster/) -------------------


class ClusterConfig(_Model):
    """`cluster:` absent (no redis_url): one relay, every limit counted in-process, events unchanged."""

    redis_url: str | None = None  # redis://[:password@]host:port/db: where the relays share their leases
    relay_id: str | None = None  # this relay's name in leases and events; default "<hostname>:<port>"
    namespace: str = Field("relay", min_length=1)  # key prefix, so several clusters can share one Redis
    lease_ttl_s: float = Field(10.0, ge=1, le=15)  # a dead relay's leases expire this long after it died
    redis_timeout_s: float = Field(0.25, gt=0, le=2)  # each Redis call; keep it under connect_timeout_s
    sync_lock_s: float = Field(120.0, gt=0)  # TTL of the one-sync-at-a-time lock, renewed while it runs
    # the front's addresses: from these, X-Forwarded-For names the viewer (zap reclaim, client events)
    trusted_fronts: tuple[str, ...] = ()

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^(rediss?://[^/\s]+|unix://\S+)", v):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        return v

    @field_validator("relay_id")
    @classmethod
    def _relay_id(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[A-Za-z0-9._:@+-]{1,64}", v):
            raise ValueError("1-64 letters, digits and . _ : @ + - (it is part of lease names)")
        return v


# ---- cluster end ----------------------------------------------------------------------------


class Config(_Model):
    server: ServerConfig = ServerConfig()
    storage: StorageConfig = StorageConfig()
    failover: FailoverConfig = FailoverConfig()
    tuner: TunerConfig = TunerConfig()
    discovery: DiscoveryConfig = DiscoveryConfig()
    guide: GuideConfig = GuideConfig()
    sync: SyncConfig = SyncConfig()
    channels_from_guide: ChannelsFromGuideConfig = ChannelsFromGuideConfig()
    limits: LimitsConfig = LimitsConfig()
    cluster: ClusterConfig = ClusterConfig()
    notify: tuple[NotifyTarget, ...] = ()  # webhooks: every warn/error event is POSTed as JSON
    ui: UiConfig = UiConfig()  # issue 19
    metrics: MetricsConfig = MetricsConfig()  # issue 19
    accounts: tuple[AccountConfig, ...] = ()
    channels: tuple[ChannelConfig, ...] = ()
    base_dir: Path = Field(default=Path("."), exclude=True)  # the config file's folder
    # (key, VAR) of each ${VAR} the environment lacked, left as written; see require_env
    missing_env: tuple[tuple[str, str], ...] = Field(default=(), exclude=True)

    @model_validator(mode="after")
    def _cross_refs(self) -> Config:
        names = [a.name for a in self.accounts]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise _KeyedError(f"accounts[{i}].name", f"duplicate account name {name!r}")
        seen_ids: set[str] = set()
        seen_numbers: set[str] = set()
        for i, ch in enumerate(self.channels):
            if ch.id in seen_ids:
                raise _KeyedError(f"channels[{i}].id", f"duplicate channel id {ch.id!r}")
            if ch.number in seen_numbers:
                raise _KeyedError(f"channels[{i}].number", f"duplicate channel number {ch.number!r}")
            seen_ids.add(ch.id)
            seen_numbers.add(ch.number)
            for j, s in enumerate(ch.streams):
                if s.account is not None and s.account not in names:
                    raise _KeyedError(f"channels[{i}].streams[{j}].account", f"unknown account {s.account!r}")
                if s.account is None and DIRECT_ACCOUNT in names:
                    raise _KeyedError(
                        f"channels[{i}].streams[{j}].account",
                        f"needed: {DIRECT_ACCOUNT!r} is an account's name and also means url: streams"
                        " without one",
                    )
        return self

    def account(self, name: str) -> AccountConfig:
        for a in self.accounts:
            if a.name == name:
                return a
        raise KeyError(name)

    def channel(self, channel_id: str) -> ChannelConfig | None:
        for c in self.channels:
            if c.id == channel_id:
                return c
        return None

    def path(self, p: str) -> Path:
        """A storage path, relative to the config file's folder."""
        q = Path(p)
        return q if q.is_absolute() else self.base_dir / q


class _KeyedError(ValueError):
    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


# ---- ${VAR} expansion (lazy: a missing variable is an error only where it is used) -------------------

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _expand(
    node: Any,
    env: dict[str, str],
    key: str,
    missing: list[tuple[str, str]],
    done: dict[int, Any] | None = None,
) -> Any:
    """Expand ${VAR} in every string. A missing variable is left as written and noted in `missing`
    as (key, VAR): `relay channels` needs no provider password, `serve` and `sync` do (require_env).

    A list or mapping reached twice (a YAML alias) is expanded once and shared, as it was loaded.
    """
    done = {} if done is None else done
    if isinstance(node, dict | list) and id(node) in done:
        return done[id(node)]
    if isinstance(node, dict):
        out = done[id(node)] = {}
        out.update(
            (k, _expand(v, env, f"{key}.{k}" if key else str(k), missing, done)) for k, v in node.items()
        )
        return out
    if isinstance(node, list):
        done[id(node)] = lst = []
        lst.extend(_expand(v, env, f"{key}[{i}]", missing, done) for i, v in enumerate(node))
        return lst
    if isinstance(node, str):

        def sub(m: re.Match[str]) -> str:
            if m.group(1) not in env:
                missing.append((key, m.group(1)))
                return m.group(0)
            return env[m.group(1)]

        return _VAR.sub(sub, node)
    return node


def _missing_error(key: str, var: str) -> ConfigError:
    return ConfigError(f"{key}: environment variable {var} is not set")


def require_env(cfg: Config) -> None:
    """For what contacts a provider (serve, sync): every ${VAR} of the file must have been set."""
    if cfg.missing_env:
        raise _missing_error(*cfg.missing_env[0])


# ---- end of ${VAR} expansion -----------------------------------------------------------------------


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out


def parse(data: Any, *, base_dir: Path = Path("."), env: dict[str, str] | None = None) -> Config:
    """Validate an already-loaded YAML tree."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("the top level must be a mapping (server:, accounts:, channels: ...)")
    missing: list[tuple[str, str]] = []
    data = _expand(data, dict(os.environ) if env is None else env, "", missing)
    try:
        return Config.model_validate({**data, "base_dir": base_dir, "missing_env": tuple(missing)})
    except ValidationError as e:
        if missing:  # a "${VAR}" left as written can break validation (a port, a URL): name the cause
            raise _missing_error(*missing[0]) from None
        err = e.errors()[0]
        ctx_err = (err.get("ctx") or {}).get("error")
        if isinstance(ctx_err, _KeyedError):
            raise ConfigError(f"{ctx_err.key}: {ctx_err.problem}") from None
        kind: Literal["extra_forbidden"] | str = err["type"]
        where = _loc(tuple(p for p in err["loc"] if p != "__root__")) or "config"
        if kind == "extra_forbidden":
            raise ConfigError(f"{where}: unknown key") from None
        msg = err["msg"].removeprefix("Value error, ")
        raise ConfigError(f"{where}: {msg}") from None


if yaml.__with_libyaml__:  # libyaml's parser, PyYAML's composer (so the depth is ours to bound): 5x faster
    from yaml.cyaml import CParser as _Parser
else:  # pragma: no cover - PyYAML built without libyaml

    class _Parser(yaml.reader.Reader, yaml.scanner.Scanner, yaml.parser.Parser):  # type: ignore[no-redef]
        def __init__(self, stream: str) -> None:
            yaml.reader.Reader.__init__(self, stream)
            yaml.scanner.Scanner.__init__(self)
            yaml.parser.Parser.__init__(self)


class _BoundedLoader(
    yaml.composer.Composer, yaml.constructor.SafeConstructor, yaml.resolver.Resolver, _Parser
):
    """A safe loader with a nesting limit, and a key given twice in one mapping refused."""

    def __init__(self, stream: str) -> None:
        _Parser.__init__(self, stream)
        yaml.composer.Composer.__init__(self)
        yaml.constructor.SafeConstructor.__init__(self)
        yaml.resolver.Resolver.__init__(self)
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_CONFIG_DEPTH:  # PyYAML's composer recurses: stop long before Python does
                mark = self.peek_event().start_mark
                raise yaml.composer.ComposerError(
                    None, None, f"nested deeper than {MAX_CONFIG_DEPTH} levels", mark
                )
            return super().compose_node(parent, index)  # type: ignore[no-any-return]
        finally:
            self._depth -= 1

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *defaults` may be overridden by the mapping's own keys, as YAML says
            key = self.construct_object(key_node, deep=True)
            try:
                dup = key in seen
                seen.add(key)
            except TypeError:
                continue  # an unhashable key: the base class reports it
            if dup:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
        return super().construct_mapping(node, deep)  # type: ignore[no-any-return]


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _measure(root: yaml.Node) -> None:
    """Refuse a node graph whose expansion (aliases copied out) is too big, too deep, or endless.

    Iterative, and each node measured once, so an alias bomb costs its size in the file, not 9**9.
    """
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        k = id(node)
        if done:
            on_path.discard(k)
            kids = _children(node)
            size[k] = 1 + sum(size[id(c)] for c in kids)
            depth[k] = 1 + max((depth[id(c)] for c in kids), default=0)
            line = node.start_mark.line + 1
            if size[k] > MAX_CONFIG_NODES:
                raise ConfigError(f"line {line}: expands to more than {MAX_CONFIG_NODES} nodes (aliases?)")
            if depth[k] > MAX_CONFIG_DEPTH:
                raise ConfigError(
                    f"line {line}: nested deeper than {MAX_CONFIG_DEPTH} levels through aliases"
                )
            continue
        if k in size:
            continue
        if k in on_path:
            raise ConfigError(f"line {node.start_mark.line + 1}: an alias that contains itself")
        on_path.add(k)
        stack.append((node, True))
        stack.extend((c, False) for c in _children(node) if id(c) not in size)


def load_yaml(text: str) -> Any:
    """The YAML tree of a config, bounded in time and memory whatever the input; None if it is empty.

    Raises ConfigError (without the file name) for a bound crossed, yaml.YAMLError for bad YAML.
    """
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(f"larger than {MAX_CONFIG_BYTES} bytes")
    loader = _BoundedLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _measure(node)
        return loader.construct_document(node)
    finally:
        if hasattr(loader, "dispose"):
            loader.dispose()


def load(path: str | os.PathLike[str], env: dict[str, str] | None = None) -> Config:
    p = Path(path)
    try:
        if p.stat().st_size > MAX_CONFIG_BYTES:  # before reading it: a config is never that big
            raise ConfigError(f"{p}: larger than {MAX_CONFIG_BYTES} bytes; not a relay config")
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{p}: config file not found") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not UTF-8 text") from None
    except OSError as e:
        raise ConfigError(f"{p}: cannot read config ({e.strerror})") from None
    try:
        data = load_yaml(text)
    except ConfigError as e:
        raise ConfigError(f"{p}: {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{p}:{where}: YAML error: {problem}") from None
    if data is None:
        raise ConfigError(f"{p}: the config is empty (it needs at least accounts:)")
    return parse(data, base_dir=p.resolve().parent, env=env)


def resolve_path(cli_path: str | None, env: dict[str, str] | None = None) -> Path:
    """--config, else $RELAY_CONFIG, else ./config.yaml."""
    e = os.environ if env is None else env
    return Path(cli_path or e.get("RELAY_CONFIG") or "config.yaml")
