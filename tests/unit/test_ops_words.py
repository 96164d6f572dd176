"""Notifications in words and the operators' metrics, without sockets."""

from __future__ import annotations

from relay.config import parse
from relay.shell.metrics import Metrics
from relay.sources.sync import AccountResult, GuideResult, SyncReport
from relay.storage.notify import expiry_words, in_words

NAMES = {"bbcone.uk": "BBC One"}


def test_a_failover_in_words_names_the_channel_accounts_reason_and_time():
    e = {"event": "failover", "level": "warn", "channel": "bbcone.uk", "from_stream": "main/12",
         "to_stream": "backup/7", "reason": "StreamStall", "switch_ms": 117.4}  # fmt: skip
    assert in_words(e, NAMES) == "BBC One: main → backup, StreamStall, 117 ms"
    same = {**e, "to_stream": "main/13"}  # one account: the streams tell them apart
    assert in_words(same, NAMES) == "BBC One: main/12 → main/13, StreamStall, 117 ms"
    assert in_words({**e, "channel": "x"}, NAMES).startswith("x: ")


def test_other_events_in_words_and_info_is_never_sent():
    ex = {"event": "exhausted", "level": "error", "channel": "bbcone.uk", "reason": "HttpError",
          "attempted": ["a/1", "b/2"]}  # fmt: skip
    assert in_words(ex, NAMES) == "BBC One: every stream failed (HttpError); tried 2, viewers cut off"
    acc = {"event": "account_inactive", "level": "warn", "account": "main", "reason": "expired"}
    assert in_words(acc, NAMES) == "account main is expired: not used until a sync finds it usable"
    assert in_words({"event": "session_start", "level": "info", "message": "m"}, NAMES) is None
    assert (
        in_words({"event": "client_dropped", "level": "warn", "message": "c: dropped"}, NAMES) == "c: dropped"
    )


def test_expiry_in_words():
    day = 86400
    assert expiry_words("main", 1000 + 3 * day + 5, 1000) == "account main expires in 3 days"
    assert expiry_words("main", 1000 + day + 5, 1000) == "account main expires tomorrow"
    assert expiry_words("main", 1000 + 60, 1000) == "account main expires today"


def test_notify_takes_a_webhook_or_an_apprise_url():
    cfg = parse({"notify": [{"url": "http://hook/x"}, {"apprise": "ntfy://topic", "expiry_days": 3}]})
    assert (cfg.notify[0].url, cfg.notify[1].apprise, cfg.notify[1].expiry_days) == (
        "http://hook/x", "ntfy://topic", 3,
    )  # fmt: skip
    for bad in ({}, {"url": "http://a", "apprise": "ntfy://t"}):
        try:
            parse({"notify": [bad]})
        except Exception as e:
            assert "exactly one of url or apprise" in str(e)
        else:
            raise AssertionError(bad)


def samples(m: Metrics) -> dict[str, float]:
    out = {}
    for line in m.exposition().decode().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def test_exposition_has_the_process_collector_and_no_created_samples():
    m = Metrics(lambda now: [], lambda: None)
    m.on_event({"event": "failover", "reason": "StreamStall", "switch_ms": 5, "channel": "c"})
    s = samples(m)
    assert "process_cpu_seconds_total" in s and "process_resident_memory_bytes" in s
    assert not [k for k in s if "_created" in k]
    assert s['relay_failovers_total{phase="stream",reason="StreamStall"}'] == 1


def test_a_tune_failover_counts_with_phase_tune_and_no_switch_time():
    m = Metrics(lambda now: [], lambda: None)
    m.on_event({"event": "tune_failover", "reason": "HttpError", "channel": "c", "ttfb_ms": 40.0})
    m.on_event({"event": "failover", "reason": "HttpError", "channel": "c", "switch_ms": 5})
    s = samples(m)
    assert s['relay_failovers_total{phase="tune",reason="HttpError"}'] == 1
    assert s['relay_failovers_total{phase="stream",reason="HttpError"}'] == 1
    assert s["relay_switch_seconds_count"] == 1 and m.recovered == 2


def test_account_gauges():
    accounts = [
        {"name": "main", "is_active": 1, "max_connections": 2, "exp_date": 1000 + 3 * 86400},
        {"name": "old", "is_active": 0, "max_connections": 1, "exp_date": None},
    ]
    m = Metrics(lambda now: [], lambda: None, accounts=lambda: accounts, wall_clock=lambda: 1000.0)
    s = samples(m)
    assert s['relay_account_active{account="main"}'] == 1 and s['relay_account_active{account="old"}'] == 0
    assert s['relay_account_connections_max{account="main"}'] == 2
    assert s['relay_account_connections_active{account="main"}'] == 0
    assert s['relay_account_expiry_seconds{account="main"}'] == 3 * 86400
    assert 'relay_account_expiry_seconds{account="old"}' not in s


def test_the_channel_label_is_off_by_default_and_bounded_when_on():
    cfg = parse({"metrics": {"channel_label": True, "channel_label_max": 2}})
    m = Metrics(lambda now: [], lambda: None, options=cfg.metrics)
    for ch in ("a", "b", "c", "d", "a"):
        m.on_event({"event": "failover", "reason": "StreamStall", "channel": ch})
    s = samples(m)
    assert s['relay_failovers_total{channel="a",phase="stream",reason="StreamStall"}'] == 2
    assert s['relay_failovers_total{channel="other",phase="stream",reason="StreamStall"}'] == 2  # c and d
    assert len([k for k in s if k.startswith("relay_failovers_total")]) == 3
    assert parse({}).metrics.channel_label is False


def test_sync_metrics():
    m = Metrics(lambda now: [], lambda: None, wall_clock=lambda: 5000.0)
    rep = SyncReport(
        accounts=[AccountResult("a", "ok"), AccountResult("b", "down")], guide=GuideResult(), seconds=2.5
    )
    m.synced(rep)
    s = samples(m)
    assert s["relay_sync_duration_seconds"] == 2.5 and s["relay_sync_last_timestamp_seconds"] == 5000
    assert s['relay_syncs_total{result="degraded"}'] == 1
    assert s['relay_sync_accounts{state="ok"}'] == 1 and s['relay_sync_accounts{state="down"}'] == 1


def test_every_metric_the_grafana_dashboard_reads_is_exported():
    import json
    import re
    from pathlib import Path

    dash = json.loads((Path(__file__).resolve().parents[2] / "docs" / "grafana-relay.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    used = {n for e in exprs for n in re.findall(r"\b((?:relay|process)_[a-z_]+)", e)}
    cfg = parse({"metrics": {"channel_label": True}})
    accounts = [{"name": "a", "is_active": 1, "max_connections": 1, "exp_date": 10**10}]
    m = Metrics(lambda now: [], lambda: None, accounts=lambda: accounts, options=cfg.metrics)
    m.synced(SyncReport(accounts=[AccountResult("a", "ok")]))
    m.on_event({"event": "failover", "reason": "StreamStall", "switch_ms": 5, "channel": "c"})
    exported = {k.split("{")[0] for k in samples(m)}
    missing = {n for n in used if n not in exported and n.removesuffix("_bucket") not in exported}
    assert not missing, missing
