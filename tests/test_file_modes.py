"""Files the relay creates are private: the database (provider usernames), its WAL and shared-memory
files, the event log and the guide cache are 0600 whatever the umask, or 0640 and owned by
`storage.group` when one is configured. Before, relay.db and events.jsonl were 0644.
"""

from __future__ import annotations

import asyncio
import grp
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from relay.config import ConfigError, parse
from relay.shell.app import Relay
from tests.fake_provider import FakeProvider
from tests.harness import config_for, open_stream, running_relay, until

FILES = ("relay.db", "relay.db-wal", "relay.db-shm", "events.jsonl", "xmltv.xml", "xmltv.xml.gz")


@pytest.fixture
def open_umask() -> Iterator[None]:
    old = os.umask(0o022)  # the common default, under which these files used to be 0644
    try:
        yield
    finally:
        os.umask(old)


def modes(tmp: Path) -> dict[str, tuple[int, int]]:
    return {n: (stat.S_IMODE((tmp / n).stat().st_mode), (tmp / n).stat().st_gid) for n in FILES}


async def run_once(tmp: Path, provider: FakeProvider, group: str | None) -> dict[str, tuple[int, int]]:
    """Modes and groups of every file, taken while the relay runs (the WAL goes at a clean stop)."""
    cfg = config_for(tmp, provider, {"ch1": [("a", 1)]})
    cfg["storage"]["group"] = group
    async with running_relay(cfg, tmp) as relay:
        c = await open_stream(relay.port, "/stream/ch1")
        await c.wait_bytes(10_000)
        await c.close()
        await until(lambda: relay.guide.current() is not None, what="the guide cache")
        await until(lambda: not relay.sessions, what="session_end")
        await relay.events.flush()
        return modes(tmp)


@pytest.mark.usefixtures("open_umask")
async def test_given_no_group_then_database_events_and_guide_are_created_0600(
    provider: FakeProvider, tmp_path: Path
):
    found = await run_once(tmp_path, provider, None)
    assert {n: m for n, (m, _) in found.items()} == dict.fromkeys(FILES, 0o600)
    assert (tmp_path / "events.jsonl").stat().st_size > 0  # the file written to is the one created


@pytest.mark.usefixtures("open_umask")
async def test_given_storage_group_then_files_are_0640_and_owned_by_that_group(
    provider: FakeProvider, tmp_path: Path
):
    group = grp.getgrgid(4 if os.geteuid() == 0 else os.getgid())  # as root: "adm", not our own group
    found = await run_once(tmp_path, provider, group.gr_name)
    assert found == dict.fromkeys(FILES, (0o640, group.gr_gid))


@pytest.mark.usefixtures("open_umask")
async def test_given_existing_files_then_their_modes_are_left_alone(provider: FakeProvider, tmp_path: Path):
    (tmp_path / "events.jsonl").touch(0o644)
    os.chmod(tmp_path / "events.jsonl", 0o644)  # an operator's choice
    found = await run_once(tmp_path, provider, None)
    assert found["events.jsonl"][0] == 0o644 and found["relay.db"][0] == 0o600


async def test_given_unknown_group_then_start_fails_with_one_line_naming_the_key(
    provider: FakeProvider, tmp_path: Path
):
    cfg = config_for(tmp_path, provider, {"ch1": [("a", 1)]})
    cfg["storage"]["group"] = "no-such-group-xyz"
    with pytest.raises(ConfigError, match=r"storage\.group: no group named 'no-such-group-xyz'"):
        Relay(parse(cfg, base_dir=tmp_path))
    await asyncio.sleep(0)
