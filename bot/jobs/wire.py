"""What the query, re-rank and reason jobs carry between a front-end and a model worker, exactly.

A turn's model work on a worker (bot/jobs/runner.py, `query` and `rerank`) must answer what the
in-process runner answers on the same inputs, bit for bit: arrays travel as their raw bytes with
their dtype and shape (base64 in JSON), floats of payloads as JSON numbers (Python writes the
shortest repr that reads back to the same float64). Nothing here is pickled: a job's payload is
read by another process and must not be able to run code there.

Sizes: a query job carries the previous and rejected tracks' vectors inline (a few KB each; with
trained AST towers the previous track's 10 s candidate clip as float16 log-mels too: 256 KB for
the paper's AST, 2 KB for the tiny one, left out of the re-rank job, which does not read it); the
candidates of a re-rank (200 rows of a text vector and tag probabilities, a few hundred KB) go in
a Redis key of their own that the job names (`pack_rows` / `unpack_rows`, written by the SAQ
runner), never in the job, which Redis keeps for `job_ttl_s` after it ends.

A reason job carries its facts (engine/grounding.py `ReasonFacts`) as one nested object of their
fields by name (`facts_to_json`); a field this version does not know is refused by name, not
passed on (a front-end and a worker of different versions).
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from engine.engine import CandidateRow, Ranking, TrackContext
from engine.grounding import ReasonFacts
from engine.steering import Preference, PreferenceTerm


def array_to_json(a: np.ndarray | None) -> dict[str, Any] | None:
    """An array as JSON: dtype, shape and its bytes (exact)."""
    if a is None:
        return None
    a = np.ascontiguousarray(a)
    return {"dtype": a.dtype.str, "shape": list(a.shape), "b64": base64.b64encode(a.tobytes()).decode("ascii")}


def array_from_json(d: dict[str, Any] | None) -> np.ndarray | None:
    if d is None:
        return None
    dtype = np.dtype(d["dtype"])
    if dtype.hasobject:
        raise ValueError("object arrays are not accepted in a job's payload")
    return np.frombuffer(base64.b64decode(d["b64"]), dtype=dtype).reshape(d["shape"]).copy()


def context_to_json(c: TrackContext) -> dict[str, Any]:
    return {
        "track_id": c.track_id,
        "text": array_to_json(None if c.text is None else np.asarray(c.text)),
        "tag_probs": {str(k): float(v) for k, v in c.tag_probs.items()},
        "rhythm": None if c.rhythm is None else [float(x) for x in c.rhythm],
        "segment_music": array_to_json(None if c.segment_music is None else np.asarray(c.segment_music)),
        "clip_mels": array_to_json(None if c.clip_mels is None else np.asarray(c.clip_mels)),
    }


def context_from_json(d: dict[str, Any]) -> TrackContext:
    rhythm = d.get("rhythm")
    return TrackContext(
        track_id=str(d["track_id"]),
        text=array_from_json(d.get("text")),
        tag_probs=dict(d.get("tag_probs") or {}),
        rhythm=None if rhythm is None else (float(rhythm[0]), float(rhythm[1]), float(rhythm[2])),
        segment_music=array_from_json(d.get("segment_music")),
        clip_mels=array_from_json(d.get("clip_mels")),
    )


def preference_to_json(p: Preference | None) -> dict[str, Any] | None:
    if p is None:
        return None
    terms = [
        {"phrase": t.phrase, "sign": t.sign, "strength": t.strength, "source": t.source, "exclude": t.exclude,
         "tags": dict(t.tags), "rhythm": list(t.rhythm), "meaning": list(t.meaning)}
        for t in p.terms
    ]  # fmt: skip
    return {
        "weights": array_to_json(np.asarray(p.weights)), "rhythm": array_to_json(np.asarray(p.rhythm)), "terms": terms,
        "positive_text": p.positive_text, "unmatched": list(p.unmatched),
    }  # fmt: skip


def preference_from_json(d: dict[str, Any] | None) -> Preference | None:
    if d is None:
        return None
    terms = [
        PreferenceTerm(t["phrase"], int(t["sign"]), float(t["strength"]), t["source"], bool(t["exclude"]),
                       {str(k): float(v) for k, v in t["tags"].items()}, tuple(float(x) for x in t["rhythm"]),
                       tuple(str(m) for m in t.get("meaning", ())))
        for t in d["terms"]
    ]  # fmt: skip
    return Preference(
        weights=array_from_json(d["weights"]), rhythm=array_from_json(d["rhythm"]), terms=terms,
        positive_text=d["positive_text"], unmatched=list(d["unmatched"]),
    )  # fmt: skip


def ranking_to_json(r: Ranking) -> dict[str, Any]:
    """A ranking without its preference (the front-end has it from the query)."""
    return {
        "order": array_to_json(np.asarray(r.order)), "scores": array_to_json(np.asarray(r.scores)),
        "parts": {name: array_to_json(np.asarray(v)) for name, v in r.parts.items()}, "mode": r.mode,
    }  # fmt: skip


def ranking_from_json(d: dict[str, Any], preference: Preference | None) -> Ranking:
    parts = {name: array_from_json(v) for name, v in d["parts"].items()}
    return Ranking(array_from_json(d["order"]), array_from_json(d["scores"]), parts, d["mode"], preference)  # type: ignore[arg-type]


FACT_FIELDS = frozenset(f.name for f in dataclasses.fields(ReasonFacts))


def facts_to_json(f: ReasonFacts) -> dict[str, Any]:
    """A reason's facts as JSON: every field by name, the tuples as lists."""
    return dataclasses.asdict(f) | {"tags": list(f.tags), "video_labels": list(f.video_labels)}


def facts_from_json(d: dict[str, Any]) -> ReasonFacts:
    """`facts_to_json` read back; ValueError naming what is missing or unknown."""
    if not isinstance(d, dict) or "title" not in d:
        raise ValueError(f"a reason's facts must be an object with a title, not {str(d)[:80]!r}")
    if unknown := sorted(set(d) - FACT_FIELDS):
        raise ValueError(f"a reason's facts with unknown fields {unknown} (a front-end of another version?)")
    return ReasonFacts(**(d | {"tags": tuple(d.get("tags", ())), "video_labels": tuple(d.get("video_labels", ()))}))


def pack_rows(rows: Sequence[CandidateRow]) -> bytes:
    """Re-rank candidates as one npz (their text vectors stacked) with a JSON header; no pickle."""
    meta = {
        "track_ids": [r.track_id for r in rows],
        "tag_probs": [{str(k): float(v) for k, v in r.tag_probs.items()} for r in rows],
        "rhythm": [[float(x) for x in r.rhythm] for r in rows],
        "search_score": [float(r.search_score) for r in rows],
    }
    texts = [np.asarray(r.text) for r in rows]
    buf = io.BytesIO()
    np.savez(
        buf, meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
        text=np.stack(texts) if texts else np.zeros((0, 0), dtype=np.float32),
    )  # fmt: skip
    return buf.getvalue()


def unpack_rows(data: bytes) -> list[CandidateRow]:
    z = np.load(io.BytesIO(data), allow_pickle=False)
    meta = json.loads(z["meta"].tobytes().decode())
    text = z["text"]
    return [
        CandidateRow(track_id=tid, text=text[i], tag_probs=tags, rhythm=(float(rh[0]), float(rh[1]), float(rh[2])), search_score=score)
        for i, (tid, tags, rh, score) in enumerate(zip(meta["track_ids"], meta["tag_probs"], meta["rhythm"], meta["search_score"], strict=True))
    ]  # fmt: skip


__all__ = [
    "array_from_json",
    "array_to_json",
    "context_from_json",
    "context_to_json",
    "facts_from_json",
    "facts_to_json",
    "pack_rows",
    "preference_from_json",
    "preference_to_json",
    "ranking_from_json",
    "ranking_to_json",
    "unpack_rows",
]
