"""Command line: `relay serve [--config PATH]`, `relay demo`, `relay init`; the operator's commands are
in relay.cli.commands.

A user mistake (bad config, port in use) prints one line and exits 2; no traceback. Output piped into
a reader that stops early (`relay channels | head`) ends quietly.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable

from relay import __version__
from relay import config as config_mod
from relay.cli import cluster as cluster_cli
from relay.cli import commands, health, init, ui_hash
from relay.config import ConfigError


def _setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)-5s %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S",
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
    if not path.exists():
        print(
            f"relay: {path}: config file not found; `relay init --url URL --username USER"
            " --password-env VAR` writes one",
            file=sys.stderr,
        )
        return 2
    try:
        cfg = config_mod.load(path)
        config_mod.require_env(cfg)  # serving contacts the providers: every ${VAR} must be set
    except ConfigError as e:
        print(f"relay: {e}", file=sys.stderr)
        return 2
    return _serve_until_signal(lambda stop: run(cfg, stop))


def cmd_demo(args: argparse.Namespace) -> int:
    from relay.cli.demo import run_demo

    return _serve_until_signal(
        lambda stop: run_demo(stop, host=args.host, port=args.port, fault_every_s=args.fault_every)
    )


def _quiet_broken_pipe() -> int:
    """The reader of our stdout went away (`| head`): no traceback, and none at exit's flush either."""
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    return 141  # what a shell reports for a process ended by SIGPIPE (128 + 13)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="relay", description="IPTV relay for Plex with transparent failover"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve", help="run the relay")
    p.add_argument("--config", help="config file (default: $RELAY_CONFIG, else ./config.yaml)")
    p.set_defaults(func=cmd_serve)
    d = sub.add_parser("demo", help="run the relay on a built-in demo provider that fails now and then")
    d.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1; 0.0.0.0 lets a Plex on another machine try it)",
    )
    d.add_argument("--port", type=int, default=5004, help="port to listen on (default 5004; 0 = any free)")
    d.add_argument("--fault-every", type=float, default=20.0, help="seconds between injected faults")
    d.set_defaults(func=cmd_demo)
    commands.add_parsers(sub)  # sync, channels, map, unmap, events
    init.add_parser(sub)
    health.add_parser(sub)
    ui_hash.add_parser(sub)  # issue 19: the web page's password hash
    cluster_cli.add_parser(sub)  # cluster-front
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    try:
        rc = int(args.func(args))
        sys.stdout.flush()  # inside the try: a closed pipe shows up here as often as in a print
    except BrokenPipeError:
        return _quiet_broken_pipe()
    return rc


if __name__ == "__main__":
    sys.exit(main())
