"""Pure parts of the cluster: its config keys, the relay's name, the failover machine's handling of
a lease refusal, and the single-relay ledger."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from relay.cluster import routing
from relay.cluster.ledger import ACCOUNT, Lease, LocalLedger
from relay.cluster.setup import make_ledger, relay_id
from relay.config import ConfigError, FailoverConfig, parse
from relay.core.failover import Candidate, FailoverMachine, HealthMemory, Open, Reason, Slots, Switch


def test_cluster_keys_have_defaults_and_clear_errors() -> None:
    cfg = parse({})
    assert cfg.cluster.redis_url is None and cfg.cluster.lease_ttl_s == 10.0
    cfg = parse({"cluster": {"redis_url": "redis://:pw@10.0.0.5:6379/0", "relay_id": "r1:5004"}})
    assert cfg.cluster.relay_id == "r1:5004"
    with pytest.raises(ConfigError, match=r"cluster.redis_url: must be a redis://"):
        parse({"cluster": {"redis_url": "http://x"}})
    with pytest.raises(ConfigError, match=r"cluster.lease_ttl_s"):
        parse({"cluster": {"lease_ttl_s": 60}})  # a dead relay would hold its slots a minute
    with pytest.raises(ConfigError, match=r"cluster.relay_id"):
        parse({"cluster": {"relay_id": "has space"}})
    with pytest.raises(ConfigError, match=r"cluster.redis_ulr: unknown key"):
        parse({"cluster": {"redis_ulr": "redis://x"}})


def test_relay_id_is_the_configured_one_else_hostname_and_port() -> None:
    assert relay_id(parse({"cluster": {"relay_id": "edge-1"}}), 5004) == "edge-1"
    derived = relay_id(parse({}), 5005)
    assert derived.endswith(":5005") and len(derived) > len(":5005")


def test_without_a_redis_url_the_ledger_is_local_and_grants_at_once() -> None:
    slots = Slots({"a": 1})
    ledger = make_ledger(parse({}), slots, "", lambda *a: None)
    assert isinstance(ledger, LocalLedger) and not ledger.clustered and ledger.slots is slots
    got = asyncio.run(ledger.acquire(ACCOUNT, "a", 1, "ch/a/1", lambda _: None))
    assert isinstance(got, Lease)


@pytest.mark.parametrize("reason", [Reason.ACCOUNT_FULL, Reason.LEDGER_UNAVAILABLE])
def test_a_refused_lease_moves_the_machine_on_without_marking_the_stream_unhealthy(reason: Reason) -> None:
    health = HealthMemory()
    cands = [Candidate("a", 1, 0, 0), Candidate("b", 2, 1, 1)]
    m = FailoverMachine("ch", cands, FailoverConfig(), health, Slots({"a": 1, "b": 1}))
    first = [x for x in m.start(0.0) if isinstance(x, Open)]
    assert [o.candidate.ref for o in first] == ["a/1"]
    out = m.failed(first[0].attempt, reason, 0.001)
    opened = [x for x in out if isinstance(x, Open)]
    assert [o.candidate.ref for o in opened] == ["b/2"]  # at once, as for a full account
    assert not health.recently_failed("a/1", 0.002, 30.0)  # the stream did nothing wrong
    assert m.slots.held == {"a": 0, "b": 1}
    m.head(opened[0].attempt, 0.01)
    assert any(isinstance(x, Switch) for x in m.packets(opened[0].attempt, 0.02))


def test_a_stream_that_failed_is_still_cooled_down() -> None:
    health = HealthMemory()
    m = FailoverMachine("ch", [Candidate("a", 1, 0, 0)], FailoverConfig(), health, Slots({"a": 1}))
    first = next(x for x in m.start(0.0) if isinstance(x, Open))
    m.failed(first.attempt, Reason.CONNECTION_ERROR, 0.1)
    assert health.recently_failed("a/1", 0.2, 30.0)


def test_the_default_relay_id_does_not_need_a_config_folder(tmp_path: Path) -> None:
    cfg = parse({"cluster": {"redis_url": "redis://127.0.0.1:1/0"}}, base_dir=tmp_path)
    assert relay_id(cfg, 1).endswith(":1")


def test_both_urls_of_a_channel_give_the_same_key_and_ids_are_quoted() -> None:
    cfg = parse(
        {
            "channels": [
                {"id": "bbcone.uk", "name": "BBC", "number": "101"},
                {"id": "c+h", "name": "X", "number": "5.1"},
            ]
        }
    )
    m = dict(routing.channel_map(cfg.channels))
    assert m["/auto/v101"] == m["/stream/bbcone.uk"] == "bbcone.uk"
    assert m["/auto/v5.1"] == m["/stream/c%2Bh"] == m["/stream/c+h"] == "c%2Bh"
    assert all(" " not in k and " " not in v for k, v in m.items())  # HAProxy map lines: "key value"


def test_backend_specs_parse_or_fail_clearly() -> None:
    assert routing.Backend.parse("10.0.0.11:5004", 0) == routing.Backend("r1", "10.0.0.11", 5004)
    assert routing.Backend.parse("edge=[::1]:5005", 1).address == "[::1]:5005"
    with pytest.raises(ValueError, match="HOST:PORT"):
        routing.Backend.parse("10.0.0.11", 0)


def test_the_documented_front_configs_are_what_the_generator_writes() -> None:
    docs = Path(__file__).resolve().parents[2] / "docs" / "cluster"
    cfg = parse(
        {
            "accounts": [{"name": "a", "url": "http://p", "username": "u", "password": "p"}],
            "channels": [
                {
                    "id": "bbcone.uk",
                    "name": "BBC One",
                    "number": "101",
                    "streams": [{"account": "a", "stream_id": 1}],
                },
                {"id": "arte.fr", "name": "ARTE", "number": "102"},
            ],
        }
    )
    b = [routing.Backend("edge-1", "10.0.0.11", 5004), routing.Backend("edge-2", "10.0.0.12", 5004)]
    assert (docs / "haproxy.cfg").read_text() == routing.haproxy_config(
        b, "*:5004", "/etc/haproxy/channels.map"
    )
    assert (docs / "channels.map").read_text() == routing.haproxy_map(cfg.channels)
    nginx = routing.nginx_config(b, "5004", "/etc/nginx/relay/channels.nginx.map")
    assert (docs / "relay-front.nginx.conf").read_text() == nginx
    assert (docs / "channels.nginx.map").read_text() == routing.nginx_map(cfg.channels)
    text = routing.haproxy_config(b, "*:5004", "/m")
    assert "balance hdr(X-Relay-Channel)" in text and "hash-type consistent" in text
    assert "option httpchk GET /health" in text
    assert "option http-no-delay" in text  # else each zap waits for a delayed ACK (bench/README.md)


def test_only_a_trusted_front_names_the_viewer() -> None:
    from relay.cluster.setup import forwarded_client

    cfg = parse({"cluster": {"trusted_fronts": ["10.0.0.5"]}})
    xff = {"x-forwarded-for": "203.0.113.9, 192.168.1.20"}
    assert forwarded_client(cfg, "10.0.0.5", xff) == "192.168.1.20"  # what the front itself appended
    assert forwarded_client(cfg, "10.0.0.6", xff) == "10.0.0.6"  # anyone else: its own address
    assert forwarded_client(cfg, "10.0.0.5", {"x-forwarded-for": "bogus"}) == "10.0.0.5"
    assert forwarded_client(cfg, "10.0.0.5", {}) == "10.0.0.5"
