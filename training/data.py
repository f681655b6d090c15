"""MuseChat quartets as JSONL, feedback turns from tag differences, and music-only quartets (paper 3).

A quartet (paper section 3) is (video, target music, candidate music, two-turn conversation). One
JSON object per line (see training/examples/quartets.example.jsonl):

    {"id": "yt8m-0001",
     "video": "videos/0001.mp4" | null,          # null: a music-only quartet ("without video")
     "clip_start_s": 35.0, "clip_duration_s": 120.0,   # the centre 120 s of the video (paper 3)
     "target": "music/0001.ogg",                  # the video's own soundtrack, or a catalog track
     "candidate": "music/0422.ogg" | null,
     "target_tags": ["piano", "calm"], "candidate_tags": ["drums", "fast"],
     "turns": [{"user": "...", "recommender": "..."}, {"user": "...", "recommender": "..."}]}

Paths are relative to the JSONL file's folder (or absolute); for catalog quartets `target` and
`candidate` are content hashes ("sha256:<hex>") of the catalog's feature cache.

Turn texts: the paper had an LLM write the conversations from the tags (section 3). Here
templates do it, deterministically from a seed: turn 1 asks for music for the video, the
recommender offers the candidate; turn 2's user asks for what the target has and the candidate
lacks, and away from what only the candidate has ("more piano and calm, less drums"); the
recommender answers with the target. Turn 2's user text is the prompt t3 the model reads.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from engine.encoders.base import TextEncoder
from engine.fusion import MuseChatRecommender, track_vector
from engine.media import CorruptMediaError, MediaError, MediaLimits
from engine.profiles import Encoders
from engine.tracks import TrackAnalysis, decode_track, embed_track
from engine.video import VideoFeatures, content_hash, video_features
from training.features import MUSIC_LOG_MELS, FeatureItem, FeatureShardWriter, random_pools

log = logging.getLogger(__name__)

CANDIDATE_POOL = 2000  # tracks a candidate is retrieved from, excluding the target (paper section 3)
MAX_FEEDBACK_TAGS = 3  # tags named per direction in a feedback sentence

TURN1_USER = (
    "Can you recommend background music for my video?",
    "What music would fit this clip?",
    "I need a soundtrack for this video.",
)
TURN1_RECOMMENDER = (
    "How about \"{title}\"? It is {tags}.",
    "Try \"{title}\": {tags}.",
)
MORE_TEMPLATES = ("I'd like something more {more}.", "Could it be more {more}?", "Give me something {more}.")
LESS_TEMPLATES = ("Less {less}, please.", "Not so {less}.", "Without the {less}.")
BOTH_TEMPLATES = ("More {more} and less {less}, please.", "Something {more}, not so {less}.", "I want it {more} rather than {less}.")
NONE_TEMPLATES = ("Something different, please.", "Not this one, show me another.")
TURN2_RECOMMENDER = ("Then \"{title}\" fits better: it is {tags}.", "Here is \"{title}\", {tags}.")


@dataclass
class Turn:
    user: str
    recommender: str


@dataclass
class Quartet:
    """One MuseChat training example (module docstring)."""

    id: str
    target: str
    video: str | None = None
    candidate: str | None = None
    clip_start_s: float = 0.0
    clip_duration_s: float = 120.0
    target_tags: list[str] = field(default_factory=list)
    candidate_tags: list[str] = field(default_factory=list)
    turns: list[Turn] = field(default_factory=list)
    target_title: str = ""
    candidate_title: str = ""

    @property
    def prompt(self) -> str:
        """The user's turn-2 words: the prompt t3 of the fused query (paper 4.1)."""
        return self.turns[1].user if len(self.turns) > 1 else ""

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: dict) -> Quartet:
        if not isinstance(obj, dict) or "id" not in obj or "target" not in obj:
            raise ValueError("a quartet needs at least 'id' and 'target'")
        turns = [Turn(**t) for t in obj.get("turns", [])]
        known = {k: v for k, v in obj.items() if k in cls.__dataclass_fields__ and k != "turns"}
        return cls(**known, turns=turns)


def read_quartets(path: str | Path) -> Iterator[Quartet]:
    """Quartets of a JSONL file; a bad line raises ValueError naming its line number."""
    path = Path(path)
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield Quartet.from_json(json.loads(line))
            except (json.JSONDecodeError, TypeError, ValueError) as e:
                raise ValueError(f"{path}:{n}: not a quartet: {e}") from e


def write_quartets(path: str | Path, quartets: Iterable[Quartet]) -> int:
    """Write quartets as JSONL; returns how many."""
    n = 0
    with Path(path).open("w", encoding="utf-8") as f:
        for q in quartets:
            f.write(json.dumps(q.to_json(), ensure_ascii=False) + "\n")
            n += 1
    return n


def _join(tags: Sequence[str]) -> str:
    tags = list(tags)
    if len(tags) <= 1:
        return "".join(tags)
    return ", ".join(tags[:-1]) + " and " + tags[-1]


def feedback_text(candidate_tags: Sequence[str], target_tags: Sequence[str], rng: random.Random) -> str:
    """Turn-2 user words from the tag differences (module docstring)."""
    cand = list(dict.fromkeys(candidate_tags))
    targ = list(dict.fromkeys(target_tags))
    more = [t for t in targ if t not in cand][:MAX_FEEDBACK_TAGS]
    less = [t for t in cand if t not in targ][:MAX_FEEDBACK_TAGS]
    if more and less:
        return rng.choice(BOTH_TEMPLATES).format(more=_join(more), less=_join(less))
    if more:
        return rng.choice(MORE_TEMPLATES).format(more=_join(more))
    if less:
        return rng.choice(LESS_TEMPLATES).format(less=_join(less))
    return rng.choice(NONE_TEMPLATES)


def conversation(
    candidate_title: str, candidate_tags: Sequence[str], target_title: str, target_tags: Sequence[str], rng: random.Random
) -> list[Turn]:
    """The two turns of a quartet from the titles and tags (module docstring)."""
    return [
        Turn(rng.choice(TURN1_USER), rng.choice(TURN1_RECOMMENDER).format(title=candidate_title, tags=_join(candidate_tags[:4]) or "a track")),
        Turn(feedback_text(candidate_tags, target_tags, rng), rng.choice(TURN2_RECOMMENDER).format(title=target_title, tags=_join(target_tags[:4]) or "a track")),
    ]


def retrieve_candidate(query: np.ndarray, pool_vectors: np.ndarray, pool_ids: Sequence[int], exclude: int) -> int:
    """The pool member (an id from `pool_ids`, never `exclude`) whose vector is most cosine-similar to `query`."""
    q = query / max(float(np.linalg.norm(query)), 1e-12)
    m = pool_vectors / np.maximum(np.linalg.norm(pool_vectors, axis=1, keepdims=True), 1e-12)
    sims = m @ q  # (P,)
    order = np.argsort(-sims, kind="stable")
    for j in order:
        if pool_ids[j] != exclude:
            return int(pool_ids[j])
    raise ValueError("the candidate pool holds nothing but the target")


def candidate_pools(n: int, size: int, seed: int) -> list[np.ndarray]:
    """For each of n clips, the other members of its pool: random non-overlapping pools of `size` (paper 3).

    `random_pools(keep_remainder=True)` cuts range(n) into seeded pools; clip i's candidates are
    its pool without i, sorted.
    """
    out: list[np.ndarray] = [np.empty(0, dtype=np.int64)] * n
    for pool in random_pools(n, size, seed=seed, keep_remainder=True):
        members = np.asarray(pool, dtype=np.int64)
        for i in pool:
            out[i] = members[members != i]
    return out


def _title(analysis: TrackAnalysis) -> str:
    """A display title from the track sentence ("title by artist: tags"), else the hash's start."""
    head = analysis.sentence.split(":", 1)[0].strip() if analysis.sentence else ""
    return head or analysis.content_hash[:12]


def text_token_features(text_encoder: TextEncoder, texts: Sequence[str], batch: int = 64) -> list[np.ndarray]:
    """Unpooled token states of each text, cut to its real tokens: [(T_i, Dt)] (paper 4.1)."""
    out: list[np.ndarray] = []
    for start in range(0, len(texts), batch):
        tok = text_encoder.encode_tokens(list(texts[start : start + batch]))
        states, mask = tok.states.float().cpu().numpy(), tok.mask.cpu().numpy().astype(bool)
        out.extend(states[i][mask[i]] for i in range(len(states)))
    return out


def catalog_quartets(
    analyses: Sequence[TrackAnalysis],
    text_encoder: TextEncoder,
    writer: FeatureShardWriter,
    *,
    seed: int = 0,
    pool_size: int = CANDIDATE_POOL,
    progress: bool = False,
) -> list[Quartet]:
    """Music-only quartets from catalog analyses into `writer`; returns the quartets (no video).

    Each track is a target once; its candidate is the track most similar to it by music vector
    among the other members of its pool (random non-overlapping pools of `pool_size`, paper 3): a
    plausible but wrong first pick, as the paper's retriever gives; turn 2's words come from the
    tag differences. Targets already in the cache (resume) are skipped. The writer is flushed but not closed.
    """
    if len(analyses) < 2:
        raise ValueError(f"a catalog quartet needs two tracks, the catalog has {len(analyses)}")
    text_rng = random.Random(seed)
    vectors = np.stack([a.music_vector for a in analyses])  # (N, Dm)
    pools = candidate_pools(len(analyses), pool_size, seed)
    todo: list[Quartet] = []
    items: list[tuple[int, int]] = []
    for i, target in enumerate(analyses):
        pool = pools[i]
        j = retrieve_candidate(vectors[i], vectors[pool], pool.tolist(), exclude=i)
        cand = analyses[j]
        qid = f"catalog-{target.content_hash}"
        turns = conversation(_title(cand), cand.auto_tags, _title(target), target.auto_tags, text_rng)
        if qid in writer.done_ids:
            continue
        todo.append(
            Quartet(
                id=qid, target=f"sha256:{target.content_hash}", candidate=f"sha256:{cand.content_hash}",
                target_tags=target.auto_tags, candidate_tags=cand.auto_tags, turns=turns,
                target_title=_title(target), candidate_title=_title(cand), clip_duration_s=float(sum(s.end_s - s.start_s for s in target.segments)),
            )
        )
        items.append((i, j))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), desc="catalog quartets", unit="quartet")
    step = 256
    for start in range(0, len(todo), step):
        chunk = todo[start : start + step]
        tokens = text_token_features(text_encoder, [q.prompt for q in chunk])
        for q, (i, j), text in zip(chunk, items[start : start + step], tokens, strict=True):
            writer.add(FeatureItem(id=q.id, target=analyses[i].segment_vectors, candidate=analyses[j].segment_vectors, text=text))
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    writer.flush()
    log.info("catalog quartets: %d written, %d already cached", len(todo), len(analyses) - len(todo))
    return todo


# ------------------------------------------------------------------------------------------------
# `musechat data build`: quartets from one's own music videos, the paper's way (section 3)

VIDEO_EXTENSIONS = frozenset({".mp4", ".mkv", ".webm", ".mov", ".avi", ".m4v"})
MEDIA_CACHE = "media"  # per-video analyses under the output folder, so a rerun decodes nothing twice
WRITE_CHUNK = 256  # quartets whose prompts are encoded, and whose features are written, at a time


@dataclass
class BuildReport:
    quartets: list[Quartet]
    failures: dict[str, str]  # file -> why it was skipped
    n_videos: int


def _common_rows(vf: VideoFeatures, ta: TrackAnalysis) -> tuple[list[int], list[int]]:
    """Rows of the video's and of the music's segments that both kept (the same 10 s each)."""
    vi = {s.index: k for k, s in enumerate(vf.segments)}
    mi = {s.index: k for k, s in enumerate(ta.segments)}
    common = sorted(set(vi) & set(mi))
    return [vi[i] for i in common], [mi[i] for i in common]


def _aligned(vf: VideoFeatures, ta: TrackAnalysis) -> tuple[np.ndarray, np.ndarray]:
    """Video and music segment vectors of the segments both kept (the same 10 s each).  # (S, Dv), (S, Dm)"""
    v_rows, m_rows = _common_rows(vf, ta)
    return vf.segment_vectors[v_rows], ta.segment_vectors[m_rows]


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def _segment_log_mels(encoders: Encoders, clips: list[np.ndarray]) -> np.ndarray:
    """AST's float16 log-mel input of each segment's 10 s (`AstMusicEncoder.log_mels`).  # (S, frames, bins)"""
    return np.stack([encoders.music.log_mels(c) for c in clips]).astype(np.float16)  # type: ignore[attr-defined]


def _analyse_video(
    path: Path, cache: Path, encoders: Encoders, limits: MediaLimits | None, ffmpeg: str | None, *, log_mels: bool = False
) -> tuple[VideoFeatures, TrackAnalysis, Path | None]:
    """A video's features and its soundtrack's analysis (cached by content hash under `cache`).

    With `log_mels`, also the soundtrack's per-segment AST log-mels, one row per segment of the
    analysis (`{sha}.mels.npy`, float16), returned as a path: the build reads them memory-mapped.
    """
    sha = content_hash(path)
    vpath, mpath, lpath = cache / f"{sha}.video.npz", cache / f"{sha}.music.npz", cache / f"{sha}.mels.npy"
    limits = limits or MediaLimits()
    if vpath.is_file() and mpath.is_file():
        vf, ta = VideoFeatures.from_bytes(vpath.read_bytes()), TrackAnalysis.from_bytes(mpath.read_bytes())
        if log_mels and not lpath.is_file():  # analysed by a build of pooled features: decode for the log-mels only
            decoded = decode_track(path, sample_rate=encoders.music.sample_rate, limits=limits, ffmpeg=ffmpeg, content_hash=sha)
            segments, clips = decoded.segment_audio()
            if segments != ta.segments:
                raise CorruptMediaError(f"{path}: decodes to other segments than its cached analysis")
            _save_npy(lpath, _segment_log_mels(encoders, clips))
        return vf, ta, lpath if log_mels else None
    vf = video_features(path, encoders.image, profile=encoders.profile.name, limits=limits, ffmpeg=ffmpeg)
    decoded = decode_track(path, sample_rate=encoders.music.sample_rate, limits=limits, ffmpeg=ffmpeg, content_hash=sha)
    ta = embed_track(decoded, encoders, title=path.stem)
    if log_mels:  # the same segments embed_track kept, in its order
        _save_npy(lpath, _segment_log_mels(encoders, decoded.segment_audio()[1]))
    _write(vpath, vf.to_bytes())
    _write(mpath, ta.to_bytes())  # last: its presence says the video is done
    return vf, ta, lpath if log_mels else None


def _save_npy(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(path.stem + ".tmp.npy")
    np.save(tmp, array)
    tmp.replace(path)


@torch.no_grad()
def _model_candidates(model: MuseChatRecommender, videos: list[np.ndarray], musics: list[np.ndarray], pools: list[np.ndarray]) -> list[int]:
    """The fusion model's turn-1 pick (video only) for each clip among its pool (target excluded)."""
    model = model.eval()
    dev = next(model.parameters()).device
    tracks = torch.stack([track_vector(model.encode_music(pooled=torch.as_tensor(m, dtype=torch.float32, device=dev))) for m in musics])
    out = []
    for i, v in enumerate(videos):
        q = track_vector(model.encode_query(video=torch.as_tensor(v, dtype=torch.float32, device=dev)))  # (d,)
        pool = pools[i]
        scores = tracks[torch.as_tensor(pool, device=dev)] @ q
        out.append(int(pool[int(scores.argmax())]))
    return out


def build_from_videos(
    folder: str | Path,
    writer: FeatureShardWriter,
    encoders: Encoders,
    *,
    model: MuseChatRecommender | None = None,
    seed: int = 0,
    pool_size: int = CANDIDATE_POOL,
    limits: MediaLimits | None = None,
    ffmpeg: str | None = None,
    progress: bool = False,
) -> BuildReport:
    """Quartets from a folder of music videos (paper section 3), features into `writer` (flushed, not closed).

    Each video's centre 120 s gives its twelve 10 s segments of image features (5 fps) and of its
    own soundtrack's music features, which is the target. The candidate comes from the target's
    pool (random non-overlapping pools of `pool_size` clips of the folder, paper 3; the target
    excluded): the fusion `model`'s turn-1 pick (video only) when one is given (the paper used a
    pretrained retriever), else a seeded random member of the pool. Turn texts come from the tag differences (module docstring).
    Per-video analyses are cached under the writer's folder, so an interrupted build resumes.

    What the cache holds for the music follows `writer.spec.music_input`:
    - "features": the frozen music encoder's pooled vector per segment, target and candidate;
    - "log_mels" (the trained AST towers, engine/music_towers.py; an AST profile): AST's float16
      log-mel input of each target segment (the same 10 s as the video segment, paper 5.1) and of
      ONE 10 s candidate clip: the candidate's centre segment (the middle one of its analysed
      segments; the paper does not say which 10 s it took). The log-mels are cached per video
      (`media/{sha}.mels.npy`) and read memory-mapped, so a build holds one shard in memory.
    The candidate is chosen from the pooled vectors either way.
    """
    folder = Path(folder)
    log_mels = writer.spec.music_input == MUSIC_LOG_MELS
    if log_mels and not hasattr(encoders.music, "log_mels"):
        raise ValueError(
            f"profile {encoders.profile.name!r} has no AST music encoder ({encoders.profile.music_family}): "
            "a log-mel cache (trained AST towers) needs one; build pooled features instead"
        )
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file())
    cache = writer.root / MEDIA_CACHE
    cache.mkdir(parents=True, exist_ok=True)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(files), desc="analysing videos", unit="video")
    names, videos, musics, analyses, failures = [], [], [], [], {}
    mels: list[tuple[Path, list[int]]] = []  # log_mels: each clip's log-mel file and its rows aligned with the video
    for path in files:
        try:
            vf, ta, mel_file = _analyse_video(path, cache, encoders, limits, ffmpeg, log_mels=log_mels)
            v_rows, m_rows = _common_rows(vf, ta)
            if not v_rows:
                raise CorruptMediaError("no segment with both frames and sound")
            names.append(path)
            videos.append(vf.segment_vectors[v_rows])
            musics.append(ta.segment_vectors[m_rows])
            analyses.append(ta)
            if mel_file is not None:
                mels.append((mel_file, m_rows))
        except MediaError as e:
            failures[str(path)] = str(e)
            log.warning("data build: skipping %s: %s", path, e)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    if len(names) < 2:
        raise ValueError(f"{folder}: {len(names)} usable music videos; a quartet needs at least 2 (skipped: {failures})")
    rng = np.random.default_rng(seed)
    pools = candidate_pools(len(names), pool_size, seed)
    if model is not None:
        cands = _model_candidates(model, videos, musics, pools)
    else:
        cands = [int(rng.choice(p)) for p in pools]
    text_rng = random.Random(seed)
    quartets, texts, rows = [], [], []
    for i, path in enumerate(names):
        j = cands[i]
        ta, tc = analyses[i], analyses[j]
        qid = f"video-{ta.content_hash}"
        turns = conversation(names[j].stem, tc.auto_tags, path.stem, ta.auto_tags, text_rng)
        if qid in writer.done_ids:
            continue
        start = min(s.start_s for s in ta.segments)
        quartets.append(
            Quartet(
                id=qid, video=str(path), target=str(path), candidate=str(names[j]), clip_start_s=start,
                clip_duration_s=float(sum(s.end_s - s.start_s for s in ta.segments)), target_tags=ta.auto_tags,
                candidate_tags=tc.auto_tags, turns=turns, target_title=path.stem, candidate_title=names[j].stem,
            )
        )
        texts.append(turns[1].user)
        rows.append((i, j))

    def music_of(i: int, j: int) -> tuple[np.ndarray, np.ndarray]:
        if not log_mels:
            return musics[i], musics[j]
        (target_file, target_rows), (cand_file, cand_rows) = mels[i], mels[j]
        target = np.load(target_file, mmap_mode="r")[target_rows]  # (S, frames, bins)
        centre = cand_rows[len(cand_rows) // 2]
        candidate = np.load(cand_file, mmap_mode="r")[centre : centre + 1]  # (1, frames, bins)
        return target.reshape(len(target), -1), candidate.reshape(1, -1)

    for start in range(0, len(quartets), WRITE_CHUNK):
        chunk = slice(start, start + WRITE_CHUNK)
        tokens = text_token_features(encoders.text, texts[chunk])
        for q, (i, j), text in zip(quartets[chunk], rows[chunk], tokens, strict=True):
            target, candidate = music_of(i, j)
            writer.add(FeatureItem(id=q.id, video=videos[i], target=target, candidate=candidate, text=text))
    writer.flush()
    log.info("data build: %d quartets from %d videos (%d skipped)", len(quartets), len(files), len(failures))
    return BuildReport(quartets=quartets, failures=failures, n_videos=len(files))
