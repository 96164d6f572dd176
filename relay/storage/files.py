"""Files the relay creates (database, events, guide cache) are private: 0600, or 0640 for a group.

The database holds provider usernames and the event log names channels and clients' addresses, so
neither is for every local user. With `storage.group` set, the files are 0640 and owned by that group,
so a monitoring user in it can read them. Only files the relay creates are changed; an existing file
keeps the mode its owner gave it.
"""

from __future__ import annotations

import contextlib
import grp
import os
from pathlib import Path

from relay.config import ConfigError


def group_id(name: str | None) -> int | None:
    """`storage.group` as a gid (a name or a number); None when unset. Unknown: a ConfigError."""
    if name is None:
        return None
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        if name.isdigit():
            return int(name)
        raise ConfigError(f"storage.group: no group named {name!r} on this machine") from None


def mode_for(gid: int | None) -> int:
    return 0o600 if gid is None else 0o640


def restrict(fd: int, gid: int | None) -> None:
    """Give an open file the private mode (whatever the umask) and the group."""
    os.fchmod(fd, mode_for(gid))
    if gid is not None:
        with contextlib.suppress(PermissionError):  # not root and not a member: the mode still holds
            os.fchown(fd, -1, gid)


def create_private(path: Path, gid: int | None) -> bool:
    """Create `path` empty with the private mode if it does not exist; True if it was created."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode_for(gid))
    except FileExistsError:
        return False
    try:
        restrict(fd, gid)
    finally:
        os.close(fd)
    return True
