"""The Containerfile, built and run with podman: `relay init` then `serve` in it, against the fake panel.

Nothing is pulled from a registry: the base is Debian bookworm made here with mmdebstrap from this
machine's apt sources (trusting this machine's local CAs, for networks whose egress re-signs TLS),
imported into podman, and passed as --build-arg BASE. The image's own apt-get and pip steps then run
as written. It takes minutes (apt downloads ffmpeg), so it is marked `container`: `make
test-container` runs it (CI does, after `make test`); without podman it is skipped saying so, except
under CI=true, where .ci/run installs podman and a missing engine is a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fake_xtream import PASSWORD, FakeXtream
from tests.test_sync import GUIDE_XML, STREAMS

pytestmark = [pytest.mark.container, pytest.mark.timeout(1500)]

ROOT = Path(__file__).resolve().parent.parent
IMAGE = "localhost/iptv-relay:test"
BASE = "localhost/relay-test-base:bookworm"
CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _run(*cmd: str, timeout: float = 900, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd[:4])}... exited {r.returncode}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
        )
    return r


def _base_image() -> None:
    """Debian bookworm minbase from this machine's apt sources, once (kept for the next run)."""
    if _run("podman", "image", "exists", BASE, check=False).returncode == 0:
        return
    if shutil.which("mmdebstrap") is None:
        raise AssertionError("mmdebstrap is needed to make the base image (apt-get install mmdebstrap)")
    tar = ROOT / "tests" / ".media" / "bookworm-base.tar"
    tar.parent.mkdir(parents=True, exist_ok=True)
    sources = [str(p) for p in Path("/etc/apt").glob("sources.list*") if p.is_file()]
    sources += [str(p) for p in Path("/etc/apt/sources.list.d").glob("*.sources")]
    sources += [str(p) for p in Path("/etc/apt/sources.list.d").glob("*.list")]
    hook = (
        'mkdir -p "$1/usr/local/share/ca-certificates"; '
        'cp /usr/local/share/ca-certificates/*.crt "$1/usr/local/share/ca-certificates/" 2>/dev/null || true'
    )
    _run("mmdebstrap", "--variant=minbase", "--mode=root", "--format=tar", f"--customize-hook={hook}",
         "bookworm", str(tar), *sources)  # fmt: skip
    _run("podman", "import", "-q", str(tar), BASE)
    tar.unlink()


def _engine_args() -> list[str]:
    """podman's defaults, or what a VM without CAP_SYS_RESOURCE and with hybrid cgroups needs."""
    for extra in ([], ["--runtime", "runc"]):
        r = _run("podman", *extra, "run", "--rm", *_ulimits(), BASE, "true", check=False, timeout=120)
        if r.returncode == 0:
            return extra
    raise AssertionError(f"podman cannot run a container here: {r.stderr.strip()[-500:]}")


def _ulimits() -> list[str]:
    """At most this process's own limits: podman's default (1048576) may exceed what we may set."""
    import resource

    nofile = min(resource.getrlimit(resource.RLIMIT_NOFILE)[0], 65536)
    return ["--ulimit", f"nofile={nofile}:{nofile}", "--ulimit", "nproc=4096:4096"]


@pytest.fixture(scope="module")
def image() -> Iterator[list[str]]:
    if shutil.which("podman") is None:
        if CI:
            pytest.fail("CI=true: .ci/run installs podman (make system-deps-container), but it is missing")
        pytest.skip("podman is not installed (apt-get install podman buildah mmdebstrap runc)")
    _base_image()
    engine = _engine_args()
    _run("podman", *engine, "build", "--format", "docker", "--network", "host", *_ulimits(),
         "--build-arg", f"BASE={BASE}", "-t", IMAGE, str(ROOT), timeout=1200)  # fmt: skip
    yield engine


def test_the_image_inits_serves_reports_health_and_stops_cleanly_on_sigterm(
    image: list[str], tmp_path: Path
) -> None:
    pod = ["podman", *image]
    inspect = json.loads(_run(*pod, "image", "inspect", IMAGE).stdout)[0]
    cfg = inspect["Config"]
    assert cfg["User"] == "relay" and set(cfg["Volumes"]) == {"/config", "/data"}
    health = inspect.get("Healthcheck") or cfg.get("Healthcheck")  # podman: top level; docker: Config
    assert health["Test"] == ["CMD", "relay", "health"]
    assert not any("PASSWORD" in e or PASSWORD in e for e in cfg["Env"])  # no secret baked in
    for d in ("config", "data"):
        (tmp_path / d).mkdir()
        os.chown(tmp_path / d, 1000, 1000)
    vols = ["-v", f"{tmp_path / 'config'}:/config", "-v", f"{tmp_path / 'data'}:/data"]
    port = 15000 + os.getpid() % 1000
    with FakeXtream(streams=list(STREAMS), xmltv=GUIDE_XML) as xt:
        r = _run(*pod, "run", "--rm", *_ulimits(), "--network", "host", *vols, "-e", f"PW={PASSWORD}", IMAGE,
                 "init", "--url", xt.url, "--username", "alice", "--password-env", "PW",
                 "--host", "127.0.0.1", "--port", str(port), timeout=120)  # fmt: skip
        assert "4 channel(s) ready for Plex" in r.stdout
        assert (tmp_path / "data" / "relay.db").exists() and PASSWORD not in (
            tmp_path / "config" / "config.yaml"
        ).read_text()
        name = f"relay-test-{os.getpid()}"
        _run(*pod, "run", "-d", "--name", name, *_ulimits(), "--network", "host", *vols,
             "-e", f"PW={PASSWORD}", IMAGE, timeout=120)  # fmt: skip
        try:
            deadline = time.monotonic() + 60
            while _run(*pod, "healthcheck", "run", name, check=False, timeout=60).returncode != 0:
                assert time.monotonic() < deadline, _run(*pod, "logs", name).stderr
                time.sleep(1)
            lineup = json.loads(
                urllib.request.urlopen(f"http://127.0.0.1:{port}/lineup.json", timeout=5).read()
            )
            assert len(lineup) == 4
            who = _run(*pod, "exec", name, "sh", "-c", "id -u; tr '\\0' ' ' < /proc/1/cmdline").stdout.split(
                "\n"
            )
            assert who[0] == "1000" and "relay serve" in who[1]  # non-root, and relay itself is PID 1
            assert (
                shutil.which("ffmpeg") is None
                or _run(*pod, "exec", name, "ffmpeg", "-version").returncode == 0
            )
            t0 = time.monotonic()
            _run(*pod, "stop", "-t", "20", name, timeout=60)
            assert time.monotonic() - t0 < 15  # SIGTERM handled, not the engine's SIGKILL after -t
            state = json.loads(_run(*pod, "inspect", name).stdout)[0]["State"]
            assert state["ExitCode"] == 0
            logs = _run(*pod, "logs", name)
            assert PASSWORD not in logs.stdout + logs.stderr
        finally:
            _run(*pod, "rm", "-f", name, check=False)
