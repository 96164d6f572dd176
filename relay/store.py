"""The relay's SQLite state: accounts, provider streams, guide channels, their mappings, the event log.

Table names follow the seed so its queries read the same. Passwords are never written here: they
live in the config (or its environment) and are joined in memory when a URL is built. The
candidate query runs once per session start and never during a failover.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import orjson

from relay.config import Config
from relay.failover import Candidate, rank_candidates

SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    url TEXT NOT NULL,
    username TEXT NOT NULL,
    is_active INTEGER NOT NULL DEFAULT 1,
    max_connections INTEGER NOT NULL DEFAULT 1
);
CREATE TABLE IF NOT EXISTS xtream_channels (
    id INTEGER PRIMARY KEY,
    account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    stream_id INTEGER NOT NULL,
    name TEXT,
    epg_channel_id TEXT,
    category TEXT,
    icon TEXT,
    UNIQUE (account_id, stream_id)
);
CREATE TABLE IF NOT EXISTS xmltv_channels (
    id TEXT PRIMARY KEY,
    display_name TEXT NOT NULL,
    number TEXT
);
CREATE TABLE IF NOT EXISTS channel_mappings (
    id INTEGER PRIMARY KEY,
    xmltv_channel_id TEXT NOT NULL REFERENCES xmltv_channels(id) ON DELETE CASCADE,
    xtream_channel_id INTEGER NOT NULL REFERENCES xtream_channels(id) ON DELETE CASCADE,
    stream_priority INTEGER NOT NULL DEFAULT 0,
    is_primary INTEGER NOT NULL DEFAULT 0,
    source TEXT NOT NULL DEFAULT 'config',
    UNIQUE (xmltv_channel_id, xtream_channel_id)
);
CREATE INDEX IF NOT EXISTS channel_mappings_channel ON channel_mappings (xmltv_channel_id, stream_priority);
CREATE TABLE IF NOT EXISTS event_log (
    id INTEGER PRIMARY KEY,
    event_id TEXT UNIQUE,
    timestamp TEXT NOT NULL,
    level TEXT NOT NULL,
    category TEXT NOT NULL,
    message TEXT NOT NULL,
    details TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS event_log_time ON event_log (timestamp);
"""

CANDIDATES_SQL = """
SELECT a.name, x.stream_id, m.stream_priority, m.is_primary
FROM channel_mappings m
JOIN xtream_channels x ON x.id = m.xtream_channel_id
JOIN accounts a ON a.id = x.account_id
WHERE m.xmltv_channel_id = ? AND a.is_active = 1
ORDER BY m.stream_priority ASC, m.is_primary DESC, m.id ASC
"""


def connect(path: Path | str) -> sqlite3.Connection:
    """A connection in WAL mode, so the event writer and readers never block each other."""
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=10)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


class Store:
    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.conn = connect(self.path)
        self.conn.executescript(SCHEMA)

    def close(self) -> None:
        self.conn.close()

    def sync_config(self, cfg: Config) -> None:
        """Upsert the config's accounts and channels; mappings from the config replace older ones."""
        c = self.conn
        with _tx(c):
            for acc in cfg.accounts:
                c.execute(
                    "INSERT INTO accounts (name, url, username, is_active, max_connections)"
                    " VALUES (?,?,?,?,?)"
                    " ON CONFLICT(name) DO UPDATE SET url=excluded.url, username=excluded.username,"
                    " is_active=excluded.is_active, max_connections=excluded.max_connections",
                    (acc.name, acc.url, acc.username, int(acc.active), acc.max_connections),
                )
            ids = {name: i for i, name in c.execute("SELECT id, name FROM accounts")}
            c.execute("DELETE FROM channel_mappings WHERE source = 'config'")
            for ch in cfg.channels:
                c.execute(
                    "INSERT INTO xmltv_channels (id, display_name, number) VALUES (?,?,?)"
                    " ON CONFLICT(id) DO UPDATE SET display_name=excluded.display_name,"
                    " number=excluded.number",
                    (ch.id, ch.name, ch.number),
                )
                best = min((s.priority for s in ch.streams), default=0)
                marked = any(s.primary for s in ch.streams)
                first_best = next((s for s in ch.streams if s.priority == best), None)
                for s in ch.streams:
                    c.execute(
                        "INSERT INTO xtream_channels (account_id, stream_id) VALUES (?,?)"
                        " ON CONFLICT(account_id, stream_id) DO NOTHING",
                        (ids[s.account], s.stream_id),
                    )
                    (xid,) = c.execute(
                        "SELECT id FROM xtream_channels WHERE account_id=? AND stream_id=?",
                        (ids[s.account], s.stream_id),
                    ).fetchone()
                    primary = s.primary if marked else s is first_best
                    c.execute(
                        "INSERT INTO channel_mappings (xmltv_channel_id, xtream_channel_id, stream_priority,"
                        " is_primary, source) VALUES (?,?,?,?, 'config')"
                        " ON CONFLICT(xmltv_channel_id, xtream_channel_id) DO UPDATE SET"
                        " stream_priority=excluded.stream_priority, is_primary=excluded.is_primary,"
                        " source='config'",
                        (ch.id, xid, s.priority, int(primary)),
                    )

    def candidates(self, channel_id: str) -> list[Candidate]:
        """The channel's streams on active accounts, best first (stream_priority, then is_primary)."""
        return rank_candidates(self.conn.execute(CANDIDATES_SQL, (channel_id,)))

    def insert_events(self, rows: Sequence[dict[str, Any]]) -> None:
        """Append events; an event already present (same event_id) is left as it is."""
        with _tx(self.conn):
            self.conn.executemany(
                "INSERT OR IGNORE INTO event_log (event_id, timestamp, level, category, message, details)"
                " VALUES (?,?,?,?,?,?)",
                [_event_row(r) for r in rows],
            )

    def events(
        self, *, channel: str | None = None, level: str | None = None, limit: int = 1000
    ) -> list[dict]:
        sql = "SELECT details FROM event_log"
        where, args = [], []
        if channel:
            where.append("json_extract(details, '$.channel') = ?")
            args.append(channel)
        if level:
            where.append("level = ?")
            args.append(level)
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id DESC LIMIT ?"
        args.append(limit)
        return [orjson.loads(d) for (d,) in self.conn.execute(sql, args)][::-1]


def _event_row(e: dict[str, Any]) -> tuple[Any, ...]:
    return (e["event_id"], e["timestamp"], e["level"], e["category"], e["message"], orjson.dumps(e).decode())


class _tx:
    """BEGIN/COMMIT around a block on an autocommit connection."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type: object, *_: object) -> None:
        self.conn.execute("ROLLBACK" if exc_type else "COMMIT")


def table_names(conn: sqlite3.Connection) -> Iterable[str]:
    return [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
