"""EfficientNet-Lite0 (engine/encoders/efficientnet.py): architecture, preprocessing, real frames."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.encoders.efficientnet import (
    INPUT_MEAN,
    INPUT_STD,
    EfficientNetLite,
    EfficientNetLiteEncoder,
    SamePadConv2d,
    default_weights_path,
    frames_to_tensor,
    imagenet_labels,
    resolve_weights,
    top_labels,
)
from engine.media import ffmpeg_binary

LITE0_PARAMS = 4_652_008  # EfficientNet-Lite0 with the 1000-class head (d-li14/efficientnet-lite.pytorch: 4.652M)
ANIMAL_CLASSES = range(0, 398)  # ImageNet indices 0 (tench) .. 397 (pufferfish) are all animals
CYCLE_CLASSES = {"mountain bike", "tandem bicycle", "unicycle", "tricycle", "moped", "motor scooter", "rickshaw"}


def decode_frames(path: Path, fps: float, size: int = 224) -> np.ndarray:
    """RGB uint8 frames (N, size, size, 3): short side scaled to `size` and centre-cropped by ffmpeg."""
    vf = f"fps={fps},scale={size}:{size}:force_original_aspect_ratio=increase,crop={size}:{size}"
    cmd = [ffmpeg_binary(), "-nostdin", "-loglevel", "error", "-i", str(path), "-vf", vf]
    cmd += ["-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
    raw = subprocess.run(cmd, capture_output=True, check=True, timeout=60).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, size, size, 3).copy()


@pytest.fixture(scope="module")
def encoder() -> EfficientNetLiteEncoder:
    return EfficientNetLiteEncoder()


def test_imagenet_labels_are_the_1000_classes_in_classifier_order():
    names = imagenet_labels()
    assert len(names) == 1000
    assert (names[0], names[1], names[671], names[444], names[999]) == (
        "tench",
        "goldfish",
        "mountain bike",
        "tandem bicycle",
        "toilet paper",
    )


def test_checkpoint_loads_strictly_into_the_architecture(encoder: EfficientNetLiteEncoder, tmp_path: Path):
    model = encoder.model
    assert sum(p.numel() for p in model.parameters()) == LITE0_PARAMS
    assert len(model.blocks) == 16
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())
    # a checkpoint whose keys do not match the architecture is rejected, not half-loaded
    state = torch.load(default_weights_path(), map_location="cpu", weights_only=True)
    state["_blocks.3._bn1.gamma"] = state.pop("_blocks.3._bn1.weight")
    torch.save(state, tmp_path / "renamed.pth")
    with pytest.raises(RuntimeError, match=r"blocks\.3\.bn1"):
        EfficientNetLite.from_checkpoint(tmp_path / "renamed.pth")


def test_same_padding_pads_bottom_right_like_tensorflow():
    conv = SamePadConv2d(1, 1, 3, stride=2, bias=False)
    torch.nn.init.ones_(conv.weight)
    out = conv(torch.ones(1, 1, 4, 4))  # TF SAME: total pad 1, all of it bottom/right
    assert out.shape == (1, 1, 2, 2)
    assert out[0, 0].tolist() == [[9.0, 6.0], [6.0, 4.0]]
    odd = conv(torch.ones(1, 1, 5, 5))  # total pad 2: one each side
    assert odd.shape == (1, 1, 3, 3)
    assert odd[0, 0, 0].tolist() == [4.0, 6.0, 4.0]


def test_encode_gives_pooled_features_that_feed_the_classifier(encoder: EfficientNetLiteEncoder):
    frames = np.random.default_rng(0).integers(0, 256, (3, 224, 224, 3), dtype=np.uint8)
    feats = encoder.encode(frames)
    assert feats.shape == (3, 1280) and feats.dtype == torch.float32
    assert (feats >= 0).all()  # ReLU6 before pooling
    probs = encoder.probabilities(frames)
    expected = torch.softmax(encoder.model.fc(feats), dim=-1).mean(dim=0)
    torch.testing.assert_close(probs, expected, rtol=1e-5, atol=1e-6)
    assert encoder.encode(frames[:0]).shape == (0, 1280)
    assert encoder.labels(frames[:0]) == []


def test_frames_are_scaled_short_side_then_centre_cropped():
    frame = np.zeros((1, 100, 300, 3), dtype=np.uint8)
    frame[:, :, 80:220] = 255  # white around the centre third, black at the sides
    x = frames_to_tensor(frame, 50, torch.device("cpu"))  # scaled to 50x150, cols 50..100 kept
    assert x.shape == (1, 3, 50, 50)
    assert x.min().item() == pytest.approx(255.0, abs=1e-3)  # a stretch would have kept black sides
    with pytest.raises(ValueError, match="RGB frames"):
        frames_to_tensor(np.zeros((2, 8, 8), dtype=np.uint8), 8, torch.device("cpu"))


def test_top_labels_merge_repeated_names():
    probs = torch.tensor([0.25, 0.375, 0.25, 0.125])
    # "a" alone (0.25) ranks below "b"; merged (0.5) it leads
    assert top_labels(probs, ["a", "b", "a", "c"], k=2) == [("a", 0.5), ("b", 0.375)]


def test_weights_resolve_from_a_file_or_a_folder_with_one(tmp_path: Path):
    src = default_weights_path()
    assert resolve_weights(None) == src
    assert resolve_weights(src) == src
    (tmp_path / "w").mkdir()
    shutil.copy(src, tmp_path / "w" / "lite0.pth")
    assert resolve_weights(str(tmp_path / "w")) == tmp_path / "w" / "lite0.pth"
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="MUSECHAT_IMAGE_BACKBONE"):
        resolve_weights(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="MUSECHAT_IMAGE_BACKBONE"):
        resolve_weights(tmp_path / "missing.pth")


@pytest.mark.slow
def test_real_frames_get_plausible_imagenet_classes(encoder: EfficientNetLiteEncoder, bikes_mp4: Path, bunny_mp4: Path):
    bikes = decode_frames(bikes_mp4, fps=2)  # city street with cyclists
    bunny = decode_frames(bunny_mp4, fps=2)  # Big Buck Bunny, a cartoon rabbit on grass
    bikes_top = [name for name, _ in encoder.labels(bikes, k=5)]
    assert CYCLE_CLASSES & set(bikes_top), bikes_top
    names = imagenet_labels()
    bunny_probs = encoder.probabilities(bunny)
    top5 = torch.topk(bunny_probs, 5).indices.tolist()
    assert all(i in ANIMAL_CLASSES for i in top5), [names[i] for i in top5]

    def cycle_mass(probs: torch.Tensor) -> float:
        return sum(p for n, p in zip(names, probs.tolist(), strict=True) if n in CYCLE_CLASSES)

    assert cycle_mass(encoder.probabilities(bikes)) > 5 * cycle_mass(bunny_probs)


@pytest.mark.slow
def test_input_normalisation_matches_the_trained_batchnorm_statistics(
    encoder: EfficientNetLiteEncoder, bikes_mp4: Path, bunny_mp4: Path
):
    """(x - 127) / 128, TF EfficientNet-Lite's preprocessing, fits the stem's BN stats best."""
    frames = np.concatenate([decode_frames(bikes_mp4, fps=2), decode_frames(bunny_mp4, fps=2)])
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    m = encoder.model
    rv, rm = m.bn0.running_var, m.bn0.running_mean
    live = rv > 1e-4  # a few stem channels are dead (variance 0)
    imagenet_mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1) * 255
    imagenet_std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1) * 255

    def variance_mismatch(mean, std) -> float:
        with torch.inference_mode():
            h = m.conv_stem((x - mean) / std)  # (N, 32, 112, 112)
        var = h.var(dim=(0, 2, 3))
        return (var / rv)[live].log().abs().median().item()

    ours = variance_mismatch(INPUT_MEAN, INPUT_STD)
    assert ours < variance_mismatch(imagenet_mean, imagenet_std)
    assert ours < variance_mismatch(0.0, 255.0)
    assert rm.shape == (32,)


@pytest.mark.slow
def test_one_pass_features_and_labels_equal_the_two_calls(bikes_mp4) -> None:
    """encode_with_labels (one forward pass) gives what encode + labels give separately."""
    import subprocess

    from engine.encoders.efficientnet import EfficientNetLiteEncoder
    from engine.media import ffmpeg_binary

    raw = subprocess.run(
        [ffmpeg_binary(), "-v", "error", "-i", str(bikes_mp4), "-vf", "fps=1,scale=224:224", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
        capture_output=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    frames = np.frombuffer(raw, np.uint8).reshape(-1, 224, 224, 3)[:4]
    enc = EfficientNetLiteEncoder()
    feats, labels = enc.encode_with_labels(frames, k=5)
    torch.testing.assert_close(feats, enc.encode(frames), rtol=1e-5, atol=1e-5)
    assert [n for n, _ in labels] == [n for n, _ in enc.labels(frames, k=5)]


def test_a_batch_of_videos_in_one_pass_equals_each_alone(encoder: EfficientNetLiteEncoder, bikes_mp4: Path, bunny_mp4: Path):
    videos = [decode_frames(bikes_mp4, 1.0)[:6], np.zeros((0, 224, 224, 3), np.uint8), decode_frames(bunny_mp4, 1.0)[:4]]
    together = encoder.encode_batch_with_labels(videos, k=5)
    alone = [encoder.encode_with_labels(v, k=5) for v in videos]
    assert [f.shape for f, _ in together] == [(6, encoder.dim), (0, encoder.dim), (4, encoder.dim)]
    for (f_b, labels_b), (f_a, labels_a) in zip(together, alone, strict=True):
        torch.testing.assert_close(f_b, f_a, rtol=1e-4, atol=1e-4)
        assert [n for n, _ in labels_b] == [n for n, _ in labels_a]
        np.testing.assert_allclose([p for _, p in labels_b], [p for _, p in labels_a], rtol=1e-4, atol=1e-5)
