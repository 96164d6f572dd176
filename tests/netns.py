"""Tests that need a fixed global port own it: they re-run themselves in a fresh network namespace.

SiliconDust discovery only works on UDP/TCP 65001, so a test of it cannot take an ephemeral port,
and on a machine where something else (another relay) holds 65001 it would talk to that instead.
`own_port` moves such a test into a network namespace of its own (`unshare -n` as root, else
`unshare -rn` with user namespaces), where only a loopback exists: nobody else's 65001, and no
real interface to broadcast on. Without a namespace the test runs on the host when the port is
free; when it is taken it is skipped with the reason, or fails loudly under CI=true.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import os
import shutil
import socket
import struct
import subprocess
import sys
from pathlib import Path

import pytest

ENV = "RELAY_TEST_NETNS"  # set in the child: "this process is in the test's own namespace"
CHILD_TIMEOUT_S = 90.0
_SIOCGIFFLAGS, _SIOCSIFFLAGS, _IFF_UP = 0x8913, 0x8914, 0x1


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def inside() -> bool:
    return os.environ.get(ENV) == "1"


@functools.cache
def unshare_prefix() -> tuple[str, ...] | None:
    """The command prefix that runs a program in a fresh network namespace here, or None."""
    if shutil.which("unshare") is None:
        return None
    for prefix in (("unshare", "--net"), ("unshare", "--map-root-user", "--net")):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            if subprocess.run([*prefix, "true"], capture_output=True, timeout=10).returncode == 0:
                return prefix
    return None


def loopback_up() -> None:
    """`ip link set lo up`, without needing iproute2: a new namespace's loopback starts down."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifreq = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s.fileno(), _SIOCGIFFLAGS, ifreq))[1]
        fcntl.ioctl(s.fileno(), _SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | _IFF_UP))


def port_taken(port: int) -> str | None:
    """Why 127.0.0.1:`port` cannot be bound for UDP and TCP right now, or None if it can."""
    for kind, name in ((socket.SOCK_DGRAM, "UDP"), (socket.SOCK_STREAM, "TCP")):
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError as e:
                return f"{name} 127.0.0.1:{port} is taken ({e.strerror})"
    return None


async def own_port(request: pytest.FixtureRequest, port: int) -> bool:
    """Call first in a test that needs `port`. True: run the test body here (in the namespace, or on
    a host where the port is free). False: the test already ran, and passed, in its own namespace."""
    if inside():
        loopback_up()
        return True
    prefix = unshare_prefix()
    if prefix is None:
        taken = port_taken(port)
        if taken is None:
            return True
        why = f"{taken} and no network namespace can be made here (unshare --net / --map-root-user --net)"
        if in_ci():
            pytest.fail(f"{why}; CI=true must run this test")
        pytest.skip(f"{why}: stop whatever holds it (another relay?) and rerun")
    await run_in_namespace(prefix, request.node.nodeid, request.config.rootpath)
    return False


async def run_in_namespace(prefix: tuple[str, ...], nodeid: str, rootdir: Path) -> None:
    """Re-run one test under `prefix`; fail with its output unless exactly it passed there."""
    argv = [*prefix, sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly"]
    argv += ["-o", "addopts=-ra", nodeid]
    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=rootdir,
        env={**os.environ, ENV: "1"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), CHILD_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        pytest.fail(f"{nodeid} did not finish within {CHILD_TIMEOUT_S:g} s in its namespace")
    text = out.decode(errors="replace")
    summary = text.strip().splitlines()[-1] if text.strip() else ""
    if proc.returncode != 0 or not summary.startswith("1 passed"):  # a skip there is no pass here
        pytest.fail(f"in its own network namespace ({' '.join(prefix)}), the test did not pass:\n{text}")
