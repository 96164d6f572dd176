"""Discovery: the libhdhomerun codec, discover/control replies, SSDP, and the real `hdhomerun_config`.

Network hygiene: everything here is unicast to 127.0.0.1 or uses fake transports; nothing joins a
multicast group or sends a NOTIFY onto a real interface. The test that needs UDP/TCP 65001 itself runs
in a network namespace of its own (tests/netns.py), so another relay on this machine cannot answer it.
"""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
import socket
import struct
import zlib
from pathlib import Path
from typing import Any

import pytest

from relay.config import Config, parse
from relay.tuner import discovery, hdhomerun
from relay.tuner.discovery import (
    DEVICE_ID_WILDCARD,
    DEVICE_TYPE_TUNER,
    DEVICE_TYPE_WILDCARD,
    TAG_BASE_URL,
    TAG_DEVICE_AUTH_STR,
    TAG_DEVICE_ID,
    TAG_DEVICE_TYPE,
    TAG_ERROR_MESSAGE,
    TAG_GETSET_NAME,
    TAG_GETSET_VALUE,
    TAG_LINEUP_URL,
    TAG_TUNER_COUNT,
    TYPE_DISCOVER_REQ,
    TYPE_DISCOVER_RPY,
    TYPE_GETSET_REQ,
    TYPE_GETSET_RPY,
    DeviceInfo,
    PacketError,
)
from tests import netns

DEVICE = DeviceInfo(
    device_id="10439EFD",
    tuner_count=3,
    base_url="http://127.0.0.1:5004",
    device_auth="abcdefghijklmnopqrstuvwx",
    model="HDTC-2US",
)


def u32(v: int) -> bytes:
    return v.to_bytes(4, "big")


def request(device_type: int = DEVICE_TYPE_TUNER, device_id: int = DEVICE_ID_WILDCARD) -> bytes:
    return discovery.encode_packet(
        TYPE_DISCOVER_REQ, [(TAG_DEVICE_TYPE, u32(device_type)), (TAG_DEVICE_ID, u32(device_id))]
    )


# ---------------------------------------------------------------------------------------------
# Codec


def test_encode_matches_the_libhdhomerun_wire_format() -> None:
    # What hdhomerun_discover_send_internal writes for a wildcard tuner search.
    payload = bytes([0x01, 0x04]) + u32(1) + bytes([0x02, 0x04]) + u32(0xFFFFFFFF)
    frame = struct.pack(">HH", 2, len(payload)) + payload
    expected = frame + struct.pack("<I", zlib.crc32(frame))
    assert request() == expected


def test_round_trip_with_one_and_two_byte_lengths() -> None:
    long_value = bytes(range(256)) * 2  # 512 bytes: two-byte length
    tlvs = [(0x01, b""), (0x2A, b"x" * 127), (0x2B, b"y" * 128), (0x27, long_value)]
    data = discovery.encode_packet(0x1234, tlvs)
    pkt = discovery.decode_packet(data)
    assert pkt.type == 0x1234
    assert list(pkt.tlvs) == tlvs
    assert pkt.get(0x2B) == b"y" * 128 and pkt.get(0x99) is None
    # 128 -> 0x80 | (128 & 0x7f), 128 >> 7
    assert b"\x2b\x80\x01" + b"y" in data
    assert b"\x27" + bytes([0x80 | (512 & 0x7F), 512 >> 7]) in data


@pytest.mark.parametrize("where", [0, 3, 6, -1])
def test_crc_rejects_a_corrupt_packet(where: int) -> None:
    data = bytearray(request())
    data[where] ^= 0x40
    with pytest.raises(PacketError):
        discovery.decode_packet(bytes(data))


def test_truncated_or_padded_frames_are_rejected() -> None:
    data = request()
    for bad in (data[:3], data[:-1], data + b"\0", b""):
        with pytest.raises(PacketError):
            discovery.decode_packet(bad)
    # A TLV whose length runs past the payload, with a valid CRC.
    frame = struct.pack(">HH", 2, 3) + b"\x01\x09\x00"
    with pytest.raises(PacketError, match="past the payload"):
        discovery.decode_packet(frame + struct.pack("<I", zlib.crc32(frame)))


# ---------------------------------------------------------------------------------------------
# Discover and control replies (sans-IO)


@pytest.mark.parametrize(
    ("device_type", "device_id"),
    [
        (DEVICE_TYPE_TUNER, DEVICE_ID_WILDCARD),
        (DEVICE_TYPE_WILDCARD, DEVICE_ID_WILDCARD),
        (DEVICE_TYPE_TUNER, 0x10439EFD),
    ],
)
def test_matching_requests_get_the_full_reply(device_type: int, device_id: int) -> None:
    reply = discovery.discover_reply(request(device_type, device_id), DEVICE)
    assert reply is not None
    pkt = discovery.decode_packet(reply)
    assert pkt.type == TYPE_DISCOVER_RPY
    assert pkt.get(TAG_DEVICE_TYPE) == u32(DEVICE_TYPE_TUNER)
    assert pkt.get(TAG_DEVICE_ID) == u32(0x10439EFD)
    assert pkt.get(TAG_TUNER_COUNT) == b"\x03"
    assert pkt.get(TAG_BASE_URL) == b"http://127.0.0.1:5004"
    assert pkt.get(TAG_LINEUP_URL) == b"http://127.0.0.1:5004/lineup.json"
    assert pkt.get(TAG_DEVICE_AUTH_STR) == b"abcdefghijklmnopqrstuvwx"


@pytest.mark.parametrize(
    "data",
    [
        request(DEVICE_TYPE_TUNER, 0x12345678),  # another device's id
        request(0x00000005, DEVICE_ID_WILDCARD),  # another device type (storage)
        discovery.encode_packet(
            TYPE_DISCOVER_RPY, [(TAG_DEVICE_ID, u32(0x10439EFD))]
        ),  # a reply, not a request
        discovery.encode_packet(TYPE_GETSET_REQ, [(TAG_GETSET_NAME, b"/sys/model\0")]),
        request()[:-1] + b"\0",  # bad CRC
        b"M-SEARCH * HTTP/1.1\r\n\r\n",
        b"",
    ],
)
def test_anything_else_gets_no_reply(data: bytes) -> None:
    assert discovery.discover_reply(data, DEVICE) is None


def test_control_get_set() -> None:
    def ask(*tlvs: tuple[int, bytes]) -> discovery.Packet:
        reply = discovery.control_reply(discovery.Packet(TYPE_GETSET_REQ, tlvs), DEVICE)
        assert reply is not None
        pkt = discovery.decode_packet(reply)
        assert pkt.type == TYPE_GETSET_RPY
        return pkt

    assert ask((TAG_GETSET_NAME, b"/sys/model\0")).get(TAG_GETSET_VALUE) == b"hdhomeruntc_atsc\0"
    assert ask((TAG_GETSET_NAME, b"/sys/hwmodel\0")).get(TAG_GETSET_VALUE) == b"HDTC-2US\0"
    assert ask((TAG_GETSET_NAME, b"/nope\0")).get(TAG_ERROR_MESSAGE) == b"ERROR: unknown getset variable\0"
    refused = ask((TAG_GETSET_NAME, b"/sys/model\0"), (TAG_GETSET_VALUE, b"x\0"))
    assert refused.get(TAG_ERROR_MESSAGE) is not None and refused.get(TAG_GETSET_VALUE) is None


def test_device_info_from_config(tmp_path: Path) -> None:
    cfg = parse({"server": {"host": "0.0.0.0"}}, base_dir=tmp_path)
    info = discovery.device_info(cfg, 5004)
    assert info.base_url is None and info.lineup_url is None
    assert info.device_id == hdhomerun.device_id(cfg) and info.tuner_count == 2
    assert info.at("192.168.1.7").lineup_url == "http://192.168.1.7:5004/lineup.json"
    pinned = discovery.device_info(parse({"server": {"host": "127.0.0.1"}}, base_dir=tmp_path), 6000)
    assert pinned.base_url == "http://127.0.0.1:6000"
    configured = discovery.device_info(
        parse({"tuner": {"base_url": "http://tv:1/"}}, base_dir=tmp_path), 6000
    )
    assert configured.base_url == "http://tv:1" and configured.at("10.0.0.1").base_url == "http://tv:1"


# ---------------------------------------------------------------------------------------------
# The UDP protocol, with a fake transport: replies go to the requester only


class FakeDatagramTransport:
    def __init__(self, sockname: tuple[str, int]) -> None:
        self.sockname = sockname
        self.sent: list[tuple[bytes, Any]] = []
        self.closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.sockname if name == "sockname" else default

    def sendto(self, data: bytes, addr: Any = None) -> None:
        self.sent.append((data, addr))

    def close(self) -> None:
        self.closed = True


def test_wildcard_bound_protocol_answers_with_the_route_facing_address() -> None:
    asked: list[str] = []

    def local_ip_for(peer: str) -> str:
        asked.append(peer)
        return "192.168.1.20"

    proto = discovery.DiscoveryProtocol(
        DeviceInfo("10439EFD", 2, None, "a" * 24, 5004), local_ip_for=local_ip_for
    )
    transport = FakeDatagramTransport(("0.0.0.0", 65001))
    proto.connection_made(transport)  # type: ignore[arg-type]
    proto.datagram_received(request(), ("192.168.1.50", 40000))
    assert asked == ["192.168.1.50"]
    [(data, addr)] = transport.sent
    assert addr == ("192.168.1.50", 40000)
    assert discovery.decode_packet(data).get(TAG_BASE_URL) == b"http://192.168.1.20:5004"


@pytest.mark.parametrize("source", [("255.255.255.255", 40000), ("239.255.255.250", 1900), ("10.0.0.1", 0)])
def test_protocol_never_answers_a_broadcast_or_multicast_source(source: tuple[str, int]) -> None:
    proto = discovery.DiscoveryProtocol(DEVICE)
    transport = FakeDatagramTransport(("127.0.0.1", 65001))
    proto.connection_made(transport)  # type: ignore[arg-type]
    proto.datagram_received(request(), source)
    assert transport.sent == []


def test_route_local_ip_toward_loopback() -> None:
    assert discovery.route_local_ip("127.0.0.1") == "127.0.0.1"


# ---------------------------------------------------------------------------------------------
# The real client


async def run_client(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        "hdhomerun_config", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=10)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        pytest.fail(f"hdhomerun_config {' '.join(args)} did not finish within 10 s")
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


async def test_hdhomerun_config_discovers_the_relay_on_loopback(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Given the relay's UDP+TCP 65001 on 127.0.0.1 (in the test's own network namespace), when
    SiliconDust's client asks by unicast, then it finds our DeviceID, only ours, and reads /sys/model
    over the control channel."""
    if shutil.which("hdhomerun_config") is None:
        pytest.fail("hdhomerun_config is not installed (Debian package hdhomerun-config)")
    if not await netns.own_port(request, discovery.DISCOVER_PORT):
        return  # it ran, and passed, in a network namespace of its own
    cfg = parse({"server": {"host": "127.0.0.1"}}, base_dir=tmp_path)
    info = discovery.device_info(cfg, 5004)
    loop = asyncio.get_running_loop()
    try:
        udp, _ = await loop.create_datagram_endpoint(
            lambda: discovery.DiscoveryProtocol(info), local_addr=("127.0.0.1", discovery.DISCOVER_PORT)
        )
    except OSError as e:
        pytest.fail(f"UDP 127.0.0.1:65001 is busy ({e}); stop whatever holds it (another relay?) and rerun")
    try:
        tcp = await loop.create_server(
            lambda: discovery.ControlProtocol(info), "127.0.0.1", discovery.DISCOVER_PORT
        )
    except OSError as e:
        udp.close()
        pytest.fail(f"TCP 127.0.0.1:65001 is busy ({e}); stop whatever holds it (another relay?) and rerun")
    try:
        rc, out = await run_client("discover", "127.0.0.1")
        assert rc == 0, out
        assert f"hdhomerun device {info.device_id} found at 127.0.0.1" in out
        assert re.findall(r"hdhomerun device (\S+) found", out) == [info.device_id], out
        rc, out = await run_client("127.0.0.1", "get", "/sys/model")
        assert rc == 0, out
        assert out.strip() == "hdhomerun4_atsc"  # the default model, HDHR4-2US
    finally:
        udp.close()
        tcp.close()
        await tcp.wait_closed()


async def test_start_discovery_carries_on_when_the_port_is_taken(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    holder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    holder.bind(("127.0.0.1", 0))
    port = holder.getsockname()[1]
    cfg: Config = parse({"server": {"host": "127.0.0.1"}}, base_dir=tmp_path)
    try:
        with caplog.at_level(logging.INFO, logger="relay.tuner.discovery"):
            opened = await discovery.start_discovery(
                cfg, discovery.device_info(cfg, 5004), discover_port=port, control=False
            )
        assert opened == []
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and str(port) in warnings[0].getMessage()
    finally:
        holder.close()


async def test_start_discovery_opens_nothing_when_disabled(tmp_path: Path) -> None:
    cfg = parse({"discovery": {"udp": False, "ssdp": False}}, base_dir=tmp_path)
    assert await discovery.start_discovery(cfg, discovery.device_info(cfg, 5004)) == []


# ---------------------------------------------------------------------------------------------
# SSDP


def msearch(st: str, mx: int | None = 1) -> bytes:
    lines = ["M-SEARCH * HTTP/1.1", "HOST: 239.255.255.250:1900", 'MAN: "ssdp:discover"', f"ST: {st}"]
    if mx is not None:
        lines.append(f"MX: {mx}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def headers_of(message: bytes) -> tuple[str, dict[str, str]]:
    first, *rest = message.decode().split("\r\n")
    out = {}
    for line in rest:
        if ":" in line:
            k, _, v = line.partition(":")
            out[k.strip().upper()] = v.strip()
    return first, out


def test_parse_msearch() -> None:
    assert discovery.parse_msearch(msearch("upnp:rootdevice", 3)) == discovery.MSearch("upnp:rootdevice", 3)
    assert discovery.parse_msearch(msearch("ssdp:all", None)) == discovery.MSearch("ssdp:all", 1)
    assert discovery.parse_msearch(msearch("ssdp:all", 120)) == discovery.MSearch("ssdp:all", 5)
    assert discovery.parse_msearch(b"NOTIFY * HTTP/1.1\r\nNT: x\r\n\r\n") is None
    assert discovery.parse_msearch(b'M-SEARCH * HTTP/1.1\r\nMAN: "ssdp:discover"\r\n\r\n') is None
    assert discovery.parse_msearch(b"M-SEARCH * HTTP/1.1\r\nST: ssdp:all\r\n\r\n") is None
    assert discovery.parse_msearch(b"\xff\xfe") is None


@pytest.mark.parametrize(
    ("st", "count"),
    [
        ("ssdp:all", 3),
        ("upnp:rootdevice", 1),
        ("urn:schemas-upnp-org:device:MediaServer:1", 1),
        (hdhomerun.udn("10439EFD"), 1),
        ("urn:schemas-upnp-org:device:InternetGatewayDevice:1", 0),
    ],
)
def test_msearch_responses_per_search_target(st: str, count: int) -> None:
    req = discovery.parse_msearch(msearch(st))
    assert req is not None
    replies = discovery.msearch_responses(req, DEVICE)
    assert len(replies) == count
    udn = hdhomerun.udn("10439EFD")
    for reply in replies:
        first, h = headers_of(reply)
        assert first == "HTTP/1.1 200 OK"
        assert h["LOCATION"] == "http://127.0.0.1:5004/device.xml"
        assert h["CACHE-CONTROL"] == "max-age=1800" and "EXT" in h and h["SERVER"]
        assert h["USN"].startswith(udn)
        if st != "ssdp:all":
            assert h["ST"] == st


def test_notify_messages_are_built_but_not_sent() -> None:
    alive = discovery.notify_messages(DEVICE)
    nts = {headers_of(m)[1]["NT"] for m in alive}
    assert nts == {"upnp:rootdevice", "urn:schemas-upnp-org:device:MediaServer:1", hdhomerun.udn("10439EFD")}
    for m in alive:
        first, h = headers_of(m)
        assert first == "NOTIFY * HTTP/1.1"
        assert h["NTS"] == "ssdp:alive" and h["LOCATION"].endswith("/device.xml")
        assert h["HOST"] == "239.255.255.250:1900"
    byebye = discovery.notify_messages(DEVICE, "ssdp:byebye")
    assert all("LOCATION" not in headers_of(m)[1] for m in byebye)


async def test_ssdp_protocol_sends_notify_only_through_the_injected_sender() -> None:
    sent: list[bytes] = []
    proto = discovery.SsdpProtocol(DEVICE, notify_sender=sent.append, notify_interval_s=3600)
    transport = FakeDatagramTransport(("127.0.0.1", 1900))
    proto.connection_made(transport)  # type: ignore[arg-type]
    assert len(sent) == 3 and transport.sent == []
    proto.connection_lost(None)  # cancels the periodic timer


async def test_ssdp_unicast_msearch_on_loopback_gets_a_parsable_reply() -> None:
    """Given SSDP bound on 127.0.0.1 (ephemeral port, no group joined, no NOTIFY), when a client
    sends a unicast M-SEARCH for MediaServer:1, then the reply comes back to it and parses."""
    loop = asyncio.get_running_loop()
    info = DeviceInfo("10439EFD", 2, None, "a" * 24, 5004)
    server, _ = await loop.create_datagram_endpoint(
        lambda: discovery.SsdpProtocol(info, reply_delay=lambda mx: 0.0), local_addr=("127.0.0.1", 0)
    )
    port = server.get_extra_info("sockname")[1]
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.bind(("127.0.0.1", 0))
    client.setblocking(False)
    try:
        client.sendto(msearch("urn:schemas-upnp-org:device:MediaServer:1"), ("127.0.0.1", port))
        data = await asyncio.wait_for(loop.sock_recv(client, 2048), timeout=5)
    finally:
        client.close()
        server.close()
    first, h = headers_of(data)
    assert first == "HTTP/1.1 200 OK"
    assert h["ST"] == "urn:schemas-upnp-org:device:MediaServer:1"
    assert h["LOCATION"] == "http://127.0.0.1:5004/device.xml"
    assert h["USN"] == f"{hdhomerun.udn('10439EFD')}::urn:schemas-upnp-org:device:MediaServer:1"
