"""Which ledger a relay runs with, and its name in a cluster: the one place `cluster:` is read."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Mapping
from typing import Any

from relay.cluster.ledger import Ledger, LocalLedger
from relay.config import Config
from relay.core import events
from relay.core.failover import Slots


def forwarded_client(cfg: Config, peer: str, headers: Mapping[str, str]) -> str:
    """The viewer behind a trusted front: the last X-Forwarded-For entry the front appended.

    Behind HAProxy every connection comes from the front's address, so the relay's same-client
    rule (a zap on a full account reclaims the slot of that client's other channel) would treat all
    viewers as one. Only an address in `cluster.trusted_fronts` is believed; anything unparsable
    leaves the socket's peer.
    """
    if peer not in cfg.cluster.trusted_fronts:
        return peer
    xff = headers.get("x-forwarded-for", "")
    last = xff.rsplit(",", 1)[-1].strip()
    try:
        return str(ipaddress.ip_address(last))
    except ValueError:
        return peer


def relay_id(cfg: Config, port: int) -> str:
    """`cluster.relay_id`, else "<hostname>:<port>": unique per relay process, stable across restarts."""
    if cfg.cluster.relay_id:
        return cfg.cluster.relay_id
    try:
        host = socket.gethostname() or "relay"
    except OSError:
        host = "relay"
    return f"{host}:{port}"


Emit = Callable[[events.Event], Any]  # EventLog.emit


def make_ledger(cfg: Config, slots: Slots, rid: str, emit: Emit) -> Ledger:
    if cfg.cluster.redis_url is None:
        return LocalLedger(slots)
    from relay.cluster.redis_ledger import RedisLedger  # only a cluster needs the redis package

    return RedisLedger(slots, cfg.cluster, rid, emit)
