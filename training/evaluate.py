"""Evaluate recommendation models with the MuseChat protocol (paper section 5, Table 1).

- The test quartets are cut into random (seeded) non-overlapping pools of 500 (`PAPER_POOL_SIZE`,
  `random_pools`; a remainder is left out); each query ranks its pool's target tracks by cosine.
- Every metric, the median rank included, is computed per pool and averaged across pools, as the
  paper reports (training/metrics.py `average_metrics`).
- Track vector: the L2-normalised mean of the target's segment vectors (twelve 10 s segments).
- Query vector, likewise: the normalised mean of the per-segment queries (video segment j with the
  prompt and the candidate); a quartet without video has one query.
- Turn 1: video only. Turn 2: video + candidate music + prompt. Metrics (training/metrics.py):
  R@1/5/10 and MR of turn 2 (Table 1's layout), SR over both turns; turn 1 is reported too.
- The chance row is the expected value for the pool size; the paper's published rows of Table 1
  and Table 2 (ablations) are added for reference, marked as such.
- Each row says whether its model was trained with modality dropout (ours, not the paper's).
- A two-tower retriever checkpoint (`train --variant two_tower`, engine/retriever.py) is a turn-1
  row: its whole-clip video vector against the targets' whole-clip music vectors. It reads no
  prompt and no candidate, so its turn 2 is its turn 1 and its SR is its R@1, as the paper's
  MVPt row in Table 2 (SR 20.71 = R@1).

    python -m training.evaluate --data FEATURES --checkpoint RUN/model [--checkpoint ...] --holdout N [--pool-seed S]
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from engine.checkpoint import CheckpointMismatchError, load_checkpoint, load_retriever, read_checkpoint_info
from engine.encoders.base import TextEncoder
from engine.fusion import MuseChatRecommender, modality_dropout_label
from engine.music_towers import TowerRecommender, load_tower_checkpoint
from engine.retriever import MODEL_KIND as TWO_TOWER
from engine.retriever import TwoTowerRetriever
from training.features import MUSIC_LOG_MELS, FeatureDataset, random_pools
from training.metrics import PAPER_POOL_SIZE, RetrievalMetrics, average_metrics, chance_metrics, target_ranks, turn_metrics
from training.pooled import MEDIA_CACHE, pooled_clips

log = logging.getLogger(__name__)

EVAL_BATCH = 256  # queries encoded at once

Row = tuple[float, float, float, float, float | None]  # MR, R@1, R@5, R@10, SR (None: not given)

# paper Table 1 (turn 2; pools of 500)
PAPER_TABLE1: dict[str, Row] = {
    "VM-NET (paper)": (28, 5.31, 18.14, 28.78, None),
    "MVPt (paper)": (7, 20.71, 48.89, 63.14, None),
    "ViML (paper)": (5, 22.61, 52.43, 66.56, None),
    "Sum-Fusion (paper)": (17, 10.58, 28.47, 40.19, 21.70),
    "Self-Attn (paper)": (5, 21.40, 50.83, 65.29, 28.37),
    "Cross-Attn (paper)": (3, 25.71, 56.97, 71.07, 31.48),
    "MuseChat (paper)": (2, 32.79, 63.92, 76.53, 40.49),
}
# paper Table 2, the ablations (turn 2; pools of 500); MuseChat's row is Table 1's
PAPER_TABLE2: dict[str, Row] = {
    "MVPt, video -> music (paper, Table 2)": (7, 20.71, 48.89, 63.14, 20.71),
    "w/o video: music, text (paper, Table 2)": (19, 8.12, 24.53, 37.11, 8.12),
    "w/o candidate: video, text (paper, Table 2)": (5, 22.67, 51.53, 65.42, 26.02),
}
PAPER_ROWS: dict[str, Row] = {**PAPER_TABLE1, **PAPER_TABLE2}


@dataclass
class EvalResult:
    name: str
    turn1: RetrievalMetrics  # averaged across pools
    turn2: RetrievalMetrics  # averaged across pools; carries the success rate over both turns
    n_pools: int
    pool_seed: int = 0
    modality_dropout: str | None = None  # what the model trained with (modality_dropout_label); None: not a fusion model
    per_pool: list[tuple[RetrievalMetrics, RetrievalMetrics]] = field(default_factory=list)  # (turn 1, turn 2) of each pool

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "turn1": self.turn1.to_json(),
            "turn2": self.turn2.to_json(),
            "n_pools": self.n_pools,
            "pool_seed": self.pool_seed,
            "modality_dropout": self.modality_dropout,
            "per_pool": [{"turn1": a.to_json(), "turn2": b.to_json()} for a, b in self.per_pool],
        }


def pooled_result(
    name: str, ranks: list[tuple[np.ndarray, np.ndarray]], *, pool_seed: int, modality_dropout: str | None = None
) -> EvalResult:
    """Per-pool metrics from each pool's (turn-1 ranks, turn-2 ranks), and their averages (paper 5)."""
    per_pool = [(turn_metrics(r1, len(r1)), turn_metrics(r2, len(r2), turn1_ranks=r1)) for r1, r2 in ranks]
    return EvalResult(
        name=name,
        turn1=average_metrics([a for a, _ in per_pool]),
        turn2=average_metrics([b for _, b in per_pool]),
        n_pools=len(per_pool),
        pool_seed=pool_seed,
        modality_dropout=modality_dropout,
        per_pool=per_pool,
    )


@torch.no_grad()
def music_vectors(model: MuseChatRecommender | TowerRecommender, data: FeatureDataset, idx: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Track vectors of the targets of quartets `idx`: normalised mean of segment vectors.  # (N, d)"""
    t = data.tensors
    out = []
    # log-mels: every segment is an AST forward, so as many segments at once as queries elsewhere
    per_chunk = max(1, EVAL_BATCH // data.spec.max_segments) if data.spec.music_input == MUSIC_LOG_MELS else EVAL_BATCH
    for chunk in idx.split(per_chunk):
        seg = t["target"][chunk].float().to(device)  # (B, S, Dm)
        b, s, dm = seg.shape
        if data.spec.music_input == MUSIC_LOG_MELS:  # the trained g_mt on each 10 s segment's log-mels
            mels = seg.reshape(b * s, data.spec.mel_frames, data.spec.mel_bins)
            v = model.encode_music(mels).reshape(b, s, -1)  # (B, S, d)
        else:
            v = model.encode_music(pooled=seg.reshape(b * s, dm)).reshape(b, s, -1)  # (B, S, d)
        mask = (torch.arange(s)[None, :] < t["target_len"][chunk].long()[:, None]).to(device)
        mean = (v * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        out.append(F.normalize(mean, dim=-1))
    return torch.cat(out)


@torch.no_grad()
def query_vectors(model: MuseChatRecommender | TowerRecommender, data: FeatureDataset, idx: torch.Tensor, turn: int, device: torch.device) -> torch.Tensor:
    """Clip-level queries of quartets `idx` at turn 1 (video only) or 2 (all inputs).  # (N, d)"""
    if turn not in (1, 2):
        raise ValueError(f"turn must be 1 or 2, got {turn}")
    t = data.tensors
    out = []
    for chunk in idx.split(max(1, EVAL_BATCH // data.spec.max_segments)):
        b = len(chunk)
        vlen = t["video_len"][chunk].long()  # (B,)
        s = t["video"].shape[1]
        n_q = vlen.clamp(min=1)  # a quartet without video: one query
        rows = torch.repeat_interleave(torch.arange(b), s)  # (B*S,)
        segs = torch.arange(s).repeat(b)  # (B*S,)
        keep = segs < n_q[rows]
        rows, segs = rows[keep], segs[keep]
        gidx = chunk[rows]
        kwargs: dict[str, torch.Tensor] = {
            "video": t["video"][gidx, segs].float().to(device),
            "has_video": (t["video_len"][gidx] > 0).to(device),
        }
        if turn == 2 and data.spec.music_input == MUSIC_LOG_MELS:  # the candidate clip through the trained g_mc
            kwargs["text"] = t["text"][gidx].float().to(device)
            kwargs["text_mask"] = (torch.arange(t["text"].shape[1])[None, :] < t["text_len"][gidx].long()[:, None]).to(device)
            kwargs["candidate_mels"] = t["candidate"][gidx, 0].float().view(len(gidx), data.spec.mel_frames, data.spec.mel_bins).to(device)
            kwargs["has_candidate"] = (t["candidate_len"][gidx] > 0).to(device)
        elif turn == 2:
            for name in ("text", "candidate"):
                rows_n = t[name].shape[1]
                kwargs[name] = t[name][gidx].float().to(device)
                kwargs[f"{name}_mask"] = (torch.arange(rows_n)[None, :] < t[f"{name}_len"][gidx].long()[:, None]).to(device)
        q = model.encode_query(**kwargs)  # (B', d)
        summed = torch.zeros(b, q.shape[1], device=device).index_add_(0, rows.to(device), q)
        out.append(F.normalize(summed, dim=-1))
    return torch.cat(out)


@torch.no_grad()
def clip_vectors(model: TwoTowerRetriever, data: FeatureDataset, idx: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The retriever's whole-clip video and music vectors of quartets `idx`.  # (N, d), (N, d)"""
    videos, musics = [], []
    for chunk in idx.split(EVAL_BATCH):
        b = data.clip_batch(chunk, device)
        videos.append(model.encode_video(b["video"], b["video_mask"]))
        musics.append(model.encode_music(b["target"], b["target_mask"]))
    return torch.cat(videos), torch.cat(musics)


def evaluate_model(
    model: MuseChatRecommender | TowerRecommender | TwoTowerRetriever,
    data: FeatureDataset,
    *,
    name: str = "model",
    pool_size: int = PAPER_POOL_SIZE,
    pool_seed: int = 0,
    device: str | torch.device = "cpu",
) -> EvalResult:
    """Turn-1 and turn-2 metrics of `model`, averaged over random non-overlapping pools of `data` (module docstring)."""
    device = torch.device(device)
    model = model.to(device).eval()
    ranks: list[tuple[np.ndarray, np.ndarray]] = []
    retriever = isinstance(model, TwoTowerRetriever)
    for pool in random_pools(len(data), pool_size, seed=pool_seed):
        idx = torch.tensor(pool)
        targets = torch.arange(len(idx), device=device)
        if retriever:  # turn 1 only: no prompt, no candidate (module docstring)
            video, music = clip_vectors(model, data, idx, device)  # (P, d) x 2
            r1 = target_ranks(model.score(video, music), targets).cpu().numpy()
            ranks.append((r1, r1))
            continue
        music = music_vectors(model, data, idx, device)  # (P, d)
        r1, r2 = (target_ranks(query_vectors(model, data, idx, turn, device) @ music.T, targets).cpu().numpy() for turn in (1, 2))
        ranks.append((r1, r2))
    label = None if retriever else modality_dropout_label(model.config)
    result = pooled_result(name, ranks, pool_seed=pool_seed, modality_dropout=label)
    log.info("evaluated %s on %d pools of %d (seed %d)", name, result.n_pools, result.turn2.pool_size, pool_seed)
    return result


def _fmt(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _paper_line(name: str, row: Row) -> str:
    mr, a, b, c, sr = row
    return f"| {name} | {mr:g} | {_fmt(a)} | {_fmt(b)} | {_fmt(c)} | {_fmt(sr)} | - | - | 500 | - |"


def markdown_table(results: list[EvalResult], pool_size: int, *, paper_rows: bool = True) -> str:
    """Table 1's layout: method, MR, R@1, R@5, R@10 (turn 2), SR; turn-1 columns, pools, modality dropout.

    Every figure is the mean across pools (MR included); then chance, then the paper's Table 1 and
    Table 2 rows for reference.
    """
    lines = [
        "| Method | MR ↓ | R@1 | R@5 | R@10 | SR | turn-1 MR | turn-1 R@1 | pools × size | modality dropout |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    ch = chance_metrics(pool_size)
    lines.append(f"| Random (chance) | {ch.median_rank:g} | {_fmt(ch.r1)} | {_fmt(ch.r5)} | {_fmt(ch.r10)} | {_fmt(ch.success_rate)} | {ch.median_rank:g} | {_fmt(ch.r1)} | - | - |")
    for r in results:
        m, t1 = r.turn2, r.turn1
        lines.append(
            f"| {r.name} | {m.median_rank:g} | {_fmt(m.r1)} | {_fmt(m.r5)} | {_fmt(m.r10)} | {_fmt(m.success_rate)} "
            f"| {t1.median_rank:g} | {_fmt(t1.r1)} | {r.n_pools} × {m.pool_size} | {r.modality_dropout or '-'} |"
        )
    if paper_rows:
        lines += [_paper_line(name, row) for name, row in PAPER_TABLE1.items()]
        lines += [_paper_line(name, row) for name, row in PAPER_TABLE2.items()]
    return "\n".join(lines) + "\n"


def evaluate_checkpoints(
    data: FeatureDataset,
    checkpoints: list[tuple[str, str | Path]],
    *,
    pool_size: int = PAPER_POOL_SIZE,
    pool_seed: int = 0,
    device: str = "cpu",
) -> list[EvalResult]:
    """Load each (name, checkpoint directory) and evaluate it on the same pools."""
    results = []
    for name, path in checkpoints:
        if read_checkpoint_info(path).kind == TWO_TOWER:  # the turn-1 retriever (a video -> music row)
            clips = pooled_clips(data)  # a log-mel cache: its build's pooled vectors, the same quartets
            retriever = load_retriever(path, expect_profile=clips.spec.profile,
                                       expect_dims=(clips.spec.video_dim, clips.spec.target_music_dim), device=device)
            results.append(evaluate_model(retriever, clips, name=name, pool_size=pool_size, pool_seed=pool_seed, device=device))
            continue
        if data.spec.music_input == MUSIC_LOG_MELS:  # a run that trained the AST towers
            towers = load_tower_checkpoint(path, expect_profile=data.spec.profile, device=device)
            ast = towers.g_mt.ast.config
            if (int(ast.max_length), int(ast.num_mel_bins)) != (data.spec.mel_frames, data.spec.mel_bins):
                raise CheckpointMismatchError(
                    f"the towers of {path} take {ast.max_length} x {ast.num_mel_bins} log-mels; the cache holds "
                    f"{data.spec.mel_frames} x {data.spec.mel_bins}"
                )
            results.append(evaluate_model(towers, data, name=name, pool_size=pool_size, pool_seed=pool_seed, device=device))
            continue
        model = load_checkpoint(path, expect_profile=data.spec.profile, device=device)
        c, sp = model.config, data.spec
        found = (c.video_dim, c.text_dim, c.music_dim, c.target_music_dim)
        if found != (sp.video_dim, sp.text_dim, sp.music_dim, sp.target_music_dim):
            raise CheckpointMismatchError(
                f"fusion checkpoint {path} takes features of sizes (video, text, music, target) {found}; "
                f"the feature cache has {(sp.video_dim, sp.text_dim, sp.music_dim, sp.target_music_dim)}"
            )
        results.append(evaluate_model(model, data, name=name, pool_size=pool_size, pool_seed=pool_seed, device=device))
    return results


def write_report(results: list[EvalResult], pool_size: int, out: str | Path) -> tuple[Path, Path]:
    """Write `out`.md (the table) and `out`.json; return both paths."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    md, js = out.with_suffix(".md"), out.with_suffix(".json")
    md.write_text(markdown_table(results, pool_size))
    payload = {
        "pool_size": pool_size,
        "averaged_across_pools": True,
        "chance": chance_metrics(pool_size).to_json(),
        "results": [r.to_json() for r in results],
        "paper_table1": {k: dict(zip(("median_rank", "r1", "r5", "r10", "success_rate"), v, strict=True)) for k, v in PAPER_TABLE1.items()},
        "paper_table2": {k: dict(zip(("median_rank", "r1", "r5", "r10", "success_rate"), v, strict=True)) for k, v in PAPER_TABLE2.items()},
    }
    js.write_text(json.dumps(payload, indent=2) + "\n")
    return md, js


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Evaluate fusion checkpoints with the paper's protocol")
    p.add_argument("--data", required=True, help="feature cache of the test quartets (or the training cache with --holdout)")
    p.add_argument("--checkpoint", action="append", required=True, help="NAME=DIR or DIR; repeat for several rows")
    p.add_argument("--holdout", type=int, default=0, help="evaluate the held-out split of this size (as training's --holdout)")
    p.add_argument("--seed", type=int, default=0, help="the split's seed (training's --seed)")
    p.add_argument("--pool-size", type=int, default=PAPER_POOL_SIZE)
    p.add_argument("--pool-seed", type=int, default=0, help="seed of the random non-overlapping pools")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="eval/results")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    data = FeatureDataset(a.data)
    if a.holdout:
        _, data = data.split(a.holdout, seed=a.seed)
    pairs = [tuple(c.split("=", 1)) if "=" in c else (Path(c).parent.name or c, c) for c in a.checkpoint]
    results = evaluate_checkpoints(data, pairs, pool_size=a.pool_size, pool_seed=a.pool_seed, device=a.device)  # type: ignore[arg-type]
    md, _ = write_report(results, min(a.pool_size, len(data)), a.out)
    print(md.read_text())


if __name__ == "__main__":
    main()


def evaluate_zero_shot(
    feature_dir: str | Path,
    text_encoder: TextEncoder,
    *,
    pool_size: int = PAPER_POOL_SIZE,
    pool_seed: int = 0,
    ids: list[str] | None = None,
    name: str = "zero-shot scorer",
) -> EvalResult:
    """The zero-shot scorer (engine/zeroshot.py) on the same pools, for caches built by `data build`.

    It needs what the fusion features do not hold: each video's image labels, motion and cut rate,
    and each track's sentence vector, tags and rhythm; `data build` keeps them in its media cache
    (`FEATURES/media`). Turn 1: the video alone; turn 2: the video, the prompt as the user's words,
    and the candidate as the previous track (steering moves from it). `ids`: the quartets to use,
    in the dataset's order (default: the cache's order, as `evaluate_model` sees them), so that the
    same `pool_seed` gives the same pools.
    """
    from engine.tracks import TrackAnalysis
    from engine.video import VideoFeatures
    from engine.zeroshot import Candidates, TrackFeatures, ZeroShotScorer
    from training.data import read_quartets
    from training.features import read_manifest

    root = Path(feature_dir)
    media = root / MEDIA_CACHE
    jsonl = root / "quartets.jsonl"
    if not media.is_dir() or not jsonl.is_file():
        raise FileNotFoundError(f"{root} has no {MEDIA_CACHE}/ or quartets.jsonl: the zero-shot row needs a `data build` cache")
    by_id = {q.id: q for q in read_quartets(jsonl)}
    order = ids if ids is not None else [i for s in read_manifest(root)["shards"] for i in s["ids"]]
    quartets = [by_id[i] for i in order]
    scorer = ZeroShotScorer(text_encoder)
    vocab = scorer.vocabulary

    def sha(quartet_id: str) -> str:
        return quartet_id.removeprefix("video-")

    path_to_sha = {q.target: sha(q.id) for q in by_id.values()}  # every clip of the build, held out or not
    analyses: dict[str, TrackAnalysis] = {}

    def analysis(h: str) -> TrackAnalysis:
        if h not in analyses:
            analyses[h] = TrackAnalysis.from_bytes((media / f"{h}.music.npz").read_bytes())
        return analyses[h]

    ranks: list[tuple[np.ndarray, np.ndarray]] = []
    for pool in random_pools(len(quartets), pool_size, seed=pool_seed):
        qs = [quartets[i] for i in pool]
        tracks = [analysis(sha(q.id)) for q in qs]
        cands = Candidates(
            text=np.stack([np.asarray(t.text_vector, dtype=np.float32) for t in tracks]),
            tags=vocab.matrix([t.tag_probs for t in tracks]),
            rhythm=np.stack([t.rhythm_array for t in tracks]),
        )
        r1s, r2s = [], []
        for k, q in enumerate(qs):
            vf = VideoFeatures.from_bytes((media / f"{sha(q.id)}.video.npz").read_bytes())
            s1 = scorer.score(video=vf, candidates=cands)
            prev_sha = path_to_sha.get(q.candidate or "")
            prev_t = analysis(prev_sha) if prev_sha else None
            previous = None
            if prev_t is not None:
                previous = TrackFeatures(text=prev_t.text_vector, tags=vocab.vector(prev_t.tag_probs), rhythm=prev_t.rhythm_array)
            s2 = scorer.score(video=vf, text=q.prompt or None, candidates=cands, previous=previous)
            for s, acc in ((s1, r1s), (s2, r2s)):
                acc.append(int(target_ranks(torch.from_numpy(np.asarray(s, dtype=np.float64))[None], torch.tensor([k]))[0]))
        ranks.append((np.asarray(r1s), np.asarray(r2s)))
    return pooled_result(name, ranks, pool_seed=pool_seed)
