"""Open files: raise the soft RLIMIT_NOFILE at start, and serve only as many clients as fit in it.

With the common soft limit of 1,024 and `server.max_clients` 1,024, the connections past the limit
used to get a silent EOF (accept() failing with EMFILE), and /health stopped answering. At start the
relay raises the soft limit to the hard one; if `max_clients` plus what the relay needs for itself (the
descriptors open now, `limits.fd_reserve`, four per provider connection it may hold: the socket and an
ffmpeg's three pipes, and the /health slots) still does not fit, it serves fewer clients, with one
warning line, so that the clients past that number get their `503` and /health keeps answering.
"""

from __future__ import annotations

import logging
import os
import resource
from pathlib import Path

log = logging.getLogger("relay.shell.limits")

FDS_PER_UPSTREAM = 4  # the socket, and stdin/stdout/stderr of an ffmpeg re-encoding it


def raise_nofile() -> int:
    """Raise the soft open-file limit to the hard one (as far as the kernel allows); the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else _nr_open()
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as e:  # a container may refuse: keep the limit we have
            log.debug("cannot raise RLIMIT_NOFILE to %d: %s", target, e)
    return soft


def _nr_open() -> int:
    try:
        return int(Path("/proc/sys/fs/nr_open").read_text())
    except (OSError, ValueError):
        return 1 << 16


def open_fds() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:  # not Linux: assume a handful
        return 16


def client_budget(
    max_clients: int, soft_limit: int, in_use: int, reserve: int, upstreams: int, health_slots: int
) -> int:
    """How many client connections fit in the open-file limit (at least one)."""
    room = soft_limit - in_use - reserve - FDS_PER_UPSTREAM * upstreams - health_slots
    return max(1, min(max_clients, room))


def effective_max_clients(max_clients: int, *, reserve: int, upstreams: int, health_slots: int) -> int:
    """Raise the limit, then fit `max_clients` in it; one warning line when it had to be lowered."""
    soft = raise_nofile()
    n = client_budget(max_clients, soft, open_fds(), reserve, upstreams, health_slots)
    if n < max_clients:
        log.warning(
            "server.max_clients %d does not fit the open-file limit %d (ulimit -n; the relay keeps %d "
            "for itself): serving at most %d clients",
            max_clients,
            soft,
            soft - n,
            n,
        )
    return n
