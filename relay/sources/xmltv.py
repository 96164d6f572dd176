"""XMLTV as the DTD (xmltv.dtd, as Debian's xmltv packages ship it) allows it: the relay's channel
elements, provider programmes brought into the DTD's shape, and placeholder programmes.

Owns: `channel_xml` (display-names for the number and the name, then an icon; no `<lcn>`, which the
DTD does not allow: Plex reads the number from the first display-name), `conform_programme`
(children in the DTD's order, elements and attributes it does not know dropped, a programme without
a title dropped), and `dummy_programmes` (fixed blocks titled with the channel name, for a channel
the sources have nothing for, so Plex does not hide it). Pure: strings and elements in and out.

Must never: write an element or attribute the DTD refuses, or drop a provider programme that has a
title and a start.
"""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator

from relay.config import ChannelConfig
from relay.tuner.hdhomerun import guide_id, xml_attr, xml_text

# <!ELEMENT programme (...)>: the children in the order the DTD requires.
PROGRAMME_ORDER = (
    "title", "sub-title", "desc", "credits", "date", "category", "keyword", "language", "orig-language",
    "length", "icon", "url", "country", "episode-num", "video", "audio", "previously-shown", "premiere",
    "last-chance", "new", "subtitles", "rating", "star-rating", "review", "image",
)  # fmt: skip
_RANK = frozenset(PROGRAMME_ORDER)
_ONCE = frozenset(
    {"credits", "date", "language", "orig-language", "length", "video", "audio", "previously-shown",
     "premiere", "last-chance", "new"}
)  # fmt: skip
CREDITS_ORDER = (
    "director", "actor", "writer", "adapter", "producer", "composer", "editor", "presenter", "commentator",
    "guest",
)  # fmt: skip
_PROGRAMME_ATTRS = frozenset({"start", "stop", "pdc-start", "vps-start", "showview", "videoplus", "channel",
                              "clumpidx"})  # fmt: skip
_LANG = frozenset({"lang"})
# Attributes per child (absent: none allowed), and enumerated values the DTD fixes.
_CHILD_ATTRS: dict[str, frozenset[str]] = {
    **{t: _LANG for t in ("title", "sub-title", "desc", "category", "keyword", "language", "orig-language",
                          "country", "premiere", "last-chance")},
    "length": frozenset({"units"}),
    "icon": frozenset({"src", "width", "height"}),
    "url": frozenset({"system"}),
    "episode-num": frozenset({"system"}),
    "previously-shown": frozenset({"start", "channel"}),
    "subtitles": frozenset({"type"}),
    "rating": frozenset({"system"}),
    "star-rating": frozenset({"system"}),
    "review": frozenset({"type", "source", "reviewer", "lang"}),
    "image": frozenset({"type", "size", "orient", "system"}),
}  # fmt: skip
_ENUMS: dict[tuple[str, str], frozenset[str]] = {
    ("length", "units"): frozenset({"seconds", "minutes", "hours"}),
    ("review", "type"): frozenset({"text", "url"}),
    ("subtitles", "type"): frozenset({"teletext", "onscreen", "deaf-signed"}),
    ("image", "type"): frozenset({"poster", "backdrop", "still", "person", "character"}),
    ("image", "size"): frozenset({"1", "2", "3"}),
    ("image", "orient"): frozenset({"P", "L"}),
    ("actor", "guest"): frozenset({"no", "yes"}),
}
_REQUIRED: dict[str, str] = {"length": "units", "icon": "src", "review": "type"}
_EMPTY = frozenset({"icon", "previously-shown", "new"})
_TEXT_ONLY = frozenset(
    {"title", "sub-title", "desc", "date", "category", "keyword", "language", "orig-language", "length",
     "url", "country", "episode-num", "premiere", "last-chance", "review", "image"}
)  # fmt: skip
_PERSON_CHILDREN = frozenset({"image", "url"})


def channel_xml(ch: ChannelConfig, icon: str | None) -> str:
    """One `<channel>`: the number first (what Plex shows as the channel number), then the name."""
    lines = [
        f"  <channel id={xml_attr(guide_id(ch))}>",
        f"    <display-name>{xml_text(ch.number)}</display-name>",
        f"    <display-name>{xml_text(ch.name)}</display-name>",
    ]
    if icon:
        lines.append(f"    <icon src={xml_attr(icon)} />")
    lines.append("  </channel>")
    return "\n".join(lines) + "\n"


def _keep_attrs(elem: ET.Element, allowed: frozenset[str]) -> None:
    for name in list(elem.attrib):
        values = _ENUMS.get((elem.tag, name))
        if name not in allowed or (values is not None and elem.attrib[name] not in values):
            del elem.attrib[name]


def _text_only(elem: ET.Element) -> None:
    """Character data only: nested elements are dropped, their text kept."""
    if len(elem):
        elem.text = "".join(elem.itertext())
        for child in list(elem):
            elem.remove(child)


def _ordered(
    elem: ET.Element, order: tuple[str, ...], once: frozenset[str] = frozenset()
) -> list[ET.Element]:
    rank = {tag: i for i, tag in enumerate(order)}
    seen: set[str] = set()
    kept = []
    for child in sorted((c for c in elem if c.tag in rank), key=lambda c: rank[c.tag]):  # stable
        if child.tag in once and child.tag in seen:
            continue
        seen.add(child.tag)
        kept.append(child)
    return kept


def _replace_children(elem: ET.Element, children: list[ET.Element]) -> None:
    for child in list(elem):
        elem.remove(child)
    for child in children:
        child.tail = None
        elem.append(child)


def _conform_child(child: ET.Element) -> bool:
    """Bring one programme child into the DTD's shape; False: drop it."""
    tag = child.tag
    _keep_attrs(child, _CHILD_ATTRS.get(tag, frozenset()))
    required = _REQUIRED.get(tag)
    if required is not None and not child.get(required):
        return False
    if tag in _EMPTY:
        _replace_children(child, [])
        child.text = None
    elif tag in _TEXT_ONLY:
        _text_only(child)
    elif tag == "credits":
        people = _ordered(child, CREDITS_ORDER)
        for person in people:
            _keep_attrs(person, frozenset({"role", "guest"}) if person.tag == "actor" else frozenset())
            for sub in [s for s in person if s.tag not in _PERSON_CHILDREN]:
                person.remove(sub)
            for sub in person:
                _keep_attrs(sub, _CHILD_ATTRS.get(sub.tag, frozenset()))
                _text_only(sub)
        _replace_children(child, people)
        child.text = None
    elif tag in ("video", "audio"):
        order = ("present", "colour", "aspect", "quality") if tag == "video" else ("present", "stereo")
        parts = _ordered(child, order, frozenset(order))
        for part in parts:
            part.attrib.clear()
            _text_only(part)
        _replace_children(child, parts)
        child.text = None
    elif tag == "subtitles":
        langs = _ordered(child, ("language",), frozenset({"language"}))
        for lang in langs:
            _keep_attrs(lang, _LANG)
            _text_only(lang)
        _replace_children(child, langs)
        child.text = None
    elif tag in ("rating", "star-rating"):
        values = [c for c in child if c.tag == "value"][:1]
        if not values:
            return False
        icons = [c for c in child if c.tag == "icon" and c.get("src")]
        for sub in (*values, *icons):
            _keep_attrs(sub, _CHILD_ATTRS.get(sub.tag, frozenset()))
            _text_only(sub)
        _replace_children(child, [*values, *icons])
        child.text = None
    return True


def conform_programme(elem: ET.Element) -> bool:
    """Make a source's `<programme>` valid under the DTD, in place; False when it cannot be (no title)."""
    _keep_attrs(elem, _PROGRAMME_ATTRS)
    for child in [c for c in elem if c.tag not in _RANK or not _conform_child(c)]:
        elem.remove(child)  # unknown, or beyond repair (a length without units...): the rest stays
    children = _ordered(elem, PROGRAMME_ORDER, _ONCE)
    if not children or children[0].tag != "title":
        return False
    _replace_children(elem, children)
    elem.text = None
    return True


def _stamp(t: float) -> str:
    return time.strftime("%Y%m%d%H%M%S +0000", time.gmtime(t))


def dummy_programmes(ch: ChannelConfig, now: float, block_h: float, days: float) -> Iterator[str]:
    """Back-to-back programmes titled with the channel's name, from the block `now` falls in (UTC
    block boundaries, so two builds write the same blocks) for `days`."""
    block = max(int(block_h * 3600), 60)
    first = int(now) // block * block
    count = max(1, round(days * 86400 / block))
    channel = xml_attr(guide_id(ch))
    title = xml_text(ch.name)
    for i in range(count):
        start = first + i * block
        yield (
            f"  <programme start={xml_attr(_stamp(start))} stop={xml_attr(_stamp(start + block))}"
            f" channel={channel}><title>{title}</title></programme>\n"
        )
