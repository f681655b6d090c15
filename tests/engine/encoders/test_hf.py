"""The paper-path encoders (engine/encoders/hf.py) on tiny random configs: shapes and exact effects."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine.encoders import hf
from engine.encoders.efficientnet import imagenet_labels

TINY = hf.TinyConfig()
SR = 16_000  # Hz
TEXTS = ["upbeat electronic music", "a sad violin", "drums"]


@pytest.fixture(scope="module")
def clip_parts():
    return hf.tiny_clip()


@pytest.fixture(scope="module")
def image_encoder(clip_parts) -> hf.ClipImageEncoder:
    return hf.ClipImageEncoder(*clip_parts)


@pytest.fixture(scope="module")
def music_encoder() -> hf.AstMusicEncoder:
    return hf.AstMusicEncoder(*hf.tiny_ast())


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return hf.save_tiny_backbones(tmp_path_factory.mktemp("tiny"))


def frames(n: int, size: int = TINY.image_size, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def audio(seconds: float, seed: int = 0) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(int(seconds * SR))).astype(np.float32)


def frozen(module: torch.nn.Module) -> bool:
    return not module.training and all(p.dtype == torch.float32 and not p.requires_grad for p in module.parameters())


# --- CLIP image ----------------------------------------------------------------------------------


def test_clip_image_embeds_each_frame(image_encoder: hf.ClipImageEncoder):
    assert (image_encoder.dim, image_encoder.input_size) == (TINY.hidden, TINY.image_size)
    assert frozen(image_encoder.model)
    x = frames(4)
    e = image_encoder.encode(x)
    assert e.shape == (4, TINY.hidden) and e.dtype == torch.float32
    torch.testing.assert_close(image_encoder.encode(x[2:3]), e[2:3], rtol=1e-4, atol=1e-5)  # per frame
    assert image_encoder.encode(x[:0]).shape == (0, TINY.hidden)


def test_clip_image_applies_openai_normalisation(image_encoder: hf.ClipImageEncoder):
    x = frames(2)
    pixels = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255.0
    mean, std = torch.tensor(hf.CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(hf.CLIP_STD).view(1, 3, 1, 1)
    m = image_encoder.model
    with torch.inference_mode():
        expected = m.visual_projection(m.vision_model(pixel_values=(pixels - mean) / std).pooler_output)
    torch.testing.assert_close(image_encoder.encode(x), expected, rtol=1e-4, atol=1e-5)


def test_clip_zero_shot_labels_over_imagenet(image_encoder: hf.ClipImageEncoder):
    x = frames(3)
    probs = image_encoder.probabilities(x)
    assert probs.shape == (1000,)
    assert probs.sum().item() == pytest.approx(1.0, abs=1e-5)
    labels = image_encoder.labels(x, k=4)
    names = imagenet_labels()
    assert [n for n, _ in labels] == [names[i] for i in torch.topk(probs, 4).indices.tolist()]
    # the label vectors are CLIP text embeddings of the prompts
    prompt = hf.ZERO_SHOT_PROMPT.format(names[7])
    torch.testing.assert_close(
        image_encoder.label_vectors()[7], image_encoder.text_encoder.encode_sentences([prompt])[0], rtol=1e-4, atol=1e-5
    )
    assert image_encoder.labels(x[:0]) == []


def test_frames_of_another_size_are_resized(image_encoder: hf.ClipImageEncoder):
    assert image_encoder.encode(frames(2, size=TINY.image_size * 2)).shape == (2, TINY.hidden)


# --- CLIP text -----------------------------------------------------------------------------------


def test_clip_text_tokens_are_unpooled_last_hidden_states(image_encoder: hf.ClipImageEncoder):
    text = image_encoder.text_encoder
    assert text.model is image_encoder.model  # the image encoder's labels share the tower
    tok = text.encode_tokens(TEXTS)
    batch = text.tokenize.tokenizer(TEXTS, padding=True, return_tensors="pt")
    assert tok.states.shape == (3, batch["input_ids"].shape[1], TINY.hidden)
    assert tok.mask.tolist() == batch["attention_mask"].bool().tolist()
    with torch.inference_mode():
        expected = text.model.text_model(**batch).last_hidden_state
    torch.testing.assert_close(tok.states, expected)


def test_clip_sentences_are_the_projected_eos_state_normalised(image_encoder: hf.ClipImageEncoder):
    text = image_encoder.text_encoder
    tok = text.encode_tokens(TEXTS)
    ids = text.tokenize.tokenizer(TEXTS, padding=True, return_tensors="pt")["input_ids"]
    eos = (ids == text.tokenize.tokenizer.sep_token_id).int().argmax(dim=1)  # tiny: [SEP] is CLIP's EOS
    with torch.inference_mode():
        expected = F.normalize(text.model.text_projection(tok.states[torch.arange(3), eos]), dim=-1)
    got = text.encode_sentences(TEXTS)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.norm(dim=-1), torch.ones(3))
    assert text.encode_sentences([]).shape == (0, TINY.hidden)


def test_clip_text_truncates_at_the_position_limit(image_encoder: hf.ClipImageEncoder):
    tok = image_encoder.text_encoder.encode_tokens(["music " * 200])
    assert tok.states.shape == (1, TINY.text_positions, TINY.hidden)


# --- AST ---------------------------------------------------------------------------------------


def test_ast_window_and_vocabulary(music_encoder: hf.AstMusicEncoder):
    assert music_encoder.sample_rate == SR
    assert music_encoder.dim == TINY.hidden
    assert music_encoder.tag_names == list(hf.TINY_TAGS)
    assert music_encoder.window == hf.AST_FRAME_LENGTH + (TINY.mel_frames - 1) * hf.AST_HOP
    assert frozen(music_encoder.model)


@pytest.mark.parametrize(
    ("samples", "windows"),
    [
        (100, 1),  # shorter than one fbank frame: padded, one window
        (10_480, 1),  # exactly one window
        (10_480 + 5_240, 2),  # a half-full tail is kept
        (10_480 + 5_239, 1),  # a shorter tail is dropped
        (3 * 10_480 + 10, 3),
    ],
)
def test_ast_splits_audio_into_spectrogram_windows(music_encoder: hf.AstMusicEncoder, samples: int, windows: int):
    pieces = music_encoder.split(np.zeros(samples, dtype=np.float32))
    assert len(pieces) == windows
    assert all(len(p) == music_encoder.window for p in pieces[:-1])


def test_ast_tokens_cls_and_tags(music_encoder: hf.AstMusicEncoder):
    tokens_per_window = 2 + ((TINY.mel_bins - 16) // 10 + 1) * ((TINY.mel_frames - 16) // 10 + 1)  # CLS, dist, patches
    wav = audio(2.0)  # 32000 samples: 3 full windows, a 560-sample tail dropped
    emb = music_encoder.encode(wav)
    assert emb.tokens.shape == (3 * tokens_per_window, TINY.hidden)
    assert emb.pooled.shape == (TINY.hidden,)
    cls = emb.tokens.view(3, tokens_per_window, TINY.hidden)[:, 0]
    torch.testing.assert_close(emb.pooled, cls.mean(dim=0))
    # tags = the classifier's sigmoid, as ASTForAudioClassification computes its logits
    feats = music_encoder.features(music_encoder.split(wav), sampling_rate=SR, return_tensors="pt")
    with torch.inference_mode():
        logits = music_encoder.model(input_values=feats["input_values"]).logits  # (3, 5)
    expected = torch.sigmoid(logits).mean(dim=0).tolist()
    assert list(emb.tags) == list(hf.TINY_TAGS)
    assert list(emb.tags.values()) == pytest.approx(expected, abs=1e-6)


def test_ast_encode_batch_equals_encode(music_encoder: hf.AstMusicEncoder):
    clips = [audio(0.5, seed=1), audio(1.5, seed=2), audio(0.2, seed=3)]
    batch = music_encoder.encode_batch(clips)
    assert len(batch) == 3
    for clip, got in zip(clips, batch, strict=True):
        one = music_encoder.encode(clip)
        torch.testing.assert_close(got.tokens, one.tokens, rtol=1e-4, atol=1e-5)
        assert got.tags == pytest.approx(one.tags, abs=1e-6)
    assert music_encoder.encode_batch([]) == []


# --- from_pretrained: local directories, hub ids, offline mode -------------------------------------


def test_from_pretrained_local_dirs_reload_the_same_weights(saved, image_encoder, music_encoder):
    img = hf.ClipImageEncoder.from_pretrained(str(saved["clip"]))
    txt = hf.ClipTextEncoder.from_pretrained(str(saved["clip"]))
    mus = hf.AstMusicEncoder.from_pretrained(str(saved["ast"]))
    x = frames(2)
    torch.testing.assert_close(img.encode(x), image_encoder.encode(x))
    torch.testing.assert_close(txt.encode_sentences(TEXTS), image_encoder.text_encoder.encode_sentences(TEXTS))
    wav = audio(0.7)
    torch.testing.assert_close(mus.encode(wav).tokens, music_encoder.encode(wav).tokens)
    assert frozen(img.model) and frozen(txt.model) and frozen(mus.model)


def test_a_checkpoint_of_the_wrong_model_is_refused(saved):
    with pytest.raises(hf.BackboneUnavailable, match="not a ASTForAudioClassification checkpoint.*MUSECHAT_MUSIC_BACKBONE"):
        hf.AstMusicEncoder.from_pretrained(str(saved["clip"]))


def test_a_missing_local_dir_names_the_setting(tmp_path: Path):
    with pytest.raises(hf.BackboneUnavailable, match="does not exist: set MUSECHAT_IMAGE_BACKBONE"):
        hf.ClipImageEncoder.from_pretrained(str(tmp_path / "clip"))


@pytest.mark.parametrize(
    ("backbone", "is_path"),
    [
        ("openai/clip-vit-base-patch32", False),
        ("bert-base-uncased", False),
        ("/models/clip", True),
        ("./clip", True),
        ("~/models/clip", True),
        ("models/clip/vit-b32", True),
    ],
)
def test_hub_ids_and_paths_are_told_apart(backbone: str, is_path: bool):
    assert hf.looks_like_path(backbone) is is_path


def test_offline_hub_id_fails_clearly_without_touching_the_network(monkeypatch: pytest.MonkeyPatch):
    attempts: list[object] = []

    def no_network(*args, **kwargs):
        attempts.append(args)
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hf.offline_mode()
    with pytest.raises(hf.BackboneUnavailable, match="HF_HUB_OFFLINE=1.*MUSECHAT_IMAGE_BACKBONE"):
        hf.ClipImageEncoder.from_pretrained("musechat-tests/no-such-clip")
    assert attempts == []


def test_offline_hub_id_loads_from_the_hub_cache_snapshot(
    saved, image_encoder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """The hub-id path (paper profile with internet once, offline later) reads the cache layout."""
    import shutil

    from huggingface_hub import constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--musechat-tests--tiny-clip"
    shutil.copytree(saved["clip"], repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: pytest.fail("network used"))
    assert hf.cached_snapshot("musechat-tests/tiny-clip") == repo / "snapshots" / commit
    img = hf.ClipImageEncoder.from_pretrained("musechat-tests/tiny-clip")
    torch.testing.assert_close(img.encode(frames(2)), image_encoder.encode(frames(2)))


def test_clip_a_batch_of_videos_in_one_pass_equals_each_alone(image_encoder: hf.ClipImageEncoder):
    videos = [frames(5, seed=1), frames(0), frames(3, seed=2), frames(4, size=2 * TINY.image_size, seed=3)]  # one to scale
    together = image_encoder.encode_batch_with_labels(videos, k=3)
    alone = [image_encoder.encode_with_labels(v, k=3) for v in videos]
    assert [f.shape[0] for f, _ in together] == [5, 0, 3, 4]
    for (f_b, labels_b), (f_a, labels_a) in zip(together, alone, strict=True):
        torch.testing.assert_close(f_b, f_a, rtol=1e-4, atol=1e-5)
        assert [n for n, _ in labels_b] == [n for n, _ in labels_a]
        np.testing.assert_allclose([p for _, p in labels_b], [p for _, p in labels_a], rtol=1e-4, atol=1e-6)
