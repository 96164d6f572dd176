"""DTD-shaped XMLTV: provider programmes conformed to the DTD, placeholder programmes, channel elements."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from relay.config import ChannelConfig
from relay.sources.xmltv import channel_xml, conform_programme, dummy_programmes

CH = ChannelConfig(id="news.uk", name="News & Co", number="101")


def conformed(xml: str) -> ET.Element | None:
    elem = ET.fromstring(xml)
    return elem if conform_programme(elem) else None


def test_children_are_put_in_dtd_order_and_unknown_ones_dropped() -> None:
    p = conformed(
        '<programme start="1" channel="c" foo="x"><category>N</category><lcn>3</lcn><title>T</title>'
        '<date>2024</date><desc>D <b>bold</b></desc><title lang="fr" bad="1">T2</title><new>x</new>'
        "<length>30</length><length units='minutes'>30</length><review>r</review></programme>"
    )
    assert p is not None
    assert [c.tag for c in p] == ["title", "title", "desc", "date", "category", "length", "new"]
    assert p.attrib == {"start": "1", "channel": "c"}
    assert p[1].attrib == {"lang": "fr"} and p[2].text == "D bold" and p[6].text is None
    assert p[5].get("units") == "minutes"  # the one without units (required) is dropped


def test_nested_content_and_repeats_are_conformed() -> None:
    p = conformed(
        "<programme start='1' channel='c'><title>T</title><credits><actor role='x' guest='maybe'>A</actor>"
        "<director>D<img/></director></credits><credits><writer>W</writer></credits>"
        "<rating><icon src='i'/></rating><star-rating><icon src='i'/><value>3/5</value></star-rating>"
        "<video><quality>HD</quality><present>yes</present><x/></video></programme>"
    )
    assert p is not None
    assert [c.tag for c in p] == ["title", "credits", "video", "star-rating"]  # rating without value: gone
    assert [c.tag for c in p[1]] == ["director", "actor"] and p[1][1].attrib == {"role": "x"}
    assert [c.tag for c in p[2]] == ["present", "quality"]
    assert [c.tag for c in p[3]] == ["value", "icon"]


def test_a_programme_without_a_title_is_refused() -> None:
    assert conformed("<programme start='1' channel='c'><desc>D</desc></programme>") is None


def test_dummy_programmes_are_aligned_blocks_titled_with_the_channel_name() -> None:
    now = 1_704_110_400 + 1800  # 2024-01-01 12:30 UTC
    progs = [ET.fromstring(x) for x in dummy_programmes(CH, now, 2.0, 1.0)]
    assert len(progs) == 12
    assert progs[0].get("start") == "20240101120000 +0000" and progs[0].get("stop") == "20240101140000 +0000"
    assert progs[-1].get("stop") == "20240102120000 +0000"
    assert {p.findtext("title") for p in progs} == {"News & Co"} and {p.get("channel") for p in progs} == {
        "101.relay"
    }


def test_channel_xml_has_the_number_first_and_no_lcn() -> None:
    el = ET.fromstring(channel_xml(CH, "http://img/n.png"))
    assert [c.tag for c in el] == ["display-name", "display-name", "icon"]
    assert [d.text for d in el.findall("display-name")] == ["101", "News & Co"]
