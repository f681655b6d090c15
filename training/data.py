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

import dataclasses
import json
import logging
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from engine.checkpoint import FUSION_KIND
from engine.encoders.base import TextEncoder
from engine.fusion import MuseChatRecommender, track_vector
from engine.media import CorruptMediaError, MediaError, MediaLimits
from engine.music_towers import TowerRecommender, candidate_segment
from engine.profiles import Encoders
from engine.retriever import MODEL_KIND as RETRIEVER_KIND
from engine.retriever import TwoTowerRetriever
from engine.tracks import TrackAnalysis, decode_track, embed_track
from engine.video import VideoFeatures, content_hash, video_features
from training.features import (
    MUSIC_LOG_MELS,
    FeatureDataset,
    FeatureItem,
    FeatureShardWriter,
    FeatureSpec,
    random_pools,
)
from training.pooled import MEDIA_CACHE, common_rows, padded, pairs, retriever_spec

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
WRITE_CHUNK = 256  # quartets whose prompts are encoded, and whose features are written, at a time


RETRIEVER_RUN = "retriever"  # under the output folder: the two-tower run a build trains when given none
RANDOM_CANDIDATES = "random"  # the manifest's candidate source with --random-candidates


@dataclass
class BuildReport:
    quartets: list[Quartet]
    failures: dict[str, str]  # file -> why it was skipped
    n_videos: int
    candidates: str = ""  # where the candidates came from (describe_candidates)


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


def candidate_clip_segment(analysis: TrackAnalysis) -> int:
    """Which analysed segment of a track is its 10 s candidate clip: `engine.music_towers.candidate_segment`,
    the rule the app's trained towers use for the previous track (the segment nearest the centre of
    the listening excerpt), so the training candidates are the clips g_mc reads in a conversation."""
    return candidate_segment([(s.start_s, s.end_s) for s in analysis.segments], analysis.excerpt_start_s, analysis.excerpt_duration_s)


def _save_npy(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(path.stem + ".tmp.npy")
    np.save(tmp, array)
    tmp.replace(path)


@dataclass
class Clips:
    """The usable music videos of a folder, analysed: per clip its aligned video and music segments."""

    paths: list[Path]
    videos: list[np.ndarray]  # [(S_i, Dv)]
    musics: list[np.ndarray]  # [(S_i, Dm)] the own soundtrack, segment j = video segment j
    analyses: list[TrackAnalysis]
    failures: dict[str, str]  # file -> why it was skipped
    n_files: int
    music_rows: list[list[int]] = field(default_factory=list)  # rows of analyses[i].segments aligned with the video (musics[i])
    mel_files: list[Path] = field(default_factory=list)  # log-mel builds: each clip's `{sha}.mels.npy`, a row per analysed segment

    def __len__(self) -> int:
        return len(self.paths)


def analyse_folder(
    folder: str | Path,
    cache: Path,
    encoders: Encoders,
    *,
    limits: MediaLimits | None = None,
    ffmpeg: str | None = None,
    progress: bool = False,
    log_mels: bool = False,
) -> Clips:
    """Analyse every video of `folder` (cached by content hash under `cache`); unusable ones are listed with why.

    With `log_mels`, each clip's AST log-mels are cached too (`_analyse_video`) and listed in `Clips.mel_files`.
    """
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file())
    cache.mkdir(parents=True, exist_ok=True)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(files), desc="analysing videos", unit="video")
    clips = Clips(paths=[], videos=[], musics=[], analyses=[], failures={}, n_files=len(files))
    for path in files:
        try:
            vf, ta, mel_file = _analyse_video(path, cache, encoders, limits, ffmpeg, log_mels=log_mels)
            v_rows, m_rows = common_rows(vf, ta)
            if not v_rows:
                raise CorruptMediaError("no segment with both frames and sound")
            clips.paths.append(path)
            clips.videos.append(vf.segment_vectors[v_rows])
            clips.musics.append(ta.segment_vectors[m_rows])
            clips.analyses.append(ta)
            clips.music_rows.append(m_rows)
            if mel_file is not None:
                clips.mel_files.append(mel_file)
        except MediaError as e:
            clips.failures[str(path)] = str(e)
            log.warning("data build: skipping %s: %s", path, e)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    if len(clips) < 2:
        raise ValueError(f"{folder}: {len(clips)} usable music videos; a quartet needs at least 2 (skipped: {clips.failures})")
    return clips


def clip_dataset(clips: Clips, spec: FeatureSpec) -> FeatureDataset:
    """The clips' (video, own soundtrack) pairs as a FeatureDataset: the retriever's training data."""
    return pairs(spec, [f"video-{a.content_hash}" for a in clips.analyses], clips.videos, clips.musics)


@torch.no_grad()
def retriever_candidates(retriever: TwoTowerRetriever, clips: Clips, pools: Sequence[np.ndarray], *, batch: int = 256) -> list[int]:
    """The two-tower retriever's turn-1 pick for each clip: the pool member (never the clip itself)
    whose whole-clip music vector is most cosine-similar to the clip's whole-clip video vector."""
    retriever = retriever.eval()
    dev = next(retriever.parameters()).device
    rows = retriever.config.max_segments
    video, vlen = padded(clips.videos, rows)
    music, mlen = padded(clips.musics, rows)
    steps = torch.arange(rows)
    vs, ms = [], []
    for start in range(0, len(clips), batch):
        sl = slice(start, start + batch)
        vs.append(retriever.encode_video(video[sl].to(dev), (steps[None] < vlen[sl, None]).to(dev)))
        ms.append(retriever.encode_music(music[sl].to(dev), (steps[None] < mlen[sl, None]).to(dev)))
    v, m = torch.cat(vs), torch.cat(ms)  # (N, d) x 2
    out = []
    for i, pool in enumerate(pools):
        if len(pool) == 0 or i in set(pool.tolist()):
            raise ValueError(f"clip {i}'s pool must hold other clips and not itself, got {pool.tolist()}")
        scores = retriever.score(v[i : i + 1], m[torch.as_tensor(pool, device=dev)])[0]  # (P,)
        out.append(int(pool[int(scores.argmax())]))
    return out


@torch.no_grad()
def _model_candidates(model: MuseChatRecommender | TowerRecommender, clips: Clips, pools: list[np.ndarray]) -> list[int]:
    """The fusion model's turn-1 pick (video only) for each clip among its pool (target excluded).

    Each clip's music vector is `track_vector` of its segments' vectors: the frozen encoder's pooled
    vectors through the model's music tower, or, for a checkpoint with trained AST towers
    (`TowerRecommender`, a log-mel build), the fine-tuned g_mt over the segments' log-mels, as the
    app's catalog vectors (`engine.music_towers.tower_track`)."""
    model = model.eval()
    dev = next(model.parameters()).device
    if isinstance(model, TowerRecommender):
        if len(clips.mel_files) != len(clips):
            raise ValueError("a fusion checkpoint with trained AST towers ranks the candidates by their log-mels: build a log-mel cache")
        mels = (np.load(f, mmap_mode="r")[rows] for f, rows in zip(clips.mel_files, clips.music_rows, strict=True))  # (S, frames, bins) each
        tracks = torch.stack([track_vector(model.encode_music(torch.as_tensor(np.asarray(m, dtype=np.float32), device=dev))) for m in mels])
    else:
        tracks = torch.stack([track_vector(model.encode_music(pooled=torch.as_tensor(m, dtype=torch.float32, device=dev))) for m in clips.musics])
    out = []
    for i, v in enumerate(clips.videos):
        q = track_vector(model.encode_query(video=torch.as_tensor(v, dtype=torch.float32, device=dev)))  # (d,)
        pool = pools[i]
        scores = tracks[torch.as_tensor(pool, device=dev)] @ q
        out.append(int(pool[int(scores.argmax())]))
    return out


@dataclass
class RetrieverTraining:
    """How `data build` trains its turn-1 retriever when none is given (ours: the paper's was pretrained, section 3)."""

    epochs: int = 10
    batch_size: int = 64  # clips per step (a folder with fewer: all of them, one step per epoch)
    lr: float = 5e-4
    seed: int = 0
    device: str = "auto"
    progress: bool = True


def train_build_retriever(clips: Clips, spec: FeatureSpec, run_dir: Path, training: RetrieverTraining) -> Path:
    """Train the two-tower retriever on the clips' (video, own soundtrack) pairs with the fusion training
    loop (`train --variant two_tower`); the run (state.pt, metrics.jsonl, model/) lands in `run_dir`,
    and an interrupted run resumes. Returns the checkpoint directory (run_dir/model)."""
    from training.train_fusion import MODEL_DIR, PAPER_WEIGHT_DECAY, TrainConfig, train

    data = clip_dataset(clips, spec)
    batch = min(training.batch_size, len(data))
    total = (len(data) // batch) * training.epochs
    cfg = TrainConfig(
        data=str(run_dir), out=str(run_dir), epochs=training.epochs, batch_size=batch, lr=training.lr,
        weight_decay=PAPER_WEIGHT_DECAY, warmup_steps=max(1, total // 10), seed=training.seed, device=training.device,
        resume=True, save_every=max(1, total), log_every=1, progress=training.progress, fusion={"variant": RETRIEVER_KIND},
    )
    train(cfg, data)
    return run_dir / MODEL_DIR


def _candidate_record(source: str, path: Path | None, trained_here: bool = False) -> dict:
    """What the manifest keeps about where a build's candidates came from."""
    return {"source": source, "path": None if path is None else str(path), "trained_on_this_build": trained_here}


def describe_candidates(record: dict) -> str:
    """One line for reports: 'retrieved by the two-tower retriever X (trained on this build's clips)', 'random from the pool ...'."""
    if record["source"] == RANDOM_CANDIDATES:
        return "random from the pool (--random-candidates)"
    what = "the two-tower retriever" if record["source"] == RETRIEVER_KIND else "the fusion checkpoint"
    here = " (trained on this build's clips)" if record.get("trained_on_this_build") else ""
    return f"retrieved by {what} {record['path']}{here}"


def build_from_videos(
    folder: str | Path,
    writer: FeatureShardWriter,
    encoders: Encoders,
    *,
    retriever: TwoTowerRetriever | None = None,
    retriever_path: Path | None = None,
    model: MuseChatRecommender | TowerRecommender | None = None,
    model_path: Path | None = None,
    random_candidates: bool = False,
    training: RetrieverTraining | None = None,
    seed: int = 0,
    pool_size: int = CANDIDATE_POOL,
    limits: MediaLimits | None = None,
    ffmpeg: str | None = None,
    progress: bool = False,
    say: Callable[[str], None] | None = None,
) -> BuildReport:
    """Quartets from a folder of music videos (paper section 3), features into `writer` (flushed, not closed).

    Each video's centre 120 s gives its twelve 10 s segments of image features (5 fps) and of its
    own soundtrack's music features, which is the target. The candidate is the turn-1 pick, among
    the target's pool (random non-overlapping pools of `pool_size` clips of the folder, paper 3;
    the target excluded), of:
    - `retriever`, a two-tower video -> music retriever (engine/retriever.py), as the paper's
      pretrained MVP retriever; or, with none given,
    - a retriever trained here on the folder's clips (`training`; the run under
      `writer.root / RETRIEVER_RUN`, reused by a rerun), the default;
    - or the fusion `model` (video only; a `TowerRecommender`, a checkpoint with trained AST towers,
      ranks by g_mt over the log-mels, so only in a log-mel build), or a seeded random pool member
      with `random_candidates`.
    Which one is recorded in the cache's manifest (`"build": {"candidates": ...}`); a rerun into the
    same folder with another source is refused (the quartets would mix two kinds of candidates).
    Turn texts come from the tag differences (module docstring). Per-video analyses are cached
    under the writer's folder, so an interrupted build resumes. `say`: progress lines for a person.

    What the cache holds for the music follows `writer.spec.music_input` (kept in its manifest's spec):
    - "features": the frozen music encoder's pooled vector per segment, target and candidate;
    - "log_mels" (the trained AST towers, engine/music_towers.py; an AST profile): AST's float16
      log-mel input of each target segment (the same 10 s as the video segment, paper 5.1) and of
      ONE 10 s candidate clip of the picked candidate: `candidate_clip_segment`, the app's rule
      (the paper does not say which 10 s it took). The log-mels are cached per
      video (`media/{sha}.mels.npy`) and read memory-mapped, so a build holds one shard in memory.
    The candidate is picked from the frozen encoder's pooled vectors either way (the retriever and
    the fusion model read those, `retriever_spec`); a log-mel cache does not store them, the
    per-video analyses under `media/` keep them.
    """
    log_mels = writer.spec.music_input == MUSIC_LOG_MELS
    if log_mels and not hasattr(encoders.music, "log_mels"):
        raise ValueError(
            f"profile {encoders.profile.name!r} has no AST music encoder ({encoders.profile.music_family}): "
            "a log-mel cache (trained AST towers) needs one; build pooled features instead"
        )
    say = say or (lambda line: log.info("%s", line))
    if isinstance(model, TowerRecommender) and writer.spec.music_input != MUSIC_LOG_MELS:
        raise ValueError("a fusion checkpoint with trained AST towers ranks the candidates with g_mt on their log-mels: build a log-mel cache")
    given = [name for name, on in (("retriever", retriever is not None), ("model", model is not None), ("random_candidates", random_candidates)) if on]
    if len(given) > 1:
        raise ValueError(f"candidates come from one source; got {' and '.join(given)}")
    own_run = writer.root / RETRIEVER_RUN
    if random_candidates:
        record = _candidate_record(RANDOM_CANDIDATES, None)
    elif model is not None:
        record = _candidate_record(FUSION_KIND, model_path)
    elif retriever is not None:
        record = _candidate_record(RETRIEVER_KIND, retriever_path)
    else:
        record = _candidate_record(RETRIEVER_KIND, own_run / "model", trained_here=True)
    old = writer.build.get("candidates")
    if old is not None and writer.done_ids and (old["source"], old["path"]) != (record["source"], record["path"]):
        raise ValueError(
            f"{writer.root} holds quartets whose candidates were {describe_candidates(old)}; this build's would be "
            f"{describe_candidates(record)}: write to another --out folder, or rerun with the same option"
        )
    writer.record_build("candidates", record)  # before any work: the manifest says what the quartets hold

    clips = analyse_folder(folder, writer.root / MEDIA_CACHE, encoders, limits=limits, ffmpeg=ffmpeg, progress=progress, log_mels=log_mels)
    pools = candidate_pools(len(clips), pool_size, seed)
    pooled = retriever_spec(writer.spec, int(clips.musics[0].shape[1]))
    if random_candidates:
        rng = np.random.default_rng(seed)
        cands = [int(rng.choice(p)) for p in pools]
    elif model is not None:
        cands = _model_candidates(model, clips, pools)
    else:
        if retriever is None:
            from engine.checkpoint import CONFIG_FILE, load_retriever

            ckpt = own_run / "model"
            if (ckpt / CONFIG_FILE).is_file():
                say(f"reusing the turn-1 retriever trained by an earlier build: {ckpt} (delete {own_run} to train it again)")
            else:
                t = training or RetrieverTraining(seed=seed)
                say(f"training the turn-1 two-tower retriever on {len(clips)} clips ({t.epochs} epochs, seed {t.seed}) -> {own_run}")
                train_build_retriever(clips, pooled, own_run, t)
            retriever = load_retriever(ckpt, expect_profile=pooled.profile, expect_dims=(pooled.video_dim, pooled.target_music_dim))
        cands = retriever_candidates(retriever, clips, pools)
    report = _write_quartets(clips, cands, writer, encoders, seed)
    report.candidates = describe_candidates(record)
    return report


def _write_quartets(clips: Clips, cands: Sequence[int], writer: FeatureShardWriter, encoders: Encoders, seed: int) -> BuildReport:
    """Quartets (target i, candidate cands[i]) with their turn texts into `writer`; already cached ids are skipped."""
    text_rng = random.Random(seed)
    names, analyses = clips.paths, clips.analyses
    log_mels = writer.spec.music_input == MUSIC_LOG_MELS
    quartets, texts, rows = [], [], []
    for i, path in enumerate(names):
        j = cands[i]
        if j == i:
            raise ValueError(f"{path}: a clip's candidate must be another clip")
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
            return clips.musics[i], clips.musics[j]
        target = np.load(clips.mel_files[i], mmap_mode="r")[clips.music_rows[i]]  # (S, frames, bins)
        k = candidate_clip_segment(clips.analyses[j])
        candidate = np.load(clips.mel_files[j], mmap_mode="r")[k : k + 1]  # (1, frames, bins)
        return target.reshape(len(target), -1), candidate.reshape(1, -1)

    for start in range(0, len(quartets), WRITE_CHUNK):
        chunk = slice(start, start + WRITE_CHUNK)
        tokens = text_token_features(encoders.text, texts[chunk])
        for q, (i, j), text in zip(quartets[chunk], rows[chunk], tokens, strict=True):
            target, candidate = music_of(i, j)
            writer.add(FeatureItem(id=q.id, video=clips.videos[i], target=target, candidate=candidate, text=text))
    writer.flush()
    log.info("data build: %d quartets from %d videos (%d skipped)", len(quartets), clips.n_files, len(clips.failures))
    return BuildReport(quartets=quartets, failures=clips.failures, n_videos=clips.n_files)
