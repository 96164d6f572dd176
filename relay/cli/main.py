"""Command line: `relay serve [--config PATH]`, `relay demo`; the operator's commands are in
relay.cli.commands.

A user mistake (bad config, port in use) prints one line and exits 2; no traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable, Callable

from relay import config as config_mod
from relay.cli import cluster as cluster_cli
from relay.cli import commands
from relay.config import ConfigError


def _setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)-5s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )


def _install_loop() -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a hard dependency; keep running regardless
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def _serve_until_signal(main: Callable[[asyncio.Event], Awaitable[None]]) -> int:
    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await main(stop)

    _install_loop()
    try:
        asyncio.run(runner())
    except ConfigError as e:
        print(f"relay: {e}", file=sys.stderr)
        return 2
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from relay.shell.app import run

    path = config_mod.resolve_path(args.config)
    try:
        cfg = config_mod.load(path)
    except ConfigError as e:
        print(f"relay: {e}", file=sys.stderr)
        return 2
    return _serve_until_signal(lambda stop: run(cfg, stop))


def cmd_demo(args: argparse.Namespace) -> int:
    from relay.cli.demo import run_demo

    return _serve_until_signal(lambda stop: run_demo(stop, port=args.port, fault_every_s=args.fault_every))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="relay", description="IPTV relay for Plex with transparent failover"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve", help="run the relay")
    p.add_argument("--config", help="config file (default: $RELAY_CONFIG, else ./config.yaml)")
    p.set_defaults(func=cmd_serve)
    d = sub.add_parser("demo", help="run the relay on a built-in demo provider that fails now and then")
    d.add_argument("--port", type=int, default=5004)
    d.add_argument("--fault-every", type=float, default=20.0, help="seconds between injected faults")
    d.set_defaults(func=cmd_demo)
    commands.add_parsers(sub)  # sync, channels, map, unmap, events
    cluster_cli.add_parser(sub)  # cluster-front
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
