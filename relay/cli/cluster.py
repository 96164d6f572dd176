"""`relay cluster-front haproxy|nginx`: write the front's config and channel map from the config.

The map lists every channel the relay serves (the config's and the last sync's), so run it again
(and reload the front) after a sync added channels; a channel missing from the map still works,
it only hashes by its path, so its two URLs may land on different relays.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from relay import config as config_mod
from relay.cluster import routing
from relay.config import ConfigError
from relay.sources.sync import channel_list
from relay.storage.store import Store


def cmd_cluster_front(args: argparse.Namespace) -> int:
    try:
        cfg = config_mod.load(config_mod.resolve_path(args.config))
        backends = [routing.Backend.parse(s, i) for i, s in enumerate(args.relay)]
    except (ConfigError, ValueError) as e:
        print(f"relay: {e}", file=sys.stderr)
        return 2
    db = cfg.path(cfg.storage.database)
    if db.exists():
        store = Store(db)
        try:
            store.sync_config(cfg)
            channels = channel_list(cfg, store)
        finally:
            store.close()
    else:
        channels = list(cfg.channels)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.front == "haproxy":
        map_path = out / "channels.map"
        map_path.write_text(routing.haproxy_map(channels))
        (out / "haproxy.cfg").write_text(routing.haproxy_config(backends, args.bind, str(map_path.resolve())))
        written = ["haproxy.cfg", "channels.map"]
    else:
        map_path = out / "channels.nginx.map"
        map_path.write_text(routing.nginx_map(channels))
        (out / "relay-front.conf").write_text(
            routing.nginx_config(backends, args.bind, str(map_path.resolve()))
        )
        written = ["relay-front.conf", "channels.nginx.map"]
    print(
        f"wrote {', '.join(str(out / w) for w in written)} ({len(channels)} channels, {len(backends)} relays)"
    )
    return 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "cluster-front", help="write an HAProxy or nginx config that keeps a channel on one relay"
    )
    p.add_argument("front", choices=("haproxy", "nginx"))
    p.add_argument(
        "--relay", action="append", required=True, help="HOST:PORT or NAME=HOST:PORT, once per relay"
    )
    p.add_argument("--bind", default="*:5004", help="where the front listens (default *:5004)")
    p.add_argument("--out", default=".", help="folder for the config and the channel map")
    p.add_argument("--config", help="config file (default: $RELAY_CONFIG, else ./config.yaml)")
    p.set_defaults(func=cmd_cluster_front)
