"""Filters from the user's words: duration and licence phrases, what is left for the engine, merging."""

from __future__ import annotations

import pytest

from bot.service.filters import (
    FilterRequest,
    conversation_filters,
    licence_allowed,
    licence_alternatives,
    licence_family,
    parse_filters,
)
from storage.catalog import CatalogFilter

# message -> (min s, max s, licence families, excluded families, text left for the engine)
PHRASES = [
    ("calm piano for a wedding video, under 2 minutes", None, 120.0, (), (), "calm piano for a wedding video"),
    ("more drums but under 90 seconds and CC-BY only", None, 90.0, ("CC-BY",), (), "more drums"),
    ("less than a minute and a half please", None, 90.0, (), (), ""),
    ("shorter than 1:30, no vocals", None, 90.0, (), (), "no vocals"),
    ("make it 2 minutes max", None, 120.0, (), (), "make it"),
    ("at most 45 s", None, 45.0, (), (), ""),
    ("over 3 min", 180.0, None, (), (), ""),
    ("at least two minutes long and happier", 120.0, None, (), (), "happier"),
    ("between 1 and 3 minutes", 60.0, 180.0, (), (), ""),
    ("1-2 minutes long", 60.0, 120.0, (), (), ""),
    ("CC-BY only", None, None, ("CC-BY",), (), ""),
    ("licence: cc by-sa 4.0", None, None, ("CC-BY-SA",), (), ""),
    ("only CC0 or public domain", None, None, ("CC0", "PUBLIC-DOMAIN"), (), ""),
    ("creative commons attribution only", None, None, ("CC-BY",), (), ""),
    ("no GPL, more strings", None, None, (), ("GPL",), "more strings"),
    # no filter: the words stay whole
    ("more upbeat", None, None, (), (), "more upbeat"),
    ("no more drums", None, None, (), (), "no more drums"),
    ("less than 2", None, None, (), (), "less than 2"),
    ("a bit less epic", None, None, (), (), "a bit less epic"),
]


@pytest.mark.parametrize("text,lo,hi,fams,excl,rest", PHRASES)
def test_phrases(text: str, lo, hi, fams, excl, rest: str) -> None:  # noqa: ANN001
    parsed = parse_filters(text)
    f = parsed.filters
    assert (f.min_duration_s, f.max_duration_s) == (lo, hi)
    assert f.licence_families == fams and f.excluded_families == excl
    assert parsed.text == rest


FAMILIES = [
    ("CC-BY-4.0", "CC-BY"), ("CC-BY-SA-3.0", "CC-BY-SA"), ("cc by 4.0", "CC-BY"), ("CC0-1.0", "CC0"),
    ("GPL-3+", "GPL"), ("GPL-2.0-or-later", "GPL"), ("LGPL-2.1", "LGPL"), ("Public Domain", "PUBLIC-DOMAIN"),
    ("see copyright", "SEE-COPYRIGHT"), ("", ""),
]  # fmt: skip


@pytest.mark.parametrize("licence,family", FAMILIES)
def test_licence_family(licence: str, family: str) -> None:
    assert licence_family(licence) == family


def test_dual_licences_and_exclusions() -> None:
    assert licence_alternatives("GPL-2+ or CC-BY-SA-3.0") == ["GPL", "CC-BY-SA"]
    assert licence_allowed("GPL-2+ or CC-BY-SA-3.0", ["CC-BY-SA"], [])
    assert licence_allowed("GPL-2+ or CC-BY-SA-3.0", [], ["GPL"])  # usable under its other licence
    assert not licence_allowed("GPL-3+", [], ["GPL"])
    assert not licence_allowed("CC-BY-SA-3.0", ["CC-BY"], [])  # "CC-BY only" is not share-alike


KNOWN = ["CC-BY-3.0", "CC-BY-4.0", "CC-BY-SA-3.0", "GPL-2+ or CC-BY-SA-3.0", "GPL-3+", ""]


def test_resolved_against_the_catalogs_licences() -> None:
    f = parse_filters("CC-BY only, under 2 minutes").filters.to_catalog_filter(KNOWN)
    assert f == CatalogFilter(max_duration_s=120.0, licences=("CC-BY-3.0", "CC-BY-4.0"))
    no_gpl = parse_filters("no GPL").filters.to_catalog_filter(KNOWN)
    assert no_gpl.licences == ("CC-BY-3.0", "CC-BY-4.0", "CC-BY-SA-3.0", "GPL-2+ or CC-BY-SA-3.0")
    nothing = parse_filters("MIT only").filters.to_catalog_filter(KNOWN)
    assert len(nothing.licences) == 1 and nothing.licences[0] not in KNOWN  # matches no track, never "no filter"
    assert FilterRequest().to_catalog_filter(KNOWN) is None


def test_filters_hold_until_replaced_or_lifted() -> None:
    f = conversation_filters(["calm piano, under 2 minutes", "more drums", "CC-BY only"])
    assert (f.max_duration_s, f.licence_families) == (120.0, ("CC-BY",))
    assert f.describe() == "at most 2:00 long, licence CC-BY"
    f = conversation_filters(["under 2 minutes", "actually under 3 minutes"])
    assert f.max_duration_s == 180.0
    f = conversation_filters(["under 2 minutes, CC-BY only", "any length"])
    assert f.max_duration_s is None and f.licence_families == ("CC-BY",)
    f = conversation_filters(["CC-BY only", "any licence"])
    assert f.is_empty and f.describe() == ""
