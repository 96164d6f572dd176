"""Which URL and kind a candidate plays (relay/sources/streams.py), and the config keys behind it."""

from __future__ import annotations

import pytest

from relay.config import ConfigError, parse
from relay.core.failover import Candidate
from relay.sources.streams import Directory, target_for, template, url_stream_id

ACC = {"name": "a", "url": "http://panel:8080", "username": "alice", "password": "s3cret"}


def cfg(**acc):
    return parse({"accounts": [{**ACC, **acc}]})


def cand(account: str = "a", sid: int = 7) -> Candidate:
    return Candidate(account, sid, 0, 0)


def test_xtream_output_ts_m3u8_and_auto_by_the_panels_formats():
    assert target_for(cfg(), cand(), Directory()).url == "http://panel:8080/live/alice/s3cret/7.ts"
    t = target_for(cfg(output="m3u8"), cand(), Directory())
    assert (t.kind, t.url) == ("hls", "http://panel:8080/live/alice/s3cret/7.m3u8")
    only_hls = Directory(formats={"a": ("m3u8",)})
    assert target_for(cfg(), cand(), only_hls).kind == "hls"  # auto: the panel allows no ts
    assert target_for(cfg(), cand(), Directory(formats={"a": ("m3u8", "ts")})).kind == "ts"
    assert target_for(cfg(output="ts"), cand(), only_hls).kind == "ts"  # the config wins
    assert "s3cret" not in repr(t)


def test_a_stored_url_plays_at_exactly_that_url_with_the_credentials_filled():
    tmpl = template("http://other:81/live/alice/s3cret/7.ts?x=1", "alice", "s3cret")
    t = target_for(cfg(), cand(), Directory(urls={("a", 7): tmpl}))
    assert (t.kind, t.url) == ("auto", "http://other:81/live/alice/s3cret/7.ts?x=1")
    sid = url_stream_id("http://cdn/x.m3u8")
    t = target_for(
        parse(
            {"channels": [{"id": "c", "name": "C", "number": "1", "streams": [{"url": "http://cdn/x.m3u8"}]}]}
        ),
        Candidate("direct", sid, 0, 0),
        Directory(urls={("direct", sid): "http://cdn/x.m3u8"}),
    )
    assert (t.kind, t.url) == ("auto", "http://cdn/x.m3u8")


@pytest.mark.parametrize(
    ("stream", "error"),
    [
        ({"account": "a"}, "either stream_id"),
        ({"account": "a", "stream_id": 1, "url": "http://x/y"}, "either stream_id"),
        ({"stream_id": 1}, "needs an account"),
        ({"url": "rtmp://x/y"}, "http:// or https://"),
        ({"url": "http://x/y", "account": "nope"}, "unknown account"),
    ],
)
def test_a_stream_is_an_xtream_id_or_a_url(stream, error):
    with pytest.raises(ConfigError, match=error):
        parse({"accounts": [ACC], "channels": [{"id": "c", "name": "C", "number": "1", "streams": [stream]}]})


def test_direct_is_reserved_when_url_streams_have_no_account():
    data = {
        "accounts": [{**ACC, "name": "direct"}],
        "channels": [{"id": "c", "name": "C", "number": "1", "streams": [{"url": "http://x/y.m3u8"}]}],
    }
    with pytest.raises(ConfigError, match="direct"):
        parse(data)
