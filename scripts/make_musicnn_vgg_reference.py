"""Regenerate tests/fixtures/musicnn_vgg_reference.json with musicnn's ORIGINAL VGG taggers in TF.

Dev-only, the twin of scripts/make_musicnn_reference.py (same TF virtualenv, same set-up, same
decoded slices): the PyTorch port engine/encoders/musicnn_vgg.py is checked against what the
package's `MTT_vgg` / `MSD_vgg` checkpoints give in TensorFlow on librosa's float32 log-mel.
musicnn's `models.vgg` calls `tf.layers` and `tf.contrib` initialisers, which TF 2 no longer has;
the graph below is the same layers through `tf.compat.v1.layers`, with the same variable names
(1CNN..5CNN, batch_normalization[_k], dense), so the checkpoint restores into it unchanged
(initialisers do not matter: every variable is restored).

Run (from the repository root, with the project's virtualenv):

    .venv/bin/python scripts/make_musicnn_vgg_reference.py --tf-python /tmp/tfenv/bin/python
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_musicnn_reference import PATCH_FRAMES, SAMPLE_RATE, _dumps, _round, decode_stage  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "musicnn_vgg_reference.json"
MODELS = ("MTT_vgg", "MSD_vgg")
POOLS = (([4, 1], [2, 2]), ([2, 2], [2, 2]), ([2, 2], [2, 2]), ([2, 2], [2, 2]), ([4, 4], [4, 4]))


def vgg_graph(tf, x, filters: int = 128):  # noqa: ANN001, ANN201 - TF objects
    """musicnn/models.py `vgg` in tf.compat.v1.layers (inference: no dropout)."""
    layers = tf.compat.v1.layers
    h = layers.batch_normalization(tf.expand_dims(x, 3), training=False)
    for k, (pool, stride) in enumerate(POOLS):
        h = layers.conv2d(h, filters=filters, kernel_size=[3, 3], padding="same", activation=tf.nn.relu, name=f"{k + 1}CNN")
        h = layers.batch_normalization(h, training=False)
        h = layers.max_pooling2d(h, pool_size=pool, strides=stride)
    flat = layers.flatten(h)
    return layers.dense(flat, units=50, activation=None)


def tf_stage(work: Path) -> None:
    import librosa
    import numpy as np
    import tensorflow as tf

    tf.compat.v1.disable_eager_execution()
    import musicnn

    manifest = json.loads((work / "manifest.json").read_text())
    package_dir = Path(musicnn.__file__).parent
    log_mels = []
    for i, _ in enumerate(manifest["tracks"]):
        audio = np.load(work / f"{i}.npy")
        mel = librosa.feature.melspectrogram(y=audio, sr=SAMPLE_RATE, hop_length=256, n_fft=512, n_mels=96).T
        log_mels.append(np.log10(np.float32(10000) * mel + np.float32(1)).astype(np.float32))
    for model in MODELS:
        tf.compat.v1.reset_default_graph()
        x = tf.compat.v1.placeholder(tf.float32, [None, PATCH_FRAMES, 96])
        probs = tf.nn.sigmoid(vgg_graph(tf, x))
        with tf.compat.v1.Session() as sess:
            tf.compat.v1.train.Saver().restore(sess, f"{package_dir / model}/")
            for track, log_mel in zip(manifest["tracks"], log_mels, strict=True):
                starts = range(0, log_mel.shape[0] - PATCH_FRAMES + 1, PATCH_FRAMES)
                batch = np.stack([log_mel[s : s + PATCH_FRAMES] for s in starts])
                p = sess.run(probs, feed_dict={x: batch})
                key = model.lower()  # "mtt_vgg" / "msd_vgg"
                track["n_patches"] = int(batch.shape[0])
                track[f"{key}_mean_probs"] = _round(p.mean(axis=0))
    manifest["versions"]["tensorflow"] = tf.__version__
    manifest["versions"]["librosa"] = librosa.__version__
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
    with tempfile.TemporaryDirectory(prefix="musicnn_vgg_ref_") as tmp:
        work = Path(tmp)
        (work / "manifest.json").write_text(json.dumps(decode_stage(work)))
        env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
        subprocess.run([args.tf_python, __file__, "--stage", "tf", "--work", str(work)], env=env, check=True)
        manifest = json.loads((work / "manifest.json").read_text())
    args.out.write_text(_dumps(manifest) + "\n")
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
