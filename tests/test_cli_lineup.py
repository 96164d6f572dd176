"""Lineup safety, as an operator meets it: channels_from_guide.exclude, the lineup-size warning, guide
channels no stream carries, `relay channels --search`, and `relay map` refusing an unknown stream."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from relay.config import ConfigError, parse
from tests.fake_xtream import PASSWORD, FakeXtream, Stream
from tests.test_sync import assert_clean

ROOT = Path(__file__).resolve().parent.parent
GUIDE = b"""<?xml version="1.0" encoding="UTF-8"?>
<tv>
  <channel id="bbcone.uk"><display-name>BBC One</display-name></channel>
  <channel id="bbctwo.uk"><display-name>BBC Two</display-name></channel>
  <channel id="shop.uk"><display-name>Shopping Now</display-name></channel>
  <channel id="adult.uk"><display-name>Late Night</display-name></channel>
  <channel id="arte.fr"><display-name>ARTE</display-name></channel>
  <channel id="nostream.uk"><display-name>Nobody Carries Me</display-name></channel>
</tv>
"""
STREAMS = [
    Stream(1, "UK: BBC One HD", "bbcone.uk", "1"),
    Stream(2, "UK: BBC Two", "bbctwo.uk", "1"),
    Stream(3, "UK: Shopping Now", "shop.uk", "1"),
    Stream(4, "Late Night XXX", "adult.uk", "3"),
    Stream(5, "FR: Arte", "arte.fr", "2"),
    Stream(6, "UK: BBC One SD", None, "1"),
]


@pytest.fixture
def panel() -> Iterator[FakeXtream]:
    with FakeXtream(
        streams=list(STREAMS), xmltv=GUIDE, categories={"1": "UK", "2": "FR", "3": "Adults"}
    ) as p:
        yield p


def write_config(tmp_path: Path, panel: FakeXtream, **extra: Any) -> Path:
    data = {
        "storage": {"database": "relay.db", "events": "events.jsonl"},
        "accounts": [{"name": "main", "url": panel.url, "username": panel.username, "password": PASSWORD}],
        **extra,
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    return path


def relay(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(
        [sys.executable, "-m", "relay", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert_clean(r.stdout, r.stderr)
    return r


def served(config: Path) -> list[str]:
    out = relay(config, "channels").stdout.splitlines()[1:-1]
    return sorted({line.split()[1] for line in out if line[:1].isdigit()})


def test_exclude_drops_channels_by_id_name_and_group_with_globs_and_regexes(
    tmp_path: Path, panel: FakeXtream
) -> None:
    rule = {"exclude": ["shop.*", "re:late\\s+night", "Adults"]}
    config = write_config(tmp_path, panel, channels_from_guide=rule)
    assert relay(config, "sync").returncode == 0
    assert served(config) == ["arte.fr", "bbcone.uk", "bbctwo.uk"]
    config = write_config(
        tmp_path, panel, channels_from_guide={"groups": ["UK"], "exclude": ["re:^bbc two$"]}
    )
    assert relay(config, "sync").returncode == 0
    assert served(config) == ["bbcone.uk", "shop.uk"]  # exclude wins over groups
    with pytest.raises(ConfigError, match=r"channels_from_guide\.exclude"):
        parse({"channels_from_guide": {"exclude": ["re:(unclosed"]}})


def test_sync_reports_guide_channels_without_a_stream_and_warns_about_a_large_lineup(
    tmp_path: Path, panel: FakeXtream
) -> None:
    config = write_config(tmp_path, panel, tuner={"lineup_warn": 4})
    r = relay(config, "sync")
    assert r.returncode == 0, r.stderr
    assert "1 guide channel(s) without any stream: nostream.uk" in r.stdout
    assert "lineup: 5 channel(s)" in r.stdout
    warnings = [line for line in r.stdout.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "5 channels, more than tuner.lineup_warn (4)" in warnings[0]
    out = relay(config, "channels", "--unmapped").stdout
    section = out.split("Guide channels without any stream: ", 1)[1].splitlines()
    assert section[0] == "1" and "nostream.uk" in section[1] and "Nobody Carries Me" in section[1]
    quiet = relay(write_config(tmp_path, panel), "sync").stdout  # 480 by default
    assert "lineup: 5 channel(s)" in quiet and "warning:" not in quiet


def test_the_serve_log_warns_about_a_large_lineup(tmp_path: Path, panel: FakeXtream) -> None:
    from relay.sources.sync import lineup_warning, run_sync
    from relay.storage.store import Store

    cfg = parse(
        yaml.safe_load(write_config(tmp_path, panel, tuner={"lineup_warn": 2}).read_text()), base_dir=tmp_path
    )
    store = Store(tmp_path / "relay.db")
    store.sync_config(cfg)
    store.close()
    report = run_sync(cfg, tmp_path / "relay.db")
    assert report.mapping.lineup == 5
    warning = lineup_warning(cfg, report)
    assert warning is not None and "more than tuner.lineup_warn (2)" in warning
    assert (
        lineup_warning(
            cfg.model_copy(update={"tuner": cfg.tuner.model_copy(update={"lineup_warn": 0})}), report
        )
        is None
    )


def test_channels_search_finds_provider_streams_by_name_and_group(tmp_path: Path, panel: FakeXtream) -> None:
    config = write_config(tmp_path, panel)
    relay(config, "sync")
    out = relay(config, "channels", "--search", "bbc one").stdout.splitlines()
    assert out[0].split() == ["STREAM", "QUALITY", "NAME", "GROUP", "EPG", "ID", "ON", "CHANNEL"]
    rows = {line.split()[0]: line for line in out[1:-1]}
    assert set(rows) == {"main/1", "main/6"}
    assert "bbcone.uk" in rows["main/1"] and rows["main/1"].split()[1] == "HD"
    assert out[-1].startswith("2 stream(s)")
    fr = relay(config, "channels", "--search", "", "--group", "fr").stdout.splitlines()
    assert [line.split()[0] for line in fr[1:-1]] == ["main/5"]
    none = relay(config, "channels", "--search", "bbc", "--group", "re:^adult").stdout.splitlines()
    assert none[-1].startswith("0 stream(s)")


def test_map_refuses_a_stream_the_account_does_not_have(tmp_path: Path, panel: FakeXtream) -> None:
    config = write_config(tmp_path, panel)
    relay(config, "sync")
    bad = relay(config, "map", "bbcone.uk", "main/77")
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.strip().splitlines() == [
        "relay: unknown stream main/77: not among main's streams"
        " (relay sync imports them; relay channels --search TEXT finds one)"
    ]
    assert "main/77" not in relay(config, "channels").stdout
    ok = relay(config, "map", "bbcone.uk", "main/6", "--priority", "0")
    assert ok.returncode == 0 and ok.stdout.startswith("bbcone.uk: main/6 at priority 0")
