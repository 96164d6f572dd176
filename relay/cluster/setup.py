"""Which ledger a relay runs with, and its name in a cluster: the one place `cluster:` is read."""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

from relay.cluster.ledger import Ledger, LocalLedger
from relay.config import Config
from relay.core.failover import Slots


def relay_id(cfg: Config, port: int) -> str:
    """`cluster.relay_id`, else "<hostname>:<port>": unique per relay process, stable across restarts."""
    if cfg.cluster.relay_id:
        return cfg.cluster.relay_id
    try:
        host = socket.gethostname() or "relay"
    except OSError:
        host = "relay"
    return f"{host}:{port}"


Emit = Callable[[str, str, dict[str, Any]], Any]


def make_ledger(cfg: Config, slots: Slots, rid: str, emit: Emit) -> Ledger:
    if cfg.cluster.redis_url is None:
        return LocalLedger(slots)
    from relay.cluster.redis_ledger import RedisLedger  # only a cluster needs the redis package

    return RedisLedger(slots, cfg.cluster, rid, emit)
