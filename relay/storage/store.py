"""The relay's SQLite state: accounts, provider streams, guide channels, their mappings, the event log.

Table names follow the seed so its queries read the same. Passwords are never written here: they
live in the config (or its environment) and are joined in memory when a URL is built. The
candidate query runs once per session start and never during a failover.

Over 400 lines because it is the one place that writes SQL: every table's queries live together, so a
schema change is read in one file.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import orjson

from relay.config import DIRECT_ACCOUNT, Config, StreamRef
from relay.core.failover import Candidate, rank_candidates
from relay.core.mapping import StreamRow
from relay.sources.streams import Directory, template, url_stream_id
from relay.storage.files import create_private

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
CREATE TABLE IF NOT EXISTS mapping_blocks (
    xmltv_channel_id TEXT NOT NULL,
    account TEXT NOT NULL,
    stream_id INTEGER NOT NULL,
    PRIMARY KEY (xmltv_channel_id, account, stream_id)
);
"""

# Columns added after the first release: (table, column, definition). Added when missing, so a
# database from an older relay keeps working; every query above still reads the same.
COLUMNS = (
    ("accounts", "inactive_reason", "TEXT"),  # unauthorised/expired/banned/disabled, from the last sync
    ("accounts", "status", "TEXT"),  # user_info.status as the panel said it
    ("accounts", "exp_date", "INTEGER"),  # Unix seconds; NULL = unlimited or unknown
    ("accounts", "api_max_connections", "INTEGER"),  # user_info.max_connections
    ("accounts", "synced_at", "TEXT"),  # when a sync last imported this account's streams
    ("xmltv_channels", "names", "TEXT"),  # JSON list of the guide's display names, for name matching
    ("xmltv_channels", "icon", "TEXT"),
    ("xmltv_channels", "in_guide", "INTEGER NOT NULL DEFAULT 0"),  # seen in the last complete guide import
    ("xmltv_channels", "served", "INTEGER NOT NULL DEFAULT 0"),  # a sync made it a relay channel
    ("xmltv_channels", "hd", "INTEGER NOT NULL DEFAULT 1"),
    ("xtream_channels", "url", "TEXT"),  # an M3U or config URL, credentials as placeholders (sources/streams)
    ("accounts", "output_formats", "TEXT"),  # JSON list: user_info.allowed_output_formats
    ("xmltv_channels", "disabled", "INTEGER NOT NULL DEFAULT 0"),  # the web page took it off the lineup
)

SKIPS_SCHEMA = """
CREATE TABLE IF NOT EXISTS import_skips (
    account TEXT NOT NULL,
    source TEXT NOT NULL,
    reason TEXT NOT NULL,
    name TEXT NOT NULL
);
"""

MAPPING_ORDER = (
    "m.stream_priority ASC, m.is_primary DESC,"
    " CASE m.source WHEN 'config' THEN 0 WHEN 'manual' THEN 1 ELSE 2 END, m.id ASC"
)

CANDIDATES_SQL = (
    """
SELECT a.name, x.stream_id, m.stream_priority, m.is_primary
FROM channel_mappings m
JOIN xtream_channels x ON x.id = m.xtream_channel_id
JOIN accounts a ON a.id = x.account_id
WHERE m.xmltv_channel_id = ? AND a.is_active = 1
ORDER BY """
    + MAPPING_ORDER
)


class GuideRow(NamedTuple):
    """A guide channel (`xmltv_channels`)."""

    id: str
    display_name: str
    names: tuple[str, ...]
    number: str | None
    in_guide: bool
    served: bool


class MappedStream(NamedTuple):
    """One mapping of a channel, as `relay channels` lists it."""

    channel_id: str
    account: str
    stream_id: int
    name: str | None
    priority: int
    primary: bool
    source: str  # config, manual, auto
    active: bool


class MappingError(Exception):
    """A manual mapping the store refuses; str() is the one line to show."""


def connect(path: Path | str) -> sqlite3.Connection:
    """A connection in WAL mode, so the event writer and readers never block each other."""
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=10)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


class Store:
    def __init__(self, path: Path | str, *, gid: int | None = None) -> None:
        self.path = Path(path)
        # SQLite gives its -wal and -shm files the database's mode: create it private first
        create_private(self.path, gid)
        self.conn = connect(self.path)
        self.conn.executescript(SCHEMA)
        self.conn.executescript(SKIPS_SCHEMA)
        _add_columns(self.conn)

    def close(self) -> None:
        self.conn.close()

    def sync_config(self, cfg: Config) -> None:
        """Upsert the config's accounts and channels; mappings from the config replace older ones."""
        c = self.conn
        with _tx(c):
            for acc in cfg.accounts:
                # A line a sync found unusable stays inactive until a sync finds it usable again (or
                # it is another line: new url or username). An unset max_connections takes the panel's.
                c.execute(
                    "INSERT INTO accounts (name, url, username, is_active, max_connections)"
                    " VALUES (?,?,?,?,?)"
                    " ON CONFLICT(name) DO UPDATE SET url=excluded.url, username=excluded.username,"
                    " inactive_reason=CASE WHEN accounts.url=excluded.url AND accounts.username="
                    "excluded.username THEN accounts.inactive_reason END,"
                    " is_active=excluded.is_active AND (accounts.inactive_reason IS NULL"
                    " OR accounts.url!=excluded.url OR accounts.username!=excluded.username),"
                    " max_connections=CASE WHEN ? THEN excluded.max_connections"
                    " ELSE COALESCE(accounts.api_max_connections, excluded.max_connections) END",
                    (
                        acc.name,
                        acc.url,
                        acc.username,
                        int(acc.active),
                        acc.max_connections,
                        "max_connections" in acc.model_fields_set,
                    ),
                )
            if any(s.url is not None and s.account is None for ch in cfg.channels for s in ch.streams):
                c.execute(
                    "INSERT INTO accounts (name, url, username, is_active, max_connections)"
                    " VALUES (?, '', '', 1, ?) ON CONFLICT(name) DO NOTHING",
                    (DIRECT_ACCOUNT, 1 << 20),
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
                    account, sid, tmpl = config_stream(cfg, s)
                    c.execute(
                        "INSERT INTO xtream_channels (account_id, stream_id) VALUES (?,?)"
                        " ON CONFLICT(account_id, stream_id) DO NOTHING",
                        (ids[account], sid),
                    )
                    (xid,) = c.execute(
                        "SELECT id FROM xtream_channels WHERE account_id=? AND stream_id=?",
                        (ids[account], sid),
                    ).fetchone()
                    if tmpl is not None:
                        c.execute("UPDATE xtream_channels SET url=? WHERE id=?", (tmpl, xid))
                    primary = s.primary if marked else s is first_best
                    c.execute(
                        "INSERT INTO channel_mappings (xmltv_channel_id, xtream_channel_id, stream_priority,"
                        " is_primary, source) VALUES (?,?,?,?, 'config')"
                        " ON CONFLICT(xmltv_channel_id, xtream_channel_id) DO UPDATE SET"
                        " stream_priority=excluded.stream_priority, is_primary=excluded.is_primary,"
                        " source='config'",
                        (ch.id, xid, s.priority, int(primary)),
                    )

    # ---- stream kinds and URLs (relay/sources/streams.py) -------------------------------------------

    def stream_directory(self) -> Directory:
        """The URL templates of URL streams and each panel's output formats: what `target_for` needs."""
        urls = {
            (a, sid): url
            for a, sid, url in self.conn.execute(
                "SELECT a.name, x.stream_id, x.url FROM xtream_channels x"
                " JOIN accounts a ON a.id = x.account_id WHERE x.url IS NOT NULL"
            )
        }
        formats = {
            name: tuple(orjson.loads(f))
            for name, f in self.conn.execute("SELECT name, output_formats FROM accounts")
            if f
        }
        return Directory(urls, formats)

    def set_output_formats(self, account: str, formats: Sequence[str] | None) -> None:
        with _tx(self.conn):
            self.conn.execute(
                "UPDATE accounts SET output_formats=? WHERE name=?",
                (orjson.dumps(list(formats)).decode() if formats is not None else None, account),
            )

    def set_stream_urls(self, account: str, urls: dict[int, str | None]) -> None:
        """Record (or clear, None) the URL template of an account's imported streams."""
        with _tx(self.conn):
            (acc_id,) = self.conn.execute("SELECT id FROM accounts WHERE name=?", (account,)).fetchone()
            self.conn.executemany(
                "UPDATE xtream_channels SET url=? WHERE account_id=? AND stream_id=?",
                ((url, acc_id, sid) for sid, url in urls.items()),
            )

    def replace_skips(self, account: str, skips: Iterable[tuple[str, str, str]]) -> None:
        """What the last import of `account` left out: (source, reason, entry name); no URL."""
        with _tx(self.conn):
            self.conn.execute("DELETE FROM import_skips WHERE account=?", (account,))
            self.conn.executemany(
                "INSERT INTO import_skips (account, source, reason, name) VALUES (?,?,?,?)",
                ((account, src, reason, name) for src, reason, name in skips),
            )

    def skips(self) -> list[tuple[str, str, str, str]]:
        """(account, source, reason, name) of every entry the last imports left out."""
        return list(
            self.conn.execute("SELECT account, source, reason, name FROM import_skips ORDER BY rowid")
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

    def prune_events(self, before: str) -> int:
        """Delete the event_log rows stamped before `before` (an RFC 3339 UTC time); returns how many."""
        with _tx(self.conn):
            return self.conn.execute("DELETE FROM event_log WHERE timestamp < ?", (before,)).rowcount

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

    # ---- account sync (relay/sync.py): called from its worker thread on its own Store -----------

    def set_account_state(
        self,
        account: str,
        *,
        inactive_reason: str | None,
        status: str | None = None,
        exp_date: int | None = None,
        api_max_connections: int | None = None,
        explicit_max: bool = True,
    ) -> str | None:
        """Record a login result; returns the previous inactive_reason (an event is due on a change).

        A reason makes the account inactive, so sessions skip it; None makes it active again. The
        panel's max_connections becomes the limit unless the config sets one.
        """
        c = self.conn
        with _tx(c):
            row = c.execute("SELECT inactive_reason FROM accounts WHERE name=?", (account,)).fetchone()
            c.execute(
                "UPDATE accounts SET inactive_reason=?, is_active=?, status=COALESCE(?, status),"
                " exp_date=?, api_max_connections=COALESCE(?, api_max_connections),"
                " max_connections=CASE WHEN ? OR ? IS NULL THEN max_connections ELSE MAX(1, ?) END"
                " WHERE name=?",
                (
                    inactive_reason,
                    int(inactive_reason is None),
                    status,
                    exp_date,
                    api_max_connections,
                    explicit_max,
                    api_max_connections,
                    api_max_connections,
                    account,
                ),
            )
        return row[0] if row else None

    def import_streams(
        self, account: str, rows: Iterable[tuple[int, str, str | None, str | None, str | None]]
    ) -> int:
        """Upsert an account's streams (stream_id, name, epg_channel_id, category, icon).

        Streams the account no longer lists are dropped with their automatic mappings; one that a
        config or manual mapping uses is kept, so a sync never takes a hand-made mapping away.
        """
        c = self.conn
        with _tx(c):
            (acc_id,) = c.execute("SELECT id FROM accounts WHERE name=?", (account,)).fetchone()
            c.execute("CREATE TEMP TABLE IF NOT EXISTS seen_streams (stream_id INTEGER PRIMARY KEY)")
            c.execute("DELETE FROM seen_streams")
            count = 0
            for sid, name, epg, category, icon in rows:
                c.execute("INSERT OR IGNORE INTO seen_streams VALUES (?)", (sid,))
                c.execute(
                    "INSERT INTO xtream_channels (account_id, stream_id, name, epg_channel_id, category,"
                    " icon) VALUES (?,?,?,?,?,?) ON CONFLICT(account_id, stream_id) DO UPDATE SET"
                    " name=excluded.name, epg_channel_id=excluded.epg_channel_id,"
                    " category=excluded.category, icon=excluded.icon",
                    (acc_id, sid, name, epg, category, icon),
                )
                count += 1
            c.execute(
                "DELETE FROM xtream_channels WHERE account_id=?"
                " AND stream_id NOT IN (SELECT stream_id FROM seen_streams)"
                " AND id NOT IN (SELECT xtream_channel_id FROM channel_mappings WHERE source != 'auto')",
                (acc_id,),
            )
            c.execute("UPDATE accounts SET synced_at=? WHERE id=?", (_now(), acc_id))
        return count

    def stream_count(self, account: str) -> int:
        (n,) = self.conn.execute(
            "SELECT COUNT(*) FROM xtream_channels x JOIN accounts a ON a.id=x.account_id"
            " WHERE a.name=? AND x.name IS NOT NULL",
            (account,),
        ).fetchone()
        return int(n)

    def import_guide_channels(
        self, rows: Iterable[tuple[str, Sequence[str], str | None]], *, complete: bool
    ) -> int:
        """Upsert guide channels (id, display names, icon); `complete`: the others left the guide."""
        c = self.conn
        with _tx(c):
            c.execute("CREATE TEMP TABLE IF NOT EXISTS seen_channels (id TEXT PRIMARY KEY)")
            c.execute("DELETE FROM seen_channels")
            count = 0
            for cid, names, icon in rows:
                c.execute("INSERT OR IGNORE INTO seen_channels VALUES (?)", (cid,))
                c.execute(
                    "INSERT INTO xmltv_channels (id, display_name, names, icon, in_guide) VALUES (?,?,?,?,1)"
                    " ON CONFLICT(id) DO UPDATE SET display_name=excluded.display_name,"
                    " names=excluded.names, icon=excluded.icon, in_guide=1",
                    (cid, names[0] if names else cid, orjson.dumps(list(names)).decode(), icon),
                )
                count += 1
            if complete:
                c.execute(
                    "UPDATE xmltv_channels SET in_guide=0 WHERE id NOT IN (SELECT id FROM seen_channels)"
                )
        return count

    def streams(self) -> list[StreamRow]:
        """Every imported stream (rows a config mapping created without a sync have no name)."""
        return [
            StreamRow(*r)
            for r in self.conn.execute(
                "SELECT x.id, a.name, x.stream_id, x.name, x.epg_channel_id, x.category"
                " FROM xtream_channels x JOIN accounts a ON a.id=x.account_id ORDER BY x.id"
            )
        ]

    def guide_channels(self) -> list[GuideRow]:
        out = []
        for cid, display, names, number, in_guide, served in self.conn.execute(
            "SELECT id, display_name, names, number, in_guide, served FROM xmltv_channels ORDER BY id"
        ):
            listed = tuple(orjson.loads(names)) if names else (display,)
            out.append(GuideRow(cid, display, listed, number, bool(in_guide), bool(served)))
        return out

    def fixed_pairs(self) -> set[tuple[str, int]]:
        """(channel, xtream_channels.id) of every config and manual mapping: a sync leaves them alone."""
        return set(
            self.conn.execute(
                "SELECT xmltv_channel_id, xtream_channel_id FROM channel_mappings WHERE source != 'auto'"
            )
        )

    def blocks(self) -> set[tuple[str, str, int]]:
        """(channel, account, stream_id) a person unmapped: a sync does not map them again."""
        return set(self.conn.execute("SELECT xmltv_channel_id, account, stream_id FROM mapping_blocks"))

    def write_auto_mappings(
        self,
        mappings: Iterable[tuple[str, int, int, bool]],
        served: Iterable[tuple[str, str, bool]],
    ) -> None:
        """Replace every automatic mapping (channel, stream key, priority, primary) and the served set.

        One transaction: a session starting meanwhile sees the old mappings or the new, never none.
        A pair that already has a config or manual mapping keeps it.
        """
        c = self.conn
        with _tx(c):
            c.execute("DELETE FROM channel_mappings WHERE source = 'auto'")
            c.executemany(
                "INSERT INTO channel_mappings (xmltv_channel_id, xtream_channel_id, stream_priority,"
                " is_primary, source) VALUES (?,?,?,?, 'auto')"
                " ON CONFLICT(xmltv_channel_id, xtream_channel_id) DO NOTHING",
                ((ch, key, prio, int(primary)) for ch, key, prio, primary in mappings),
            )
            c.execute("UPDATE xmltv_channels SET served=0 WHERE served=1")
            c.executemany(
                "UPDATE xmltv_channels SET served=1, number=?, hd=? WHERE id=?",
                ((number, int(hd), cid) for cid, number, hd in served),
            )

    def served_channels(self) -> list[tuple[str, str, str, bool]]:
        """(id, name, number, hd) of the guide channels the last sync made relay channels."""
        return [
            (cid, name, number, bool(hd))
            for cid, name, number, hd in self.conn.execute(
                "SELECT id, display_name, number, hd FROM xmltv_channels"
                " WHERE served=1 AND number IS NOT NULL ORDER BY CAST(number AS REAL), id"
            )
        ]

    def mapped_streams(self, channel_id: str | None = None) -> list[MappedStream]:
        """Mappings in the order sessions try them (inactive accounts included, flagged)."""
        sql = (
            "SELECT m.xmltv_channel_id, a.name, x.stream_id, x.name, m.stream_priority, m.is_primary,"
            " m.source, a.is_active FROM channel_mappings m"
            " JOIN xtream_channels x ON x.id = m.xtream_channel_id JOIN accounts a ON a.id = x.account_id"
        )
        args: tuple[str, ...] = ()
        if channel_id is not None:
            sql, args = sql + " WHERE m.xmltv_channel_id = ?", (channel_id,)
        rows = self.conn.execute(f"{sql} ORDER BY m.xmltv_channel_id, {MAPPING_ORDER}", args)
        return [
            MappedStream(ch, acc, sid, name, prio, bool(p), src, bool(act))
            for ch, acc, sid, name, prio, p, src, act in rows
        ]

    def channel_art(self) -> dict[str, tuple[str | None, str | None]]:
        """(logo, category) per mapped channel: the guide's icon, else the first stream's with one
        (stream_icon / tvg-logo), in the order sessions try them; the category of the first stream."""
        out: dict[str, tuple[str | None, str | None]] = {}
        rows = self.conn.execute(
            "SELECT m.xmltv_channel_id, g.icon, x.icon, x.category FROM channel_mappings m"
            " JOIN xtream_channels x ON x.id = m.xtream_channel_id"
            " LEFT JOIN xmltv_channels g ON g.id = m.xmltv_channel_id"
            f" ORDER BY m.xmltv_channel_id, {MAPPING_ORDER}"
        )
        for cid, guide_icon, icon, category in rows:
            logo, group = out.get(cid, (None, None))
            out[cid] = (logo or guide_icon or icon or None, group or category or None)
        return out

    def account_limits(self) -> dict[str, int]:
        """max_connections per account: the config's, else what the panel reported at the last sync."""
        return dict(self.conn.execute("SELECT name, max_connections FROM accounts"))

    def accounts(self) -> list[dict[str, Any]]:
        cols = ("name", "is_active", "inactive_reason", "status", "exp_date", "max_connections", "synced_at")
        return [
            dict(zip(cols, r, strict=True))
            for r in self.conn.execute(f"SELECT {', '.join(cols)} FROM accounts")
        ]

    # ---- manual mappings (`relay map` / `relay unmap`) -------------------------------------------

    def map_manual(self, channel_id: str, account: str, stream_id: int, priority: int) -> None:
        """Map a stream to a channel by hand (source 'manual'); a sync never changes it.

        It is written as primary, so it goes before an automatic mapping of the same priority.

        Raises MappingError for an unknown channel, account or stream (one no sync imported and no
        config mapping names), or a pair config.yaml maps (config wins).
        """
        c = self.conn
        with _tx(c):
            if c.execute("SELECT 1 FROM xmltv_channels WHERE id=?", (channel_id,)).fetchone() is None:
                raise MappingError(f"unknown channel {channel_id!r} (relay channels lists them)")
            acc = c.execute("SELECT id FROM accounts WHERE name=?", (account,)).fetchone()
            if acc is None:
                raise MappingError(f"unknown account {account!r}")
            known = c.execute(
                "SELECT id FROM xtream_channels WHERE account_id=? AND stream_id=?", (acc[0], stream_id)
            ).fetchone()
            if known is None:  # a typo would otherwise become priority-0 mapping that never plays
                raise MappingError(
                    f"unknown stream {account}/{stream_id}: not among {account}'s streams"
                    " (relay sync imports them; relay channels --search TEXT finds one)"
                )
            (xid,) = known
            row = c.execute(
                "SELECT source FROM channel_mappings WHERE xmltv_channel_id=? AND xtream_channel_id=?",
                (channel_id, xid),
            ).fetchone()
            if row is not None and row[0] == "config":
                raise MappingError(_CONFIG_WINS.format(channel_id, account, stream_id))
            c.execute(
                "INSERT INTO channel_mappings (xmltv_channel_id, xtream_channel_id, stream_priority,"
                " is_primary, source) VALUES (?,?,?,1,'manual')"
                " ON CONFLICT(xmltv_channel_id, xtream_channel_id) DO UPDATE SET"
                " stream_priority=excluded.stream_priority, is_primary=1, source='manual'",
                (channel_id, xid, priority),
            )
            c.execute(
                "DELETE FROM mapping_blocks WHERE xmltv_channel_id=? AND account=? AND stream_id=?",
                (channel_id, account, stream_id),
            )

    def unmap(self, channel_id: str, account: str, stream_id: int) -> str | None:
        """Remove a manual or automatic mapping and keep a sync from making it again.

        Returns the removed mapping's source, None if there was none. Raises MappingError for a
        mapping from the config file (config wins: edit it there).
        """
        c = self.conn
        with _tx(c):
            row = c.execute(
                "SELECT m.id, m.source FROM channel_mappings m"
                " JOIN xtream_channels x ON x.id = m.xtream_channel_id JOIN accounts a ON a.id = x.account_id"
                " WHERE m.xmltv_channel_id=? AND a.name=? AND x.stream_id=?",
                (channel_id, account, stream_id),
            ).fetchone()
            if row is not None and row[1] == "config":
                raise MappingError(_CONFIG_WINS.format(channel_id, account, stream_id))
            if row is not None:
                c.execute("DELETE FROM channel_mappings WHERE id=?", (row[0],))
            c.execute(
                "INSERT OR IGNORE INTO mapping_blocks (xmltv_channel_id, account, stream_id) VALUES (?,?,?)",
                (channel_id, account, stream_id),
            )
        return None if row is None else str(row[1])

    # ---- the web page (relay/web): search, enable/disable, number -------------------------------------

    def search_streams(self, q: str, *, limit: int = 50, offset: int = 0) -> tuple[int, list[dict[str, Any]]]:
        """Provider streams whose name, category, EPG id or account/stream_id contains `q` (any case).

        One indexed-table scan with LIMIT: ~10 ms at 20,000 streams. Returns (matches, one page)."""
        like = "%" + q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        where = (
            " WHERE x.name IS NOT NULL AND (x.name LIKE ?1 ESCAPE '\\' OR x.category LIKE ?1 ESCAPE '\\'"
            " OR x.epg_channel_id LIKE ?1 ESCAPE '\\' OR (a.name || '/' || x.stream_id) LIKE ?1 ESCAPE '\\')"
        )
        base = " FROM xtream_channels x JOIN accounts a ON a.id = x.account_id" + where
        (total,) = self.conn.execute("SELECT COUNT(*)" + base, (like,)).fetchone()
        rows = self.conn.execute(
            "SELECT a.name, x.stream_id, x.name, x.category, x.epg_channel_id,"
            " (SELECT group_concat(m.xmltv_channel_id, ' ') FROM channel_mappings m"
            " WHERE m.xtream_channel_id = x.id)"
            + base
            + " ORDER BY x.name, a.name, x.stream_id LIMIT ?2 OFFSET ?3",
            (like, limit, offset),
        )
        cols = ("account", "stream_id", "name", "category", "epg_channel_id", "channels")
        out = [dict(zip(cols, r, strict=True)) for r in rows]
        for d in out:
            d["channels"] = d["channels"].split(" ") if d["channels"] else []
        return int(total), out

    def mapping_counts(self) -> dict[str, int]:
        """Streams mapped per channel (inactive accounts included): the channel list's column."""
        return dict(self.conn.execute("SELECT xmltv_channel_id, COUNT(*) FROM channel_mappings GROUP BY 1"))

    def disabled_channels(self) -> set[str]:
        return {cid for (cid,) in self.conn.execute("SELECT id FROM xmltv_channels WHERE disabled=1")}

    def set_disabled(self, channel_id: str, disabled: bool) -> None:
        with _tx(self.conn) as c:
            if (
                c.execute(
                    "UPDATE xmltv_channels SET disabled=? WHERE id=?", (int(disabled), channel_id)
                ).rowcount
                == 0
            ):
                raise MappingError(f"unknown channel {channel_id!r}")

    def set_number(self, channel_id: str, number: str) -> None:
        """A guide channel's number; a sync keeps it (relay.core.mapping.assign_numbers keeps stored ones)."""
        with _tx(self.conn) as c:
            if c.execute("UPDATE xmltv_channels SET number=? WHERE id=?", (number, channel_id)).rowcount == 0:
                raise MappingError(f"unknown channel {channel_id!r}")

    def unmapped_streams(self, limit: int = 200) -> tuple[int, list[tuple[str, int, str, str | None]]]:
        """(how many, first `limit` of them): named streams on no channel, as a sync left them."""
        base = (
            " FROM xtream_channels x JOIN accounts a ON a.id = x.account_id WHERE x.name IS NOT NULL"
            " AND NOT EXISTS (SELECT 1 FROM channel_mappings m WHERE m.xtream_channel_id = x.id)"
        )
        (n,) = self.conn.execute("SELECT COUNT(*)" + base).fetchone()
        rows = self.conn.execute(
            "SELECT a.name, x.stream_id, x.name, x.category" + base + " ORDER BY x.name LIMIT ?", (limit,)
        )
        return int(n), [tuple(r) for r in rows]

    def timeline(
        self, *, categories: Sequence[str], levels: Sequence[str], channel: str | None, limit: int
    ) -> list[dict[str, Any]]:
        """The newest `limit` events of these categories and levels (one channel's, if given), newest last."""
        sql = (
            f"SELECT details FROM event_log WHERE category IN ({','.join('?' * len(categories))})"
            f" AND level IN ({','.join('?' * len(levels))})"
        )
        args: list[Any] = [*categories, *levels]
        if channel:
            sql += " AND json_extract(details, '$.channel') = ?"
            args.append(channel)
        args.append(limit)
        rows = self.conn.execute(sql + " ORDER BY id DESC LIMIT ?", args)
        return [orjson.loads(d) for (d,) in rows][::-1]

    # ---- end of the web page's queries ----------------------------------------------------------------


def config_stream(cfg: Config, s: StreamRef) -> tuple[str, int, str | None]:
    """(account, stream_id, URL template or None) of a config stream; url: streams get a stable id."""
    if s.url is None:
        assert s.account is not None and s.stream_id is not None
        return s.account, s.stream_id, None
    acc = cfg.account(s.account) if s.account is not None else None
    tmpl = template(s.url, acc.username if acc else None, acc.password if acc else None)
    return s.account or DIRECT_ACCOUNT, url_stream_id(tmpl), tmpl


def _add_columns(conn: sqlite3.Connection) -> None:
    for table, column, definition in COLUMNS:
        have = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        if column not in have:
            try:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")
            except sqlite3.OperationalError as e:  # another connection added it just now
                if "duplicate column" not in str(e):
                    raise


_CONFIG_WINS = "{} <- {}/{} is set in the config file, which wins over relay map/unmap; edit it there"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


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
