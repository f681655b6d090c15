"""all-MiniLM-L6-v2 (engine/encoders/minilm.py): tokens, sentences, sentence-transformers parity."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from engine.encoders.minilm import MAX_SEQ_LENGTH, MiniLMTextEncoder, default_model_dir, mean_pool

SENTENCES = [
    "A calm piano piece for a rainy afternoon.",
    "Soft piano music for a gloomy, wet day.",
    "The quarterly tax report is due on Friday.",
    "Energetic drums and distorted guitars for a skateboarding clip.",
]


@pytest.fixture(scope="module")
def encoder() -> MiniLMTextEncoder:
    return MiniLMTextEncoder()


def test_encoder_is_frozen_float32_384d(encoder: MiniLMTextEncoder):
    assert encoder.dim == 384
    assert not encoder.model.training
    assert all(p.dtype == torch.float32 and not p.requires_grad for p in encoder.model.parameters())


def test_paraphrase_ranks_above_unrelated_sentence(encoder: MiniLMTextEncoder):
    v = encoder.encode_sentences(SENTENCES)  # (4, 384)
    assert v.shape == (4, 384) and v.dtype == torch.float32
    torch.testing.assert_close(v.norm(dim=-1), torch.ones(4))
    sims = v[0] @ v.T
    assert sims[1] > 0.6  # the paraphrase
    assert sims[1] > sims[3] > sims[2]  # music beats tax
    assert sims[2] < 0.2


def test_tokens_are_unpooled_states_whose_masked_mean_is_the_sentence(encoder: MiniLMTextEncoder):
    tok = encoder.encode_tokens(SENTENCES[:3])
    lengths = [len(encoder.tokenizer(s)["input_ids"]) for s in SENTENCES[:3]]
    assert tok.states.shape == (3, max(lengths), 384)
    assert tok.mask.dtype == torch.bool
    assert tok.mask.sum(dim=1).tolist() == lengths
    pooled = F.normalize(mean_pool(tok.states, tok.mask), dim=-1)
    torch.testing.assert_close(pooled, encoder.encode_sentences(SENTENCES[:3]), rtol=1e-5, atol=1e-6)


def test_long_text_is_truncated_at_256_word_pieces(encoder: MiniLMTextEncoder):
    tok = encoder.encode_tokens(["music " * 600])
    assert tok.states.shape == (1, MAX_SEQ_LENGTH, 384)


def test_empty_inputs(encoder: MiniLMTextEncoder):
    assert encoder.encode_sentences([]).shape == (0, 384)
    assert encoder.encode_tokens([]).states.shape == (0, 0, 384)


def test_concurrent_calls_match_serial_ones(encoder: MiniLMTextEncoder):
    texts = [[s, s.upper(), s[::-1]] for s in SENTENCES]
    serial = [encoder.encode_sentences(t) for t in texts]
    with ThreadPoolExecutor(max_workers=4) as pool:
        parallel = list(pool.map(encoder.encode_sentences, texts * 3))
    for i, got in enumerate(parallel):
        torch.testing.assert_close(got, serial[i % len(texts)])


def test_missing_folder_names_the_setting(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="MUSECHAT_TEXT_BACKBONE"):
        MiniLMTextEncoder(tmp_path / "nowhere")


def test_loads_from_a_local_folder_given_as_override(tmp_path: Path, encoder: MiniLMTextEncoder):
    other = MiniLMTextEncoder(str(default_model_dir()))
    torch.testing.assert_close(other.encode_sentences(SENTENCES[:2]), encoder.encode_sentences(SENTENCES[:2]))


@pytest.mark.slow
def test_matches_sentence_transformers(encoder: MiniLMTextEncoder):
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(default_model_dir()), device="cpu")
    texts = SENTENCES + ["x " * 400, "", "Ünïcödé àccents and emoji 🎵 survive"]
    ours = encoder.encode_sentences(texts)
    theirs = torch.from_numpy(st.encode(texts, convert_to_numpy=True, batch_size=3))
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
