"""`relay demo` as a newcomer runs it: --host/--port with help, a private folder, dated log lines, and a
busy port named by the flag the user gave."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

import pytest

from tests.media import require_ffmpeg

ROOT = Path(__file__).resolve().parent.parent
DATED = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2} ")


@pytest.fixture(scope="session")
def demo_env() -> dict[str, str]:
    """The demo's clips are cached per user ($XDG_CACHE_HOME); the tests share one cache in tests/.media."""
    require_ffmpeg()
    return {**os.environ, "PYTHONPATH": str(ROOT), "XDG_CACHE_HOME": str(ROOT / "tests" / ".media" / "xdg")}


def test_demo_help_names_host_and_port() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "relay", "demo", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )
    assert r.returncode == 0
    text = " ".join(r.stdout.split())
    assert "--host HOST address to listen on (default 127.0.0.1;" in text
    assert "--port PORT port to listen on (default 5004; 0 = any free)" in text


async def test_given_demo_on_a_host_then_it_serves_there_from_a_private_folder_removed_at_exit(
    demo_env: dict[str, str],
) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relay", "demo", "--host", "127.0.0.2", "--port", "0", "--fault-every", "60",
        stderr=asyncio.subprocess.PIPE, cwd=ROOT, env=demo_env,
    )  # fmt: skip
    assert proc.stderr is not None
    port, events, lines = 0, None, []
    try:
        async with asyncio.timeout(90):  # the first run in a fresh cache makes the clips (~20 s)
            while not (port and events):
                line = (await proc.stderr.readline()).decode()
                assert line, f"demo exited: {lines}"
                lines.append(line)
                if m := re.search(r"listening on http://127\.0\.0\.2:(\d+)", line):
                    port = int(m.group(1))
                if m := re.search(r"events go to (\S+)", line):
                    events = Path(m.group(1))
        body = await asyncio.to_thread(
            lambda: urllib.request.urlopen(f"http://127.0.0.2:{port}/discover.json", timeout=5).read()
        )
        assert b'"DeviceID"' in body
        assert all(DATED.match(x) for x in lines), lines  # a date, not only a time
        assert events is not None
        home = events.parent
        assert home.name.startswith("relay-demo-") and home != Path(tempfile.gettempdir()) / "relay-demo"
        assert home.is_dir() and stat.S_IMODE(home.stat().st_mode) == 0o700
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            rc = await proc.wait()
    assert rc == 0
    assert not home.exists()  # the run's database and events went with it


def test_given_the_demo_port_is_busy_then_the_error_names_the_port_flag(demo_env: dict[str, str]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = subprocess.run(
            [sys.executable, "-m", "relay", "demo", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
            env=demo_env,
        )
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1] == f"relay: --port: 127.0.0.1:{port} is already in use"
    assert "server.port" not in r.stderr and "Traceback" not in r.stderr
