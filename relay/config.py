"""The relay's configuration: the YAML schema, its defaults, and the one-line errors a user sees.

Every number of the failover policy lives here with its default and the reason for it; nothing
else in the package hard-codes a timing. Loading never prints a traceback for a user mistake: it
raises ConfigError with one line naming the key and the problem.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

DEFAULT_USER_AGENT = "VLC/3.0.20 LibVLC/3.0.20"  # some panels block library user agents


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
    max_clients: int = Field(1024, ge=1)  # open client connections; beyond it 503, so fds stay bounded


class StorageConfig(_Model):
    database: str = "relay.db"
    events: str = "events.jsonl"


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

    @field_validator("url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        return http_url(v).rstrip("/")


class StreamRef(_Model):
    account: str
    stream_id: int = Field(ge=0)
    priority: int = Field(0, ge=0)
    primary: bool = False


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


class GuideConfig(_Model):
    """`guide:` is a list of sources, or {sources: [...], refresh_h: N}."""

    sources: tuple[GuideSource, ...] = ()
    refresh_h: float = Field(6.0, gt=0)  # how often /xmltv.xml is rebuilt from its sources

    @model_validator(mode="before")
    @classmethod
    def _list_form(cls, data: Any) -> Any:
        return {"sources": data} if isinstance(data, list | tuple) else data


class NotifyTarget(_Model):
    url: str

    @field_validator("url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        return http_url(v)


class SyncConfig(_Model):
    interval_h: float = Field(12.0, gt=0)  # provider lists change daily at most; more often only adds load
    on_start: bool = True  # sync when `serve` starts, so a fresh install has channels within a minute


class NumberingConfig(_Model):
    start: int = Field(1000, ge=1)  # guide channels are numbered from here, above hand-numbered ones


class ChannelsFromGuideConfig(_Model):
    """Which guide channels a sync makes relay channels; both lists empty: every one with a stream."""

    include: tuple[str, ...] = ()  # guide channel ids or display names; * and ? match anything
    groups: tuple[str, ...] = ()  # provider categories (group-title); * and ? match anything
    numbering: NumberingConfig = NumberingConfig()


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
    cluster: ClusterConfig = ClusterConfig()
    notify: tuple[NotifyTarget, ...] = ()  # webhooks: every warn/error event is POSTed as JSON
    accounts: tuple[AccountConfig, ...] = ()
    channels: tuple[ChannelConfig, ...] = ()
    base_dir: Path = Field(default=Path("."), exclude=True)  # the config file's folder

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
                if s.account not in names:
                    raise _KeyedError(f"channels[{i}].streams[{j}].account", f"unknown account {s.account!r}")
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


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _expand(node: Any, env: dict[str, str], key: str) -> Any:
    """Expand ${VAR} in every string; a missing variable is an error naming the key."""
    if isinstance(node, dict):
        return {k: _expand(v, env, f"{key}.{k}" if key else str(k)) for k, v in node.items()}
    if isinstance(node, list):
        return [_expand(v, env, f"{key}[{i}]") for i, v in enumerate(node)]
    if isinstance(node, str):

        def sub(m: re.Match[str]) -> str:
            if m.group(1) not in env:
                raise ConfigError(f"{key}: environment variable {m.group(1)} is not set")
            return env[m.group(1)]

        return _VAR.sub(sub, node)
    return node


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
    data = _expand(data, dict(os.environ) if env is None else env, "")
    try:
        return Config.model_validate({**data, "base_dir": base_dir})
    except ValidationError as e:
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


def load(path: str | os.PathLike[str], env: dict[str, str] | None = None) -> Config:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{p}: config file not found") from None
    except OSError as e:
        raise ConfigError(f"{p}: cannot read config ({e.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{p}:{where}: YAML error: {problem}") from None
    return parse(data, base_dir=p.resolve().parent, env=env)


def resolve_path(cli_path: str | None, env: dict[str, str] | None = None) -> Path:
    """--config, else $RELAY_CONFIG, else ./config.yaml."""
    e = os.environ if env is None else env
    return Path(cli_path or e.get("RELAY_CONFIG") or "config.yaml")
