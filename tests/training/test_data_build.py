"""`musechat data build`: quartets from music videos synthesised with lavfi (tiny profile)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

from bot.settings import get_settings
from bot.cli.training import register_training_commands
from engine.checkpoint import load_retriever, save_checkpoint
from engine.fusion import MuseChatRecommender
from engine.music_towers import candidate_segment
from engine.tracks import TrackAnalysis
from engine.video import VideoFeatures, content_hash
from tests.conftest import lavfi
from training.features import FeatureDataset, FeatureSpec, random_pools, read_manifest
from training.train_fusion import METRICS_FILE, fusion_config_for

CLIP_S = 12  # seconds: two segments (10 s + 2 s)


@pytest.fixture(autouse=True)
def isolated_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("MUSECHAT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("MUSECHAT_PROFILE", "tiny")
    monkeypatch.delenv("MUSECHAT_FUSION_CHECKPOINT", raising=False)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def _app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        """test app"""

    register_training_commands(app)
    return app


@pytest.fixture
def app() -> typer.Typer:
    return _app()


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("build") / "videos"
    folder.mkdir()
    for name, src, freq in (("a", "testsrc2", 220), ("b", "smptebars", 440), ("c", "rgbtestsrc", 880)):
        lavfi(folder / f"{name}.mp4", f"{src}=d={CLIP_S}:s=96x64:r=10", f"sine=f={freq}:d={CLIP_S}", args=("-shortest", "-pix_fmt", "yuv420p"))
    lavfi(folder / "silent.mp4", f"testsrc=d={CLIP_S}:s=96x64:r=10", args=("-pix_fmt", "yuv420p"))  # no soundtrack
    return folder


@pytest.fixture(scope="module")
def built(videos: Path) -> tuple[Path, str]:
    """One build of the folder (module-wide: the analyses are what costs), with its output."""
    out = videos.parent / "feats"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MUSECHAT_DATA_DIR", str(videos.parent / "data"))
        mp.setenv("MUSECHAT_PROFILE", "tiny")
        mp.delenv("MUSECHAT_FUSION_CHECKPOINT", raising=False)
        get_settings.cache_clear()
        r = CliRunner().invoke(_app(), ["data", "build", str(videos), "--out", str(out), "--music-input", "features"])
        get_settings.cache_clear()
    assert r.exit_code == 0, r.output
    return out, r.output


@pytest.fixture(scope="module")
def built_mels(videos: Path, built: tuple[Path, str]) -> tuple[Path, str]:
    """The default build of the tiny profile (AST): a log-mel cache, reusing the first build's video analyses."""
    out = videos.parent / "mels"
    shutil.copytree(built[0] / "media", out / "media")  # analysed already: only the log-mels are computed
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MUSECHAT_DATA_DIR", str(videos.parent / "data"))
        mp.setenv("MUSECHAT_PROFILE", "tiny")
        mp.delenv("MUSECHAT_FUSION_CHECKPOINT", raising=False)
        get_settings.cache_clear()
        r = CliRunner().invoke(_app(), ["data", "build", str(videos), "--out", str(out), "--shard-size", "2"])
        get_settings.cache_clear()
    assert r.exit_code == 0, r.output
    return out, r.output


def test_build_from_music_videos(app: typer.Typer, videos: Path, built: tuple[Path, str]) -> None:
    runner = CliRunner()
    out, output = built
    assert "3 quartets" in output and "1 videos skipped" in output and "silent.mp4" in output
    # no candidate option: a two-tower retriever is trained on the build's clips, kept, used and recorded
    run = out / "retriever"
    assert "training the turn-1 two-tower retriever on 3 clips (10 epochs, seed 0)" in output
    assert f"candidates retrieved by the two-tower retriever {run / 'model'} (trained on this build's clips)" in output
    assert read_manifest(out)["build"]["candidates"] == {"source": "two_tower", "path": str(run / "model"), "trained_on_this_build": True}
    assert load_retriever(run / "model", expect_profile="tiny").config.max_segments == 12
    assert len((run / METRICS_FILE).read_text().splitlines()) == 10  # 3 clips: one step of 3 per epoch
    _assert_argmax_picks(out, run / "model", {0: [0, 1, 2], 1: [0, 1, 2], 2: [0, 1, 2]})  # 3 clips: one pool
    ds = FeatureDataset(out)
    assert len(ds) == 3
    assert ds.tensors["video_len"].tolist() == [2, 2, 2] and ds.tensors["target_len"].tolist() == [2, 2, 2]
    quartets = [json.loads(line) for line in (out / "quartets.jsonl").read_text().splitlines()]
    assert [Path(q["video"]).name for q in quartets] == ["a.mp4", "b.mp4", "c.mp4"]
    for q in quartets:
        assert q["target"] == q["video"] and q["candidate"] != q["target"]  # own soundtrack; candidate from the others
        assert q["clip_duration_s"] == pytest.approx(CLIP_S, abs=0.5)
        assert len(q["turns"]) == 2 and q["turns"][1]["user"]
    # the target features are the soundtrack's segment vectors; the candidate's, another clip's
    cached = {p.name.split(".")[0]: TrackAnalysis.from_bytes(p.read_bytes()) for p in (out / "media").glob("*.music.npz")}
    by_path = {Path(q["video"]).name: q for q in quartets}
    a_sha = next(sha for sha, t in cached.items() if f"video-{sha}" == by_path["a.mp4"]["id"])
    np.testing.assert_allclose(ds.tensors["target"][0, :2].float().numpy(), cached[a_sha].segment_vectors, rtol=2e-3, atol=2e-3)
    shards = read_manifest(out)["shards"]

    again = runner.invoke(app, ["data", "build", str(videos), "--out", str(out), "--music-input", "features"])
    assert again.exit_code == 0 and "(0 new" in again.output
    assert f"reusing the turn-1 retriever trained by an earlier build: {run / 'model'}" in again.output
    assert read_manifest(out)["shards"] == shards
    assert len((run / METRICS_FILE).read_text().splitlines()) == 10  # not trained again
    # resuming a features cache as a log-mel one is refused, naming the way out
    other = runner.invoke(app, ["data", "build", str(videos), "--out", str(out)])
    assert other.exit_code == 2 and "--music-input it was built with" in other.output
    said = " ".join(other.output.split())  # the console wraps long lines
    assert "music_input='features'" in said and "this run's would have" in said and "music_input='log_mels'" in said
    assert read_manifest(out)["spec"]["music_input"] == "features" and read_manifest(out)["shards"] == shards


def test_build_with_a_checkpoint_retrieves_candidates(app: typer.Typer, videos: Path, built: tuple[Path, str], tmp_path: Path) -> None:
    from engine.profiles import load_encoders

    enc = load_encoders("tiny")
    spec = FeatureSpec(profile="tiny", video_dim=enc.image.dim, text_dim=enc.text.dim, music_dim=enc.music.dim, target_music_dim=enc.music.dim)
    ckpt = save_checkpoint(MuseChatRecommender(fusion_config_for(spec, {"d_model": 16, "n_heads": 4, "n_layers": 1})), tmp_path / "ckpt")
    # the per-video analyses are cached by content hash: reuse the first build's, decode nothing
    shutil.copytree(built[0] / "media", tmp_path / "f" / "media")
    r = CliRunner().invoke(app, ["data", "build", str(videos), "--out", str(tmp_path / "f"), "--checkpoint", str(ckpt), "--music-input", "features"])
    assert r.exit_code == 0, r.output
    assert f"retrieved by the fusion checkpoint {ckpt}" in r.output
    assert read_manifest(tmp_path / "f")["build"]["candidates"] == {"source": "fusion", "path": str(ckpt), "trained_on_this_build": False}
    assert not (tmp_path / "f" / "retriever").exists()
    # a fusion checkpoint is no retriever, and a retriever no fusion checkpoint
    wrong = CliRunner().invoke(app, ["data", "build", str(videos), "--out", str(tmp_path / "h"), "--retriever", str(ckpt)])
    assert wrong.exit_code == 2 and "not a two-tower retriever" in wrong.output
    wrong = CliRunner().invoke(app, ["data", "build", str(videos), "--out", str(tmp_path / "h"), "--checkpoint", str(built[0] / "retriever" / "model")])
    assert wrong.exit_code == 2 and "not a fusion recommender" in wrong.output
    bad = CliRunner().invoke(app, ["data", "build", str(tmp_path / "nowhere"), "--out", str(tmp_path / "g")])
    assert bad.exit_code == 2 and "is not a folder" in bad.output


def test_zero_shot_row_on_the_same_pools(app: typer.Typer, built: tuple[Path, str], tmp_path: Path) -> None:
    out, _ = built
    report = tmp_path / "eval" / "t"
    r = CliRunner().invoke(app, ["eval", "--data", str(out), "--zero-shot", "--report", str(report)])
    assert r.exit_code == 0, r.output
    row = json.loads(report.with_suffix(".json").read_text())["results"][0]
    assert row["name"] == "zero-shot scorer" and row["n_pools"] == 1
    for turn in ("turn1", "turn2"):
        assert row[turn]["n_queries"] == 3 and row[turn]["pool_size"] == 3 and 1 <= row[turn]["median_rank"] <= 3
    assert "| zero-shot scorer |" in report.with_suffix(".md").read_text()
    no_media = CliRunner().invoke(app, ["eval", "--data", str(tmp_path / "nothing"), "--zero-shot"])
    assert no_media.exit_code == 2


# ---------------------------------------------------------------------------------------------
# candidates from pools: six clips in pools of three (two candidates per target)

POOL = 3
SOURCES = (("testsrc2", 220), ("smptebars", 330), ("rgbtestsrc", 440), ("testsrc", 550), ("color=c=orange", 660), ("color=c=navy", 880))


@pytest.fixture(scope="module")
def six(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Six music videos and a build of them with --random-candidates (its media cache is reused by the others)."""
    root = tmp_path_factory.mktemp("six")
    folder = root / "videos"
    folder.mkdir()
    for k, (src, freq) in enumerate(SOURCES):
        lavfi(folder / f"{'abcdef'[k]}.mp4", f"{src}:d={CLIP_S}:s=96x64:r=10" if ":" not in src and "=" in src else f"{src}=d={CLIP_S}:s=96x64:r=10",
              f"sine=f={freq}:d={CLIP_S}", args=("-shortest", "-pix_fmt", "yuv420p"))
    out = root / "random"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MUSECHAT_DATA_DIR", str(root / "data"))
        mp.setenv("MUSECHAT_PROFILE", "tiny")
        get_settings.cache_clear()
        r = CliRunner().invoke(_app(), ["data", "build", str(folder), "--out", str(out), "--pool-size", str(POOL), "--random-candidates"])
        get_settings.cache_clear()
    assert r.exit_code == 0, r.output
    assert "candidates random from the pool (--random-candidates)" in r.output
    return folder, out


def _pools(n: int) -> dict[int, list[int]]:
    """Each clip's pool (the paper's random non-overlapping pools, seed 0, as `data build` defaults)."""
    return {i: pool for pool in random_pools(n, POOL, seed=0, keep_remainder=True) for i in pool}


def _candidates(out: Path) -> list[tuple[str, str]]:
    return [(Path(q["target"]).name, Path(q["candidate"]).name) for q in map(json.loads, (out / "quartets.jsonl").read_text().splitlines())]


def _assert_argmax_picks(out: Path, ckpt: Path, pools: dict[int, list[int]]) -> None:
    """Each quartet's candidate is the pool member (not the target) whose music the retriever at `ckpt` scores
    highest against the target's video: computed here from the cached per-video analyses, one clip at a time."""
    retriever = load_retriever(ckpt)
    quartets = [json.loads(line) for line in (out / "quartets.jsonl").read_text().splitlines()]
    sha = [q["id"].removeprefix("video-") for q in quartets]
    video = [VideoFeatures.from_bytes((out / "media" / f"{h}.video.npz").read_bytes()).segment_vectors for h in sha]
    music = [TrackAnalysis.from_bytes((out / "media" / f"{h}.music.npz").read_bytes()).segment_vectors for h in sha]
    with torch.no_grad():
        v = [retriever.encode_video(torch.as_tensor(x, dtype=torch.float32)[None])[0] for x in video]
        m = [retriever.encode_music(torch.as_tensor(x, dtype=torch.float32)[None])[0] for x in music]
    names = [Path(q["target"]).name for q in quartets]
    for i, q in enumerate(quartets):
        others = [j for j in pools[i] if j != i]
        assert len(others) == 2  # two to choose from: a wrong rule (first, last, argmin) would be caught
        scores = {j: float(v[i] @ m[j]) for j in others}
        assert abs(scores[others[0]] - scores[others[1]]) > 1e-5, scores  # no near-tie decided by rounding
        best = max(scores, key=scores.__getitem__)
        assert Path(q["candidate"]).name == names[best], (i, scores)


def test_random_candidates_only_when_asked_and_recorded(six: tuple[Path, Path]) -> None:
    _, out = six
    assert read_manifest(out)["build"]["candidates"] == {"source": "random", "path": None, "trained_on_this_build": False}
    assert not (out / "retriever").exists()
    pools = _pools(6)
    names = [f"{c}.mp4" for c in "abcdef"]
    pairs = _candidates(out)
    assert [t for t, _ in pairs] == names
    for i, (target, cand) in enumerate(pairs):
        assert cand != target and names.index(cand) in pools[i]


def test_retriever_picks_the_argmax_of_its_scores(app: typer.Typer, six: tuple[Path, Path], built: tuple[Path, str], tmp_path: Path) -> None:
    """`--retriever RUN/model`: each candidate is the pool member (not the target) the retriever scores highest,
    computed here from the cached per-video analyses, one clip at a time."""
    folder, random_out = six
    ckpt = built[0] / "retriever" / "model"  # the retriever another build trained: reused by path
    out = tmp_path / "retrieved"
    shutil.copytree(random_out / "media", out / "media")  # decode nothing twice
    r = CliRunner().invoke(app, ["data", "build", str(folder), "--out", str(out), "--pool-size", str(POOL), "--retriever", str(ckpt)])
    assert r.exit_code == 0, r.output
    assert f"candidates retrieved by the two-tower retriever {ckpt}, AST log-mels (trained towers));" in r.output
    assert "training the turn-1" not in r.output
    assert read_manifest(out)["build"]["candidates"] == {"source": "two_tower", "path": str(ckpt), "trained_on_this_build": False}

    _assert_argmax_picks(out, ckpt, _pools(6))
    # the log-mel cache (the tiny profile's default) holds the picked candidate's clip: its log-mels
    # at the app's candidate segment, read from that clip's cached per-segment log-mels
    ds = FeatureDataset(out)
    assert ds.spec.music_input == "log_mels"
    quartets = {q["id"]: q for q in map(json.loads, (out / "quartets.jsonl").read_text().splitlines())}
    for row, qid in enumerate(ds.ids):
        sha = content_hash(Path(quartets[qid]["candidate"]))
        analysis = TrackAnalysis.from_bytes((out / "media" / f"{sha}.music.npz").read_bytes())
        k = candidate_segment([(s.start_s, s.end_s) for s in analysis.segments], analysis.excerpt_start_s, analysis.excerpt_duration_s)
        mels = np.load(out / "media" / f"{sha}.mels.npy")
        np.testing.assert_array_equal(ds.tensors["candidate"][row, 0].numpy(), mels[k].reshape(-1))


def test_a_towers_checkpoint_ranks_candidates_with_its_g_mt(app: typer.Typer, six: tuple[Path, Path], tiny_towers: Path, tmp_path: Path) -> None:
    """`--checkpoint` of a run with trained AST towers: each candidate is the pool member whose g_mt track vector
    (its segments' cached log-mels through the fine-tuned g_mt) scores highest against the video's turn-1 query."""
    from engine.fusion import track_vector
    from engine.music_towers import load_tower_checkpoint

    folder, random_out = six
    out = tmp_path / "towers"
    shutil.copytree(random_out / "media", out / "media")
    r = CliRunner().invoke(app, ["data", "build", str(folder), "--out", str(out), "--pool-size", str(POOL), "--checkpoint", str(tiny_towers)])
    assert r.exit_code == 0, r.output
    assert f"retrieved by the fusion checkpoint {tiny_towers}, AST log-mels" in " ".join(r.output.split())
    model = load_tower_checkpoint(tiny_towers)
    quartets = [json.loads(line) for line in (out / "quartets.jsonl").read_text().splitlines()]
    sha = [q["id"].removeprefix("video-") for q in quartets]
    with torch.no_grad():
        music = [track_vector(model.encode_music(torch.from_numpy(np.load(out / "media" / f"{h}.mels.npy")).float())) for h in sha]
        video = [VideoFeatures.from_bytes((out / "media" / f"{h}.video.npz").read_bytes()).segment_vectors for h in sha]
        query = [track_vector(model.encode_query(video=torch.as_tensor(v, dtype=torch.float32))) for v in video]
    pools = _pools(6)
    for i, q in enumerate(quartets):
        others = [j for j in pools[i] if j != i]
        scores = {j: float(query[i] @ music[j]) for j in others}
        assert abs(scores[others[0]] - scores[others[1]]) > 1e-6, scores
        assert Path(q["candidate"]).name == Path(quartets[max(scores, key=scores.__getitem__)]["target"]).name
    # a features build cannot use the towers: refused before anything is analysed
    feats = CliRunner().invoke(app, ["data", "build", str(folder), "--out", str(tmp_path / "f"), "--checkpoint", str(tiny_towers), "--music-input", "features"])
    assert feats.exit_code == 2 and "has trained AST towers" in feats.output and not (tmp_path / "f").exists()


def test_one_candidate_source_per_build(app: typer.Typer, six: tuple[Path, Path], built: tuple[Path, str]) -> None:
    folder, random_out = six
    ckpt = built[0] / "retriever" / "model"
    both = CliRunner().invoke(app, ["data", "build", str(folder), "--out", str(random_out), "--retriever", str(ckpt), "--random-candidates"])
    assert both.exit_code == 2 and "--retriever and --random-candidates each choose the candidates: give one" in both.output
    # a folder of random candidates is not topped up with retrieved ones
    mixed = CliRunner().invoke(app, ["data", "build", str(folder), "--out", str(random_out), "--pool-size", str(POOL), "--retriever", str(ckpt)])
    assert mixed.exit_code == 2
    assert "holds quartets whose candidates were random from the pool (--random-candidates)" in mixed.output
    assert read_manifest(random_out)["build"]["candidates"]["source"] == "random"


# ---------------------------------------------------------------------------------------------
# the log-mel cache of the trained AST towers (paper 4.1, 5.1): data build -> train -> eval


def test_log_mel_cache_holds_ast_inputs_of_target_segments_and_one_candidate_clip(videos: Path, built_mels: tuple[Path, str]) -> None:
    from engine.profiles import load_encoders
    from engine.tracks import decode_track

    out, output = built_mels
    assert "3 quartets" in output and "AST log-mels (trained towers)" in output
    enc = load_encoders("tiny")
    frames, bins = enc.music.mel_shape  # the tiny AST: 64 x 16
    ds = FeatureDataset(out)
    spec = ds.spec
    assert (spec.music_input, spec.mel_frames, spec.mel_bins, spec.max_segments, spec.max_candidate_segments) == ("log_mels", frames, bins, 12, 1)
    assert [s["n"] for s in read_manifest(out)["shards"]] == [2, 1]
    t = ds.tensors
    assert t["target"].dtype == t["candidate"].dtype == torch.float16
    assert t["target"].shape == (3, 12, frames * bins) and t["candidate"].shape == (3, 1, frames * bins)
    assert t["target_len"].tolist() == [2, 2, 2] and t["candidate_len"].tolist() == [1, 1, 1] and t["video_len"].tolist() == [2, 2, 2]
    # the values: AST's log-mels of each 10 s segment of the own soundtrack; the candidate's clip is the
    # segment the app's towers would read (`candidate_segment`: nearest the listening excerpt's centre)
    quartets = {q["id"]: q for q in map(json.loads, (out / "quartets.jsonl").read_text().splitlines())}
    for row, qid in enumerate(ds.ids):
        q = quartets[qid]
        _, clips = decode_track(q["target"], sample_rate=16_000).segment_audio()
        want = np.stack([enc.music.log_mels(c) for c in clips]).reshape(2, -1)
        np.testing.assert_array_equal(t["target"][row, :2].numpy(), want)
        decoded = decode_track(q["candidate"], sample_rate=16_000)
        segments, cand = decoded.segment_audio()
        analysis = TrackAnalysis.from_bytes((out / "media" / f"{decoded.content_hash}.music.npz").read_bytes())
        # the excerpt of a 12 s clip is all of it (0-12 s, centre 6 s): segment 0 (0-10 s, centre 5 s), not 1 (10-12 s)
        assert (analysis.excerpt_start_s, analysis.excerpt_duration_s) == pytest.approx((0.0, CLIP_S), abs=0.1)
        assert candidate_segment([(s.start_s, s.end_s) for s in segments], analysis.excerpt_start_s, analysis.excerpt_duration_s) == 0
        np.testing.assert_array_equal(t["candidate"][row, 0].numpy(), enc.music.log_mels(cand[0]).reshape(-1))
    # read memory-mapped, equal to the arrays loaded into memory
    assert all(isinstance(p, np.memmap) for p in t["target"].parts)
    loaded = FeatureDataset(out, mmap=False).tensors
    for name in ("video", "target", "candidate", "text"):
        assert torch.equal(t[name][:], loaded[name])


def test_data_build_then_train_fine_tunes_both_towers_then_eval(app: typer.Typer, built_mels: tuple[Path, str], tmp_path: Path) -> None:
    from engine.music_towers import load_tower_checkpoint, load_towers

    out, _ = built_mels
    run = tmp_path / "run"
    fusion = json.dumps({"d_model": 16, "n_heads": 4, "n_layers": 1})
    r = CliRunner().invoke(app, ["train", "--data", str(out), "--out", str(run), "--max-steps", "3", "--batch-size", "3",
                                 "--lr", "1e-3", "--warmup-steps", "0", "--device", "cpu", "--fusion", fusion])
    assert r.exit_code == 0, r.output
    trained = load_tower_checkpoint(run / "model", expect_profile="tiny")
    start_mc, start_mt = load_towers("tiny")  # where both towers began: the profile's AST

    def moved(tower: torch.nn.Module, start: torch.nn.Module) -> float:
        a, b = tower.state_dict(), start.state_dict()
        return max(float((a[k] - b[k]).abs().max()) for k in a if a[k].is_floating_point())

    assert moved(trained.g_mc, start_mc) > 1e-5 and moved(trained.g_mt, start_mt) > 1e-5
    report = tmp_path / "eval" / "t"
    e = CliRunner().invoke(app, ["eval", "--data", str(out), "--checkpoint", f"towers={run / 'model'}", "--report", str(report), "--pool-size", "3"])
    assert e.exit_code == 0, e.output
    row = json.loads(report.with_suffix(".json").read_text())["results"][0]
    assert row["name"] == "towers" and row["n_pools"] == 1 and row["turn2"]["n_queries"] == 3


def test_two_tower_trains_and_evaluates_on_a_log_mel_build_from_its_pooled_vectors(app: typer.Typer, built_mels: tuple[Path, str], tmp_path: Path) -> None:
    """`train --variant two_tower` / `eval` on a log-mel cache read the build's pooled vectors (media/), the same quartets."""
    from engine.profiles import load_encoders
    from training.pooled import pooled_clips

    out, _ = built_mels
    ds = FeatureDataset(out)
    clips = pooled_clips(ds)
    music_dim = load_encoders("tiny").music.dim
    assert clips.ids == ds.ids and (clips.spec.music_input, clips.spec.target_music_dim) == ("features", music_dim)
    for row, qid in enumerate(ds.ids):
        a = TrackAnalysis.from_bytes((out / "media" / f"{qid.removeprefix('video-')}.music.npz").read_bytes())
        np.testing.assert_allclose(clips.tensors["target"][row, :2].float().numpy(), a.segment_vectors, rtol=2e-3, atol=2e-3)
    assert pooled_clips(clips) is clips  # pooled features already: read as they are
    run = tmp_path / "rt"
    r = CliRunner().invoke(app, ["train", "--data", str(out), "--out", str(run), "--variant", "two_tower", "--max-steps", "2",
                                 "--batch-size", "3", "--warmup-steps", "0", "--device", "cpu", "--fusion", '{"d_model": 16, "n_heads": 4, "n_layers": 1}'])
    assert r.exit_code == 0, r.output
    assert load_retriever(run / "model", expect_profile="tiny").config.music_dim == music_dim
    report = tmp_path / "eval" / "rt"
    e = CliRunner().invoke(app, ["eval", "--data", str(out), "--checkpoint", f"retriever={run / 'model'}", "--report", str(report), "--pool-size", "3"])
    assert e.exit_code == 0, e.output
    row = json.loads(report.with_suffix(".json").read_text())["results"][0]
    assert row["name"] == "retriever" and row["turn1"]["n_queries"] == 3
    # without the build's analyses there is nothing pooled to read: a message
    bare = tmp_path / "bare"
    shutil.copytree(out, bare, ignore=shutil.ignore_patterns("media", "retriever"))
    no = CliRunner().invoke(app, ["train", "--data", str(bare), "--out", str(tmp_path / "rt2"), "--variant", "two_tower", "--batch-size", "3", "--device", "cpu"])
    assert no.exit_code == 2 and "is a log-mel cache and the two-tower retriever reads pooled music features" in " ".join(no.output.split())


def test_music_input_is_checked_and_log_mels_need_an_ast_profile(app: typer.Typer, videos: Path, tmp_path: Path) -> None:
    r = CliRunner().invoke(app, ["data", "build", str(videos), "--out", str(tmp_path / "x"), "--music-input", "spectrogram"])
    assert r.exit_code == 2 and "--music-input must be one of auto, log-mels, features" in r.output
    lite = CliRunner().invoke(app, ["data", "build", str(videos), "--out", str(tmp_path / "y"), "--profile", "lite", "--music-input", "log-mels"])
    assert lite.exit_code == 2 and "profile 'lite' has no AST music encoder (musicnn)" in lite.output
    assert not (tmp_path / "y").exists()  # refused before anything was written


def test_paper_profile_build_tags_with_musicnn_and_keeps_ast_log_mels(app: typer.Typer, videos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The paper profile's code path (tiny CLIP/AST weights, the real musicnn): the dataset's tags (paper 3)."""
    from engine.encoders.musicnn import MSD_LABELS, MTT_LABELS
    from engine.profiles import tiny_overrides

    for key, folder in tiny_overrides(tmp_path / "backbones").items():
        monkeypatch.setenv(f"MUSECHAT_{key.upper()}_BACKBONE", folder)
    monkeypatch.setenv("MUSECHAT_PROFILE", "paper")
    get_settings.cache_clear()
    out = tmp_path / "paper"
    r = CliRunner().invoke(app, ["data", "build", str(videos), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "3 quartets" in r.output and "AST log-mels (trained towers)" in r.output
    ds = FeatureDataset(out)
    assert (ds.spec.profile, ds.spec.music_input, ds.spec.mel_frames, ds.spec.mel_bins) == ("paper", "log_mels", 64, 16)
    vocabulary = {t.lower() for t in MTT_LABELS + MSD_LABELS}
    analyses = {p.name.split(".")[0]: TrackAnalysis.from_bytes(p.read_bytes()) for p in (out / "media").glob("*.music.npz")}
    for q in map(json.loads, (out / "quartets.jsonl").read_text().splitlines()):
        a = analyses[q["id"].removeprefix("video-")]
        assert len(a.tag_probs) == 100 and all(n.startswith(("mtt:", "msd:")) for n in a.tag_probs)
        assert q["target_tags"] == a.auto_tags and 5 <= len(a.auto_tags) <= 10 and set(a.auto_tags) <= vocabulary
