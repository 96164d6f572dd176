"""`relay init`: a first config in one step, for a person who has a provider account and a Plex.

Writes a config.yaml with accounts only (the channels come from the sync, so none is hand-written and
none can be dead), runs `relay sync` on it, then prints the channel count and the Plex steps. The
password is never written: the file says `${VAR}` and the relay reads VAR from the environment.

Must never: overwrite a config without --force, or print the password.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import socket
import sys
from pathlib import Path
from typing import Any

import yaml

from relay import config as config_mod
from relay.config import ConfigError

HEADER = """\
# Written by `relay init`. The channels come from the account and its guide: `relay sync` (and
# `relay serve`, at start and every sync.interval_h) imports them; `relay channels` lists them.
# {password_env} is read from the environment, so the password is not in this file.
# Every other key and its default: README, "Configuration".
"""

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _fail(message: str) -> int:
    print(f"relay: {message}", file=sys.stderr)
    return 2


def build(args: argparse.Namespace, env: dict[str, str]) -> dict[str, Any]:
    """The config tree `relay init` writes, from its arguments."""
    account: dict[str, Any] = {
        "name": args.name,
        "url": args.url,
        "username": args.username,
        "password": f"${{{args.password_env}}}",
    }
    if args.max_connections is not None:  # else the panel's own figure applies (the sync reads it)
        account["max_connections"] = args.max_connections
    if args.m3u:
        account["m3u"] = args.m3u
    data: dict[str, Any] = {"server": {"host": args.host, "port": args.port}}
    data_dir = args.data_dir or env.get("RELAY_DATA_DIR")
    if data_dir:
        d = Path(data_dir).absolute()
        data["storage"] = {"database": str(d / "relay.db"), "events": str(d / "events.jsonl")}
    data["accounts"] = [account]
    return data


def _lan_address() -> str | None:
    """The address this machine uses toward the LAN (a UDP connect sends nothing), for Plex's steps."""
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.1", 9))  # TEST-NET-1: only picks the route; no packet leaves
        addr = s.getsockname()[0]
        if not addr.startswith("127."):
            return str(addr)
    return None


def plex_steps(cfg: config_mod.Config, config_path: Path, password_env: str) -> str:
    host = cfg.server.host
    if host in ("0.0.0.0", "::", ""):
        host = _lan_address() or "THIS-MACHINE"
    where = f"{host}:{cfg.server.port}"
    return f"""\
Next:
  1. Start the relay (the container and the service do this for you):
       export {password_env}=...   # if it is not in the environment already
       relay serve --config {config_path}
  2. In Plex: Settings > Live TV & DVR > Set up Plex DVR. Plex finds the relay on the LAN (UDP 65001);
     if not, choose "Don't see your HDHomeRun device? Enter its network address manually": {where}
  3. Guide: "Have an XMLTV guide on your server? Click here to use that instead":
       http://{where}/xmltv.xml
  4. Finish, and watch a channel. `relay events --follow` shows failovers as they happen."""


def cmd_init(args: argparse.Namespace) -> int:
    from relay.cli import commands
    from relay.sources.sync import channel_list
    from relay.storage.store import Store

    env = dict(os.environ)
    path = config_mod.resolve_path(args.config)
    if not _ENV_NAME.fullmatch(args.password_env):
        return _fail(f"--password-env: {args.password_env!r} is not a variable name (e.g. PROVIDER_PASSWORD)")
    if args.password_env not in env:
        return _fail(
            f"--password-env: {args.password_env} is not set; export {args.password_env}=... first"
            " (the config names the variable, never the password)"
        )
    if path.exists() and not args.force:
        return _fail(f"{path} exists; --force replaces it (or --config writes another file)")
    data = build(args, env)
    try:
        cfg = config_mod.parse(data, base_dir=path.absolute().parent, env=env)
    except ConfigError as e:
        return _fail(str(e).replace("accounts[0].", "--"))
    path.parent.mkdir(parents=True, exist_ok=True)
    text = HEADER.format(password_env=args.password_env) + yaml.safe_dump(
        data, sort_keys=False, allow_unicode=True, default_flow_style=False
    )
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    for p in (cfg.path(cfg.storage.database), cfg.path(cfg.storage.events)):
        p.parent.mkdir(parents=True, exist_ok=True)
    print(f"wrote {path} (account {args.name!r}; the password is read from ${args.password_env})")
    if args.no_sync:
        print("not synced (--no-sync): `relay sync` imports the channels")
        return 0
    sys.stdout.flush()
    rc = commands.cmd_sync(argparse.Namespace(config=str(path), verbose=args.verbose))
    store = Store(cfg.path(cfg.storage.database))
    try:
        count = len(channel_list(cfg, store))
    finally:
        store.close()
    if rc != 0:
        print(f"the sync did not work: check the account, then run `relay sync --config {path}`")
        return rc
    print(f"{count} channel(s) ready for Plex")
    print(plex_steps(cfg, path, args.password_env))
    return 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "init",
        help="write a first config.yaml for one provider account, sync it, and show the Plex steps",
        description="Write a config with one Xtream account (channels come from its sync), then sync.",
    )
    p.add_argument("--url", required=True, help="the provider's panel URL, e.g. http://provider.example:8080")
    p.add_argument("--username", required=True, help="the account's user name")
    p.add_argument(
        "--password-env",
        required=True,
        metavar="VAR",
        help="environment variable holding the password; the config says ${VAR}, not the password",
    )
    p.add_argument("--m3u", help='also import an M3U playlist: a URL, a file, or "get.php" (the account\'s)')
    p.add_argument("--name", default="provider", help="the account's name in the config (default provider)")
    p.add_argument(
        "--max-connections", type=int, help="the account's stream limit (default: what the panel reports)"
    )
    p.add_argument("--host", default="0.0.0.0", help="server.host (default 0.0.0.0, so Plex can reach it)")
    p.add_argument("--port", type=int, default=5004, help="server.port (default 5004)")
    p.add_argument(
        "--data-dir",
        help="where the database and the event log go (default $RELAY_DATA_DIR, else beside the config)",
    )
    p.add_argument("--config", help="file to write (default: $RELAY_CONFIG, else ./config.yaml)")
    p.add_argument("--force", action="store_true", help="replace an existing config file")
    p.add_argument("--no-sync", action="store_true", help="only write the file")
    p.set_defaults(func=cmd_init)
