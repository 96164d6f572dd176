"""The command line as a user runs it: `relay serve` in a subprocess, bad configs, signals."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from relay.config import load
from tests.fake_provider import FakeProvider
from tests.harness import config_for, open_stream, read_events, until

ROOT = Path(__file__).resolve().parent.parent


def run_relay(
    *args: str, env: dict[str, str] | None = None, timeout: float = 20
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "relay", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=ROOT,
    )


def write_config(tmp: Path, text: str) -> Path:
    p = tmp / "config.yaml"
    p.write_text(text)
    return p


GOOD = """
server: {host: 127.0.0.1, port: 0}
discovery: {udp: false}
accounts:
  - {name: a, url: "http://127.0.0.1:9", username: u, password: p}
channels:
  - {id: one.uk, name: One, number: "1", streams: [{account: a, stream_id: 1}]}
"""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (GOOD.replace("port: 0", "port: nope"), "server.port"),
        (GOOD + "bogus: 1\n", "bogus: unknown key"),
        (
            GOOD.replace("stream_id: 1", "stream_id: 1, account2: x"),
            "channels[0].streams[0].account2: unknown key",
        ),
        (GOOD.replace("{account: a,", "{account: zz,"), "unknown account 'zz'"),
        (
            GOOD.replace("password: p", 'password: "${RELAY_TEST_UNSET_VAR}"'),
            "RELAY_TEST_UNSET_VAR is not set",
        ),
        (GOOD + '  - {id: one.uk, name: Two, number: "2"}\n', "duplicate channel id"),
        (GOOD.replace("server: {", "server: [{"), "YAML error"),
        ("- just\n- a list\n", "top level must be a mapping"),
    ],
)
def test_given_bad_config_when_serving_then_exit_2_with_one_clear_line(
    tmp_path: Path, text: str, expected: str
):
    cfg = write_config(tmp_path, text)
    r = run_relay("serve", "--config", str(cfg))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert expected in lines[0]
    assert "Traceback" not in r.stderr


def test_given_missing_config_file_then_exit_2(tmp_path: Path):
    r = run_relay("serve", "--config", str(tmp_path / "nope.yaml"))
    assert r.returncode == 2 and "config file not found" in r.stderr


def test_given_config_from_environment_variable_then_it_is_used(tmp_path: Path):
    cfg = write_config(tmp_path, GOOD + "bogus: 1\n")
    r = run_relay("serve", env={"RELAY_CONFIG": str(cfg)})
    assert r.returncode == 2 and "bogus" in r.stderr


def test_given_port_in_use_then_exit_2(tmp_path: Path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        cfg = write_config(tmp_path, GOOD.replace("port: 0", f"port: {port}"))
        r = run_relay("serve", "--config", str(cfg))
    assert r.returncode == 2
    assert f"server.port: 127.0.0.1:{port} is already in use" in r.stderr
    assert "Traceback" not in r.stderr


def test_example_config_yaml_is_valid():
    cfg = load(ROOT / "config.yaml", env={"PROVIDER_A_PASSWORD": "x", "PROVIDER_B_PASSWORD": "y"})
    assert cfg.channels == ()  # channels come from the sync (issue 14: hand-written ids went dead)
    assert cfg.failover.stall_timeout_s == 5.0 and cfg.failover.budget_s == 2.0


async def test_given_running_relay_when_sigterm_mid_stream_then_exit_0_and_events_flushed(
    provider: FakeProvider, tmp_path: Path
):
    data = config_for(tmp_path, provider, {"ch1": [("a", 1), ("b", 2)]})
    cfg = write_config(tmp_path, yaml.safe_dump(data))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relay", "serve", "--config", str(cfg),
        stderr=asyncio.subprocess.PIPE, cwd=ROOT,
    )  # fmt: skip
    assert proc.stderr is not None
    port = 0
    async with asyncio.timeout(15):
        while not port:
            line = (await proc.stderr.readline()).decode()
            assert line, "relay exited before listening"
            if m := re.search(r"listening on http://127\.0\.0\.1:(\d+)", line):
                port = int(m.group(1))
    c = await open_stream(port, "/stream/ch1")
    await c.wait_bytes(20_000)
    await provider.drop(1)
    await c.wait_bytes(len(c.body) + 20_000)
    proc.send_signal(signal.SIGTERM)
    async with asyncio.timeout(10):
        rc = await proc.wait()
    assert rc == 0
    await c.wait_closed()
    assert c.ended  # shutdown ends the response cleanly, with the last chunk
    await until(lambda: provider.active_total() == 0, what="upstreams closed")
    events = [e["event"] for e in read_events(tmp_path)]
    assert events == ["session_start", "failover", "session_end"]
    assert read_events(tmp_path)[-1]["reason"] == "Shutdown"
    rows = sqlite3.connect(tmp_path / "relay.db").execute("SELECT count(*) FROM event_log").fetchone()
    assert rows[0] == 3
    err = (await proc.stderr.read()).decode()
    assert provider.password not in err


def test_module_and_console_script_both_answer_help():
    r = run_relay("--help")
    assert r.returncode == 0 and "serve" in r.stdout
