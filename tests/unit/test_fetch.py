"""relay/sources/fetch.py without a network: redaction, secrets, scrubbing, error texts, the reader."""

from __future__ import annotations

import gzip
import io
import threading
import urllib.error
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.sources.fetch import (
    Cancelled,
    FetchError,
    Source,
    SourceTooLarge,
    describe,
    fetch_source,
    open_stream,
    redact_url,
    scrub,
    url_secrets,
)

# Credentials as panels hand them out: letters, digits and the punctuation that needs quoting in a URL.
CRED = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789@%+&=#?:;!$ .-_~", min_size=2
)


# ---------------------------------------------------------------------------------------------
# redact_url


def test_query_credentials_are_redacted_and_the_rest_kept() -> None:
    url = "http://iptv.example:8080/player_api.php?username=alice&password=s3cret&action=get_live_streams"
    assert (
        redact_url(url)
        == "http://iptv.example:8080/player_api.php?username=***&password=***&action=get_live_streams"
    )


@pytest.mark.parametrize(
    "key",
    ["user", "USERNAME", "pass", "Password", "pwd", "token", "key", "api_key", "apikey", "auth", "secret"],
)
def test_every_credential_like_query_key_is_redacted(key: str) -> None:
    red = redact_url(f"https://p.example/xmltv.php?{key}=hunter22&days=2")
    assert "hunter22" not in red and f"{key}=***" in red and "days=2" in red


def test_quoted_query_credentials_are_redacted_in_every_spelling() -> None:
    red = redact_url("http://p.example/get.php?username=al%40ice&password=p+ss%2Bw&type=m3u_plus")
    for leaked in ("al%40ice", "al@ice", "p+ss", "p ss", "%2Bw", "+w"):
        assert leaked not in red
    assert red == "http://p.example/get.php?username=***&password=***&type=m3u_plus"


def test_user_info_is_redacted() -> None:
    assert (
        redact_url("http://me:secret@iptv.example:8080/xmltv.php") == "http://***@iptv.example:8080/xmltv.php"
    )
    assert redact_url("http://token@iptv.example/x") == "http://***@iptv.example/x"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://p.example/live/alice/s3cret/1234.ts", "http://p.example/live/***/***/1234.ts"),
        ("http://p.example/live/alice/s3cret/1234.m3u8", "http://p.example/live/***/***/1234.m3u8"),
        ("https://p.example:8443/live/a%40b/p%2Fw/7", "https://p.example:8443/live/***/***/7"),
        ("http://p.example/live/1234.ts", "http://p.example/live/1234.ts"),  # no credentials in it
        ("http://p.example/movie/alice/s3cret/1.mkv", "http://p.example/movie/alice/s3cret/1.mkv"),
    ],
)
def test_xtream_live_path_credentials_are_redacted(url: str, expected: str) -> None:
    assert redact_url(url) == expected


@given(user=CRED, password=CRED)
def test_a_redacted_stream_or_api_url_does_not_depend_on_the_credentials(user: str, password: str) -> None:
    """Whatever the credentials, the redacted URL is the one of any other credentials: nothing of
    them (raw, quoted, or a length) survives."""
    from urllib.parse import quote, urlencode

    def live(u: str, p: str) -> str:
        return f"http://p.example:8080/live/{quote(u, safe='')}/{quote(p, safe='')}/1234.ts"

    def api(u: str, p: str) -> str:
        return "http://p.example/player_api.php?" + urlencode({"username": u, "password": p, "action": "x"})

    for build in (live, api):
        assert redact_url(build(user, password)) == redact_url(build("someone", "else"))


# ---------------------------------------------------------------------------------------------
# url_secrets and scrub


def test_url_secrets_lists_query_credentials_and_user_info() -> None:
    assert url_secrets("http://me:pw@p.example/x?token=t0k&days=2&password=p%40ss") == (
        "t0k",
        "p@ss",
        "me",
        "pw",
    )
    assert url_secrets("http://p.example/xmltv.php?days=2") == ()


def test_scrub_replaces_raw_and_url_quoted_forms() -> None:
    text = "GET /a?password=p%40ss+w0rd and p%40ss%20w0rd and p@ss w0rd"
    assert scrub(text, ["p@ss w0rd"]) == "GET /a?password=*** and *** and ***"


def test_scrub_replaces_the_longest_secret_first_and_ignores_one_character_ones() -> None:
    assert scrub("alice alicebob b", ["alice", "alicebob", "b"]) == "*** *** b"


@given(
    secret=CRED,
    before=st.text(alphabet="xyz /:?=", max_size=8),
    after=st.text(alphabet="xyz /:?=", max_size=8),
)
def test_scrubbed_text_never_contains_the_secret(secret: str, before: str, after: str) -> None:
    from urllib.parse import quote, quote_plus

    text = f"{before}{secret}|{quote(secret, safe='')}|{quote_plus(secret)}{after}"
    out = scrub(text, [secret])
    assert secret not in out and quote(secret, safe="") not in out and quote_plus(secret) not in out


def test_source_scrub_and_repr_keep_secrets_out() -> None:
    src = Source(
        label="account p (http://p.example/xmltv.php?username=***&password=***)", secrets=("alice", "s3cret")
    )
    assert "s3cret" not in repr(src) and "alice" not in repr(src)
    assert src.scrub("alice: 401 for s3cret") == "***: 401 for ***"


# ---------------------------------------------------------------------------------------------
# describe: one line per failed source, no secret once scrubbed


def test_describe_words_each_kind_of_failure() -> None:
    assert (
        describe(SourceTooLarge("source larger than the size limit")) == "source larger than the size limit"
    )
    assert describe(FetchError("x")) == "x"
    assert describe(ConnectionRefusedError(111, "Connection refused")) == (
        "ConnectionRefusedError: [Errno 111] Connection refused"
    )
    assert describe(TimeoutError()) == "TimeoutError: TimeoutError"
    try:
        ET.fromstring("<tv><programme></tv>")
    except ET.ParseError as e:
        assert describe(e).startswith("not valid XML (mismatched tag")


def test_a_described_http_error_carries_no_secret_once_scrubbed() -> None:
    url = "http://p.example/xmltv.php?username=alice&password=p%40ss"
    src = Source(label=redact_url(url), url=url, secrets=("alice", "p@ss"))
    errors = [
        urllib.error.HTTPError(url, 403, f"Forbidden for {url}", {}, None),  # type: ignore[arg-type]
        urllib.error.URLError(f"cannot reach {url} as alice with p@ss"),
        OSError(f"reset while reading {url}"),
    ]
    for e in errors:
        line = src.scrub(f"{src.label}: {describe(e)}")
        assert "alice" not in line and "p@ss" not in line and "p%40ss" not in line, line
        assert line.startswith("http://p.example/xmltv.php?username=***&password=***: ")


# ---------------------------------------------------------------------------------------------
# The reader: gunzip, size cap, cancel


def test_plain_and_gzipped_sources_read_the_same() -> None:
    data = b"<tv>" + b"x" * 100_000 + b"</tv>"
    for raw in (data, gzip.compress(data)):
        assert open_stream(io.BytesIO(raw), threading.Event()).read() != b""
        reader = open_stream(io.BytesIO(raw), threading.Event())
        got = b"".join(iter(lambda r=reader: r.read(4096), b""))  # type: ignore[misc]
        assert got == data


@pytest.mark.parametrize("compress", [False, True])
def test_a_source_past_the_cap_raises_source_too_large(compress: bool) -> None:
    data = b"\0" * 10_000  # gzips to a few dozen bytes: the cap applies to what it decompresses to
    raw = gzip.compress(data) if compress else data
    reader = open_stream(io.BytesIO(raw), threading.Event(), limit=5_000)
    with pytest.raises(SourceTooLarge, match="source larger than the size limit"):
        while reader.read(1024):
            pass
    exact = open_stream(io.BytesIO(raw), threading.Event(), limit=10_000)
    assert b"".join(iter(lambda: exact.read(1024), b"")) == data


def test_a_set_cancel_flag_stops_at_the_next_read() -> None:
    cancel = threading.Event()
    reader = open_stream(io.BytesIO(b"a" * 10_000), cancel)
    assert reader.read(100)
    cancel.set()
    with pytest.raises(Cancelled):
        reader.read(100)


def test_fetch_source_reads_files_and_hands_urls_to_the_opener(tmp_path: Path) -> None:
    f = tmp_path / "guide.xml"
    f.write_bytes(b"<tv/>")
    with fetch_source(Source(label=str(f), path=f)) as raw:
        assert raw.read() == b"<tv/>"
    asked: list[tuple[str, str]] = []

    def opener(url: str, user_agent: str) -> io.BytesIO:
        asked.append((url, user_agent))
        return io.BytesIO(b"<tv/>")

    src = Source(label="x", url="http://p.example/x.xml", user_agent="UA/1")
    assert fetch_source(src, opener).read() == b"<tv/>"
    assert asked == [("http://p.example/x.xml", "UA/1")]
