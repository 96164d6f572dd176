"""Real servers a test starts for itself: redis-server and haproxy, each on a free 127.0.0.1 port
with its own temp dir, stopped by pid (never a system service, never a broad kill).

Skips (with the reason) when the binary is missing, except under CI=true, where `make system-deps`
installs both and a missing one is a failure.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def require(binary: str) -> str:
    path = shutil.which(binary) or (f"/usr/sbin/{binary}" if os.path.exists(f"/usr/sbin/{binary}") else None)
    if path is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"{binary} is not installed (make system-deps installs it)")
        pytest.skip(f"{binary} is not installed (apt-get install {binary})")
    return path


def _wait_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{what} exited with {proc.returncode}")
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex((HOST, port)) == 0:
                return
        time.sleep(0.02)
    raise AssertionError(f"{what} did not listen on {port} within {timeout} s")


def _terminate(proc: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM this one process (by its pid), wait; SIGKILL if it does not go."""
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


class RedisServer:
    """redis-server on its own port and dir, no persistence: a restart forgets every key."""

    def __init__(self, folder: Path, port: int | None = None) -> None:
        self.binary = require("redis-server")
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def start(self) -> RedisServer:
        log = open(self.folder / "redis.log", "ab")  # noqa: SIM115 - the child keeps it
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", HOST, "--dir", str(self.folder),
             "--save", "", "--appendonly", "no", "--daemonize", "no", "--protected-mode", "yes"],
            stdout=log, stderr=log,
        )  # fmt: skip
        log.close()
        _wait_port(self.port, self.proc, "redis-server")
        return self

    def stop(self) -> None:
        _terminate(self.proc)
        self.proc = None

    def cli(self, *args: str) -> str:
        """One redis-cli-like command over a raw socket (RESP), for assertions."""
        import redis

        r = redis.Redis(host=HOST, port=self.port, decode_responses=True, socket_timeout=2)
        try:
            return str(r.execute_command(*args))
        finally:
            r.close()

    def zcard(self, key: str) -> int:
        import redis

        r = redis.Redis(host=HOST, port=self.port, decode_responses=True, socket_timeout=2)
        try:
            t = r.time()  # Redis's clock: the one the lease scores are in
            now = t[0] * 1000 + t[1] // 1000
            return int(r.zcount(key, now, "+inf"))
        finally:
            r.close()


class HAProxy:
    """haproxy in the foreground (-db) on a config the test generated; stopped by pid."""

    def __init__(self, folder: Path, config_text: str) -> None:
        self.binary = require("haproxy")
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.config = folder / "haproxy.cfg"
        self.config.write_text(config_text)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, port: int) -> HAProxy:
        check = subprocess.run([self.binary, "-c", "-f", str(self.config)], capture_output=True, text=True)
        assert check.returncode == 0, f"haproxy -c: {check.stdout}{check.stderr}"
        log = open(self.folder / "haproxy.log", "ab")  # noqa: SIM115 - the child keeps it
        self.proc = subprocess.Popen([self.binary, "-db", "-f", str(self.config)], stdout=log, stderr=log)
        log.close()
        _wait_port(port, self.proc, "haproxy")
        return self

    def stop(self) -> None:
        _terminate(self.proc)
        self.proc = None


class Nginx:
    """nginx in the foreground with its own prefix: `http_body` goes inside http {}; stopped by pid."""

    def __init__(self, folder: Path, http_body: str) -> None:
        self.binary = require("nginx")
        self.folder = folder
        (folder / "tmp").mkdir(parents=True, exist_ok=True)
        self.config = folder / "nginx.conf"
        t = folder / "tmp"
        self.config.write_text(
            f"worker_processes 1;\npid {folder}/nginx.pid;\nerror_log {folder}/error.log;\ndaemon off;\n"
            "events { worker_connections 256; }\n"
            f"http {{\n access_log off;\n client_body_temp_path {t};\n proxy_temp_path {t};\n"
            f" fastcgi_temp_path {t};\n uwsgi_temp_path {t};\n scgi_temp_path {t};\n{http_body}\n}}\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, port: int) -> Nginx:
        args = [self.binary, "-p", str(self.folder), "-c", str(self.config)]
        check = subprocess.run([*args, "-t"], capture_output=True, text=True)
        assert check.returncode == 0, f"nginx -t: {check.stderr}"
        log = open(self.folder / "nginx.out", "ab")  # noqa: SIM115 - the child keeps it
        self.proc = subprocess.Popen(args, stdout=log, stderr=log)
        log.close()
        _wait_port(port, self.proc, "nginx")
        return self

    def stop(self) -> None:
        _terminate(self.proc)
        self.proc = None
