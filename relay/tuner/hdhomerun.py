"""The HTTP face of the emulated HDHomeRun tuner: the bodies Plex reads, built from the config.

Owns: the DeviceID (stable, passing libhdhomerun's checksum), the model and firmware names, the
BaseURL rule, discover.json, lineup.json / lineup.xml / lineup.m3u, lineup_status.json, the
lineup.post reply, status.json and tuners.html, device.xml, the relay's guide id for a channel, and
the X-HDHomeRun-Error codes. Every function is pure: no sockets, no clock, no
event loop; the server's router calls them and writes the bytes.

Must never: hand out a BaseURL of 0.0.0.0, echo an unchecked Host header into a body, or change a
DeviceID between restarts (Plex keys the whole DVR on it).

Over 400 lines because every document Plex and other clients read is here, each a short pure function.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import re
import socket
import uuid
from collections.abc import Iterable, Mapping
from enum import IntEnum
from typing import NamedTuple
from xml.sax.saxutils import escape, quoteattr

import orjson

from relay.config import ChannelConfig, Config
from relay.tuner.status import SIGNAL_QUALITY, SIGNAL_STRENGTH, SYMBOL_QUALITY, LiveView

MANUFACTURER = "Silicondust"
FIRMWARE_VERSION = "20200101"
# ModelNumber -> FirmwareName, as SiliconDust's devices report them. HDTC ("TC": transcode) is the
# EXTEND, the one model that transcodes: Jellyfin and Emby then offer ?transcode= profiles.
FIRMWARE_NAMES = {
    "HDHR3-US": "hdhomerun3_atsc",
    "HDHR3-CC": "hdhomerun3_cablecard",
    "HDHR4-2US": "hdhomerun4_atsc",
    "HDHR4-2DT": "hdhomerun4_dvbt",
    "HDHR5-2US": "hdhomerun5_atsc",
    "HDHR5-4US": "hdhomerun5_atsc",
    "HDTC-2US": "hdhomeruntc_atsc",
}
DEVICE_TYPE_URN = "urn:schemas-upnp-org:device:MediaServer:1"
GUIDE_ID_SUFFIX = ".relay"

# ---------------------------------------------------------------------------------------------
# DeviceID


# libhdhomerun `hdhomerun_discover_validate_device_id`: the odd nibbles (from the top) go through
# this table, the even ones are taken as they are, and everything XORed together must be zero.
_CHECKSUM_TABLE = (0xA, 0x5, 0xF, 0x6, 0x7, 0xC, 0x1, 0xB, 0x9, 0x2, 0x8, 0xD, 0x4, 0x3, 0xE, 0x0)
_WILDCARD = 0xFFFFFFFF
# Prefixes libhdhomerun treats as legacy hardware (`hdhomerun_discover_is_legacy`); avoid them.
_LEGACY_PREFIXES = frozenset({0x100, 0x101, 0x102, 0x103, 0x111, 0x120, 0x121, 0x122})


def _checksum(value: int) -> int:
    c = 0
    for shift in (28, 20, 12, 4):
        c ^= _CHECKSUM_TABLE[(value >> shift) & 0xF]
        c ^= (value >> (shift - 4)) & 0xF
    return c


def is_valid_device_id(device_id: str | int) -> bool:
    """True when the id passes libhdhomerun's checksum and is neither 0 nor the wildcard."""
    if isinstance(device_id, str):
        if not re.fullmatch(r"[0-9A-Fa-f]{8}", device_id):
            return False
        device_id = int(device_id, 16)
    return 0 < device_id < _WILDCARD and _checksum(device_id) == 0


def _fix_checksum(value: int) -> int:
    """Replace the lowest nibble (XORed unmapped) so that the checksum comes out zero."""
    value &= 0xFFFFFFF0
    return value | _checksum(value)


def device_id(cfg: Config) -> str:
    """The 8-hex-digit DeviceID: `tuner.device_id` if set (checked), else derived from the config folder.

    The derived id depends only on the absolute path of the config file's folder, so it survives
    restarts and edits of the config (a new DeviceID makes Plex see a new tuner). Pin
    `tuner.device_id` to run two relays from one folder.
    """
    configured = cfg.tuner.device_id
    if configured is not None:
        if not is_valid_device_id(configured):
            raise ValueError(
                f"tuner.device_id: {configured!r} is not a valid HDHomeRun DeviceID "
                "(8 hex digits passing the libhdhomerun checksum)"
            )
        return configured.upper()
    seed = str(cfg.base_dir.resolve()).encode("utf-8", "surrogateescape")
    digest = hashlib.sha256(b"relay-device-id\0" + seed).digest()
    value = _fix_checksum(int.from_bytes(digest[:4], "big"))
    if (value >> 20) in _LEGACY_PREFIXES or not is_valid_device_id(value):
        value = _fix_checksum(value ^ 0x08000000)
    return f"{value:08X}"


def device_auth(dev_id: str) -> str:
    """A fixed-length (24 chars) DeviceAuth token; Plex does not check it, clients expect its shape."""
    digest = hashlib.sha256(b"relay-device-auth\0" + dev_id.encode()).digest()
    return base64.urlsafe_b64encode(digest[:18]).decode("ascii")


def udn(dev_id: str) -> str:
    """The UPnP UDN for a DeviceID: a name-based UUID whose first group is the DeviceID itself."""
    derived = uuid.uuid5(uuid.NAMESPACE_OID, f"relay.hdhomerun.{dev_id}")
    return f"uuid:{dev_id.lower()}{str(derived)[8:]}"


def model_number(cfg: Config) -> str:
    return cfg.tuner.model


def firmware_name(model: str) -> str:
    """The FirmwareName that goes with a ModelNumber (an unknown model gets a generic ATSC one)."""
    return FIRMWARE_NAMES.get(model.upper(), "hdhomerun_atsc")


def claims_transcoding(model: str) -> bool:
    """What Jellyfin concludes from the model: "hdtc" anywhere in it means an EXTEND."""
    return "hdtc" in model.lower()


# ---------------------------------------------------------------------------------------------
# BaseURL

_HOST_HEADER = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(?::\d{1,5})?")


def is_unspecified_host(host: str) -> bool:
    """True for "", 0.0.0.0, :: and [::]: addresses a client cannot connect to."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        return host == ""


def _fallback_host(cfg: Config, local_ip: str | None) -> str:
    """A host a client can reach when neither tuner.base_url nor a usable Host header is there."""
    for candidate in (local_ip, cfg.server.host):
        if candidate and not is_unspecified_host(candidate):
            return f"[{candidate}]" if ":" in candidate else candidate
    try:
        name = socket.gethostname()
    except OSError:
        name = ""
    return name if name and _HOST_HEADER.fullmatch(name) else "127.0.0.1"


def base_url(cfg: Config, host_header: str | None, server_port: int, *, local_ip: str | None = None) -> str:
    """The BaseURL clients must use: `tuner.base_url`, else `http://{Host}`; never 0.0.0.0.

    `local_ip` (the address the request arrived on, from the socket's sockname) is the preferred
    fallback when the Host header is missing, malformed or names an unspecified address.
    """
    if cfg.tuner.base_url:
        return cfg.tuner.base_url.rstrip("/")
    host = (host_header or "").strip()
    if host and _HOST_HEADER.fullmatch(host):
        name, port = _split_host(host)
        if not is_unspecified_host(name):
            return f"http://{host}"
        return f"http://{_fallback_host(cfg, local_ip)}:{port or server_port}"
    return f"http://{_fallback_host(cfg, local_ip)}:{server_port}"


def _split_host(host: str) -> tuple[str, str]:
    """ "[::1]:5004" -> ("[::1]", "5004"); "tv.lan" -> ("tv.lan", "")."""
    if host.startswith("["):
        end = host.index("]") + 1
        return host[:end], host[end + 1 :]
    name, _, port = host.partition(":")
    return name, port


# ---------------------------------------------------------------------------------------------
# Bodies


def guide_id(channel: ChannelConfig) -> str:
    """The relay's XMLTV channel id: unique to the relay and never purely numeric (e.g. "101.relay")."""
    return f"{channel.number}{GUIDE_ID_SUFFIX}"


def _number_key(channel: ChannelConfig) -> tuple[int, ...]:
    return tuple(int(part) for part in channel.number.split("."))


def sorted_channels(channels: Iterable[ChannelConfig]) -> list[ChannelConfig]:
    """Channels in numeric GuideNumber order: 5 < 5.1 < 6 < 10."""
    return sorted(channels, key=_number_key)


def stream_url(base: str, channel: ChannelConfig) -> str:
    return f"{base}/auto/v{channel.number}"


def discover_json(cfg: Config, base: str) -> bytes:
    dev_id = device_id(cfg)
    return orjson.dumps(
        {
            "FriendlyName": cfg.tuner.friendly_name,
            "Manufacturer": MANUFACTURER,
            "ModelNumber": model_number(cfg),
            "FirmwareName": firmware_name(model_number(cfg)),
            "FirmwareVersion": FIRMWARE_VERSION,
            "DeviceID": dev_id,
            "DeviceAuth": device_auth(dev_id),
            "BaseURL": base,
            "LineupURL": f"{base}/lineup.json",
            "TunerCount": cfg.tuner.tuner_count,
        }
    )


def lineup_json(channels: Iterable[ChannelConfig], base: str) -> bytes:
    return orjson.dumps(
        [
            {
                "GuideNumber": ch.number,
                "GuideName": ch.name,
                "URL": stream_url(base, ch),
                "HD": 1 if ch.hd else 0,
            }
            for ch in sorted_channels(channels)
        ]
    )


def lineup_xml(channels: Iterable[ChannelConfig], base: str) -> bytes:
    """lineup.json as XML, the way a real tuner serves /lineup.xml: <Lineup><Program>... per channel."""
    rows = []
    for ch in sorted_channels(channels):
        rows.append(
            "<Program>"
            f"<GuideNumber>{xml_text(ch.number)}</GuideNumber>"
            f"<GuideName>{xml_text(ch.name)}</GuideName>"
            f"<URL>{xml_text(stream_url(base, ch))}</URL>"
            f"<HD>{1 if ch.hd else 0}</HD>"
            "</Program>\n"
        )
    return ('<?xml version="1.0" encoding="UTF-8"?>\n<Lineup>\n' + "".join(rows) + "</Lineup>\n").encode()


class ChannelArt(NamedTuple):
    """What an M3U client shows beside a channel: the provider's logo and category."""

    logo: str | None = None
    group: str | None = None


def _m3u_attr(value: str) -> str:
    """M3U attributes have no escaping: drop what would end the attribute or the line."""
    return re.sub(r'["\r\n]', "", value)


def lineup_m3u(
    channels: Iterable[ChannelConfig], base: str, art: Mapping[str, ChannelArt] | None = None
) -> bytes:
    """The lineup as an extended M3U (Jellyfin, Emby, Channels, VLC): the guide URL in the header
    (x-tvg-url, and url-tvg for older readers), tvg-id = the guide's channel id, tvg-chno, logo, group."""
    guide = f"{_m3u_attr(base)}/xmltv.xml"
    lines = [f'#EXTM3U x-tvg-url="{guide}" url-tvg="{guide}"']
    for ch in sorted_channels(channels):
        name = _m3u_attr(ch.name)
        extra = (art or {}).get(ch.id, ChannelArt())
        attrs = f'tvg-id="{guide_id(ch)}" tvg-chno="{ch.number}" tvg-name="{name}"'
        if extra.logo:
            attrs += f' tvg-logo="{_m3u_attr(extra.logo)}"'
        if extra.group:
            attrs += f' group-title="{_m3u_attr(extra.group)}"'
        lines.append(f"#EXTINF:-1 {attrs},{name}")
        lines.append(stream_url(base, ch))
    return ("\n".join(lines) + "\n").encode("utf-8")


def status_json(view: LiveView) -> bytes:
    """/status.json: one object per tuner, `Resource` "tunerN"; a busy one also says what it streams,
    to whom (TargetIP) and how fast (NetworkRate, bit/s), with a constant perfect signal."""
    out: list[dict[str, object]] = []
    for t in view.tuners:
        entry: dict[str, object] = {"Resource": f"tuner{t.index}"}
        if t.number is not None:
            entry.update(
                {
                    "VctNumber": t.number,
                    "VctName": t.name,
                    "SignalStrengthPercent": SIGNAL_STRENGTH,
                    "SignalQualityPercent": SIGNAL_QUALITY,
                    "SymbolQualityPercent": SYMBOL_QUALITY,
                    "TargetIP": t.target_ip,
                    "NetworkRate": t.bps,
                }
            )
        out.append(entry)
    return orjson.dumps(out)


def tuners_html(view: LiveView) -> bytes:
    """The device's tuner page: scripts read its `<tr><td>Tuner N Channel</td><td>...</td></tr>` rows."""
    rows = "".join(
        f"<tr><td>Tuner {t.index} Channel</td>"
        f"<td>{xml_text(f'{t.number} {t.name}') if t.number is not None else 'none'}</td></tr>\n"
        for t in view.tuners
    )
    return (
        "<!DOCTYPE html>\n<html><head><title>Tuner Status</title></head><body>\n"
        f"<table>\n{rows}</table>\n</body></html>\n"
    ).encode()


_LINEUP_STATUS = orjson.dumps(
    {"ScanInProgress": 0, "ScanPossible": 1, "Source": "Cable", "SourceList": ["Cable"]}
)


def lineup_status_json() -> bytes:
    """Idle and scannable: `ScanPossible: 0` made Plex finish its scan with zero channels."""
    return _LINEUP_STATUS


def lineup_post_body() -> bytes:
    """The 200 body for any `POST /lineup.post` (scan=start|abort): small and non-empty."""
    return b"{}"


def device_xml(cfg: Config, base: str) -> bytes:
    """The UPnP root device description (served at /device.xml and /)."""
    dev_id = device_id(cfg)
    fields = {
        "deviceType": DEVICE_TYPE_URN,
        "friendlyName": cfg.tuner.friendly_name,
        "manufacturer": MANUFACTURER,
        "modelName": model_number(cfg),
        "modelNumber": model_number(cfg),
        "serialNumber": dev_id,
        "UDN": udn(dev_id),
    }
    device = "".join(f"    <{k}>{escape(_xml_text(v))}</{k}>\n" for k, v in fields.items())
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<root xmlns="urn:schemas-upnp-org:device-1-0">\n'
        "  <specVersion><major>1</major><minor>0</minor></specVersion>\n"
        f"  <URLBase>{escape(_xml_text(base))}</URLBase>\n"
        "  <device>\n"
        f"{device}"
        "  </device>\n"
        "</root>\n"
    ).encode()


_XML_ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _xml_text(value: str) -> str:
    """Drop the characters XML 1.0 cannot carry at all (escaping cannot save them)."""
    return _XML_ILLEGAL.sub("", value)


def xml_attr(value: str) -> str:
    """A quoted, escaped XML attribute value."""
    return quoteattr(_xml_text(value))


def xml_text(value: str) -> str:
    """Escaped XML character data."""
    return escape(_xml_text(value))


# ---------------------------------------------------------------------------------------------
# Errors, the way a real tuner gives them (503 + this header)

ERROR_HEADER = "X-HDHomeRun-Error"


class TunerError(IntEnum):
    TUNER_IN_USE = 804
    ALL_TUNERS_IN_USE = 805
    TUNE_FAILED = 806
    NO_VIDEO_DATA = 807

    @property
    def text(self) -> str:
        return _ERROR_TEXT[self]

    @property
    def header_value(self) -> str:
        """e.g. "805 All Tuners In Use"."""
        return f"{int(self)} {self.text}"

    def header(self) -> tuple[str, str]:
        return (ERROR_HEADER, self.header_value)


_ERROR_TEXT = {
    TunerError.TUNER_IN_USE: "Tuner In Use",
    TunerError.ALL_TUNERS_IN_USE: "All Tuners In Use",
    TunerError.TUNE_FAILED: "Tune Failed",
    TunerError.NO_VIDEO_DATA: "No Video Data",
}
