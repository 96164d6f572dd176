"""The one TLS builder for every connection to a provider (player_api, M3U, XMLTV, live streams).

An account's `tls_verify` and `ca_file` decide its client context; one context per setting is built
and shared by all its connections (an SSLContext is safe to share between threads and sockets), so a
channel change does not re-read a CA bundle.
"""

from __future__ import annotations

import functools
import ssl
from pathlib import Path

from relay.config import AccountConfig


def tls_context(verify: bool = True, ca_file: str | None = None) -> ssl.SSLContext:
    """The client TLS context for an https:// account; one per setting, shared by its connections.

    `ca_file` adds a PEM bundle to trust (a panel with its own CA); `verify=False` accepts any
    certificate (a self-signed panel), which still encrypts but no longer authenticates the provider.
    """
    return _cached(verify, ca_file)  # positional, so tls_context() and tls_context(True, None) share one


@functools.lru_cache(maxsize=16)
def _cached(verify: bool, ca_file: str | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=ca_file)
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def account_ca_file(account: AccountConfig, base_dir: Path) -> str | None:
    """The account's `ca_file` as a path, relative ones from the config file's folder."""
    if not account.ca_file:
        return None
    p = Path(account.ca_file)
    return str(p if p.is_absolute() else base_dir / p)


def account_tls_context(account: AccountConfig, base_dir: Path) -> ssl.SSLContext:
    """The shared context of the account's settings (a missing ca_file raises OSError here)."""
    return tls_context(account.tls_verify, account_ca_file(account, base_dir))
