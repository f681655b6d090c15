"""Feedback steering: phrases -> preferences (table-driven), and picks that move the asked way."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engine.steering import (
    EXCLUDE_STRENGTH,
    FeedbackParser,
    TagVocabulary,
    rhythm_change,
    steer,
    steering_parts,
    unavailable,
)

VOCAB = TagVocabulary.musicnn()


@pytest.fixture(scope="module")
def parser() -> FeedbackParser:
    """Lexicon only (no text encoder): what every phrase below must get right without MiniLM."""
    return FeedbackParser(VOCAB)


# (phrase, display name, expected sign of its summed weight: +1, -1, or 0 for "not positive")
TAG_CASES = [
    ("more drums", "drums", +1),
    ("no drums", "drums", -1),
    ("less drums", "drums", -1),
    ("fewer drums please", "drums", -1),
    ("without the drums", "drums", -1),
    ("remove the drums", "drums", -1),
    ("add some percussion", "drums", +1),
    ("stronger drums", "drums", +1),
    ("not sad", "sad", -1),
    ("sad", "sad", +1),
    ("less sad, more drums", "sad", -1),
    ("less sad, more drums", "drums", +1),
    ("no vocals", "vocals", -1),
    ("no vocals", "no vocals", +1),
    ("no vocals", "instrumental", +1),
    ("I don't want vocals", "vocals", -1),
    ("no drums and vocals", "vocals", -1),
    ("more drums and vocals", "vocals", +1),
    ("something like 80s synth-pop", "80s", +1),
    ("something like 80s synth-pop", "synth", +1),
    ("something like 80s synth-pop", "pop", +1),
    ("something like 80's synth pop", "80s", +1),
    ("calmer", "quiet", +1),
    ("calmer", "loud", -1),
    ("faster", "fast", +1),
    ("faster", "slow", -1),
    ("slower", "slow", +1),
    ("happier", "happy", +1),
    ("happier", "sad", -1),
    ("darker", "sad", +1),
    ("heavier", "metal", +1),
    ("too loud", "loud", -1),
    ("more upbeat but not so loud", "loud", -1),
    ("more upbeat but not so loud", "fast", +1),
    ("not too fast", "fast", -1),
    ("hip-hop beats", "hip-hop", +1),
    ("more rock", "rock", +1),
    ("less piano, more guitar", "piano", -1),
    ("less piano, more guitar", "guitar", +1),
]


@pytest.mark.parametrize(("phrase", "display", "sign"), TAG_CASES, ids=[f"{p}|{d}" for p, d, _ in TAG_CASES])
def test_phrase_moves_tag(parser: FeedbackParser, phrase: str, display: str, sign: int) -> None:
    w = parser.parse(phrase).weight(VOCAB, display)
    assert np.sign(w) == sign, f"{phrase!r}: weight of {display!r} is {w}"


NOT_CASES = [("not sad", "sad"), ("not loud", "loud"), ("not too fast", "fast"), ("don't want drums", "drums")]


@pytest.mark.parametrize(("phrase", "display"), NOT_CASES)
def test_negation_is_not_the_word(parser: FeedbackParser, phrase: str, display: str) -> None:
    negated = parser.parse(phrase).weight(VOCAB, display)
    plain = parser.parse(display).weight(VOCAB, display)
    assert negated < 0 < plain


# (phrase, rhythm axis index, expected sign): the second channel (tempo, loudness, onset rate)
RHYTHM_CASES = [
    ("calmer", 0, -1), ("calmer", 1, -1), ("calmer", 2, -1),
    ("faster", 0, +1), ("slower", 0, -1), ("louder", 1, +1), ("quieter", 1, -1),
    ("too loud", 1, -1), ("more energetic", 1, +1), ("less energy", 1, -1), ("much calmer", 1, -1),
]


@pytest.mark.parametrize(("phrase", "axis", "sign"), RHYTHM_CASES)
def test_energy_words_move_rhythm(parser: FeedbackParser, phrase: str, axis: int, sign: int) -> None:
    assert np.sign(parser.parse(phrase).rhythm[axis]) == sign


STRENGTH_CASES = [
    ("a bit more drums", "more drums", "less"),
    ("much more drums", "more drums", "more"),
    ("no drums", "less drums", "more"),
]


@pytest.mark.parametrize(("phrase", "reference", "relation"), STRENGTH_CASES)
def test_intensity_words(parser: FeedbackParser, phrase: str, reference: str, relation: str) -> None:
    a = abs(parser.parse(phrase).weight(VOCAB, "drums"))
    b = abs(parser.parse(reference).weight(VOCAB, "drums"))
    assert (a > b) if relation == "more" else (a < b)


def test_exclusion_strength_and_description(parser: FeedbackParser) -> None:
    pref = parser.parse("no drums, calmer")
    assert pref.weights[VOCAB.index("mtt:drums")] == pytest.approx(-EXCLUDE_STRENGTH)
    assert pref.describe() == "no drums, calmer"
    assert parser.parse("less sad, more drums").describe() == "less sad, more drums"


DESCRIBE_CASES = [
    ("way less electronic, a bit more acoustic", "much less electronic, a bit more acoustic"),
    ("no drums and vocals", "no drums, no vocals"),
    ("without the drums", "no drums"),
    ("don't want vocals", "less vocals"),
    ("not too fast", "a bit less fast"),
    ("much calmer", "much calmer"),
    ("not calmer", "not calmer"),
    ("Less Sad, MORE DRUMS!!", "less sad, more drums"),
    ("keep the strings but lose the drums", "a bit more strings, no drums"),
]


@pytest.mark.parametrize(("phrase", "described"), DESCRIBE_CASES)
def test_describe_says_what_was_understood(parser: FeedbackParser, phrase: str, described: str) -> None:
    assert parser.parse(phrase).describe() == described


def test_positive_text_drops_negated_clauses(parser: FeedbackParser) -> None:
    assert parser.parse("no vocals, something like 80s synth-pop").positive_text == "80s synth pop"
    assert parser.parse("not sad").positive_text == ""


def test_unknown_words_without_encoder_are_reported(parser: FeedbackParser) -> None:
    pref = parser.parse("more banana")
    assert pref.empty and pref.unmatched == ["banana"]


def test_vocabulary_vector_follows_names() -> None:
    v = VOCAB.vector({"mtt:drums": 0.7, "MSD:Hip-Hop": 0.2, "unknown:x": 1.0})
    assert v.shape == (100,)
    assert v[VOCAB.index("mtt:drums")] == pytest.approx(0.7)
    assert v[VOCAB.index("msd:Hip-Hop")] == pytest.approx(0.2)
    assert v.sum() == pytest.approx(0.9)
    assert VOCAB.indices("rock") == [VOCAB.index("mtt:rock"), VOCAB.index("msd:rock")]


# --- steer on arrays with known answers -----------------------------------------------------------


def _tags(**kv: float) -> np.ndarray:
    base = np.full(len(VOCAB), 0.1, dtype=np.float32)
    for k, p in kv.items():
        base[VOCAB.index(k.replace("__", ":").replace("_", " "))] = p
    return base


def test_more_drums_picks_the_drum_track(parser: FeedbackParser) -> None:
    prev = _tags(mtt__drums=0.3)
    cands = np.stack([_tags(mtt__drums=0.1), _tags(mtt__drums=0.3), _tags(mtt__drums=0.6)])
    s = steer(parser.parse("more drums"), prev, cands)
    assert int(np.argmax(s)) == 2 and int(np.argmin(s)) == 0
    s = steer(parser.parse("no drums"), prev, cands)
    assert int(np.argmax(s)) == 0 and int(np.argmin(s)) == 2


def test_drift_penalty_prefers_the_closer_track(parser: FeedbackParser) -> None:
    prev = _tags(mtt__drums=0.3, mtt__piano=0.6)
    same_otherwise = _tags(mtt__drums=0.6, mtt__piano=0.6)
    also_changes_piano = _tags(mtt__drums=0.6, mtt__piano=0.0)
    cands = np.stack([also_changes_piano, same_otherwise])
    pref = parser.parse("more drums")
    parts = steering_parts(pref, prev, cands)
    assert parts["move"][0] == pytest.approx(parts["move"][1], abs=1e-6)
    assert parts["drift"][0] > parts["drift"][1] == pytest.approx(0.0, abs=1e-6)
    s = steer(pref, prev, cands, drift_penalty=0.5)
    assert s[1] - s[0] == pytest.approx(0.5 * parts["drift"][0], rel=1e-5)


def test_empty_preference_scores_zero(parser: FeedbackParser) -> None:
    cands = np.stack([_tags(mtt__drums=0.1), _tags(mtt__drums=0.9)])
    assert np.array_equal(steer(parser.parse("hello there"), _tags(), cands), np.zeros(2, np.float32))


def test_rhythm_channel_faster_picks_the_faster_track(parser: FeedbackParser) -> None:
    tags = np.stack([_tags(), _tags()])  # identical tags: only rhythm can decide
    prev_rhythm = np.array([100.0, -20.0, 2.0])
    cand_rhythm = np.array([[80.0, -20.0, 1.5], [150.0, -20.0, 4.0]])
    assert int(np.argmax(steer(parser.parse("faster"), _tags(), tags, previous_rhythm=prev_rhythm, candidate_rhythm=cand_rhythm))) == 1
    assert int(np.argmax(steer(parser.parse("slower"), _tags(), tags, previous_rhythm=prev_rhythm, candidate_rhythm=cand_rhythm))) == 0


def test_rhythm_change_units() -> None:
    z = rhythm_change(np.array([100.0, -20.0, 1.0]), np.array([[200.0, -17.0, 1.0], [0.0, -20.0, 1.0]]))
    assert z[0, 0] == pytest.approx(4.0)  # one octave = 4 units of 0.25 octave
    assert z[0, 1] == pytest.approx(1.0)  # 3 dB = 1 unit
    assert z[1, 0] == 0.0  # unknown tempo (0 BPM) moves nothing


# --- with the real text encoder and real music (slow) ---------------------------------------------


@pytest.fixture(scope="module")
def minilm():
    from engine.encoders.minilm import MiniLMTextEncoder

    return MiniLMTextEncoder()


@pytest.fixture(scope="module")
def sim_parser(minilm) -> FeedbackParser:
    """With MiniLM: tag descriptions are embedded once, on first use."""
    return FeedbackParser(VOCAB, minilm)


SIMILARITY_CASES = [
    ("more of a rave feel", "techno", +1),
    ("some percussion would be nice", "drums", +1),
    ("less rave", "techno", -1),
    ("a dreamy atmospheric soundscape", "ambient", +1),
]


@pytest.mark.slow
@pytest.mark.parametrize(("phrase", "display", "sign"), SIMILARITY_CASES)
def test_words_outside_the_lexicon_count_through_similarity(sim_parser: FeedbackParser, phrase: str, display: str, sign: int) -> None:
    pref = sim_parser.parse(phrase)
    assert np.sign(pref.weight(VOCAB, display)) == sign


@pytest.mark.slow
def test_similarity_moves_only_related_tags(sim_parser: FeedbackParser) -> None:
    p = sim_parser
    rave = p.parse("more rave")
    assert 0 < np.count_nonzero(rave.weights) <= 4
    # nothing is close enough (every description below SIM_MIN); "banana" (0.30) is not: it shows as "banana -> mellow"
    for phrase in ("more tax returns", "a spreadsheet", "hello there"):
        pref = p.parse(phrase)
        assert pref.empty and pref.unmatched, phrase


# ~12 real tracks of mixed styles (orchestral, chiptune, rock, electronic, ambient)
REAL_TRACKS = [
    "wesnoth-1.16-music/battle-epic.ogg", "wesnoth-1.16-music/defeat.ogg",
    "supertux-data/chipdisko.ogg", "supertux-data/bossattack.ogg", "supertux-data/forest.ogg",
    "supertux-data/arctic_breeze.ogg", "supertux-data/cave.ogg",
    "hedgewars-data/Rock.ogg", "hedgewars-data/City.ogg", "hedgewars-data/oriental.ogg",
    "extremetuxracer-data/race1-jt.ogg", "extremetuxracer-data/calmrace-ks.ogg",
]
REAL_SLICE_S = 15.0


@pytest.fixture(scope="module")
def real_catalog(music_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """Tag probabilities (N, V) and rhythm (N, 3) of REAL_TRACKS by the real musicnn encoder."""
    from engine.encoders.musicnn import MusicnnEncoder
    from engine.media import decode_audio
    from engine.rhythm import rhythm

    enc = MusicnnEncoder()
    tags, rhy = [], []
    for rel in REAL_TRACKS:
        audio = decode_audio(music_dir / rel, sample_rate=enc.sample_rate)
        n = int(REAL_SLICE_S * enc.sample_rate)
        clip = audio[max(0, (len(audio) - n) // 2):][:n]
        tags.append(VOCAB.vector(enc.encode(clip).tags))
        r = rhythm(clip, enc.sample_rate)
        rhy.append((r.tempo_bpm, r.loudness_db, r.onset_rate))
    return np.stack(tags), np.asarray(rhy, dtype=np.float32)


REAL_PHRASES = [("more drums", "drums"), ("more piano", "piano"), ("more strings", "strings"),
                ("more electronic", "electronic"), ("more guitar", "guitar"), ("more ambient", "ambient")]


@pytest.mark.slow
@pytest.mark.parametrize(("phrase", "display"), REAL_PHRASES)
def test_more_x_on_real_tracks_picks_higher_p_x(parser: FeedbackParser, real_catalog, phrase: str, display: str) -> None:
    tags, rhy = real_catalog
    idx = VOCAB.indices(display)
    value = tags[:, idx].mean(axis=1)
    pref = parser.parse(phrase)
    checked = 0
    for i in range(len(tags)):
        others = np.delete(np.arange(len(tags)), i)
        if not np.any(value[others] > value[i]):
            continue  # already the most X: no right way exists
        pick = others[int(np.argmax(steer(pref, tags[i], tags[others], previous_rhythm=rhy[i], candidate_rhythm=rhy[others])))]
        assert value[pick] > value[i], f"{phrase!r} from {REAL_TRACKS[i]} picked {REAL_TRACKS[pick]}"
        checked += 1
    assert checked == len(tags) - 1


# --- any words (issue 15): phrases that name no tag, with the real lite text encoder --------------

ANY_WORDS_CASES = [  # phrase, a tag display that must move, its sign, a concept it must be shown as
    ("sounds like a rainy afternoon", "chillout", +1, "chill"),
    ("a horror movie trailer", "sad", +1, "dark"),
    ("music for a yoga class", "new age", +1, "new age"),
    ("heartbroken", "sad", +1, "sad"),
    ("something carefree", "happy", +1, "happy"),
    ("a banjo", "country", +1, "country"),
    ("not like a horror movie", "sad", -1, "dark"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("phrase", "display", "sign", "shown"), ANY_WORDS_CASES)
def test_words_naming_no_tag_steer_through_descriptions(sim_parser: FeedbackParser, phrase: str, display: str, sign: int, shown: str) -> None:
    pref = sim_parser.parse(phrase)
    assert np.sign(pref.weight(VOCAB, display)) == sign
    term = next(t for t in pref.terms if t.source == "similarity")
    assert shown in term.meaning
    assert "\u2192" in pref.describe() and shown in pref.describe()  # "rainy afternoon -> chill, ambient"
    assert not pref.unmatched


@pytest.mark.slow
def test_antonyms_are_not_averaged_and_lexicon_words_win(sim_parser: FeedbackParser) -> None:
    chase = sim_parser.parse("a car chase")
    concepts = next(t for t in chase.terms if t.source == "similarity").meaning
    assert not ({"fast", "energetic"} & set(concepts) and {"slow", "calm"} & set(concepts))
    fast = sim_parser.parse("fast paced")  # "fast" from the lexicon; nothing pulling the other way is added
    assert fast.rhythm[0] > 0 and fast.weight(VOCAB, "slow") < 0


@pytest.mark.slow
def test_description_vectors_are_embedded_once(sim_parser: FeedbackParser, minilm) -> None:  # noqa: ANN001
    sim_parser.precompute()
    vecs = sim_parser._desc_vecs
    texts, keys = sim_parser.description_texts()
    assert vecs is not None and vecs.shape == (len(texts), minilm.dim) and "calm" in keys
    sim_parser.parse("a lazy summer afternoon")
    sim_parser.precompute()
    assert sim_parser._desc_vecs is vecs  # not recomputed


PARTICLE_CASES = [  # lexicon only: particles and axis nouns
    ("tone it down", -1), ("dial it back", -1), ("bring the energy down", -1), ("pump it up", +1),
    ("low energy", -1), ("high energy", +1), ("calm it down", -1), ("slow it down", -1),
]


@pytest.mark.parametrize(("phrase", "loud_sign"), PARTICLE_CASES)
def test_particles_give_the_direction(parser: FeedbackParser, phrase: str, loud_sign: int) -> None:
    pref = parser.parse(phrase)
    assert np.sign(pref.rhythm[0] + pref.rhythm[1] + pref.rhythm[2]) == loud_sign, pref.describe()


def test_a_calm_tempo_is_not_a_faster_one(parser: FeedbackParser) -> None:
    pref = parser.parse("a calm tempo")
    assert pref.rhythm[0] < 0 and pref.describe() == "more calm"


def test_what_no_candidate_has_is_reported(parser: FeedbackParser) -> None:
    tags = np.zeros((3, len(VOCAB)), dtype=np.float32)
    tags[:, VOCAB.indices("drums")] = [[0.4], [0.1], [0.02]]
    tags[:, VOCAB.indices("opera")] = 0.01  # below UNAVAILABLE_PROB everywhere
    assert unavailable(parser.parse("more opera and more drums"), tags, VOCAB) == ["more opera"]
    assert unavailable(parser.parse("no opera"), tags, VOCAB) == []  # asking for less is always possible
    assert unavailable(parser.parse("faster"), tags, VOCAB) == []  # rhythm: every catalog has a faster track
