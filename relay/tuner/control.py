"""The get/set items of the TCP 65001 control channel, in the formats libhdhomerun parses.

Owns: the value of every item `hdhomerun_config <ip> get ITEM` can read from the relay: /sys/*
(model, firmware, features), /lineup/scan, and per tuner /tuner<N>/status, streaminfo, channel,
vchannel, program, target and lockkey, live from a `LiveView`; and the one refusal every `set`
gets (the relay is configured in its YAML, never over the wire). Pure: strings in, strings out.

The formats follow libhdhomerun (hdhomerun_device.c, hdhomerun_channelscan.c): status is
"ch=... lock=... ss=N snq=N seq=N bps=N pps=N" (`ch=none lock=none` when idle), streaminfo is one
"PROGRAM: MAJOR[.MINOR] NAME" line per program then "tsid=0x....", and /lineup/scan is
"state=complete progress=100% found=N" as the newer firmware answers it.

Must never: answer a value for a tuner the device does not have, or accept a `set`.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from relay.tuner import hdhomerun
from relay.tuner.status import SIGNAL_QUALITY, SIGNAL_STRENGTH, SYMBOL_QUALITY, LiveView, TunerState

if TYPE_CHECKING:
    from relay.tuner.discovery import DeviceInfo

READ_ONLY = "ERROR: read only (the relay is configured in its config file, not over the control channel)"
UNKNOWN = "ERROR: unknown getset variable"
COPYRIGHT = "relay (HDHomeRun emulation)"
# What a cable tuner lists: clients read the channelmap line to decide how to scan; nothing here tunes.
FEATURES = "channelmap: us-cable\nmodulation: qam256 qam64\nauto-modulation: auto qam\n"
LOCK = "qam256"
TSID = 0x0001  # the relay's streams each carry one program; any fixed id does
PROGRAM = 1
UDP_PAYLOAD = 7 * 188  # a real tuner counts network packets of 7 TS packets each

_TUNER_ITEM = re.compile(r"/tuner(\d{1,3})/([a-z]+)")
TUNER_ITEMS = ("status", "streaminfo", "channel", "vchannel", "program", "target", "lockkey")


def _channel(t: TunerState) -> str:
    return f"auto:{t.number}" if t.number is not None else "none"


def tuner_value(t: TunerState, item: str) -> str | None:
    """One /tuner<N>/<item> value; None for an item the relay does not have."""
    idle = t.number is None
    if item == "status":
        if idle:
            return "ch=none lock=none ss=0 snq=0 seq=0 bps=0 pps=0"
        return (
            f"ch={_channel(t)} lock={LOCK} ss={SIGNAL_STRENGTH} snq={SIGNAL_QUALITY} seq={SYMBOL_QUALITY}"
            f" bps={t.bps} pps={t.bps // (UDP_PAYLOAD * 8)}"
        )
    if item == "streaminfo":
        if idle:
            return "none\n"
        name = " ".join(t.name.split())  # one line, whatever the provider put in the name
        return f"{PROGRAM}: {t.number} {name}\ntsid=0x{TSID:04X}\n"
    if item == "channel":
        return _channel(t)
    if item == "vchannel":
        return t.number or "none"
    if item == "program":
        return "0" if idle else str(PROGRAM)
    if item == "target":
        if idle or not t.target_ip:
            return "none"
        host = f"[{t.target_ip}]" if ":" in t.target_ip else t.target_ip
        return f"tcp://{host}:{t.target_port}"
    if item == "lockkey":
        return "none"  # nobody holds a lock: the relay shares a channel between viewers
    return None


def sys_values(device: DeviceInfo, view: LiveView) -> dict[str, str]:
    """The fixed items (everything but /tuner<N>/...), `help` included."""
    values = {
        "/lineup/scan": f"state=complete progress=100% found={view.channels}",
        "/sys/copyright": COPYRIGHT,
        "/sys/features": FEATURES,
        "/sys/hwmodel": device.model,
        "/sys/model": hdhomerun.firmware_name(device.model),
        "/sys/version": hdhomerun.FIRMWARE_VERSION,
    }
    values["help"] = "\n".join(
        ["Supported configuration options:", *values, *(f"/tuner<n>/{item}" for item in TUNER_ITEMS)]
    )
    return values


def get(name: str, device: DeviceInfo, view: LiveView) -> str | None:
    """The value of one item, or None when there is no such item (or no such tuner)."""
    m = _TUNER_ITEM.fullmatch(name)
    if m is not None:
        index = int(m.group(1))
        if index >= device.tuner_count:
            return None
        tuner = view.tuner(index) or TunerState(index)
        return tuner_value(tuner, m.group(2))
    return sys_values(device, view).get(name)


def answer(name: str, value_given: bool, device: DeviceInfo, view: LiveView) -> tuple[str | None, str | None]:
    """(value, error) for a request: a set is refused, an unknown item is an error."""
    if value_given:
        return None, READ_ONLY
    value = get(name, device, view)
    return (value, None) if value is not None else (None, UNKNOWN)
