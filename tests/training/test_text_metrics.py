"""Tests of training/text_metrics.py: BERTScore's greedy matching by hand, the local-model path, InfoLM."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from engine.encoders.base import TextEncoder, TextTokens
from training.text_metrics import BertScoreConfig, bertscore, causal_distributions, greedy_match, infolm_scores, infolm_scores_causal

# hand-set contextual vectors (not normalised: BERTScore normalises them)
VECTORS = {
    "[CLS]": (1.0, 1.0, 1.0),
    "[SEP]": (1.0, -1.0, 1.0),
    "calm": (1.0, 0.0, 0.0),
    "piano": (0.0, 1.0, 0.0),
    "quiet": (2.0, 2.0, 0.0),  # cos 1/sqrt(2) with calm and with piano
    "drums": (0.0, 0.0, 3.0),
}


class WordVectorEncoder(TextEncoder):
    """[CLS] words [SEP], each token its fixed vector: BERTScore becomes computable by hand."""

    dim = 3

    def encode_tokens(self, texts: list[str]) -> TextTokens:
        rows = [["[CLS]", *t.split(), "[SEP]"] for t in texts]
        n = max(len(r) for r in rows)
        states = torch.zeros(len(rows), n, 3)
        mask = torch.zeros(len(rows), n, dtype=torch.bool)
        for i, r in enumerate(rows):
            states[i, : len(r)] = torch.tensor([VECTORS[w] for w in r])
            mask[i, : len(r)] = True
        return TextTokens(states, mask)

    def encode_sentences(self, texts: list[str]) -> torch.Tensor:  # not used by BERTScore
        raise NotImplementedError


def test_bertscore_greedy_matching_by_hand() -> None:
    # candidate "calm drums" vs reference "calm piano quiet", cosines (candidate rows, reference columns):
    #   calm : 1, 0, 1/sqrt2      drums: 0, 0, 0
    # precision = mean over candidate tokens of the best match = (1 + 0) / 2
    # recall    = mean over reference tokens of the best match = (1 + 0 + 1/sqrt2) / 3
    # [CLS] and [SEP] are left out (their cosines with each other would add matches of 1)
    p = 0.5
    r = (1 + 0 + 1 / math.sqrt(2)) / 3
    f = 2 * p * r / (p + r)  # 0.53229
    res = bertscore(["calm drums", "piano"], ["calm piano quiet", "piano"], encoder=WordVectorEncoder(), encoder_name="hand-set")
    assert res.per_sentence_f1 == pytest.approx([f, 1.0], abs=1e-6)
    assert res.f1 == pytest.approx((f + 1.0) / 2, abs=1e-6)
    assert res.precision == pytest.approx((p + 1.0) / 2, abs=1e-6) and res.recall == pytest.approx((r + 1.0) / 2, abs=1e-6)
    assert "SUBSTITUTE" in res.label and "hand-set" in res.label and "roberta-large" in res.label
    # greedy, not one-to-one: both reference words match the one candidate word "calm"... and order does not matter
    again = bertscore(["drums calm"], ["quiet piano calm"], encoder=WordVectorEncoder())
    assert again.f1 == pytest.approx(f, abs=1e-6)


def test_batches_keep_each_pair_together() -> None:
    """Sentences of unequal lengths in one call score as they do one by one (torchmetrics 1.9 does not)."""
    preds = ["calm drums piano", "piano", "quiet calm"]
    refs = ["calm", "piano quiet drums calm", "drums"]
    batched = bertscore(preds, refs, encoder=WordVectorEncoder()).per_sentence_f1
    alone = [bertscore([p], [r], encoder=WordVectorEncoder()).f1 for p, r in zip(preds, refs)]
    assert batched == pytest.approx(alone, abs=1e-9)
    # by hand: pair 0: P = (1 + 0 + 0) / 3, R = 1 -> F = 0.5; pair 2: no cosine above 0 -> 0
    assert alone[0] == pytest.approx(0.5) and alone[2] == 0.0


def test_greedy_match_by_hand() -> None:
    cand = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    ref = torch.tensor([[0.0, 2.0]])
    p, r, f = greedy_match(cand, ref)  # cosines: 0 and 1/sqrt2
    assert (p, r) == pytest.approx((0.5 / math.sqrt(2), 1 / math.sqrt(2)))
    assert f == pytest.approx(2 * p * r / (p + r))
    assert greedy_match(torch.zeros(0, 2), ref) == (0.0, 0.0, 0.0)


def test_bertscore_errors() -> None:
    with pytest.raises(ValueError, match="as many candidates"):
        bertscore(["a"], ["a", "b"], encoder=WordVectorEncoder())
    with pytest.raises(ValueError, match="roberta-large"):
        bertscore(["calm"], ["calm"])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        bertscore(["calm"], ["calm"], config=BertScoreConfig(model_dir="/nonexistent/roberta-large"))


@pytest.mark.slow
def test_local_model_path_agrees_with_the_profile_encoder_path() -> None:
    """A local HF folder at its last layer and the same model as the profile's encoder give one score."""
    from engine.encoders.minilm import MiniLMTextEncoder, default_model_dir

    preds = ["soft piano suits the quiet lake", "loud drums"]
    refs = ["a calm piano piece for a still lake at dawn", "drums for a storm"]
    local = bertscore(preds, refs, config=BertScoreConfig(model_dir=default_model_dir(), num_layers=6))
    sub = bertscore(preds, refs, encoder=MiniLMTextEncoder())
    assert local.per_sentence_f1 == pytest.approx(sub.per_sentence_f1, abs=1e-4)
    assert "layer 6, local copy" in local.label
    assert 0.0 < local.f1 < 1.0
    assert bertscore(refs, refs, config=BertScoreConfig(model_dir=default_model_dir(), num_layers=6)).f1 == pytest.approx(1.0, abs=1e-5)


@pytest.fixture(scope="module")
def tiny_mlm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small random BertForMaskedLM on the MiniLM word pieces, saved as a local folder."""
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    from engine.encoders.minilm import default_model_dir

    tok = AutoTokenizer.from_pretrained(default_model_dir(), local_files_only=True)
    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64))
    path = tmp_path_factory.mktemp("mlm") / "tiny-mlm"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.mark.slow
def test_infolm_measures(tiny_mlm: Path) -> None:
    refs = ["calm piano music for a lake", "drums and bass for a storm"]
    same = infolm_scores(refs, refs, tiny_mlm)
    assert (same.ab_divergence, same.l2_distance, same.fisher_rao_distance) == pytest.approx((0.0, 0.0, 0.0), abs=1e-5)
    other = infolm_scores(["loud drums", "soft piano"], refs, tiny_mlm)
    assert other.ab_divergence > 1e-6 and other.l2_distance > 1e-6 and other.fisher_rao_distance > 1e-6
    # L2 and Fisher-Rao are distances: symmetric
    back = infolm_scores(refs, ["loud drums", "soft piano"], tiny_mlm)
    assert back.l2_distance == pytest.approx(other.l2_distance, rel=1e-4)
    assert back.fisher_rao_distance == pytest.approx(other.fisher_rao_distance, rel=1e-4)
    assert "tiny-mlm" in other.label and "bert-base-uncased" in other.label
    # each pair keeps its own texts whatever their lengths (the corpus score is the mean over pairs)
    preds = ["loud drums and a very long sentence about bass", "soft piano", "a storm"]
    targets = ["drums", "calm piano music for a quiet lake", "wind and rain in a storm tonight"]
    fwd = infolm_scores(preds, targets, tiny_mlm)
    rev = infolm_scores(preds[::-1], targets[::-1], tiny_mlm)
    assert (rev.ab_divergence, rev.l2_distance, rev.fisher_rao_distance) == pytest.approx(
        (fwd.ab_divergence, fwd.l2_distance, fwd.fisher_rao_distance), rel=1e-5)
    with pytest.raises(FileNotFoundError):
        infolm_scores(refs, refs, tiny_mlm.parent / "missing")


@pytest.fixture(scope="module")
def tiny_causal():
    from engine.reasoner import tiny_llm

    model, tok = tiny_llm(seed=0)
    return model.eval(), tok


def test_causal_infolm_distribution_by_hand(tiny_causal) -> None:
    """One text's distribution: the idf-weighted mean of softmax(logits / T) predicting each token from those before it."""
    import math

    model, tok = tiny_causal
    texts = ["calm piano music", "calm drums"]
    got = causal_distributions(texts, model, tok, temperature=0.25)
    assert got.shape == (2, model.config.vocab_size)
    assert torch.allclose(got.sum(1), torch.ones(2), atol=1e-5)
    ids = tok("calm piano music", add_special_tokens=False)["input_ids"]
    start = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    with torch.no_grad():
        logits = model(torch.tensor([[start, *ids[:-1]]])).logits[0]
    other = set(tok("calm drums", add_special_tokens=False)["input_ids"])
    idf = [math.log(3 / (1 + 1 + (t in other))) for t in ids]  # 2 texts; "calm" is in both
    want = sum(w * torch.softmax(logits[i] / 0.25, -1) for i, w in enumerate(idf)) / sum(idf)
    assert torch.allclose(got[0], want, atol=1e-6)


def test_causal_infolm_measures_and_label(tiny_causal) -> None:
    model, tok = tiny_causal
    refs = ["calm piano music for a lake", "drums and bass for a storm"]
    same = infolm_scores_causal(refs, refs, model, tok, "tiny: random:tiny")
    assert (same.ab_divergence, same.l2_distance, same.fisher_rao_distance) == pytest.approx((0.0, 0.0, 0.0), abs=1e-5)
    other = infolm_scores_causal(["loud drums", "soft piano"], refs, model, tok, "tiny: random:tiny")
    assert other.l2_distance > 1e-6 and other.fisher_rao_distance > 1e-6
    back = infolm_scores_causal(refs, ["loud drums", "soft piano"], model, tok, "tiny: random:tiny")
    assert back.l2_distance == pytest.approx(other.l2_distance, rel=1e-4)
    assert other.label.startswith("InfoLM: SUBSTITUTE tiny: random:tiny") and "not comparable" in other.label
    empty = causal_distributions([""], model, tok)  # a model that wrote nothing still has a distribution
    assert torch.isfinite(empty).all() and float(empty.sum()) == pytest.approx(1.0, abs=1e-5)
