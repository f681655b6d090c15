"""Tests of training/train_fusion.py: signal recovery, exact resume, DDP (2 gloo ranks) = one process."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from engine.checkpoint import CheckpointNotFoundError, load_checkpoint, load_retriever
from engine.fusion import MuseChatRecommender
from engine.music_towers import TowerRecommender, load_tower_checkpoint, load_towers
from engine.retriever import TwoTowerRetriever
from training.evaluate import evaluate_checkpoints, evaluate_model
from training.features import FeatureDataset, FeatureItem, FeatureShardWriter, FeatureSpec, write_synthetic_features
from training.metrics import chance_metrics
from training.train_fusion import (
    METRICS_FILE,
    MODEL_DIR,
    STATE_FILE,
    TrainConfig,
    fusion_config_for,
    param_groups,
    parse_args,
    retriever_config_for,
    train,
)

SPEC = FeatureSpec(profile="tiny", video_dim=24, text_dim=16, music_dim=20, target_music_dim=20, max_segments=4, max_candidate_segments=4, max_text_tokens=8)
SMALL = {"d_model": 32, "n_heads": 4, "n_layers": 1}
TWO_TOWER = {"variant": "two_tower", "d_model": 32, "n_heads": 4, "n_layers": 1}
NO_RANDOMNESS = {**SMALL, "dropout": 0.0, "p_drop_video": 0.0, "p_drop_text": 0.0, "p_drop_candidate": 0.0}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models on a shared 2-core machine: 2 intra-op threads spin against other processes."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> FeatureDataset:
    return write_synthetic_features(tmp_path_factory.mktemp("features") / "cache", 600, SPEC, seed=0, shard_size=256)


def _cfg(out: Path, **kw: object) -> TrainConfig:
    base = dict(data="", out=str(out), batch_size=16, lr=2e-3, warmup_steps=5, progress=False, log_every=1, fusion=dict(SMALL))
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


def test_param_groups_keep_temperature_out_of_decay() -> None:
    model = MuseChatRecommender(fusion_config_for(SPEC, SMALL))
    decay, no_decay = param_groups(model, 5e-4)
    assert decay["weight_decay"] == 5e-4 and no_decay["weight_decay"] == 0.0
    assert any(p is model.loss.logit_scale for p in no_decay["params"])
    assert not any(p is model.loss.logit_scale for p in decay["params"])
    assert all(p.ndim >= 2 for p in decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_signal_recovery_on_planted_features(synthetic: FeatureDataset, tmp_path: Path) -> None:
    """A short CPU run learns the planted video <-> music relation: held-out R@1 >= 10 x chance."""
    train_set, test_set = synthetic.split(200, seed=0)
    untrained = evaluate_model(MuseChatRecommender(fusion_config_for(SPEC, SMALL)), test_set, pool_size=200)
    result = train(_cfg(tmp_path, max_steps=60, epochs=100, batch_size=32), train_set)
    res = evaluate_model(result.model, test_set, name="mvt", pool_size=200)
    chance = chance_metrics(200).r1  # 0.5 %
    assert res.turn1.r1 >= 10 * chance and res.turn2.r1 >= 10 * chance, (res.turn1, res.turn2)
    assert untrained.turn2.r1 < 10 * chance
    # the app's checkpoint: engine format, loads and gives the same vectors
    loaded = load_checkpoint(tmp_path / MODEL_DIR, expect_profile="tiny")
    again = evaluate_model(loaded, test_set, pool_size=200)
    assert again.turn2 == res.turn2
    rows = [json.loads(line) for line in (tmp_path / METRICS_FILE).read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 61))
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert set(rows[0]) == {"step", "epoch", "loss", "lr", "temperature", "samples_per_s", "modality_dropout"}
    assert rows[0]["modality_dropout"] == "off (paper)"


def test_two_tower_retriever_learns_planted_clips(synthetic: FeatureDataset, tmp_path: Path) -> None:
    """`--variant two_tower`: the same loop trains the turn-1 retriever on whole clips; held-out R@1 >= 10 x chance."""
    train_set, test_set = synthetic.split(200, seed=0)
    untrained = evaluate_model(TwoTowerRetriever(retriever_config_for(SPEC, TWO_TOWER)), test_set, pool_size=200)
    result = train(_cfg(tmp_path, max_steps=60, epochs=100, batch_size=32, fusion=dict(TWO_TOWER)), train_set)
    assert isinstance(result.model, TwoTowerRetriever) and result.model.config.max_segments == SPEC.max_segments
    res = evaluate_model(result.model, test_set, name="two-tower", pool_size=200)
    chance = chance_metrics(200).r1
    assert res.turn1.r1 >= 10 * chance and untrained.turn1.r1 < 10 * chance, (res.turn1, untrained.turn1)
    # video only: turn 2 is turn 1, and the success rate is R@1 (the paper's MVPt row: SR = R@1)
    assert (res.turn2.r1, res.turn2.median_rank) == (res.turn1.r1, res.turn1.median_rank)
    assert res.turn2.success_rate == res.turn1.r1 and res.modality_dropout is None
    rows = [json.loads(line) for line in (tmp_path / METRICS_FILE).read_text().splitlines()]
    assert len(rows) == 60 and rows[-1]["loss"] < rows[0]["loss"]
    assert rows[0]["modality_dropout"] == "n/a (two-tower retriever, video only)"
    # its checkpoint: a two_tower checkpoint, which `musechat eval` reads as a turn-1 row on the same pools
    loaded = load_retriever(tmp_path / MODEL_DIR, expect_profile="tiny", expect_dims=(SPEC.video_dim, SPEC.target_music_dim))
    assert evaluate_model(loaded, test_set, pool_size=200).turn1 == res.turn1
    (row,) = evaluate_checkpoints(test_set, [("retriever", tmp_path / MODEL_DIR)], pool_size=200)
    assert row.turn1 == res.turn1 and row.name == "retriever"


def test_two_tower_refuses_what_it_cannot_read(synthetic: FeatureDataset, tmp_path: Path) -> None:
    no_video = FeatureDataset.from_tensors(SPEC, synthetic.ids[:40], {k: (v[:40] * 0 if k == "video_len" else v[:40]) for k, v in synthetic.tensors.items()})
    with pytest.raises(ValueError, match="40 of the 40 quartets have no video"):
        train(_cfg(tmp_path / "a", max_steps=1, fusion=dict(TWO_TOWER)), no_video)
    with pytest.raises(ValueError, match=r"the two-tower retriever has no \['use_candidate'\]"):
        train(_cfg(tmp_path / "b", max_steps=1, fusion={**TWO_TOWER, "use_candidate": False}), synthetic)
    with pytest.raises(ValueError, match="modality-dropout is a fusion option"):
        train(_cfg(tmp_path / "c", max_steps=1, fusion=dict(TWO_TOWER), modality_dropout=True), synthetic)


def test_resume_is_bit_identical(synthetic: FeatureDataset, tmp_path: Path) -> None:
    """Interrupted at step 7 and resumed == uninterrupted, with dropout and modality dropout on."""
    data = synthetic.subset(range(96))  # 6 steps per epoch: the run crosses an epoch boundary
    kw = dict(max_steps=12, epochs=3, save_every=5, fusion={**SMALL, "dropout": 0.1})
    full = train(_cfg(tmp_path / "full", **kw), data)
    part = train(_cfg(tmp_path / "part", stop_at_step=7, **kw), data)
    assert part.step == 7
    state = torch.load(tmp_path / "part" / STATE_FILE, weights_only=False)
    assert state["step"] == 7
    resumed = train(_cfg(tmp_path / "part", resume=True, **kw), data)
    assert resumed.step == 12
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    full_log = (tmp_path / "full" / METRICS_FILE).read_text().splitlines()
    part_log = (tmp_path / "part" / METRICS_FILE).read_text().splitlines()
    strip = lambda lines: [{k: v for k, v in json.loads(x).items() if k != "samples_per_s"} for x in lines]  # noqa: E731
    assert strip(full_log) == strip(part_log)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, data_dir: str, out: str) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank)})
    torch.set_num_threads(1)
    data = FeatureDataset(data_dir).subset(range(64))
    train(_cfg(Path(out), max_steps=4, epochs=1, batch_size=8, gather_negatives=True, device="cpu", fusion=dict(NO_RANDOMNESS)), data)


def test_ddp_two_gloo_ranks_match_one_process(synthetic: FeatureDataset, tmp_path: Path) -> None:
    """2 ranks x batch 8 with gathered negatives == 1 process x batch 16 (same quartets per step)."""
    port = _free_port()
    mp.spawn(_ddp_worker, args=(2, port, str(synthetic.root), str(tmp_path / "ddp")), nprocs=2, join=True)
    single = train(_cfg(tmp_path / "one", max_steps=4, epochs=1, batch_size=16, fusion=dict(NO_RANDOMNESS)), synthetic.subset(range(64)))
    ddp_state = torch.load(tmp_path / "ddp" / STATE_FILE, weights_only=False)
    assert ddp_state["step"] == 4 and len(ddp_state["rng"]) == 2
    one = single.model.state_dict()
    for k, v in ddp_state["model"].items():
        a, b = v, one[k]
        if k.endswith("in_proj_bias"):
            # the key bias has no gradient in exact arithmetic (softmax is shift-invariant), so
            # Adam turns rounding noise into lr-sized steps there; compare the query/value parts
            d = a.shape[0] // 3
            a, b = torch.cat([a[:d], a[2 * d :]]), torch.cat([b[:d], b[2 * d :]])
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=k)
    init = MuseChatRecommender(fusion_config_for(SPEC, NO_RANDOMNESS)).state_dict()
    moved = max(float((one[k] - init[k]).abs().max()) for k in one if k in init and one[k].dtype.is_floating_point)
    assert moved > 1e-3  # the runs did train


def _ddp_two_tower_worker(rank: int, world: int, port: int, data_dir: str, out: str) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank)})
    torch.set_num_threads(1)
    data = FeatureDataset(data_dir).subset(range(64))
    train(_cfg(Path(out), max_steps=4, epochs=1, batch_size=8, gather_negatives=True, device="cpu", fusion={**TWO_TOWER, "dropout": 0.0}), data)


@pytest.mark.slow
def test_ddp_two_tower_symmetric_loss_matches_one_process(synthetic: FeatureDataset, tmp_path: Path) -> None:
    """The symmetric InfoNCE with gathered negatives: 2 ranks x batch 8 == 1 process x batch 16."""
    port = _free_port()
    mp.spawn(_ddp_two_tower_worker, args=(2, port, str(synthetic.root), str(tmp_path / "ddp")), nprocs=2, join=True)
    single = train(_cfg(tmp_path / "one", max_steps=4, epochs=1, batch_size=16, fusion={**TWO_TOWER, "dropout": 0.0}), synthetic.subset(range(64)))
    ddp_state = torch.load(tmp_path / "ddp" / STATE_FILE, weights_only=False)
    one = single.model.state_dict()
    for k, v in ddp_state["model"].items():
        a, b = v, one[k]
        if k.endswith("in_proj_bias"):  # the key bias: see test_ddp_two_gloo_ranks_match_one_process
            d = a.shape[0] // 3
            a, b = torch.cat([a[:d], a[2 * d :]]), torch.cat([b[:d], b[2 * d :]])
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=k)
    init = TwoTowerRetriever(retriever_config_for(SPEC, {**TWO_TOWER, "dropout": 0.0})).state_dict()
    assert max(float((one[k] - init[k]).abs().max()) for k in one if one[k].dtype.is_floating_point) > 1e-3


def test_command_line_flags_map_to_the_config() -> None:
    cfg = parse_args(["--data", "f", "--out", "r", "--variant", "cross_attn", "--no-candidate", "--gather-negatives", "--fusion", '{"d_model": 128}'])
    assert cfg.fusion == {"variant": "cross_attn", "d_model": 128, "use_candidate": False}
    assert (cfg.lr, cfg.weight_decay, cfg.batch_size, cfg.gather_negatives, cfg.amp) == (4e-5, 5e-4, 34, True, True)
    assert fusion_config_for(SPEC, cfg.fusion).use_candidate is False
    assert cfg.modality_dropout is False and fusion_config_for(SPEC, cfg.fusion).modality_dropout is False
    with pytest.raises(ValueError, match="unknown fusion config fields"):
        fusion_config_for(SPEC, {"d_modle": 1})
    cfg = parse_args(["--data", "f", "--out", "r", "--no-text", "--modality-dropout"])
    assert cfg.fusion == {"variant": "mvt", "use_text": False} and cfg.modality_dropout is True
    app = fusion_config_for(SPEC, cfg.fusion, modality_dropout=True)
    assert (app.p_drop_video, app.p_drop_text, app.p_drop_candidate) == (0.1, 0.3, 0.5) and app.use_text is False
    # explicit rates win over the app's
    assert fusion_config_for(SPEC, {"p_drop_text": 0.0}, modality_dropout=True).p_drop_text == 0.0
    cfg = parse_args(["--data", "f", "--out", "r", "--variant", "two_tower", "--fusion", '{"n_layers": 3}'])
    rc = retriever_config_for(SPEC, cfg.fusion)
    assert (rc.video_dim, rc.music_dim, rc.n_layers, rc.max_segments) == (SPEC.video_dim, SPEC.target_music_dim, 3, SPEC.max_segments)


# ---------------------------------------------------------------------------------------------
# the trained AST towers on a log-mel cache (paper 4.1, 5.1)


def _log_mel_cache(root: Path, n: int) -> FeatureDataset:
    """Random 10 s log-mel samples at the tiny AST's size (64 frames x 16 bins): two target segments and one candidate clip."""
    spec = FeatureSpec.for_log_mels("tiny", video_dim=12, text_dim=8, mel_frames=64, mel_bins=16, max_segments=2, max_text_tokens=4)
    g = np.random.default_rng(0)
    writer = FeatureShardWriter(root, spec, shard_size=16)
    for i in range(n):
        writer.add(FeatureItem(
            id=f"q{i:03d}", target=g.standard_normal((2, 64 * 16)), candidate=g.standard_normal((1, 64 * 16)),
            video=g.standard_normal((2, 12)), text=g.standard_normal((3, 8)),
        ))
    writer.close()
    return FeatureDataset(root)


@pytest.mark.slow
@pytest.mark.parametrize("freeze", [False, True], ids=["towers trained (paper)", "towers frozen"])
def test_log_mel_cache_trains_both_ast_towers_unless_frozen(tmp_path: Path, freeze: bool) -> None:
    data = _log_mel_cache(tmp_path / "cache", 24)
    batch = data.batch(torch.arange(3), data.segment_choice(0))
    assert batch["target_mels"].shape == (3, 64, 16) and batch["candidate_mels"].shape == (3, 64, 16)
    result = train(_cfg(tmp_path / "run", max_steps=3, batch_size=8, freeze_towers=freeze), data)
    model = result.model
    assert isinstance(model, TowerRecommender) and model.config.music_dim == model.g_mc.dim == 32
    start_mc, start_mt = load_towers("tiny")  # the profile's AST both towers start from

    def moved(tower: torch.nn.Module, start: torch.nn.Module) -> float:
        a, b = tower.state_dict(), start.state_dict()
        return max(float((a[k] - b[k]).abs().max()) for k in a if a[k].is_floating_point())

    if freeze:
        assert moved(model.g_mc, start_mc) == 0.0 and moved(model.g_mt, start_mt) == 0.0
    else:
        assert moved(model.g_mc, start_mc) > 1e-5 and moved(model.g_mt, start_mt) > 1e-5
        assert moved(model.g_mc, model.g_mt) > 0  # two towers, trained apart
    # the run's checkpoint holds the fusion model and the towers; evaluation runs the towers on log-mels
    res = evaluate_model(model, data, pool_size=12)
    assert res.n_pools == 2 and res.turn2.n_queries == 24
    fresh = load_tower_checkpoint(tmp_path / "run" / MODEL_DIR, expect_profile="tiny")
    assert fresh.freeze_towers is freeze
    assert evaluate_model(fresh, data, pool_size=12).turn2 == res.turn2
    # `musechat eval`'s path: the same checkpoint by name, on the same pools
    (row,) = evaluate_checkpoints(data, [("towers", tmp_path / "run" / MODEL_DIR)], pool_size=12)
    assert row.turn2 == res.turn2
    with pytest.raises(CheckpointNotFoundError, match="no trained AST towers"):
        load_tower_checkpoint(tmp_path / "elsewhere")
