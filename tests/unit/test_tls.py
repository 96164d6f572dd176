"""relay/sources/tls.py: one context per (verify, ca_file), and every provider call uses an account's."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from relay.config import parse
from relay.sources.m3u import account_m3u_source
from relay.sources.tls import account_ca_file, account_tls_context, tls_context
from relay.sources.xtream import XtreamClient


def test_verify_off_accepts_any_certificate_and_on_checks_it() -> None:
    strict, lax = tls_context(True, None), tls_context(False, None)
    assert strict.verify_mode == ssl.CERT_REQUIRED and strict.check_hostname
    assert lax.verify_mode == ssl.CERT_NONE and not lax.check_hostname


def test_one_context_per_setting_is_shared() -> None:
    assert tls_context(True, None) is tls_context(True, None) is tls_context()
    assert tls_context(False, None) is not tls_context(True, None)


def test_a_missing_ca_file_is_an_os_error(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        tls_context(True, str(tmp_path / "missing.pem"))


def accounts(tmp_path: Path, **extra: object) -> list:  # type: ignore[type-arg]
    cfg = parse(
        {
            "accounts": [
                {"name": "s", "url": "https://p.example", "username": "u", "password": "pw", **extra},
                {"name": "h", "url": "http://p.example", "username": "u", "password": "pw", **extra},
            ]
        },
        base_dir=tmp_path,
    )
    return list(cfg.accounts)


def test_ca_file_is_relative_to_the_config_folder(tmp_path: Path) -> None:
    rel, _ = accounts(tmp_path, ca_file="certs/ca.pem")
    assert account_ca_file(rel, tmp_path) == str(tmp_path / "certs/ca.pem")
    absolute, _ = accounts(tmp_path, ca_file="/etc/ssl/panel.pem")
    assert account_ca_file(absolute, tmp_path) == "/etc/ssl/panel.pem"
    plain, _ = accounts(tmp_path)
    assert account_ca_file(plain, tmp_path) is None


def test_account_context_follows_tls_verify(tmp_path: Path) -> None:
    lax, _ = accounts(tmp_path, tls_verify=False)
    assert account_tls_context(lax, tmp_path) is tls_context(False, None)


def test_player_api_and_the_playlist_carry_the_account_settings(tmp_path: Path) -> None:
    https, http = accounts(tmp_path, tls_verify=False, ca_file="ca.pem", m3u="get.php")
    client = XtreamClient.for_account(https, tmp_path)
    assert (client.tls_verify, client.ca_file) == (False, str(tmp_path / "ca.pem"))
    src = account_m3u_source(https, tmp_path)
    assert (src.tls_verify, src.ca_file) == (False, str(tmp_path / "ca.pem"))
    # A plain-http account's settings never applied to a playlist (as before the single builder).
    src = account_m3u_source(http, tmp_path)
    assert (src.tls_verify, src.ca_file) == (True, None)
