"""Shared fixtures: real MPEG-TS media (ffmpeg, cached) and a running fake Xtream provider."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import uvloop
from hypothesis import settings

from tests.browser import chromium  # noqa: F401 - the web page's tests' headless browser (a fixture)
from tests.fake_provider import FakeProvider
from tests.media import make_ts, require_ffmpeg

# CI explores the same examples every run: a red build is then always this change's, never a new draw
settings.register_profile("ci", derandomize=True, deadline=None)
if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
    settings.load_profile("ci")


@pytest.fixture(scope="session")
def ts_file() -> Path:
    """4 s H.264/AAC TS with ffmpeg's default PIDs."""
    require_ffmpeg()
    return make_ts()


@pytest.fixture(scope="session")
def ts_file_mpeg2() -> Path:
    """4 s MPEG-2/MP2 TS with different PIDs, service id and timestamps (a different provider's feed)."""
    require_ffmpeg()
    return make_ts(variant="mpeg2")


@pytest.fixture
async def provider(ts_file: Path) -> AsyncIterator[FakeProvider]:
    """A started FakeProvider (alice/s3cret, real-time pacing) serving ts_file for every stream id."""
    async with FakeProvider(ts_file, rate_factor=1.0) as p:
        yield p


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, object]:
    """Tests run on uvloop, like the relay does (its transports differ from asyncio's)."""
    return {"uvloop": uvloop.new_event_loop}


@pytest.fixture(scope="session")
def installed_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with this checkout's wheel installed (`pip wheel .`, then `pip install` it), once a
    session: it is slow (a build and a dependency install), so the tests that need it share it."""
    import subprocess
    import sys
    import venv

    root = Path(__file__).resolve().parent.parent
    work = tmp_path_factory.mktemp("wheel")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(work / "dist"), str(root)],
        check=True, timeout=300, env=env, cwd=work,
    )  # fmt: skip
    venv.create(work / "venv", with_pip=True)
    (wheel,) = (work / "dist").glob("iptv_relay-*.whl")
    subprocess.run(
        [str(work / "venv" / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", str(wheel)],
        check=True, timeout=600, env=env, cwd=work,
    )  # fmt: skip
    return work / "venv"
