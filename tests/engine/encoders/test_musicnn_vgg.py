"""musicnn's VGG taggers in PyTorch vs the original TensorFlow graph, on real music (tests/fixtures)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from engine.encoders.musicnn import MSD_LABELS, MTT_LABELS
from engine.encoders.musicnn_vgg import VGG_CONFIGS, MusicnnVgg, VggTagger, load_vgg_weights
from engine.encoders.musicnn import musicnn_package_dir
from engine.encoders.tf_checkpoint import read_tf_checkpoint
from engine.media import decode_audio

REFERENCE = Path(__file__).parents[2] / "fixtures" / "musicnn_vgg_reference.json"
# Port vs TF (scripts/make_musicnn_vgg_reference.py); float32 on both sides: a wrong layer, pooling
# or flatten order moves probabilities by 1e-2 or more
PROB_ATOL = 1e-4


@pytest.fixture(scope="module")
def tagger() -> VggTagger:
    return VggTagger()


@pytest.fixture(scope="module")
def reference() -> dict:
    return json.loads(REFERENCE.read_text())


@pytest.mark.slow
def test_tags_match_tensorflow_on_real_music(tagger: VggTagger, reference: dict, music_dir: Path) -> None:
    for track in reference["tracks"]:
        audio = decode_audio(music_dir / track["file"], sample_rate=16_000, start=track["start_s"], duration=track["duration_s"])
        assert audio.size == track["n_samples"]
        tags = tagger.tags(audio)
        mtt = np.array([tags[f"mtt:{t}"] for t in MTT_LABELS])
        msd = np.array([tags[f"msd:{t}"] for t in MSD_LABELS])
        np.testing.assert_allclose(mtt, track["mtt_vgg_mean_probs"], atol=PROB_ATOL, err_msg=track["file"])
        np.testing.assert_allclose(msd, track["msd_vgg_mean_probs"], atol=PROB_ATOL, err_msg=track["file"])


def test_every_checkpoint_variable_is_used_and_shapes_match() -> None:
    for name, cfg in VGG_CONFIGS.items():
        model = MusicnnVgg(cfg)
        assert cfg.flat_features == 256  # 2 x 1 x 128 after the five pools
        load_vgg_weights(model, read_tf_checkpoint(f"{musicnn_package_dir() / name}/"))  # raises on unused/missing


def test_a_missing_variable_is_named() -> None:
    tensors = read_tf_checkpoint(f"{musicnn_package_dir() / 'MTT_vgg'}/")
    del tensors["3CNN/kernel"]
    with pytest.raises(KeyError, match="3CNN/kernel"):
        load_vgg_weights(MusicnnVgg(VGG_CONFIGS["MTT_vgg"]), tensors)


def test_bad_audio_is_refused(tagger: VggTagger) -> None:
    with pytest.raises(ValueError, match="mono audio"):
        tagger.tags(np.zeros((2, 100), dtype=np.float32))
