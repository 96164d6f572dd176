"""How clients find the tuner: SiliconDust's UDP/TCP 65001 protocol and (opt-in) SSDP.

Owns: the libhdhomerun packet codec (u16 type, u16 length, TLV payload, little-endian CRC-32), the
discover reply, the read-only get/set control channel (its items live in relay.tuner.control),
the SSDP M-SEARCH replies and NOTIFY messages, and the asyncio protocols that carry them out.
The codec and the message builders are sans-IO: bytes in, bytes out, no socket, no clock.

Must never: send anything unsolicited except the SSDP NOTIFYs when `discovery.ssdp` is on; answer a
request anywhere but its source address; reply to a broadcast or multicast source; or stop the relay
from starting because a port is taken (log one line and carry on).

Over 400 lines because the codec, the three message kinds and their protocols share the packet format;
the control items live apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import logging
import random
import socket
import struct
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import cast

from relay.config import Config, TunerConfig
from relay.tuner import hdhomerun
from relay.tuner.control import answer as control_answer
from relay.tuner.control import sys_values
from relay.tuner.status import LiveView, idle_view

# ---------------------------------------------------------------------------------------------
# libhdhomerun packets (hdhomerun_pkt.h)

DISCOVER_PORT = 65001  # UDP discovery and TCP control share the number
MAX_PACKET_SIZE = 1460
MAX_PAYLOAD_SIZE = 1452

TYPE_DISCOVER_REQ = 0x0002
TYPE_DISCOVER_RPY = 0x0003
TYPE_GETSET_REQ = 0x0004
TYPE_GETSET_RPY = 0x0005

TAG_DEVICE_TYPE = 0x01
TAG_DEVICE_ID = 0x02
TAG_GETSET_NAME = 0x03
TAG_GETSET_VALUE = 0x04
TAG_ERROR_MESSAGE = 0x05
TAG_TUNER_COUNT = 0x10
TAG_LINEUP_URL = 0x27
TAG_BASE_URL = 0x2A
TAG_DEVICE_AUTH_STR = 0x2B

DEVICE_TYPE_TUNER = 0x00000001
DEVICE_TYPE_WILDCARD = 0xFFFFFFFF
DEVICE_ID_WILDCARD = 0xFFFFFFFF

_HEADER = struct.Struct(">HH")
_CRC = struct.Struct("<I")


class PacketError(ValueError):
    """Bytes that are not one well-formed libhdhomerun frame."""


@dataclass(frozen=True)
class Packet:
    type: int
    tlvs: tuple[tuple[int, bytes], ...]

    def get(self, tag: int) -> bytes | None:
        """The value of the first TLV with this tag."""
        for t, v in self.tlvs:
            if t == tag:
                return v
        return None


def _encode_length(n: int) -> bytes:
    # One byte below 128; else the low 7 bits with 0x80 set, then the rest shifted down 7.
    if n < 0x80:
        return bytes((n,))
    if n > 0x7FFF:
        raise ValueError(f"TLV value too long ({n} bytes)")
    return bytes(((n & 0x7F) | 0x80, n >> 7))


def encode_packet(ptype: int, tlvs: Iterable[tuple[int, bytes]]) -> bytes:
    payload = b"".join(bytes((tag,)) + _encode_length(len(value)) + value for tag, value in tlvs)
    if len(payload) > MAX_PAYLOAD_SIZE:
        raise ValueError(f"payload too long ({len(payload)} bytes)")
    frame = _HEADER.pack(ptype, len(payload)) + payload
    return frame + _CRC.pack(zlib.crc32(frame))


def frame_length(buf: bytes | bytearray) -> int | None:
    """Total length of the frame starting at buf[0], or None while its header is incomplete."""
    if len(buf) < _HEADER.size:
        return None
    _, length = _HEADER.unpack_from(buf)
    return _HEADER.size + length + _CRC.size


def decode_packet(data: bytes | bytearray) -> Packet:
    """One complete frame -> Packet; raises PacketError on truncation, trailing bytes or a bad CRC."""
    total = frame_length(data)
    if total is None or len(data) < total:
        raise PacketError("truncated frame")
    if len(data) > total:
        raise PacketError("trailing bytes after frame")
    (crc,) = _CRC.unpack_from(data, total - _CRC.size)
    if zlib.crc32(memoryview(data)[: total - _CRC.size]) != crc:
        raise PacketError("bad CRC")
    ptype, length = _HEADER.unpack_from(data)
    payload = bytes(data[_HEADER.size : _HEADER.size + length])
    tlvs: list[tuple[int, bytes]] = []
    pos = 0
    while pos < len(payload):
        if pos + 2 > len(payload):
            raise PacketError("truncated TLV header")
        tag, n = payload[pos], payload[pos + 1]
        pos += 2
        if n & 0x80:
            if pos >= len(payload):
                raise PacketError("truncated TLV length")
            n = (n & 0x7F) | (payload[pos] << 7)
            pos += 1
        if pos + n > len(payload):
            raise PacketError("TLV value runs past the payload")
        tlvs.append((tag, payload[pos : pos + n]))
        pos += n
    return Packet(ptype, tuple(tlvs))


# ---------------------------------------------------------------------------------------------
# What the device says about itself


@dataclass(frozen=True)
class DeviceInfo:
    """What discovery answers. `base_url=None` means "http://<address the requester reaches>:<http_port>"."""

    device_id: str
    tuner_count: int
    base_url: str | None
    device_auth: str
    http_port: int = 5004
    model: str = TunerConfig().model

    @property
    def lineup_url(self) -> str | None:
        return None if self.base_url is None else f"{self.base_url}/lineup.json"

    def at(self, local_ip: str) -> DeviceInfo:
        """This device with base_url filled in for a requester that reaches us on local_ip."""
        if self.base_url is not None:
            return self
        host = f"[{local_ip}]" if ":" in local_ip else local_ip
        return dataclasses.replace(self, base_url=f"http://{host}:{self.http_port}")


def device_info(cfg: Config, http_port: int) -> DeviceInfo:
    """DeviceInfo from the config and the port the HTTP server actually listens on."""
    dev_id = hdhomerun.device_id(cfg)
    base: str | None = cfg.tuner.base_url.rstrip("/") if cfg.tuner.base_url else None
    if base is None and not hdhomerun.is_unspecified_host(cfg.server.host):
        host = cfg.server.host
        base = f"http://{f'[{host}]' if ':' in host else host}:{http_port}"
    return DeviceInfo(
        device_id=dev_id,
        tuner_count=cfg.tuner.tuner_count,
        base_url=base,
        device_auth=hdhomerun.device_auth(dev_id),
        http_port=http_port,
        model=hdhomerun.model_number(cfg),
    )


def _u32_in(value: bytes | None, accepted: tuple[int, ...]) -> bool:
    """An absent tag matches anything; a present one must be a u32 among `accepted`."""
    return value is None or (len(value) == 4 and int.from_bytes(value, "big") in accepted)


def discover_reply(request: bytes, device: DeviceInfo) -> bytes | None:
    """The reply to a discover request meant for this device, or None for anything else."""
    try:
        pkt = decode_packet(request)
    except PacketError:
        return None
    if pkt.type != TYPE_DISCOVER_REQ:
        return None
    own_id = int(device.device_id, 16)
    if not _u32_in(pkt.get(TAG_DEVICE_TYPE), (DEVICE_TYPE_TUNER, DEVICE_TYPE_WILDCARD)):
        return None
    if not _u32_in(pkt.get(TAG_DEVICE_ID), (own_id, DEVICE_ID_WILDCARD)):
        return None
    tlvs: list[tuple[int, bytes]] = [
        (TAG_DEVICE_TYPE, DEVICE_TYPE_TUNER.to_bytes(4, "big")),
        (TAG_DEVICE_ID, own_id.to_bytes(4, "big")),
        (TAG_TUNER_COUNT, bytes((min(device.tuner_count, 255),))),
    ]
    if device.base_url is not None and device.lineup_url is not None:
        tlvs.append((TAG_BASE_URL, device.base_url.encode()))
        tlvs.append((TAG_LINEUP_URL, device.lineup_url.encode()))
    tlvs.append((TAG_DEVICE_AUTH_STR, device.device_auth.encode()))
    return encode_packet(TYPE_DISCOVER_RPY, tlvs)


def control_values(device: DeviceInfo, view: LiveView | None = None) -> dict[str, str]:
    """The fixed read-only get/set variables (the per-tuner ones: `control.get`)."""
    return sys_values(device, view or idle_view(device.tuner_count))


def control_reply(request: Packet, device: DeviceInfo, view: LiveView | None = None) -> bytes | None:
    """The reply to one control request: get answers, set is refused (the relay is configured in YAML)."""
    if request.type != TYPE_GETSET_REQ:
        return None
    raw_name = request.get(TAG_GETSET_NAME)
    if raw_name is None:
        return None
    name = raw_name.split(b"\0", 1)[0][:256].decode("utf-8", "replace")
    live = view or idle_view(device.tuner_count)
    value, error = control_answer(name, request.get(TAG_GETSET_VALUE) is not None, device, live)
    tlvs: list[tuple[int, bytes]] = [(TAG_GETSET_NAME, name.encode() + b"\0")]
    if error is not None:
        tlvs.append((TAG_ERROR_MESSAGE, error.encode() + b"\0"))
    else:
        tlvs.append((TAG_GETSET_VALUE, (value or "").encode()[: MAX_PAYLOAD_SIZE - 300] + b"\0"))
    return encode_packet(TYPE_GETSET_RPY, tlvs)


# ---------------------------------------------------------------------------------------------
# Addresses


def _is_unicast(host: str) -> bool:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return not (ip.is_multicast or ip.is_unspecified or str(ip) == "255.255.255.255")


def route_local_ip(peer_ip: str) -> str:
    """Our address on the route toward peer_ip (connecting a UDP socket sends nothing)."""
    family = socket.AF_INET6 if ":" in peer_ip else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect((peer_ip, 9))
            return str(s.getsockname()[0])
    except OSError:
        return "127.0.0.1"


def _bound_ip(transport: asyncio.BaseTransport) -> str | None:
    """The specific address a transport is bound to, or None when bound to the wildcard."""
    sockname = transport.get_extra_info("sockname")
    if not sockname:
        return None
    ip = str(sockname[0])
    return None if hdhomerun.is_unspecified_host(ip) else ip


# ---------------------------------------------------------------------------------------------
# asyncio protocols for 65001


class DiscoveryProtocol(asyncio.DatagramProtocol):
    """UDP 65001: answers discover requests, by unicast, to their source only."""

    def __init__(self, device: DeviceInfo, *, local_ip_for: Callable[[str], str] = route_local_ip) -> None:
        self.device = device
        self._local_ip_for = local_ip_for
        self._transport: asyncio.DatagramTransport | None = None
        self._bound_ip: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)  # selector transports do not subclass it
        self._bound_ip = _bound_ip(transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        host, port = str(addr[0]), int(addr[1])
        if self._transport is None or len(data) > MAX_PACKET_SIZE or port == 0 or not _is_unicast(host):
            return
        device = self.device
        if device.base_url is None:
            device = device.at(self._bound_ip or self._local_ip_for(host))
        reply = discover_reply(data, device)
        if reply is not None:
            self._transport.sendto(reply, addr)

    def error_received(self, exc: Exception) -> None:
        pass  # an ICMP unreachable for an earlier reply; nothing to do

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None


class ControlProtocol(asyncio.Protocol):
    """TCP 65001: read-only get/set, one connection per client, closed on garbage or when idle."""

    idle_timeout_s = 30.0

    def __init__(self, device: DeviceInfo, view: Callable[[], LiveView] | None = None) -> None:
        self.device = device
        self._view = view  # what the tuners do now, read per request; None: all idle
        self._buf = bytearray()
        self._transport: asyncio.Transport | None = None
        self._idle: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._arm_idle()

    def data_received(self, data: bytes) -> None:
        if self._transport is None:
            return
        self._buf += data
        self._arm_idle()
        while (total := frame_length(self._buf)) is not None and len(self._buf) >= total:
            frame = bytes(self._buf[:total])
            del self._buf[:total]
            try:
                live = self._view() if self._view is not None else None
                reply = control_reply(decode_packet(frame), self.device, live)
            except ValueError:  # PacketError, or a reply that would not fit a frame
                self._transport.close()
                return
            if reply is not None:
                self._transport.write(reply)
        if len(self._buf) > 2 * MAX_PACKET_SIZE:
            self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if self._idle is not None:
            self._idle.cancel()

    def _arm_idle(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
        if self._transport is not None:
            self._idle = asyncio.get_running_loop().call_later(self.idle_timeout_s, self._transport.close)


# ---------------------------------------------------------------------------------------------
# SSDP (UPnP 1.0 discovery), sans-IO

SSDP_PORT = 1900
SSDP_GROUP = "239.255.255.250"
SSDP_MAX_AGE_S = 1800
SSDP_SERVER = "Linux/1.0 UPnP/1.0 relay/0.1"
ROOT_DEVICE = "upnp:rootdevice"
SSDP_ALL = "ssdp:all"


@dataclass(frozen=True)
class MSearch:
    st: str
    mx: int


def parse_msearch(data: bytes) -> MSearch | None:
    """An `M-SEARCH * HTTP/1.1` with MAN "ssdp:discover" and an ST, or None."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    lines = text.replace("\r\n", "\n").split("\n")
    if lines[0].strip().upper() != "M-SEARCH * HTTP/1.1":
        return None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers.setdefault(name.strip().upper(), value.strip())
    if headers.get("MAN", "").strip('"') != "ssdp:discover" or not headers.get("ST"):
        return None
    try:
        mx = int(headers.get("MX", "1"))
    except ValueError:
        mx = 1
    return MSearch(st=headers["ST"], mx=max(0, min(mx, 5)))


def _targets(device: DeviceInfo) -> list[tuple[str, str]]:
    """(NT/ST, USN) for everything this device advertises."""
    u = hdhomerun.udn(device.device_id)
    return [
        (ROOT_DEVICE, f"{u}::{ROOT_DEVICE}"),
        (u, u),
        (hdhomerun.DEVICE_TYPE_URN, f"{u}::{hdhomerun.DEVICE_TYPE_URN}"),
    ]


def _location(device: DeviceInfo) -> str:
    if device.base_url is None:
        raise ValueError("DeviceInfo.base_url must be resolved (DeviceInfo.at) before building SSDP")
    return f"{device.base_url}/device.xml"


def _message(start: str, headers: Sequence[tuple[str, str | int]]) -> bytes:
    return (start + "\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n").encode()


def msearch_responses(request: MSearch, device: DeviceInfo) -> list[bytes]:
    """The unicast `HTTP/1.1 200 OK` replies to an M-SEARCH: one per matching search target."""
    matches = [(st, usn) for st, usn in _targets(device) if request.st in (SSDP_ALL, st)]
    return [
        _message(
            "HTTP/1.1 200 OK",
            [
                ("CACHE-CONTROL", f"max-age={SSDP_MAX_AGE_S}"),
                ("EXT", ""),
                ("LOCATION", _location(device)),
                ("SERVER", SSDP_SERVER),
                ("ST", st),
                ("USN", usn),
            ],
        )
        for st, usn in matches
    ]


def notify_messages(device: DeviceInfo, nts: str = "ssdp:alive") -> list[bytes]:
    """The `NOTIFY * HTTP/1.1` messages (ssdp:alive or ssdp:byebye), one per advertised type."""
    out = []
    for nt, usn in _targets(device):
        headers: list[tuple[str, str | int]] = [("HOST", f"{SSDP_GROUP}:{SSDP_PORT}")]
        if nts == "ssdp:alive":
            headers += [
                ("CACHE-CONTROL", f"max-age={SSDP_MAX_AGE_S}"),
                ("LOCATION", _location(device)),
                ("SERVER", SSDP_SERVER),
            ]
        headers += [("NT", nt), ("NTS", nts), ("USN", usn)]
        out.append(_message("NOTIFY * HTTP/1.1", headers))
    return out


class SsdpProtocol(asyncio.DatagramProtocol):
    """Answers M-SEARCH by unicast to the sender; sends periodic NOTIFYs only through `notify_sender`.

    `notify_sender=None` (the default, and what tests use) means this protocol never sends anything
    unsolicited. Joining the multicast group is the opener's business (see `start_discovery`).
    """

    def __init__(
        self,
        device: DeviceInfo,
        *,
        local_ip_for: Callable[[str], str] = route_local_ip,
        reply_delay: Callable[[int], float] = lambda mx: random.uniform(0, min(mx, 1)),
        notify_sender: Callable[[bytes], None] | None = None,
        notify_interval_s: float = 300.0,
    ) -> None:
        self.device = device
        self._local_ip_for = local_ip_for
        self._reply_delay = reply_delay
        self._notify_sender = notify_sender
        self._notify_interval_s = notify_interval_s
        self._transport: asyncio.DatagramTransport | None = None
        self._bound_ip: str | None = None
        self._timers: set[asyncio.TimerHandle] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)  # selector transports do not subclass it
        self._bound_ip = _bound_ip(transport)
        if self._notify_sender is not None:
            self._notify()

    def _resolved(self, toward: str) -> DeviceInfo:
        if self.device.base_url is not None:
            return self.device
        return self.device.at(self._bound_ip or self._local_ip_for(toward))

    def _later(self, delay: float, fn: Callable[..., None], *args: object) -> None:
        loop = asyncio.get_running_loop()
        handle: asyncio.TimerHandle

        def run() -> None:
            self._timers.discard(handle)
            fn(*args)

        handle = loop.call_later(delay, run)
        self._timers.add(handle)

    def _notify(self) -> None:
        if self._transport is None or self._notify_sender is None:
            return
        for msg in notify_messages(self._resolved(SSDP_GROUP)):
            self._notify_sender(msg)
        self._later(self._notify_interval_s, self._notify)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        host, port = str(addr[0]), int(addr[1])
        if port == 0 or not _is_unicast(host):
            return
        request = parse_msearch(data)
        if request is None:
            return
        for msg in msearch_responses(request, self._resolved(host)):
            self._later(self._reply_delay(request.mx), self._send, msg, addr)

    def _send(self, msg: bytes, addr: tuple[str | int, ...]) -> None:
        if self._transport is not None:
            self._transport.sendto(msg, addr)

    def error_received(self, exc: Exception) -> None:
        pass

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        for handle in self._timers:
            handle.cancel()
        self._timers.clear()


# ---------------------------------------------------------------------------------------------
# Opening it all

Closable = asyncio.BaseTransport | asyncio.AbstractServer


def _discovery_bind(cfg: Config) -> str:
    bind = cfg.discovery.bind or cfg.server.host
    return "0.0.0.0" if bind in ("", "::") else bind  # 65001 discovery is IPv4 broadcast


def _ssdp_socket(bind: str, port: int) -> socket.socket:
    """A UDP socket on *:port joined to the SSDP group on the bind address's interface."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # shared with other SSDP stacks
        sock.bind(("", port))
        iface = socket.inet_aton(
            "0.0.0.0" if hdhomerun.is_unspecified_host(bind) else socket.gethostbyname(bind)
        )
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, socket.inet_aton(SSDP_GROUP) + iface)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, iface)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 2)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


async def start_discovery(
    cfg: Config,
    device: DeviceInfo,
    loop: asyncio.AbstractEventLoop | None = None,
    log: logging.Logger | None = None,
    *,
    discover_port: int = DISCOVER_PORT,
    ssdp_port: int = SSDP_PORT,
    control: bool = True,
    view: Callable[[], LiveView] | None = None,
) -> list[Closable]:
    """Open what `cfg.discovery` asks for; returns what was opened (close each on shutdown).

    UDP 65001 discovery and the TCP 65001 control channel come with `discovery.udp`; SSDP (which joins
    239.255.255.250 and multicasts NOTIFYs) only with `discovery.ssdp`. A port that cannot be bound
    costs one log line, never an exception. `view` tells the control channel what the tuners do.
    """
    loop = loop or asyncio.get_running_loop()
    log = log or logging.getLogger("relay.tuner.discovery")
    bind = _discovery_bind(cfg)
    opened: list[Closable] = []
    if cfg.discovery.udp:
        try:
            transport, _ = await loop.create_datagram_endpoint(
                lambda: DiscoveryProtocol(device), local_addr=(bind, discover_port)
            )
            opened.append(transport)
            log.info("discovery: HDHomeRun UDP %s:%d listening", bind, discover_port)
        except OSError as e:
            log.warning(
                "discovery: HDHomeRun UDP %s:%d unavailable (%s); carrying on", bind, discover_port, e
            )
        if control:
            try:
                server = await loop.create_server(lambda: ControlProtocol(device, view), bind, discover_port)
                opened.append(server)
            except OSError as e:
                log.warning("discovery: HDHomeRun control TCP %s:%d unavailable (%s)", bind, discover_port, e)
    if cfg.discovery.ssdp:
        try:
            sock = _ssdp_socket(bind, ssdp_port)

            def multicast(msg: bytes) -> None:
                with contextlib.suppress(OSError):
                    sock.sendto(msg, (SSDP_GROUP, ssdp_port))

            transport, _ = await loop.create_datagram_endpoint(
                lambda: SsdpProtocol(device, notify_sender=multicast), sock=sock
            )
            opened.append(transport)
            log.info("discovery: SSDP on UDP %d (NOTIFY every 300 s)", ssdp_port)
        except OSError as e:
            log.warning("discovery: SSDP UDP %d unavailable (%s); carrying on", ssdp_port, e)
    return opened
