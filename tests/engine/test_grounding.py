"""Tests for engine/grounding.py: the facts of a recommendation and the check of each sentence against them."""

from __future__ import annotations

import dataclasses

import pytest

from engine.grounding import (
    LEXICON,
    FactIndex,
    ReasonFacts,
    SentenceGate,
    banned_phrases,
    grounded_text,
    split_sentences,
    unsupported_claims,
)

FACTS = ReasonFacts(
    "Battle Epic", artist="Wesnoth", tags=("classical", "strings", "slow", "orchestral"), tempo_bpm=72.4,
    loudness_db=-20.0, video_labels=("mountain bike", "alp"), words="more drums, less sad",
    understood="more drums, less sad", licence="CC-BY-SA-3.0", duration_s=154.0,
)  # fmt: skip
SILENT = ReasonFacts("chipdisko", tags=("techno", "electronic", "fast"), tempo_bpm=128.0, video_labels=("cab",))

CLAIM_CASES = [
    # (facts, sentence, what it claims that the facts don't say)
    (FACTS, '"Battle Epic" by Wesnoth is slow orchestral music with strings.', []),
    (FACTS, "It is a tribute to the music of the 1980s and the 1990s.", ["1980s", "1990s"]),  # the examples
    (FACTS, "The video transports viewers to a futuristic cityscape.", ["futuristic", "cityscape"]),
    (FACTS, "Its classical strings suit the mountain bike ride on the alp.", []),
    (FACTS, "You asked for more drums, and it has drums.", []),  # the user's words are facts
    (FACTS, "At 72 BPM and 2:34 long it is a calm pace.", ["calm"]),  # numbers of the facts pass, a mood does not
    (FACTS, "It runs at 140 BPM.", ["140"]),
    (FACTS, "It was composed by John Williams for the video.", ["John", "Williams"]),
    (FACTS, "The piano and the guitars carry it.", ["piano", "guitar"]),  # plural folded to the term
    (FACTS, "It sounds calmer and happier than the last one.", ["calm", "happy"]),  # comparatives
    (FACTS, "A heavy metal anthem from Tokyo.", ["heavy metal", "anthem", "Tokyo", "tokyo"]),
    (FACTS, '"Dark Forest" is the right choice for it.', ["dark", "forest", '"Dark Forest"']),  # another title
    (FACTS, '"Battle Epic" is a mix of "Battle Epic" and "Night Song".', ['"Night Song"']),  # every quoted span is checked
    (SILENT, '"chipdisko" is fast electronic techno at 128 BPM.', []),
    (SILENT, "You asked for something fast, and it is fast.", ["You asked"]),  # the user said nothing
    (SILENT, "Its hip-hop beat suits the cab.", ["hip hop", "beat"]),  # as the phrase "hip hop"
    (SILENT, "Its lo-fi sound suits the cab.", ["lo-fi"]),
]


@pytest.mark.parametrize(("facts", "sentence", "expected"), CLAIM_CASES)
def test_a_sentence_names_only_what_the_facts_say(facts, sentence, expected):
    assert sorted(unsupported_claims(sentence, FactIndex.of(facts))) == sorted(expected)


def test_foreign_terms_count_as_claims():
    """A few-shot example's particulars are claims when the reason repeats them."""
    index = FactIndex.of(SILENT)
    assert unsupported_claims("Its sound carries the sports car across the alp.", index, ("sports car", "alp", "cab")) == ["sports car", "alp"]


def test_facts_read_as_short_lines():
    assert FACTS.lines() == [
        "Title: Battle Epic", "Artist: Wesnoth", "Tags: classical, strings, slow, orchestral", "Tempo: 72 BPM (slow)",
        "Loudness: medium", "Video shows: mountain bike, alp", "User asked: more drums, less sad", "Length: 2:34",
        "Licence: CC-BY-SA-3.0",
    ]  # fmt: skip
    assert SILENT.lines() == ["Title: chipdisko", "Tags: techno, electronic, fast", "Tempo: 128 BPM (moderate)", "Video shows: cab"]


def test_the_gate_lets_through_whole_checked_sentences_as_they_complete():
    gate = SentenceGate(FACTS)
    out = [gate.feed(p) for p in ('"Battle Epic"', " is slow orchestral", " music. It is from the", " 1980s. Its strings", " suit the alp. Its strings suit the alp.", " And then")]
    gate.finish()
    assert out == [[], [], ['"Battle Epic" is slow orchestral music.'], [], ["Its strings suit the alp."], []]
    assert [(v.why, v.unsupported) for v in gate.verdicts] == [
        ("", []), ("unsupported", ["1980s"]), ("", []), ("repeat", []), ("unfinished", []),
    ]  # fmt: skip
    assert gate.accepted == ['"Battle Epic" is slow orchestral music.', "Its strings suit the alp."]


def test_short_fragments_are_not_reasons():
    text, verdicts = grounded_text("Enjoy! Its strings suit the alp.", FACTS)
    assert text == "Its strings suit the alp." and verdicts[0].why == "fragment"


UNANCHORED_CASES = [
    ("It's a song about a bridge that connects two buildings.", "unanchored"),  # nothing of the facts: invented
    ("The video is a great example of how music can be a great example.", "unanchored"),  # only words every reason says
    ("It is the kind of music that something is.", "unanchored"),  # the user's "something" is no fact
    ("Its strings suit the alp.", ""),  # a tag and a video label
    ("A steady 72 BPM keeps pace with the ride.", ""),  # the tempo
    ("It has what you asked for: more drums.", ""),  # the user's words
    ("Battle Epic sounds right for a slow ride.", ""),  # the title; "slow" is the tempo's word
]


MISATTRIBUTED_CASES = [
    # (sentence, why, the video's words it gave the music)
    ("Battle Epic is a song about a mountain bike.", "misattributed", ["mountain", "bike"]),
    ("It's a tribute to the alp.", "misattributed", ["alp"]),
    ("The strings are inspired by the mountain bike ride.", "misattributed", ["mountain", "bike"]),
    ("The video is about a mountain bike on the alp.", "", []),  # says what the video shows
    ("The video shows a mountain bike, and the strings suit it.", "", []),
    ("It is about more drums.", "", []),  # the user's words, not the video's
    ("Battle Epic is about a battle.", "", []),  # the title's own word
]


CONTRADICTED_CASES = [
    # (facts, sentence, why, the words it affirms against the user's request)
    (FACTS, "Battle Epic is a sad piece with strings.", "contradicted", ["sad"]),  # "less sad"
    (FACTS, "It is less sad, with more drums.", "", []),  # the sentence says it the user's way
    (FACTS, "Its slow strings are not sad at all.", "", []),
    (dataclasses.replace(FACTS, words="no vocals", understood="no vocals"), "Battle Epic has strings and vocals.", "contradicted", ["vocals"]),
    (dataclasses.replace(FACTS, words="no vocals", understood="no vocals"), "Battle Epic has strings and no vocals.", "", []),
    (dataclasses.replace(FACTS, tags=("strings", "vocals"), words="no vocals", understood="no vocals"), "It has strings and vocals.", "", []),  # a tag says it
    (dataclasses.replace(FACTS, words="not so slow please", understood="faster"), "Battle Epic is slow classical music.", "", []),  # the tempo says slow
]


@pytest.mark.parametrize(("facts", "sentence", "why", "words"), CONTRADICTED_CASES)
def test_what_the_user_asked_against_is_not_said_of_the_track(facts, sentence, why, words):
    text, verdicts = grounded_text(sentence, facts)
    assert [(v.why, v.unsupported) for v in verdicts] == [(why, words)]
    assert text == ("" if why else sentence)


@pytest.mark.parametrize(("sentence", "why", "words"), MISATTRIBUTED_CASES)
def test_the_videos_subject_is_not_given_as_the_musics(sentence, why, words):
    text, verdicts = grounded_text(sentence, FACTS)
    assert [(v.why, v.unsupported) for v in verdicts] == [(why, words)]
    assert text == ("" if why else sentence)


@pytest.mark.parametrize(("sentence", "why"), UNANCHORED_CASES)
def test_a_sentence_must_name_at_least_one_fact(sentence, why):
    text, verdicts = grounded_text(sentence, FACTS)
    assert [v.why for v in verdicts] == [why]
    assert text == ("" if why else sentence)


def test_sentences_split_at_their_ends_only():
    assert split_sentences('It is 2.5 times "slow." Then more') == (['It is 2.5 times "slow."'], " Then more")


def test_banned_phrases_are_the_lexicon_less_the_facts():
    banned = banned_phrases(FACTS, ("sports car", "alp"))
    assert "classical" not in banned and "strings" not in banned and "drum" not in banned and "alp" not in banned
    assert {"rock", "piano", "futuristic", "cityscape", "sports car"} <= set(banned)
    assert len(banned) == len(LEXICON) + 2 - sum(1 for t in (*LEXICON, "sports car", "alp") if FactIndex.of(FACTS).has(t))
