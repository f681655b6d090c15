"""Catalog filters from the user's own words: duration ("under 2 minutes") and licence ("CC-BY only").

DESIGN.md, "Data flow" step 3: the catalog search takes payload filters (licence, duration) when
asked. Users ask in words, inside their feedback ("calmer, and under 2 minutes please"), so
`parse_filters` finds those phrases, returns them as a `FilterRequest`, and returns the text
with them cut out: the rest is feedback for the engine ("calmer"), which must not read
"minutes" or "CC" as musical content.

Filters hold for the rest of the conversation; a later phrase replaces an earlier one of the
same kind ("under 3 minutes" after "under 2 minutes"), and "any length" / "any licence" clears
one. `FilterRequest.merge` does that, so the conversation's filters can be re-derived from its
stored turn texts after a restart.

Licences: the catalog stores each track's licence as written by the indexer (SPDX-like strings
from Debian copyright files or a manifest: "GPL-3+", "CC-BY-SA-3.0", "CC0-1.0", or a dual licence
"GPL-2+ or CC-BY-SA-3.0"). Users name a *family* ("CC-BY", "GPL", "public domain"), so a request
is resolved against the licences the catalog actually holds (`FilterRequest.to_catalog_filter`):
a licence string matches a family when one of its alternatives, with the version stripped, is that
family. "CC-BY only" means the attribution-only licence, not CC-BY-SA. An exclusion ("no GPL")
keeps every known licence with at least one alternative outside the family (a dual-licensed
track can be used under its other licence).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from storage.catalog import CatalogFilter

log = logging.getLogger(__name__)

SECONDS_PER_UNIT = {"s": 1.0, "m": 60.0, "h": 3600.0}
NUMBER_WORDS = {
    "a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
    "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "fifteen": 15, "twenty": 20,
    "thirty": 30, "forty": 40, "forty-five": 45, "fifty": 50, "sixty": 60, "ninety": 90,
}  # fmt: skip
NO_LICENCE = "(no licence)"  # how a track without a licence string is named in messages

# --- duration phrases ---------------------------------------------------------------------------
_NUM = r"(?:\d+(?:[.,]\d+)?|" + "|".join(sorted((re.escape(w) for w in NUMBER_WORDS), key=len, reverse=True)) + r")"
_UNIT = r"(?:seconds?|secs?|s|minutes?|mins?|m|hours?|hrs?|h)\b"


def _amount(g: str, *, unit: bool = True) -> str:
    """An amount of time, its groups prefixed by `g`: "2 minutes", "a minute and a half", "1:30".

    `unit=False`: the unit may be left out (the first end of "between 1 and 3 minutes").
    """
    opt = "" if unit else "?"
    return (
        rf"(?:(?P<{g}clock>\d{{1,2}}:\d{{2}})"
        rf"|(?P<{g}num>{_NUM})(?P<{g}half1>\s+and\s+a\s+half)?(?:\s*(?P<{g}unit>{_UNIT})){opt}"
        rf"(?P<{g}half2>\s+and\s+a\s+half)?)"
    )


_AT_MOST = r"(?:under|below|less\s+than|shorter\s+than|at\s+most|max(?:imum)?|no\s+(?:longer|more)\s+than|not\s+(?:longer|more)\s+than|up\s+to|within|<=?)"
_AT_LEAST = r"(?:over|above|more\s+than|longer\s+than|at\s+least|min(?:imum)?|no\s+shorter\s+than|not\s+shorter\s+than|>=?)"
_FILLER = r"(?:\s+(?:long|in\s+length|or\s+(?:less|shorter|more|longer)|tops|max))?"
DURATION_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("between", re.compile(rf"\bbetween\s+{_amount('a', unit=False)}\s+(?:and|to)\s+{_amount('b')}{_FILLER}", re.I)),
    ("between", re.compile(rf"\b(?P<anum>\d+(?:[.,]\d+)?)\s*(?:-|–|to)\s*{_amount('b')}{_FILLER}", re.I)),
    ("max", re.compile(rf"(?:\b|(?=[<>]))(?:(?:that\s+is|which\s+is|is|of|lasting|and)\s+)?{_AT_MOST}\s*{_amount('a')}{_FILLER}", re.I)),
    ("min", re.compile(rf"(?:\b|(?=[<>]))(?:(?:that\s+is|which\s+is|is|of|lasting|and)\s+)?{_AT_LEAST}\s*{_amount('a')}{_FILLER}", re.I)),
    ("max", re.compile(rf"\b{_amount('a')}\s+(?:or\s+(?:less|shorter|under)|max(?:imum)?|tops|at\s+most)\b", re.I)),
    ("min", re.compile(rf"\b{_amount('a')}\s+(?:or\s+(?:more|longer|over)|minimum|at\s+least)\b", re.I)),
)
ANY_LENGTH = re.compile(r"\b(?:any\s+(?:length|duration)|no\s+(?:length|duration)\s+limit)\b", re.I)

# --- licence phrases ------------------------------------------------------------------------------
# spoken family name -> the families it stands for (normalised: upper case, "-" separated, no version)
LICENCE_FAMILIES: dict[str, tuple[str, ...]] = {
    "cc0": ("CC0", "PUBLIC-DOMAIN"),
    "public domain": ("CC0", "PUBLIC-DOMAIN"),
    "cc by": ("CC-BY",),
    "cc by sa": ("CC-BY-SA",),
    "cc by nc": ("CC-BY-NC",),
    "cc by nc sa": ("CC-BY-NC-SA",),
    "cc by nd": ("CC-BY-ND",),
    "cc by nc nd": ("CC-BY-NC-ND",),
    "gpl": ("GPL",),
    "lgpl": ("LGPL",),
    "agpl": ("AGPL",),
    "mit": ("MIT",),
    "ofl": ("OFL",),
    "artistic": ("ARTISTIC",),
}
# "CC-BY", "cc by-sa", "CC BY 4.0", "ccby", "creative commons attribution share-alike"
_CC_PARTS = r"(?:[\s_-]*(?:by|sa|nc|nd))+"
_LICENCE_NAME = (
    r"(?P<name>cc[\s_-]*0|cc(?:[\s_-]*by)(?:[\s_-]*(?:sa|nc|nd))*|public[\s-]+domain|creative\s+commons"
    r"(?:\s+(?:attribution|share[\s-]*alike|non[\s-]*commercial|no[\s-]*deriv(?:ative)?s?))*|[la]?gpl|mit|ofl|artistic)"
    r"(?:[\s_-]*v?\d+(?:\.\d+)*\+?)?"
)
_LICENCE_WORD = r"(?:licen[cs]e[sd]?|licensing)"
LICENCE_EXCLUDE = re.compile(rf"\b(?:no|not|without|except|avoid|exclude|excluding|nothing)\s+(?:under\s+)?(?:an?\s+)?{_LICENCE_NAME}(?:\s+{_LICENCE_WORD})?\b", re.I)
LICENCE_INCLUDE = re.compile(
    rf"(?:\b(?:only|just)\s+)?(?:(?:{_LICENCE_WORD})\s*[:=]?\s*|\b(?:under|with|licensed\s+under)\s+(?:an?\s+)?)?"
    rf"\b{_LICENCE_NAME}(?:\s+(?:or|and|/)\s+(?P<name2>{_LICENCE_NAME.replace('?P<name>', '')}))?"
    rf"(?:\s+{_LICENCE_WORD}s?)?(?:\s+(?:only|please))?\b",
    re.I,
)
ANY_LICENCE = re.compile(rf"\bany\s+{_LICENCE_WORD}\b", re.I)
_VERSION = re.compile(r"(?:[-\s_]*v?\d+(?:\.\d+)*\+?|[-\s_]+(?:only|or[-\s]later))+$", re.I)
_ALTERNATIVES = re.compile(r"\s+or\s+|\s*[/|]\s*", re.I)
# words left dangling once a filter phrase is cut out
_DANGLING = re.compile(r"^(?:[\s,;.!:]|\band\b|\bbut\b|\balso\b|\bplease\b|\bonly\b|\bwith\b|\bthat\b)+|(?:[\s,;:]|\band\b|\bbut\b|\balso\b|\bwith\b|\bthat\s+is\b|\bthat\b)+$", re.I)


@dataclass(frozen=True)
class FilterRequest:
    """Filters as the user asked for them (before they are resolved against the catalog)."""

    min_duration_s: float | None = None
    max_duration_s: float | None = None
    licence_families: tuple[str, ...] = ()  # keep tracks of these families (normalised, no version)
    excluded_families: tuple[str, ...] = ()  # drop tracks of these families
    clear_duration: bool = False  # "any length": forget earlier duration limits
    clear_licence: bool = False  # "any licence": forget earlier licence limits
    phrases: tuple[str, ...] = field(default=(), compare=False)  # the words each filter came from

    @property
    def is_empty(self) -> bool:
        return (
            self.min_duration_s is None
            and self.max_duration_s is None
            and not self.licence_families
            and not self.excluded_families
        )

    def merge(self, later: FilterRequest) -> FilterRequest:
        """This conversation's filters updated by a later message (module docstring)."""
        dur_set = later.min_duration_s is not None or later.max_duration_s is not None
        lic_set = bool(later.licence_families or later.excluded_families)
        out = self
        if later.clear_duration or dur_set:
            out = replace(out, min_duration_s=later.min_duration_s, max_duration_s=later.max_duration_s)
        if later.clear_licence or lic_set:
            out = replace(out, licence_families=later.licence_families, excluded_families=later.excluded_families)
        return replace(out, clear_duration=False, clear_licence=False, phrases=out.phrases + later.phrases)

    def describe(self) -> str:
        """"under 2:00, licence CC-BY" (empty when no filter holds)."""
        parts = []
        lo, hi = self.min_duration_s, self.max_duration_s
        if lo is not None and hi is not None:
            parts.append(f"{format_duration(lo)}–{format_duration(hi)} long")
        elif hi is not None:
            parts.append(f"at most {format_duration(hi)} long")
        elif lo is not None:
            parts.append(f"at least {format_duration(lo)} long")
        if self.licence_families:
            parts.append("licence " + " or ".join(_family_label(f) for f in self.licence_families))
        if self.excluded_families:
            parts.append("no " + " or ".join(_family_label(f) for f in self.excluded_families))
        return ", ".join(parts)

    def to_catalog_filter(self, known_licences: Iterable[str]) -> CatalogFilter | None:
        """The catalog's payload filter; licence families resolved against the catalog's licences.

        None when nothing is filtered. A licence request that no catalog licence satisfies gives
        a filter that matches nothing (the caller says so), never an unfiltered search.
        """
        if self.is_empty:
            return None
        licences: tuple[str, ...] = ()
        if self.licence_families or self.excluded_families:
            known = sorted(set(known_licences))
            allowed = [
                lic for lic in known if licence_allowed(lic, self.licence_families, self.excluded_families)
            ]
            # No known licence qualifies: filter on a licence no track can carry, so nothing matches.
            licences = tuple(allowed) if allowed else (" no licence matches " + self.describe(),)
        return CatalogFilter(
            min_duration_s=self.min_duration_s, max_duration_s=self.max_duration_s, licences=licences
        )


@dataclass(frozen=True)
class ParsedMessage:
    """A message split into its filters and the rest (the feedback the engine reads)."""

    filters: FilterRequest
    text: str  # the message without the filter phrases


def format_duration(seconds: float) -> str:
    """90 -> "1:30", 45 -> "45 s"."""
    if seconds < 60:
        return f"{seconds:g} s"
    m, s = divmod(round(seconds), 60)
    return f"{m}:{s:02d}"


def licence_family(licence: str) -> str:
    """"CC-BY-SA-4.0" -> "CC-BY-SA", "GPL-3+" -> "GPL", "cc by 4.0" -> "CC-BY", "" -> ""."""
    text = licence.strip().upper().replace("_", "-")
    text = re.sub(r"\b(?:LICEN[CS]E|VERSION)\b", " ", text)
    text = re.sub(r"^CC[\s-]?0(?=$|[\s-])", "CC-ZERO", text.strip())  # CC0's 0 is no version
    text = _VERSION.sub("", text.strip()).replace("CC-ZERO", "CC0")
    text = re.sub(r"[\s-]+", "-", text).strip("-")
    if text in ("PUBLIC-DOMAIN", "PD"):
        return "PUBLIC-DOMAIN"
    if text in ("CCBY", "CCBYSA"):
        text = "CC-BY" + ("-SA" if text.endswith("SA") else "")
    if text.startswith("CREATIVE-COMMONS"):
        return _spoken_cc(text)
    return text


def licence_alternatives(licence: str) -> list[str]:
    """The families of a (possibly dual) licence string: "GPL-2+ or CC-BY-SA-3.0" -> ["GPL", "CC-BY-SA"]."""
    return [f for f in (licence_family(p) for p in _ALTERNATIVES.split(licence)) if f]


def licence_allowed(licence: str, families: Iterable[str], excluded: Iterable[str]) -> bool:
    """Whether a track under `licence` may be used given the requested and excluded families."""
    alts = licence_alternatives(licence)
    families, excluded = set(families), set(excluded)
    usable = [a for a in alts if a not in excluded] if excluded else alts
    if not usable:
        return False
    return any(a in families for a in usable) if families else True


def _spoken_cc(text: str) -> str:
    words = text.replace("-", " ").split()
    out = "CC"
    if "ATTRIBUTION" in words or len(words) == 2:
        out += "-BY"
    if any(w.startswith("NON") for w in words) or "NONCOMMERCIAL" in words:
        out += "-NC"
    if "SHARE" in words or "SHAREALIKE" in words:
        out += "-SA"
    if any(w.startswith("DERIV") or w.startswith("NO-DERIV") for w in words):
        out += "-ND"
    return out


def _family_label(family: str) -> str:
    return {"PUBLIC-DOMAIN": "public domain"}.get(family, family)


def _spoken_to_families(name: str) -> tuple[str, ...]:
    key = re.sub(r"[\s_-]+", " ", name.lower()).strip()
    key = re.sub(r"\s*v?\d+(?:\.\d+)*\+?$", "", key).strip()
    if key.startswith("creative commons"):
        return (_spoken_cc(key.upper()),)
    key = re.sub(r"^ccby", "cc by", key)
    key = re.sub(r"^cc ?0$", "cc0", key)
    key = re.sub(r"^cc(?=by)", "cc ", key)
    key = key.replace("public-domain", "public domain")
    if key in LICENCE_FAMILIES:
        return LICENCE_FAMILIES[key]
    fam = licence_family(name)
    return (fam,) if fam else ()


def _to_seconds(m: re.Match[str], g: str) -> float | None:
    clock = m.groupdict().get(f"{g}clock")
    if clock:
        mins, secs = clock.split(":")
        return int(mins) * 60 + int(secs)
    num = m.groupdict().get(f"{g}num")
    if num is None:
        return None
    value = float(NUMBER_WORDS[num.lower()]) if num.lower() in NUMBER_WORDS else float(num.replace(",", "."))
    if m.groupdict().get(f"{g}half1") or m.groupdict().get(f"{g}half2"):
        value += 0.5
    unit = m.groupdict().get(f"{g}unit")
    if unit is None:  # "1-2 minutes": the first number takes the second's unit
        unit = m.groupdict().get("bunit")
    if unit is None:
        return None
    return value * SECONDS_PER_UNIT[unit.lower()[0]]


def _cut(text: str, spans: list[tuple[int, int]]) -> str:
    """The text with `spans` removed and the joints tidied ("calmer, and under 2 min" -> "calmer")."""
    if not spans:
        return text.strip()
    pieces, last = [], 0
    for a, b in sorted(spans):
        if a < last:
            a = last
        pieces.append(text[last:a])
        last = max(last, b)
    pieces.append(text[last:])
    kept = [_DANGLING.sub("", p.strip()) for p in pieces]
    out = ", ".join(p for p in kept if p)
    out = re.sub(r"\s+", " ", out)
    out = re.sub(r"\s+([,.;!?])", r"\1", out)
    return _DANGLING.sub("", out).strip()


def parse_filters(text: str) -> ParsedMessage:
    """Find duration and licence filters in a message; return them and the rest of the message."""
    text = text or ""
    spans: list[tuple[int, int]] = []
    phrases: list[str] = []
    lo: float | None = None
    hi: float | None = None

    def taken(a: int, b: int) -> bool:
        return any(a < y and x < b for x, y in spans)

    for kind, pattern in DURATION_PATTERNS:
        for m in pattern.finditer(text):
            if taken(m.start(), m.end()):
                continue
            a = _to_seconds(m, "a")
            b = _to_seconds(m, "b")
            if kind == "between":
                if a is None or b is None:
                    continue
                lo, hi = min(a, b), max(a, b)
            elif a is None:
                continue
            elif kind == "max":
                hi = a
            else:
                lo = a
            spans.append((m.start(), m.end()))
            phrases.append(m.group(0).strip())
    clear_duration = False
    for m in ANY_LENGTH.finditer(text):
        if not taken(m.start(), m.end()):
            spans.append((m.start(), m.end()))
            phrases.append(m.group(0))
            clear_duration = True
    if lo is not None and hi is not None and lo > hi:  # "over 3 minutes ... under 2 minutes": keep the later
        lo = None

    include: list[str] = []
    exclude: list[str] = []
    for m in LICENCE_EXCLUDE.finditer(text):
        if taken(m.start(), m.end()):
            continue
        exclude.extend(_spoken_to_families(m.group("name")))
        spans.append((m.start(), m.end()))
        phrases.append(m.group(0).strip())
    clear_licence = False
    for m in ANY_LICENCE.finditer(text):
        if not taken(m.start(), m.end()):
            spans.append((m.start(), m.end()))
            phrases.append(m.group(0))
            clear_licence = True
    for m in LICENCE_INCLUDE.finditer(text):
        if taken(m.start(), m.end()):
            continue
        names = [m.group("name")] + ([m.group("name2")] if m.group("name2") else [])
        fams = [f for n in names for f in _spoken_to_families(n)]
        if not fams:
            continue
        include.extend(fams)
        spans.append((m.start(), m.end()))
        phrases.append(m.group(0).strip())

    request = FilterRequest(
        min_duration_s=lo,
        max_duration_s=hi,
        licence_families=tuple(dict.fromkeys(include)),
        excluded_families=tuple(dict.fromkeys(exclude)),
        clear_duration=clear_duration,
        clear_licence=clear_licence,
        phrases=tuple(phrases),
    )
    rest = _cut(text, spans)
    if phrases:
        log.debug("filters %r from %r; feedback left: %r", request.describe(), text, rest)
    return ParsedMessage(request, rest)


def conversation_filters(texts: Iterable[str]) -> FilterRequest:
    """The filters in force after a conversation's messages, oldest first (module docstring)."""
    current = FilterRequest()
    for t in texts:
        current = current.merge(parse_filters(t).filters)
    return current


__all__ = [
    "FilterRequest",
    "ParsedMessage",
    "conversation_filters",
    "format_duration",
    "licence_allowed",
    "licence_alternatives",
    "licence_family",
    "parse_filters",
]
