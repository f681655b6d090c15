"""bot/jobs/wire.py: a turn's query and re-rank cross the queue exactly (bit for bit), and nothing is unpickled;
a reason job carries every fact, and one of another version is refused by name."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bot.jobs.runner import ReasonRequest
from bot.jobs.wire import (
    array_from_json,
    array_to_json,
    context_from_json,
    context_to_json,
    facts_from_json,
    facts_to_json,
    pack_rows,
    preference_from_json,
    preference_to_json,
    ranking_from_json,
    ranking_to_json,
    unpack_rows,
)
from engine.engine import CandidateRow, Engine, EngineConfig, TrackContext
from engine.grounding import ReasonFacts
from engine.profiles import load_encoders

ARRAYS = [
    ("float32 vector", np.random.default_rng(0).normal(size=384).astype(np.float32)),
    ("float64 matrix", np.random.default_rng(1).normal(size=(3, 5))),
    ("int64 order", np.array([4, 0, 2, 1, 3], dtype=np.int64)),
    ("empty", np.zeros((0, 7), dtype=np.float32)),
]


@pytest.mark.parametrize(("name", "a"), ARRAYS, ids=[n for n, _ in ARRAYS])
def test_an_array_crosses_as_its_bytes(name: str, a: np.ndarray) -> None:
    back = array_from_json(json.loads(json.dumps(array_to_json(a))))
    assert back.dtype == a.dtype and back.shape == a.shape
    assert back.tobytes() == a.tobytes()


def test_an_object_array_is_refused() -> None:
    with pytest.raises(ValueError, match="object arrays"):
        array_from_json({"dtype": "|O", "shape": [1], "b64": ""})


def _row(i: int) -> CandidateRow:
    v = np.random.default_rng(i).normal(size=32).astype(np.float32)
    return CandidateRow(f"id-{i}", v, {"mtt:drums": 0.1 * i + 1e-9, "msd:rock": 1 / 3}, (120.0 + i / 7, -14.2, 2.0 / 3), search_score=0.1 / (i + 1))


def test_candidates_cross_exactly_without_pickle() -> None:
    rows = [_row(i) for i in range(5)]
    back = unpack_rows(pack_rows(rows))
    assert [(r.track_id, dict(r.tag_probs), r.rhythm, r.search_score) for r in back] == [
        (r.track_id, dict(r.tag_probs), r.rhythm, r.search_score) for r in rows
    ]
    assert all(b.text.tobytes() == r.text.tobytes() and b.text.dtype == r.text.dtype for b, r in zip(back, rows, strict=True))
    assert unpack_rows(pack_rows([])) == []


def test_a_track_context_crosses_exactly() -> None:
    c = TrackContext("t", text=_row(1).text, tag_probs={"mtt:piano": 0.7}, rhythm=(97.5, -20.25, 1.5),
                     segment_music=np.random.default_rng(2).normal(size=(3, 8)).astype(np.float32))  # fmt: skip
    back = context_from_json(json.loads(json.dumps(context_to_json(c))))
    assert (back.track_id, back.tag_probs, back.rhythm) == (c.track_id, c.tag_probs, c.rhythm)
    assert back.text.tobytes() == c.text.tobytes() and back.segment_music.tobytes() == c.segment_music.tobytes()
    bare = context_from_json(json.loads(json.dumps(context_to_json(TrackContext("x")))))
    assert (bare.text, bare.rhythm, bare.segment_music, bare.clip_mels, dict(bare.tag_probs)) == (None, None, None, None, {})
    # trained AST towers: the candidate clip's float16 log-mels, exactly
    mels = np.random.default_rng(3).normal(size=(64, 16)).astype(np.float16)
    back = context_from_json(json.loads(json.dumps(context_to_json(TrackContext("t", clip_mels=mels)))))
    assert back.clip_mels.dtype == np.float16 and back.clip_mels.shape == (64, 16) and back.clip_mels.tobytes() == mels.tobytes()


def test_a_query_understood_and_ranked_on_one_side_is_the_same_on_the_other() -> None:
    eng = Engine(EngineConfig(profile="tiny"), encoders=load_encoders("tiny"))
    rows = [_row(i) for i in range(6)]
    q = eng.query(text="much more drums, no vocals, less piano")
    ranking = q.rerank(rows)
    pref = preference_from_json(json.loads(json.dumps(preference_to_json(q.preference))))
    assert pref.describe() == q.preference.describe() != ""
    assert pref.unmatched == q.preference.unmatched and pref.positive_text == q.preference.positive_text
    assert pref.weights.tobytes() == q.preference.weights.tobytes() and pref.rhythm.tobytes() == q.preference.rhythm.tobytes()
    back = ranking_from_json(json.loads(json.dumps(ranking_to_json(ranking))), pref)
    assert back.order.tolist() == ranking.order.tolist() and back.scores.tobytes() == ranking.scores.tobytes()
    assert {k: v.tobytes() for k, v in back.parts.items()} == {k: v.tobytes() for k, v in ranking.parts.items()}
    assert preference_to_json(None) is None and preference_from_json(None) is None


def test_every_field_of_a_preference_term_crosses() -> None:
    """A new field of `PreferenceTerm` that the wire forgot would change what the user is told
    ("rainy afternoon -> calm, soft") when a worker encoded the query."""
    from dataclasses import fields

    from engine.steering import Preference, PreferenceTerm

    term = PreferenceTerm("rainy afternoon", -1, 0.5, "similarity", True, {"mtt:piano": 0.25}, (0.5, -1.0, 0.0), ("calm", "soft"))
    assert all(getattr(term, f.name) != f.default for f in fields(term))  # every field set away from its default
    pref = Preference(np.zeros(3, dtype=np.float32), np.zeros(3, dtype=np.float32), terms=[term], positive_text="x", unmatched=["y"])
    back = preference_from_json(json.loads(json.dumps(preference_to_json(pref))))
    assert back.terms == [term]
    assert back.describe() == "no rainy afternoon \u2192 calm, soft"


FACTS = ReasonFacts(
    "Battle Epic", artist="Wesnoth", tags=("classical", "strings"), tempo_bpm=72.4, loudness_db=-30.0,
    video_labels=("alp", "valley"), words="calmer", understood="more calm", licence="CC-BY-4.0", duration_s=154.0,
)  # fmt: skip


def test_a_reason_request_crosses_with_its_facts_nested() -> None:
    """Every fact reaches the worker (a field the wire forgot would be a fact the reason cannot use)."""
    from dataclasses import fields

    assert all(getattr(FACTS, f.name) != f.default for f in fields(FACTS))  # every field set away from its default
    request = ReasonRequest(FACTS, "0" * 64, video_words="alp and valley", fallback="Battle Epic: classical.", timeout_s=2.5)
    payload = json.loads(json.dumps(request.to_json()))
    assert payload["facts"]["title"] == "Battle Epic" and payload["facts"]["tags"] == ["classical", "strings"]
    assert sorted(payload) == ["facts", "fallback", "timeout_s", "track_sha", "video_words"]
    assert ReasonRequest.from_json(payload) == request
    assert facts_from_json(json.loads(json.dumps(facts_to_json(FACTS)))) == FACTS


OLD_OR_FOREIGN = [
    ("old format: the facts at the top level",
     {"title": "Battle", "track_sha": "0", "tags": ["epic"], "feedback": "", "video_words": "", "fallback": "x"},
     "without 'facts'.*older version"),
    ("an unknown top-level field",
     {"facts": {"title": "Battle"}, "track_sha": "0", "video_words": "", "fallback": "x", "priority": 1},
     r"unknown fields \['priority'\]"),
    ("an unknown fact", {"facts": {"title": "Battle", "mood": "epic"}, "track_sha": "0", "video_words": "", "fallback": "x"},
     r"unknown fields \['mood'\]"),
    ("facts without a title", {"facts": {"tags": ["epic"]}, "track_sha": "0", "video_words": "", "fallback": "x"},
     "must be an object with a title"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "payload", "error"), OLD_OR_FOREIGN, ids=[n for n, _, _ in OLD_OR_FOREIGN])
def test_a_reason_job_of_another_version_is_refused_by_name(name: str, payload: dict, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        ReasonRequest.from_json(payload)
