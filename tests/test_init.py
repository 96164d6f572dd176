"""`relay init` against the fake panel, the example config, ${VAR} needed only where used, `| head`."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from relay.config import load
from tests.fake_xtream import PASSWORD, FakeXtream, Stream
from tests.test_sync import GUIDE_XML, STREAMS, assert_clean

ROOT = Path(__file__).resolve().parent.parent
ENV_VAR = "RELAY_TEST_PROVIDER_PASSWORD"


def relay(
    *args: str, env: dict[str, str] | None = None, cwd: Path = ROOT, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k != ENV_VAR}
    r = subprocess.run(
        [sys.executable, "-m", "relay", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env={**base, "PYTHONPATH": str(ROOT), **(env or {})},
    )
    assert_clean(r.stdout, r.stderr)
    return r


@pytest.fixture
def xt() -> Iterator[FakeXtream]:
    with FakeXtream(streams=list(STREAMS), xmltv=GUIDE_XML) as fake:
        yield fake


def init(xt: FakeXtream, config: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return relay(
        "init", "--url", xt.url, "--username", xt.username, "--password-env", ENV_VAR,
        "--config", str(config), *extra,
        env={ENV_VAR: PASSWORD},
    )  # fmt: skip


def test_given_an_account_when_relay_init_then_accounts_only_config_synced_with_count_and_plex_steps(
    tmp_path: Path, xt: FakeXtream
) -> None:
    config = tmp_path / "conf" / "config.yaml"
    r = init(xt, config, "--m3u", "get.php")
    assert r.returncode == 0, r.stderr
    data = yaml.safe_load(config.read_text())
    assert set(data) == {"server", "accounts"}  # no hand-written channels to go dead
    assert data["accounts"] == [
        {
            "name": "provider",
            "url": xt.url,
            "username": "alice",
            "password": f"${{{ENV_VAR}}}",
            "m3u": "get.php",
        }
    ]
    assert PASSWORD not in config.read_text()
    assert "provider  ok" in r.stdout  # the sync's own summary
    assert "4 channel(s) ready for Plex" in r.stdout
    assert "Live TV & DVR" in r.stdout and ":5004/xmltv.xml" in r.stdout
    assert xt.count("get_live_streams") == 1 and xt.count("get.php") == 1
    cfg = load(config, env={ENV_VAR: "x"})  # what it wrote is a config the relay loads
    assert [a.name for a in cfg.accounts] == ["provider"] and cfg.channels == ()
    assert (config.parent / "relay.db").exists()
    again = init(xt, config)
    assert again.returncode == 2 and "exists; --force replaces it" in again.stderr
    assert init(xt, config, "--force", "--no-sync").returncode == 0


def test_given_a_data_dir_then_the_database_and_events_go_there(tmp_path: Path, xt: FakeXtream) -> None:
    config = tmp_path / "config" / "config.yaml"
    r = relay(
        "init", "--url", xt.url, "--username", "alice", "--password-env", ENV_VAR, "--config", str(config),
        env={ENV_VAR: PASSWORD, "RELAY_DATA_DIR": str(tmp_path / "data")},
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "data" / "relay.db").exists() and not (config.parent / "relay.db").exists()
    assert yaml.safe_load(config.read_text())["storage"]["events"] == str(tmp_path / "data" / "events.jsonl")


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        ((), {}, f"--password-env: {ENV_VAR} is not set; export {ENV_VAR}=... first (the config names"),
        (("--url", "ftp://x"), {ENV_VAR: "p"}, "--url: must be an http:// or https:// URL"),
    ],
)
def test_given_a_mistake_when_relay_init_then_one_line_exit_2_and_no_file(
    tmp_path: Path, args: tuple[str, ...], env: dict[str, str], expected: str
) -> None:
    config = tmp_path / "config.yaml"
    base = [
        "--url",
        "http://127.0.0.1:9",
        "--username",
        "u",
        "--password-env",
        ENV_VAR,
        "--config",
        str(config),
    ]
    r = relay("init", *base, *args, env=env)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"relay: {expected}")
    assert not config.exists()


def test_given_a_failing_account_when_relay_init_then_the_config_stays_and_says_what_next(
    tmp_path: Path,
) -> None:
    with FakeXtream(faults={"login": "404", "xmltv.php": "404"}) as bare:
        config = tmp_path / "config.yaml"
        r = init(bare, config)
    assert r.returncode == 1
    assert config.exists() and "the sync did not work" in r.stdout


def test_example_config_has_no_hand_written_channels_and_matches_the_packaged_copy() -> None:
    cfg = load(ROOT / "config.yaml", env={"PROVIDER_A_PASSWORD": "x", "PROVIDER_B_PASSWORD": "y"})
    assert cfg.channels == ()  # a stream id typed in an example is a dead channel that blocks the sync
    assert [a.name for a in cfg.accounts] == ["provider-a", "provider-b"]
    packaged = ROOT / "relay" / "data" / "config.example.yaml"
    assert packaged.read_bytes() == (ROOT / "config.yaml").read_bytes(), "copy config.yaml to relay/data/"


def test_given_no_password_in_the_environment_then_only_the_commands_that_use_it_fail(
    tmp_path: Path, xt: FakeXtream
) -> None:
    config = tmp_path / "config.yaml"
    assert init(xt, config).returncode == 0
    (tmp_path / "events.jsonl").write_text("")
    for args in (
        ("channels",),
        ("channels", "--unmapped"),
        ("map", "bbcone.uk", "provider/13"),
        ("unmap", "bbcone.uk", "provider/13"),
        ("events",),
    ):
        r = relay(*args, "--config", str(config))
        assert r.returncode == 0, (args, r.stderr)
    for args in (("sync",), ("serve",)):
        r = relay(*args, "--config", str(config))
        assert r.returncode == 2, args
        assert r.stderr.strip() == f"relay: accounts[0].password: environment variable {ENV_VAR} is not set"


def test_given_a_missing_variable_where_a_value_is_checked_then_the_variable_is_named(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text('server: {port: "${RELAY_TEST_UNSET_PORT}"}\n')
    r = relay("channels", "--config", str(config))
    assert r.returncode == 2
    assert r.stderr.strip() == "relay: server.port: environment variable RELAY_TEST_UNSET_PORT is not set"


def test_given_a_long_listing_piped_into_head_then_no_broken_pipe_traceback(tmp_path: Path) -> None:
    many = [Stream(1000 + i, f"Loose stream number {i} with a long name", None, "1") for i in range(3000)]
    with FakeXtream(streams=many, xmltv=GUIDE_XML) as fake:
        config = tmp_path / "config.yaml"
        assert init(fake, config).returncode == 0
    proc = subprocess.Popen(
        [sys.executable, "-m", "relay", "channels", "--unmapped", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()  # `| head -1`: read a line, then go away
    proc.stdout.close()
    err = proc.stderr.read().decode()
    rc = proc.wait(timeout=30)
    assert first.startswith(b"Channels without a stream")
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
    assert err == "" and rc == 141  # as a shell reports a writer ended by SIGPIPE


def test_given_no_relay_listening_when_relay_health_then_exit_1_with_the_reason(tmp_path: Path) -> None:
    from tests.fake_provider import closed_port

    config = tmp_path / "config.yaml"
    account = '{name: a, url: "http://x", username: u, password: "${UNSET_PW}"}'
    config.write_text(f"server: {{port: {closed_port()}}}\naccounts: [{account}]\n")
    r = relay("health", "--config", str(config))
    assert r.returncode == 1 and "/health:" in r.stderr and "refused" in r.stderr.lower()
