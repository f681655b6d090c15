"""musicnn in PyTorch vs the original TensorFlow network, on real music (tests/fixtures)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.encoders.base import MusicEmbedding, MusicEncoder
from engine.encoders.musicnn import (
    MSD_LABELS,
    MTT_LABELS,
    MusicnnEncoder,
    load_musicnn,
    top_tags,
)
from engine.media import decode_audio
from engine.melspec import musicnn_log_mel, patches

REFERENCE = Path(__file__).parents[2] / "fixtures" / "musicnn_reference.json"
# Port vs TF (scripts/make_musicnn_reference.py). Achieved: ~2e-6 on probabilities and ~8e-6
# on penultimate features; the bounds leave room for other BLAS builds, not for a wrong layer.
PROB_ATOL = 1e-4
PENULTIMATE_ATOL = 1e-3
ORCHESTRAL, CHIPTUNE, ROCK = 0, 1, 2  # indices into the reference's tracks
PATCH_SAMPLES = 48_000  # 3 s at 16 kHz: 188 frames, the first 187 of which make one patch


@pytest.fixture(scope="module")
def reference() -> dict:
    return json.loads(REFERENCE.read_text())


@pytest.fixture(scope="module")
def encoder() -> MusicnnEncoder:
    return MusicnnEncoder()


@pytest.fixture(scope="module")
def slices(reference: dict, music_dir: Path) -> list[np.ndarray]:
    """The reference's 15 s slices, decoded exactly as the reference script decoded them."""
    return [
        decode_audio(music_dir / t["file"], sample_rate=16_000, start=t["start_s"], duration=t["duration_s"])
        for t in reference["tracks"]
    ]


@pytest.fixture(scope="module")
def first_patches(encoder: MusicnnEncoder, slices: list[np.ndarray]) -> list[MusicEmbedding]:
    """The first 3 s of each slice: exactly the reference's first patch (frames 0-186)."""
    return encoder.encode_batch([a[:PATCH_SAMPLES] for a in slices])


def _probs(encoder: MusicnnEncoder, emb: MusicEmbedding) -> np.ndarray:
    assert emb.tags is not None
    return np.array([emb.tags[name] for name in encoder.tag_names])  # (100,)


def test_interface_and_vocabulary(encoder: MusicnnEncoder) -> None:
    assert isinstance(encoder, MusicEncoder)
    assert encoder.sample_rate == 16_000
    assert encoder.dim == 400
    assert len(encoder.tag_names) == 100 == len(set(encoder.tag_names))
    assert encoder.tag_names[:3] == ["mtt:guitar", "mtt:classical", "mtt:slow"]
    assert encoder.tag_names[50:52] == ["msd:rock", "msd:pop"]
    assert encoder.tag_names[-1] == "msd:happy"
    assert len(MTT_LABELS) == len(MSD_LABELS) == 50


def test_first_patch_matches_tensorflow_reference(
    encoder: MusicnnEncoder, reference: dict, first_patches: list[MusicEmbedding]
) -> None:
    for track, emb in zip(reference["tracks"], first_patches, strict=True):
        assert emb.tokens.shape == (1, 400)
        expected = track["mtt_patch_probs"][0] + track["msd_patch_probs"][0]
        np.testing.assert_allclose(_probs(encoder, emb), expected, rtol=0, atol=PROB_ATOL)


@pytest.mark.slow
def test_port_matches_tensorflow_reference(
    encoder: MusicnnEncoder, reference: dict, slices: list[np.ndarray]
) -> None:
    """15 s slices: mean tag probabilities and mean penultimate features over 5 patches."""
    for track, emb in zip(reference["tracks"], encoder.encode_batch(slices), strict=True):
        assert emb.tokens.shape == (track["n_patches"], 400)
        np.testing.assert_allclose(
            _probs(encoder, emb), track["mtt_mean_probs"] + track["msd_mean_probs"], rtol=0, atol=PROB_ATOL
        )
        np.testing.assert_allclose(
            emb.pooled.numpy(),
            track["mtt_penultimate_mean"] + track["msd_penultimate_mean"],
            rtol=0,
            atol=PENULTIMATE_ATOL,
        )


def test_styles_get_different_tags(first_patches: list[MusicEmbedding]) -> None:
    """Regression for musicnn's float16 log-mel (inf on loud music -> same tags for every track)."""
    tops = [top_tags(e.tags or {}) for e in first_patches]
    mtt_top = [[name for name, _ in mtt] for mtt, _ in tops]
    assert mtt_top[ORCHESTRAL] != mtt_top[CHIPTUNE] != mtt_top[ROCK] != mtt_top[ORCHESTRAL]
    assert mtt_top[CHIPTUNE][0] == "techno"
    assert mtt_top[ROCK][0] == "rock"
    assert tops[ROCK][1][0][0] == "rock"  # MSD
    assert tops[CHIPTUNE][1][0][0] == "electronic"  # MSD
    assert torch.isfinite(torch.stack([e.tokens for e in first_patches])).all()


def test_orchestral_scores_classical_over_electronic(first_patches: list[MusicEmbedding]) -> None:
    tags = first_patches[ORCHESTRAL].tags or {}
    acoustic = min(tags["mtt:classical"], tags["mtt:strings"], tags["mtt:violin"])
    electronic = max(tags["mtt:techno"], tags["mtt:electronic"])
    assert acoustic > electronic
    chip = first_patches[CHIPTUNE].tags or {}
    chip_acoustic = max(chip["mtt:classical"], chip["mtt:violin"])
    assert min(chip["mtt:techno"], chip["mtt:electronic"]) > 10 * chip_acoustic


def test_batch_of_clips_equals_single_clips(
    encoder: MusicnnEncoder, slices: list[np.ndarray], first_patches: list[MusicEmbedding]
) -> None:
    """Patches give the same features whatever else shares their batch; tags average patches."""
    six_seconds = slices[ROCK][: 2 * PATCH_SAMPLES]  # 2 patches
    batch = encoder.encode_batch([six_seconds, slices[CHIPTUNE][:PATCH_SAMPLES]])
    assert [b.tokens.shape for b in batch] == [(2, 400), (1, 400)]
    torch.testing.assert_close(batch[1].tokens, first_patches[CHIPTUNE].tokens, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(batch[0].tokens[0], first_patches[ROCK].tokens[0], rtol=1e-5, atol=1e-5)
    second_tokens, second_probs = encoder.embed_patches(patches(musicnn_log_mel(six_seconds))[1:2])
    torch.testing.assert_close(batch[0].tokens[1], second_tokens[0], rtol=1e-5, atol=1e-5)

    emb = batch[0]  # shapes, pooling and tag averaging of a multi-patch clip
    assert emb.tokens.dtype == torch.float32
    assert not emb.tokens.is_inference()  # fusion training may feed them to layers with gradients
    assert emb.pooled.shape == (400,)
    torch.testing.assert_close(emb.pooled, emb.tokens.mean(dim=0))
    assert emb.tags is not None and list(emb.tags) == encoder.tag_names
    assert all(0.0 < p < 1.0 for p in emb.tags.values())
    expected = (_probs(encoder, first_patches[ROCK]) + second_probs[0].numpy()) / 2
    np.testing.assert_allclose(_probs(encoder, emb), expected, atol=1e-6)


def test_short_clip_is_repeat_padded_to_one_patch(encoder: MusicnnEncoder, slices: list[np.ndarray]) -> None:
    emb = encoder.encode(slices[CHIPTUNE][:16_000])  # 1 s < one 3 s patch
    assert emb.tokens.shape == (1, 400)
    assert (emb.tags or {})["mtt:techno"] > 0.3


def test_empty_audio_is_refused(encoder: MusicnnEncoder) -> None:
    with pytest.raises(ValueError, match="non-empty mono"):
        encoder.encode(np.zeros(0, np.float32))
    assert encoder.encode_batch([]) == []


def test_top_tags_splits_vocabularies() -> None:
    tags = {"mtt:rock": 0.9, "mtt:piano": 0.1, "mtt:techno": 0.5, "msd:jazz": 0.2, "msd:House": 0.7}
    mtt, msd = top_tags(tags, k=2)
    assert mtt == [("rock", 0.9), ("techno", 0.5)]
    assert msd == [("House", 0.7), ("jazz", 0.2)]


def test_unknown_model_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown musicnn model"):
        load_musicnn("MSD_musicnn_big")


@pytest.mark.slow
def test_whole_orchestral_track(encoder: MusicnnEncoder, orchestral_track: Path) -> None:
    audio = decode_audio(orchestral_track, sample_rate=16_000)  # ~74 s
    emb = encoder.encode(audio)
    assert emb.tokens.shape == ((1 + len(audio) // 256) // 187, 400)
    tags = emb.tags or {}
    assert min(tags["mtt:classical"], tags["mtt:strings"]) > max(tags["mtt:techno"], tags["mtt:electronic"])
