"""Automatic mapping: name normalisation, the matching and priority rules, numbering, manual override."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from relay.config import Config, parse
from relay.core.mapping import GuideChannel, assign_numbers, auto_map, name_key, quality_of, select_channels
from relay.sources.sync import channel_list, remap
from relay.storage.store import MappingError, Store, StreamRow


@pytest.mark.parametrize(
    ("name", "key", "quality"),
    [
        ("BBC One", "bbcone", ""),
        ("UK: BBC One FHD", "bbcone", "FHD"),
        ("|UK| BBC One HD", "bbcone", "HD"),
        ("UK | BBC ONE SD", "bbcone", "SD"),
        ("US| HBO 4K", "hbo", "4K"),
        ("USA: HBO UHD", "hbo", "4K"),
        ("[FR] TF1 HEVC", "tf1", ""),
        ("FR - TF1 1080p", "tf1", "FHD"),
        ("Sky Sports News (UK)", "skysportsnews", ""),
        ("VIP Sky Sports News Full HD", "skysportsnews", "FHD"),
        ("ARTE Télé", "artetele", ""),
        ("Arte Tele", "artetele", ""),
        ("Zürich TV", "zurichtv", ""),
        ("Channel 4 +1", "channel4+1", ""),
        ("UK: Channel4 +1 HD", "channel4+1", "HD"),
        ("Channel 4 Plus 1", "channel4+1", ""),
        ("AT&T SportsNet", "atandtsportsnet", ""),
        ("E4", "e4", ""),
    ],
)
def test_given_provider_names_then_normalised_for_matching(name: str, key: str, quality: str) -> None:
    k = name_key(name)
    assert (k.key, k.quality) == (key, quality)
    assert quality_of(name) == quality


def test_given_a_timeshift_channel_then_it_never_matches_the_live_one() -> None:
    assert name_key("Channel 4 +1").key != name_key("Channel 4").key


def _stream(key: int, account: str, name: str, epg: str | None = None, cat: str | None = None) -> StreamRow:
    return StreamRow(key, account, 1000 + key, name, epg, cat)


GUIDE = [
    GuideChannel("bbcone.uk", ("BBC One",)),
    GuideChannel("bbconehd.uk", ("BBC One HD",)),
    GuideChannel("channel4.uk", ("Channel 4",)),
    GuideChannel("channel4p1.uk", ("Channel 4 +1",)),
    GuideChannel("tf1.fr", ("TF1",)),
    GuideChannel("news.a", ("News",)),
    GuideChannel("news.b", ("NEWS",)),
]


def test_given_epg_ids_and_names_then_id_first_then_name_and_ambiguous_names_left_out() -> None:
    streams = [
        _stream(1, "a", "Whatever it is called", "TF1.FR"),  # id match, case-insensitive, name ignored
        _stream(2, "a", "UK: Channel 4 HD"),  # name match
        _stream(3, "a", "UK: Channel 4 +1"),  # the +1 channel, not Channel 4
        _stream(4, "a", "News HD"),  # two guide channels are called News: ambiguous
        _stream(5, "a", "Movies 24/7"),  # nothing
        _stream(6, "a", "UK: BBC One HD"),  # a guide "BBC One HD" exists: the exact name wins
        _stream(7, "a", "UK: BBC One FHD"),  # no "BBC One FHD": the plain "BBC One" takes it
        _stream(8, "a", "TF1", "unknown.id"),  # an epg id the guide lacks falls back to the name
    ]
    r = auto_map(GUIDE, streams, ["a"])
    got = {(m.channel_id, m.stream_key, m.matched_by) for m in r.mappings}
    assert got == {
        ("tf1.fr", 1, "id"),
        ("channel4.uk", 2, "name"),
        ("channel4p1.uk", 3, "name"),
        ("bbconehd.uk", 6, "name"),
        ("bbcone.uk", 7, "name"),
        ("tf1.fr", 8, "name"),
    }
    assert [s.key for s in r.unmapped] == [5]
    assert [(s.key, ids) for s, ids in r.ambiguous] == [(4, ("news.a", "news.b"))]


def test_given_streams_on_several_accounts_then_account_order_then_quality_decide_priority() -> None:
    streams = [
        _stream(1, "backup", "UK: BBC One 4K", "bbcone.uk"),
        _stream(2, "main", "UK: BBC One SD", "bbcone.uk"),
        _stream(3, "main", "UK: BBC One FHD", "bbcone.uk"),
        _stream(4, "main", "UK: BBC One", "bbcone.uk"),
        _stream(5, "main", "UK: BBC One HD", "bbcone.uk"),
        _stream(6, "backup", "UK: BBC One HD", "bbcone.uk"),
    ]
    r = auto_map(GUIDE, streams, ["main", "backup"])
    ordered = sorted(r.mappings, key=lambda m: m.priority)
    assert [m.stream_key for m in ordered] == [3, 5, 4, 2, 1, 6]  # main FHD, HD, unmarked, SD; backup 4K, HD
    assert [m.primary for m in ordered] == [True] + [False] * 5


def test_given_fixed_and_blocked_pairs_then_auto_mapping_leaves_them_alone() -> None:
    streams = [_stream(1, "a", "BBC One", "bbcone.uk"), _stream(2, "a", "BBC One SD", "bbcone.uk")]
    r = auto_map(GUIDE, streams, ["a"], fixed={("bbcone.uk", 1)}, blocked={("bbcone.uk", "a", 1002)})
    assert r.mappings == []


def test_given_include_and_groups_then_only_those_guide_channels_are_selected() -> None:
    mapped = {"bbcone.uk", "tf1.fr", "channel4.uk"}
    cats = {"tf1.fr": {"FR Général"}, "bbcone.uk": {"UK"}, "channel4.uk": {"UK"}}
    every = select_channels(GUIDE, mapped, cats)
    assert {c.id for c in every} == mapped  # both empty: every mapped channel, nothing unmapped
    some = select_channels(GUIDE, mapped, cats, include=["bbc*"], groups=["fr gen*"])
    assert {c.id for c in some} == {"bbcone.uk", "tf1.fr"}
    by_name = select_channels(GUIDE, mapped, cats, include=["channel 4"])
    assert {c.id for c in by_name} == {"channel4.uk"}


def test_given_stored_numbers_then_they_stay_and_new_channels_go_above_every_number_given() -> None:
    chans = [GuideChannel("b", ("Bravo",)), GuideChannel("a", ("Alpha",)), GuideChannel("c", ("Charlie",))]
    first = assign_numbers(chans, {}, {"1001"}, start=1000)
    assert first == {"a": "1000", "b": "1002", "c": "1003"}  # name order, the config's 1001 skipped
    again = assign_numbers(
        [GuideChannel("c", ("Charlie",)), GuideChannel("d", ("Delta",))],
        {**first, "b": "1002"},  # b left the lineup; its number is not given to anyone else
        {"1001"},
        start=1000,
    )
    assert again == {"c": "1003", "d": "1004"}
    clash = assign_numbers([GuideChannel("a", ("Alpha",))], {"a": "1000"}, {"1000"}, start=1000)
    assert clash == {"a": "1001"}  # a config channel took 1000: the guide channel moves


# ---- with the store: config and manual mappings win -------------------------------------------------------


def _store_with(tmp: Path, channels: list[dict] | None = None) -> tuple[Store, Config]:
    cfg = parse(
        {
            "storage": {"database": str(tmp / "relay.db")},
            "accounts": [
                {"name": "main", "url": "http://127.0.0.1:9", "username": "u", "password": "p"},
                {"name": "backup", "url": "http://127.0.0.1:9", "username": "u", "password": "p"},
            ],
            "channels": channels or [],
        },
        base_dir=tmp,
    )
    store = Store(tmp / "relay.db")
    store.sync_config(cfg)
    store.import_guide_channels(
        [("bbcone.uk", ("BBC One",), None), ("tf1.fr", ("TF1",), None), ("zdf.de", ("ZDF",), None)],
        complete=True,
    )
    store.import_streams(
        "main", [(1, "UK: BBC One HD", "bbcone.uk", "UK", None), (2, "TF1 SD", None, "FR", None)]
    )
    store.import_streams(
        "backup", [(7, "BBC One FHD", None, "UK", None), (8, "FR: TF1 FHD", "tf1.fr", "FR", None)]
    )
    return store, cfg


def _owned(cid: str, name: str, account: str, stream_id: int) -> dict[str, Any]:
    """A config channel that lists its stream: the config owns its mappings."""
    return {
        "id": cid,
        "name": name,
        "number": "101",
        "streams": [{"account": account, "stream_id": stream_id}],
    }


def _order(store: Store, channel: str) -> list[str]:
    return [f"{c.account}/{c.stream_id}" for c in store.candidates(channel)]


def test_given_a_sync_then_candidates_follow_the_rule_and_channel_list_adds_guide_channels(tmp_path: Path):
    store, cfg = _store_with(tmp_path, [{"id": "one.x", "name": "One", "number": "1000", "streams": []}])
    r = remap(store, cfg)
    assert _order(store, "bbcone.uk") == ["main/1", "backup/7"]
    assert _order(store, "tf1.fr") == ["main/2", "backup/8"]
    assert r.served == 2 and r.channels_without_streams == ["one.x"]
    listed = [(c.id, c.number) for c in channel_list(cfg, store)]
    assert listed == [("one.x", "1000"), ("bbcone.uk", "1001"), ("tf1.fr", "1002")]
    store.close()


def test_given_a_config_channel_with_streams_then_a_sync_never_changes_its_mappings(tmp_path: Path):
    store, cfg = _store_with(tmp_path, [_owned("bbcone.uk", "BBC 1", "backup", 99)])
    r = remap(store, cfg)
    assert _order(store, "bbcone.uk") == ["backup/99"]
    assert r.unmapped_streams == 0  # main/1 and backup/7 are BBC One's: not mapped, not "unmapped" either
    listed = {c.id: c.name for c in channel_list(cfg, store)}
    assert listed["bbcone.uk"] == "BBC 1"  # the config's name, not the guide's
    store.close()


def test_given_a_config_channel_without_streams_then_the_sync_fills_them_in(tmp_path: Path):
    store, cfg = _store_with(tmp_path, [{"id": "tf1.fr", "name": "TF1", "number": "5"}])
    remap(store, cfg)
    assert _order(store, "tf1.fr") == ["main/2", "backup/8"]
    assert [c.number for c in channel_list(cfg, store) if c.id == "tf1.fr"] == ["5"]
    store.close()


def test_given_manual_map_and_unmap_then_syncs_keep_them_and_config_wins(tmp_path: Path):
    store, cfg = _store_with(tmp_path)
    remap(store, cfg)
    store.map_manual("bbcone.uk", "backup", 8, 0)  # a person says: backup/8 first
    store.unmap("tf1.fr", "main", 2)  # and main/2 is not TF1
    for _ in range(2):
        remap(store, cfg)
        assert _order(store, "bbcone.uk") == ["backup/8", "main/1", "backup/7"]
        assert _order(store, "tf1.fr") == ["backup/8"]
    store.import_streams("backup", [(7, "BBC One FHD", None, "UK", None)])  # backup/8 left the provider
    assert _order(store, "bbcone.uk")[0] == "backup/8"  # a manual mapping outlives its stream's listing
    store.map_manual("zdf.de", "main", 1, 3)
    assert remap(store, cfg).served == 3  # a manual mapping makes a channel
    store.close()
    store, cfg = _store_with(tmp_path, [_owned("bbcone.uk", "BBC One", "main", 1)])
    with pytest.raises(MappingError, match="config file"):
        store.unmap("bbcone.uk", "main", 1)
    with pytest.raises(MappingError, match="config file"):
        store.map_manual("bbcone.uk", "main", 1, 5)
    store.close()


def test_given_a_database_from_before_the_sync_then_it_is_upgraded_in_place(tmp_path: Path) -> None:
    import sqlite3

    from relay.storage import store as store_mod

    old = sqlite3.connect(tmp_path / "relay.db")
    old.executescript(store_mod.SCHEMA)  # the tables as the first release created them
    old.execute("INSERT INTO accounts (name, url, username) VALUES ('main', 'http://127.0.0.1:9', 'u')")
    old.execute("INSERT INTO xmltv_channels (id, display_name, number) VALUES ('bbcone.uk', 'BBC One', '1')")
    old.execute("INSERT INTO xtream_channels (account_id, stream_id) VALUES (1, 5)")
    old.execute("INSERT INTO channel_mappings (xmltv_channel_id, xtream_channel_id) VALUES ('bbcone.uk', 1)")
    old.commit()
    old.close()
    store = Store(tmp_path / "relay.db")
    cols = {r[1] for r in store.conn.execute("PRAGMA table_info(accounts)")}
    assert {"inactive_reason", "api_max_connections"} <= cols
    assert _order(store, "bbcone.uk") == ["main/5"]  # the old rows still work
    Store(tmp_path / "relay.db").close()  # a second connection finds the columns there
    store.close()
