"""`relay health`: exit 0 if the relay of this config answers GET /health, else 1 (the container's
HEALTHCHECK; no curl in the image). It needs no provider password: it contacts only the relay."""

from __future__ import annotations

import argparse
import sys
import urllib.request
from typing import Any

from relay import config as config_mod
from relay.config import ConfigError


def health_url(cfg: config_mod.Config) -> str:
    host = cfg.server.host
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://{f'[{host}]' if ':' in host else host}:{cfg.server.port}/health"


def cmd_health(args: argparse.Namespace) -> int:
    try:
        cfg = config_mod.load(config_mod.resolve_path(args.config))
    except ConfigError as e:
        print(f"relay: {e}", file=sys.stderr)
        return 2
    url = health_url(cfg)
    try:
        with urllib.request.urlopen(url, timeout=args.timeout) as r:
            ok = r.status == 200
    except OSError as e:
        print(f"relay: {url}: {getattr(e, 'reason', e)}", file=sys.stderr)
        return 1
    print(f"{url}: {'ok' if ok else 'unhealthy'}")
    return 0 if ok else 1


def add_parser(sub: Any) -> None:
    p = sub.add_parser("health", help="check that the relay of this config answers /health (exit 0 or 1)")
    p.add_argument("--config", help="config file (default: $RELAY_CONFIG, else ./config.yaml)")
    p.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the answer (default 3)")
    p.set_defaults(func=cmd_health)
