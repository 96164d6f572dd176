"""Installed as a user installs it: the wheel in a fresh venv (no checkout on the path), and the
systemd unit checked by systemd-analyze against that install."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import zipfile
from pathlib import Path

import pytest

from relay import __version__
from tests.fake_xtream import PASSWORD, FakeXtream
from tests.test_sync import GUIDE_XML, STREAMS

ROOT = Path(__file__).resolve().parent.parent
CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without the checkout: only the installed package can be imported."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return {**env, **extra}


def test_the_wheel_holds_the_package_and_its_data_and_nothing_else(installed_venv: Path) -> None:
    (wheel,) = (installed_venv.parent / "dist").glob("iptv_relay-*.whl")
    assert wheel.name.startswith(f"iptv_relay-{__version__}-py3-none-any")
    names = zipfile.ZipFile(wheel).namelist()
    assert "relay/data/config.example.yaml" in names and "relay/cli/init.py" in names
    assert not [n for n in names if n.startswith(("tests/", "bench/"))]
    meta = next(n for n in names if n.endswith("METADATA"))
    assert "Name: iptv-relay" in zipfile.ZipFile(wheel).read(meta).decode()


def test_the_installed_command_and_python_m_relay_report_the_version(
    installed_venv: Path, tmp_path: Path
) -> None:
    for cmd in (
        [str(installed_venv / "bin" / "relay")],
        [str(installed_venv / "bin" / "python"), "-m", "relay"],
    ):
        r = subprocess.run([*cmd, "--version"], capture_output=True, text=True, timeout=60, cwd=tmp_path,
                           env=clean_env())  # fmt: skip
        assert r.returncode == 0 and r.stdout.strip() == f"relay {__version__}", r.stderr
    r = subprocess.run(
        [str(installed_venv / "bin" / "python"), "-c", "import relay, sys; print(relay.__file__)"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path, env=clean_env(),
    )  # fmt: skip
    assert str(installed_venv) in r.stdout  # the installed copy, not the checkout


def test_the_installed_relay_init_syncs_against_the_fake_panel(installed_venv: Path, tmp_path: Path) -> None:
    with FakeXtream(streams=list(STREAMS), xmltv=GUIDE_XML) as xt:
        r = subprocess.run(
            [str(installed_venv / "bin" / "relay"), "init", "--url", xt.url, "--username", "alice",
             "--password-env", "PW", "--host", "127.0.0.1"],
            capture_output=True, text=True, timeout=120, cwd=tmp_path, env=clean_env(PW=PASSWORD),
        )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "4 channel(s) ready for Plex" in r.stdout and (tmp_path / "config.yaml").exists()
    assert PASSWORD not in r.stdout + r.stderr


async def test_the_installed_relay_demo_starts_and_stops_on_sigterm(
    installed_venv: Path, tmp_path: Path
) -> None:
    from tests.media import require_ffmpeg

    require_ffmpeg()
    proc = await asyncio.create_subprocess_exec(
        str(installed_venv / "bin" / "relay"), "demo", "--port", "0",
        stderr=asyncio.subprocess.PIPE, cwd=tmp_path,
        env=clean_env(XDG_CACHE_HOME=str(ROOT / "tests" / ".media" / "xdg")),
    )  # fmt: skip
    assert proc.stderr is not None
    try:
        async with asyncio.timeout(90):
            while True:
                line = (await proc.stderr.readline()).decode()
                assert line, "demo exited before listening"
                if re.search(r"listening on http://127\.0\.0\.1:\d+", line):
                    break
    finally:
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            rc = await proc.wait()
    assert rc == 0


def test_the_systemd_unit_passes_systemd_analyze_verify(installed_venv: Path, tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        if CI:
            pytest.fail("CI=true: make system-deps installs systemd (systemd-analyze), but it is missing")
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    unit = (ROOT / "deploy" / "relay.service").read_text()
    assert "ExecStart=/usr/local/bin/relay serve --config /etc/relay/config.yaml" in unit
    for key in ("DynamicUser=yes", "StateDirectory=relay", "Restart=on-failure", "ExecReload=/bin/kill -HUP"):
        assert key in unit
    # the same unit, pointing at this session's install (verify checks that the binary exists)
    path = tmp_path / "relay.service"
    path.write_text(unit.replace("/usr/local/bin/relay", str(installed_venv / "bin" / "relay")))
    r = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "relay.service" not in r.stderr, r.stderr  # no warning about the unit itself
