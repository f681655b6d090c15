"""Tests for training/train_reasoner.py: data, the loss falling, save/load by the app, the Table 3 layout."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from engine import reasoner as R
from engine.encoders.base import TextEncoder, TextTokens
from engine.reasoner import MusicReasoner, ReasonerConfig, ReasonInput
from training.train_reasoner import (
    ORIGIN_TEMPLATE,
    VARIANT_BASE,
    VARIANT_MUSIC,
    VARIANT_TUNED,
    EVAL_MAX_NEW_TOKENS,
    EvalRow,
    ReasonExample,
    TextScorer,
    TrainConfig,
    build_targets,
    evaluate,
    format_table,
    perplexity,
    read_examples,
    tower_music_vector,
    train,
)

MUSIC_DIM = 8


def vec(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(MUSIC_DIM).astype(np.float32)


def tiny_reasoner() -> MusicReasoner:
    r = MusicReasoner(*R.tiny_llm(seed=0), ReasonerConfig(), MUSIC_DIM)
    r.attach_lora(seed=0)
    return r


EXAMPLES = [
    ReasonExample(ReasonInput.of("storm", music_vector=vec(1)), "loud drums for a storm"),
    ReasonExample(ReasonInput.of("lake", music_vector=vec(2)), "soft piano for a quiet lake"),
]


def test_read_examples_resolves_music_from_the_line_the_cache_or_the_audio(tmp_path):
    lines = [
        {"title": "a", "target": "t1", "music_vector": [1.0] * MUSIC_DIM, "tags": ["x"]},
        {"title": "b", "target": "t2", "track_id": "abc", "feedback": "more drums"},
        {"title": "c", "target": "t3", "audio": "song.ogg", "video": "a beach"},
    ]
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(json.dumps(d) for d in lines) + "\n\n")
    seen = []
    got = read_examples(
        path,
        music_for_track=lambda tid: np.full(MUSIC_DIM, 2.0, np.float32) if tid == "abc" else None,
        music_for_audio=lambda p: seen.append(p) or np.full(MUSIC_DIM, 3.0, np.float32),
    )
    assert [e.inp.facts.title for e in got] == ["a", "b", "c"]
    assert [float(e.inp.music_vector[0]) for e in got] == [1.0, 2.0, 3.0]
    assert got[0].inp.facts.tags == ("x",) and got[1].inp.facts.words == "more drums" and got[2].inp.video == "a beach"
    assert seen == [tmp_path / "song.ogg"]
    path.write_text(json.dumps({"title": "d", "target": "t", "track_id": "missing"}) + "\n")
    with pytest.raises(ValueError, match="train.jsonl:1: no music embedding for 'd'"):
        read_examples(path, music_for_track=lambda tid: None)


@dataclass
class _Payload:
    title: str
    artist: str
    tags: tuple[str, ...]
    tempo_bpm: float | None
    content_hash: str


def test_build_targets_from_catalog_metadata_and_tags():
    lines = build_targets(
        [
            _Payload("Night Drive", "Kai", ("synth", "dark", "synth", "electronic"), 140.0, "h1"),
            _Payload("No Tags", "", (), None, "h2"),
            _Payload("Lake", "", ("piano",), 70.0, "h3"),
        ]
    )
    assert lines == [
        {"track_id": "h1", "title": "Night Drive", "tags": ["synth", "dark", "electronic"],
         "target": '"Night Drive" is synth, dark and electronic music. Its synth sound is what suits the video.',
         "origin": ORIGIN_TEMPLATE},
        {"track_id": "h3", "title": "Lake", "tags": ["piano"],
         "target": '"Lake" is piano music. Its piano sound is what suits the video.', "origin": ORIGIN_TEMPLATE},
    ]  # fmt: skip
    from engine.grounding import ReasonFacts, grounded_text

    for line in lines:  # targets state only the prompt's facts: the check keeps them whole
        assert grounded_text(line["target"], ReasonFacts(line["title"], tags=tuple(line["tags"])))[0] == line["target"]


def test_loss_falls_and_only_lora_and_f_l_change(tmp_path):
    r = tiny_reasoner()
    frozen = {n: p.detach().clone() for n, p in r.named_parameters() if not p.requires_grad}
    f_l = r.projector.proj.weight.detach().clone()
    with torch.no_grad():
        before = float(r.loss([(e.inp, e.target) for e in EXAMPLES]))
    res = train(r, EXAMPLES * 2, TrainConfig(epochs=3, batch_size=2, lr=2e-2))
    with torch.no_grad():
        after = float(r.loss([(e.inp, e.target) for e in EXAMPLES]))
    assert res.steps == 6 and len(res.losses) == 6
    assert after < before - 2.0  # nats per target token (measured: 12.1 -> 6.7)
    assert not torch.equal(r.projector.proj.weight, f_l)
    assert all(torch.equal(p, frozen[n]) for n, p in r.named_parameters() if n in frozen)
    # the app loads what training saved: same logits
    r.save(tmp_path / "ckpt")
    app = R.load_reasoner(R.RANDOM_TINY, music_dim=MUSIC_DIM, checkpoint=tmp_path / "ckpt")
    try:
        assert app.trained
        torch.testing.assert_close(app.next_token_logits(EXAMPLES[0].inp), r.next_token_logits(EXAMPLES[0].inp))
    finally:
        R.clear_cache()


def test_music_input_is_the_mean_of_all_fine_tuned_g_mt_tokens():
    """Paper 4.2: x̄_mt is the mean of ALL output tokens of g_mt, here over the track's 10 s windows."""
    from engine.encoders import hf
    from engine.fusion import FusionConfig, MuseChatRecommender
    from engine.music_towers import AstTower, TowerRecommender

    enc = hf.AstMusicEncoder(*hf.tiny_ast())
    torch.manual_seed(0)
    rec = MuseChatRecommender(FusionConfig(profile="tiny", video_dim=4, text_dim=4, music_dim=enc.dim, target_music_dim=enc.dim, d_model=16, n_heads=4, n_layers=1))
    towers = TowerRecommender(rec, AstTower.from_classifier(enc.model), AstTower.from_classifier(enc.model)).eval()
    with torch.no_grad():  # a "fine-tuned" g_mt: not the profile's AST any more
        for p in towers.g_mt.parameters():
            p.add_(0.01 * torch.randn_like(p))
    audio = np.random.default_rng(0).standard_normal(int(2.5 * enc.window)).astype(np.float32) * 0.1  # 2 windows + a tail
    windows = enc.split(audio)
    assert len(windows) == 3
    got = tower_music_vector(towers, enc, audio)
    with torch.no_grad():
        want = torch.stack([towers.g_mt(torch.from_numpy(enc.log_mels(w))[None])[0].mean(0) for w in windows]).mean(0)
    assert got.shape == (enc.dim,)
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-6)
    # g_mt's, not g_mc's (which still is the profile's AST)
    with torch.no_grad():
        other = torch.stack([towers.g_mc(torch.from_numpy(enc.log_mels(w))[None])[0].mean(0) for w in windows]).mean(0)
    assert np.abs(got - other.numpy()).max() > 1e-4


def test_train_refuses_a_reasoner_without_lora():
    r = MusicReasoner(*R.tiny_llm(seed=0), ReasonerConfig(), MUSIC_DIM)
    with pytest.raises(ValueError, match="attach_lora"):
        train(r, EXAMPLES)


class LetterEncoder(TextEncoder):
    """[CLS] letters [SEP], each letter a one-hot vector: a real (if crude) contextual-embedding stand-in."""

    dim = 27

    def encode_tokens(self, texts: list[str]) -> TextTokens:
        rows = [[26] + [ord(c) - 97 for c in t.lower() if "a" <= c <= "z"] + [26] for t in texts]
        n = max(len(r) for r in rows)
        states, mask = torch.zeros(len(rows), n, 27), torch.zeros(len(rows), n, dtype=torch.bool)
        for i, r in enumerate(rows):
            states[i, torch.arange(len(r)), torch.tensor(r)] = 1.0
            mask[i, : len(r)] = True
        return TextTokens(states, mask)

    def encode_sentences(self, texts: list[str]) -> torch.Tensor:
        raise NotImplementedError


def test_evaluate_has_the_three_rows_of_table_3(monkeypatch):
    base = MusicReasoner(*R.tiny_llm(seed=0), ReasonerConfig(), MUSIC_DIM)
    tuned = tiny_reasoner()
    seen: dict[str, list] = {"generate": [], "training_prompt": [], "max_new_tokens": []}
    real_generate = MusicReasoner.generate

    def spy_generate(self, inp, **kw):
        seen["generate"].append((self is tuned, inp))
        seen["max_new_tokens"].append(kw.get("max_new_tokens"))
        return real_generate(self, inp, **kw)

    monkeypatch.setattr(MusicReasoner, "generate", spy_generate)
    rows, labels = evaluate(base, tuned, EXAMPLES, TextScorer(encoder=LetterEncoder(), encoder_name="letters"), max_new_tokens=4)
    assert [r.variant for r in rows] == [VARIANT_BASE, VARIANT_MUSIC, VARIANT_TUNED]
    assert all(r.n == 2 and 0.0 <= r.bertscore_f1 <= 1.0 and r.perplexity > 1.0 for r in rows)
    assert all(r.ab_divergence is None and r.l2_distance is None and r.fisher_rao_distance is None for r in rows)
    assert "SUBSTITUTE" in labels[0] and "letters" in labels[0] and "InfoLM: not computed" in labels[1]
    # the base model reads the title alone; the MuseChat row title + music, without tags, video or feedback
    base_inputs = [inp for is_tuned, inp in seen["generate"] if not is_tuned]
    tuned_inputs = [inp for is_tuned, inp in seen["generate"] if is_tuned]
    assert [(i.facts.title, i.music_vector) for i in base_inputs] == [("storm", None), ("lake", None)]
    assert [i.facts.title for i in tuned_inputs] == ["storm", "lake"] and all(i.music_vector is not None and not i.facts.tags for i in tuned_inputs)
    assert set(seen["max_new_tokens"]) == {4}
    # "w/ Music" scores the references under the training prompt (no title), MuseChat under the inference prompt
    music_only = [ReasonExample(ReasonInput.of(e.inp.facts.title, music_vector=e.inp.music_vector), e.target) for e in EXAMPLES]
    assert rows[1].perplexity == pytest.approx(perplexity(tuned, music_only, training_prompt=True), rel=1e-6)
    assert rows[2].perplexity == pytest.approx(perplexity(tuned, music_only), rel=1e-6)
    assert rows[1].perplexity != pytest.approx(rows[2].perplexity, rel=1e-6)
    table = format_table([EvalRow("x", 0.95, 1.5, 0.2081, 1.47, 12.345, 3)], ["label A"])
    lines = table.splitlines()
    assert lines[0] == "| variant | BERTScore F1 ↑ | AB div ↓ | L2 ↓ | Fisher-Rao ↓ | perplexity (ref) | n |"
    assert lines[2] == "| x | 0.9500 | 1.50 | 0.208 | 1.47 | 12.35 | 3 |"
    assert "| MuseChat (paper) | 0.9676 | 1.51 | 0.208 | 1.47 | - | - |" in lines and lines[-1] == "label A"
    assert EVAL_MAX_NEW_TOKENS == 128


def test_evaluate_without_a_masked_lm_uses_a_labelled_causal_substitute_for_infolm():
    base = MusicReasoner(*R.tiny_llm(seed=0), ReasonerConfig(), MUSIC_DIM)
    scorer = TextScorer(encoder=LetterEncoder(), encoder_name="letters", infolm_substitute=(*R.tiny_llm(seed=0), "tiny LLM"))
    rows, labels = evaluate(base, tiny_reasoner(), EXAMPLES, scorer, max_new_tokens=4)
    assert all(r.l2_distance is not None and r.l2_distance >= 0 and r.fisher_rao_distance is not None for r in rows)
    assert labels[1].startswith("InfoLM: SUBSTITUTE tiny LLM")


def test_cli_trains_saves_and_says(tmp_path, monkeypatch):
    """`musechat reasoner train` then `say`, on the tiny profile (its music_dim is 32)."""
    import typer
    from typer.testing import CliRunner

    from bot.cli.reasoner import register_reasoner_commands
    from bot.settings import get_settings

    monkeypatch.setenv("MUSECHAT_PROFILE", "tiny")
    monkeypatch.setenv("MUSECHAT_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        """musechat"""

    register_reasoner_commands(app)
    data = tmp_path / "train.jsonl"
    data.write_text(json.dumps({"title": "storm", "target": "loud drums", "music_vector": [0.5] * 32}) + "\n")
    runner = CliRunner()
    try:
        res = runner.invoke(app, ["reasoner", "train", str(data), "--out", str(tmp_path / "ckpt"), "--epochs", "1"])
        assert res.exit_code == 0, res.output
        assert "trained 1 steps" in res.output and (tmp_path / "ckpt" / R.PROJECTOR_FILE).is_file()
        res = runner.invoke(app, ["reasoner", "say", "Night Drive", "--tag", "synth", "--max-new-tokens", "3", "--no-grounded"])
        assert res.exit_code == 0, res.output
        assert res.output.rstrip().endswith(f"[{R.REASON_SOURCE_TITLE_TAGS}]")
    finally:
        get_settings.cache_clear()
        R.clear_cache()
