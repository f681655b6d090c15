"""Regenerate tests/fixtures/musicnn_reference.json with the ORIGINAL musicnn TensorFlow network.

Dev-only. The PyTorch port (engine/encoders/musicnn.py) is checked against what musicnn's own
graph (musicnn/models.py, restored from the same checkpoints with tf.compat.v1) outputs on the
same audio, with the float32 log-mel computed by librosa. TensorFlow never enters the project's
virtualenv: it lives in a separate one.

Set-up (once):

    python3.11 -m venv /tmp/tfenv
    /tmp/tfenv/bin/pip install tensorflow-cpu tf_keras librosa
    /tmp/tfenv/bin/pip install --no-deps musicnn

Run (from the repository root, with the project's virtualenv):

    .venv/bin/python scripts/make_musicnn_reference.py --tf-python /tmp/tfenv/bin/python

Stage 1 (project venv) decodes each track slice with `engine.media.decode_audio` (the
imageio-ffmpeg binary) and saves it as .npy, so both sides see identical samples. Stage 2 (TF
venv, `TF_USE_LEGACY_KERAS=1`, started by stage 1) computes librosa's mel spectrogram
(16 kHz, n_fft 512, hop 256, 96 bands, librosa defaults), compresses it with log10(1 + 10000·x)
in float32 (NOT musicnn's float16, which overflows: the count of such inf values is recorded),
cuts non-overlapping 187-frame patches as musicnn's `batch_data` does, and runs MTT_musicnn and
MSD_musicnn. Stored per track: mean tag probabilities over patches, the first patches' tag
probabilities, the mean penultimate features, a few log-mel frames, and the sha256 of the
decoded audio; plus the library versions.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MUSIC_DIR = Path(os.environ.get("MUSECHAT_MUSIC_DIR", Path.home() / ".cache" / "musechat" / "music"))
FIXTURE = REPO / "tests" / "fixtures" / "musicnn_reference.json"
SAMPLE_RATE = 16_000  # Hz
PATCH_FRAMES = 187
N_STORED_PATCHES = 1  # per-patch tag probabilities kept for the first patch(es)
STORED_FRAMES = (0, 400, -1)  # log-mel frames kept to check the front end (first, interior, last)
DIGITS = 6  # significant digits kept in the JSON

# (file under MUSIC_DIR, start s, duration s, style): different styles on purpose
TRACKS: list[tuple[str, float, float, str]] = [
    ("wesnoth-1.16-music/battle-epic.ogg", 20.0, 15.0, "orchestral"),
    ("supertux-data/chipdisko.ogg", 30.0, 15.0, "chiptune / disco"),
    ("hedgewars-data/Rock.ogg", 60.0, 15.0, "rock"),
    ("extremetuxracer-data/race1-jt.ogg", 10.0, 15.0, "game music (guitar, synth)"),
]
MODELS = ("MTT_musicnn", "MSD_musicnn")


def _round(values) -> list[float]:  # noqa: ANN001 - numpy array
    return [float(f"{v:.{DIGITS}g}") for v in values]


def _dumps(manifest: dict) -> str:
    """Indented JSON with each list of numbers on one line (a small, diffable fixture)."""
    text = json.dumps(manifest, indent=1)
    return re.sub(r"\[[-0-9.eE+,\s]*\]", lambda m: re.sub(r"\s+", " ", m.group(0)), text)


def decode_stage(work: Path) -> dict:
    """Project venv: decode the slices with engine.media.decode_audio into work/*.npy."""
    sys.path.insert(0, str(REPO))
    import imageio_ffmpeg
    import numpy as np

    from engine.media import decode_audio, ffmpeg_binary

    tracks = []
    for i, (rel, start, duration, style) in enumerate(TRACKS):
        audio = decode_audio(MUSIC_DIR / rel, sample_rate=SAMPLE_RATE, start=start, duration=duration)
        np.save(work / f"{i}.npy", audio)
        tracks.append(
            {
                "file": rel,
                "start_s": start,
                "duration_s": duration,
                "style": style,
                "n_samples": int(audio.size),
                "audio_sha256": hashlib.sha256(audio.astype("<f4").tobytes()).hexdigest(),
            }
        )
    version = subprocess.run([ffmpeg_binary(), "-version"], capture_output=True, text=True, check=True)
    return {
        "tracks": tracks,
        "versions": {
            "ffmpeg": version.stdout.splitlines()[0],
            "imageio_ffmpeg": imageio_ffmpeg.__version__,
            "numpy_decode": np.__version__,
        },
    }


def tf_stage(work: Path) -> None:
    """TF venv: run musicnn's own graph on librosa float32 log-mels; merge into work/manifest.json."""
    import importlib.metadata

    import librosa
    import numpy as np
    import tensorflow as tf

    tf.compat.v1.disable_eager_execution()
    import musicnn
    from musicnn import models

    manifest = json.loads((work / "manifest.json").read_text())
    package_dir = Path(musicnn.__file__).parent
    log_mels = []
    for i, track in enumerate(manifest["tracks"]):
        audio = np.load(work / f"{i}.npy")
        mel = librosa.feature.melspectrogram(y=audio, sr=SAMPLE_RATE, hop_length=256, n_fft=512, n_mels=96).T
        log_mel = np.log10(np.float32(10000) * mel + np.float32(1)).astype(np.float32)  # (T, 96)
        with np.errstate(over="ignore"):
            float16_log = np.log10(10000 * mel.astype(np.float16) + 1)  # what musicnn's extractor does
        track["float16_log_mel_inf_count"] = int(np.isinf(float16_log).sum())
        track["n_frames"] = int(log_mel.shape[0])
        track["log_mel_frames"] = {str(f): _round(log_mel[f]) for f in STORED_FRAMES}
        log_mels.append(log_mel)

    for model in MODELS:
        tf.compat.v1.reset_default_graph()
        with tf.name_scope("model"):
            x = tf.compat.v1.placeholder(tf.float32, [None, PATCH_FRAMES, 96])
            is_training = tf.compat.v1.placeholder(tf.bool)
            outputs = models.define_model(x, is_training, model, 50)
            logits, penultimate = outputs[0], outputs[-1]
            probs = tf.nn.sigmoid(logits)
        with tf.compat.v1.Session() as sess:
            tf.compat.v1.train.Saver().restore(sess, f"{package_dir / model}/")
            for track, log_mel in zip(manifest["tracks"], log_mels, strict=True):
                starts = range(0, log_mel.shape[0] - PATCH_FRAMES + 1, PATCH_FRAMES)  # musicnn batch_data
                batch = np.stack([log_mel[s : s + PATCH_FRAMES] for s in starts])
                p, h = sess.run([probs, penultimate], feed_dict={x: batch, is_training: False})
                key = model.split("_")[0].lower()  # "mtt" / "msd"
                track["n_patches"] = int(batch.shape[0])
                track[f"{key}_mean_probs"] = _round(p.mean(axis=0))
                track[f"{key}_patch_probs"] = [_round(row) for row in p[:N_STORED_PATCHES]]
                track[f"{key}_penultimate_mean"] = _round(h.mean(axis=0))

    manifest["versions"].update(
        {
            "python_tf": platform.python_version(),
            "tensorflow": tf.__version__,
            "tf_keras": importlib.metadata.version("tf_keras"),
            "librosa": librosa.__version__,
            "numpy_tf": np.__version__,
            "musicnn": importlib.metadata.version("musicnn"),
        }
    )
    manifest["front_end"] = {
        "librosa_call": "melspectrogram(y, sr=16000, hop_length=256, n_fft=512, n_mels=96)",
        "pad_mode": "librosa default (constant in librosa >= 0.10)",
        "compression": "log10(1 + 10000 * mel) in float32",
        "patches": "non-overlapping 187-frame patches from frame 0, remainder dropped",
    }
    (work / "manifest.json").write_text(json.dumps(manifest))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tf-python", default="/tmp/tfenv/bin/python", help="python of the TF venv")
    parser.add_argument("--out", type=Path, default=FIXTURE)
    parser.add_argument("--stage", choices=["all", "tf"], default="all", help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.stage == "tf":
        tf_stage(args.work)
        return
    with tempfile.TemporaryDirectory(prefix="musicnn_ref_") as tmp:
        work = Path(tmp)
        (work / "manifest.json").write_text(json.dumps(decode_stage(work)))
        env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
        subprocess.run(
            [args.tf_python, __file__, "--stage", "tf", "--work", str(work)], env=env, check=True
        )
        manifest = json.loads((work / "manifest.json").read_text())
    args.out.write_text(_dumps(manifest) + "\n")
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
