"""`relay ui-hash`: the hash to put in `ui.password` or `ui.token`, so the config never holds the secret.

The secret is read from standard input (one line) or, at a terminal, asked for twice without echo.
`--token` makes a random API token instead and prints it once, with its hash.
"""

from __future__ import annotations

import argparse
import getpass
import secrets
import sys
from typing import Any


def cmd_ui_hash(args: argparse.Namespace) -> int:
    from relay.web.auth import MAX_SECRET, hash_secret

    if args.token:
        token = secrets.token_urlsafe(32)
        print(f"token (give it to the script, it is not stored): {token}", file=sys.stderr)
        print(hash_secret(token))
        return 0
    if sys.stdin.isatty():
        secret = getpass.getpass("password for the web page: ")
        if getpass.getpass("again: ") != secret:
            print("relay: the two passwords differ", file=sys.stderr)
            return 2
    else:
        secret = sys.stdin.readline().rstrip("\r\n")
    if not secret or len(secret) > MAX_SECRET:
        print(f"relay: give a password of 1 to {MAX_SECRET} characters", file=sys.stderr)
        return 2
    print(hash_secret(secret))
    return 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "ui-hash", help="print the hash for ui.password (or, with --token, a new API token and its hash)"
    )
    p.add_argument("--token", action="store_true", help="make a random API token for ui.token")
    p.set_defaults(func=cmd_ui_hash)
