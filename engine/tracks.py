"""What the engine knows about a catalog track, computed once at indexing time (paper sections 3-5).

The paper's dataset takes the centre 120 s of each clip and cuts it into twelve 10 s segments
(section 3); a track's vector is the mean of its segment vectors (section 5), and the tags are
musicnn's top-5 MagnaTagATune and top-5 Million Song Dataset tags (section 3). `analyse_track`
does exactly that for one audio file, with no database:

1. probe (an audio stream is required) and plan the segments (`engine.media.plan_segments`: the
   centre 120 s, or all of a shorter track). A file ffmpeg cannot open is probed and decoded with
   libsndfile when libsndfile reads it (`probe_track`, engine/sndfile.py). With `min_duration_s`
   a shorter file stops here (`engine.screening.TooShortError`);
2. decode that window ONCE, mono, at the music encoder's rate (16 kHz for every profile); with
   `check_content`, silence and constant tones stop here (engine/screening.py);
3. embed each 10 s segment with the profile's music encoder (`encode_batch`, one batched pass):
   the per-segment pooled vectors (S, D) are kept for the fusion model's target-music tower
   (section 4.1's g_mt runs on segments), their mean is the track's music embedding, and the
   profile's tagger (`Encoders.tag_encoder`: musicnn MTT + MSD for `paper` and `lite`; in `paper` a
   second network beside AST) gives tag probabilities averaged over segments (weighted by
   length): all of them are kept for feedback steering, the top 5 MTT + top 5 MSD names become
   the track's automatic tags (a tagger without MTT/MSD vocabularies, e.g. `tiny`'s random
   AudioSet-style head: its top 10);
4. rhythm (engine/rhythm.py: tempo, RMS loudness, onset rate) on the same decoded audio; rhythm
   works at any rate and the zero-shot scorer's ranges were measured at 16 kHz, so no second
   decode at another rate is needed;
5. the listening excerpt (`choose_excerpt`): the EXCERPT_S window most like the whole track;
6. the track sentence (engine.zeroshot.track_sentence: "title by artist: tags") embedded by the
   profile's text encoder: the catalog's "text" vector for the zero-shot scorer.

Choice of the excerpt: each segment's similarity to the track is the cosine between its vector and
the track's mean vector; a candidate window's score is the overlap-weighted mean similarity of the
segments it covers; candidates start every EXCERPT_STEP_S seconds inside the analysed window and at
least EXCERPT_EDGE_S from the track's first and last second (intros, fade-outs); ties go to the
window nearest the centre. A track no longer than the excerpt is the excerpt; one too short for
the margins gets the centred window. The resolution is the 10 s segment: enough to skip a quiet
intro or a breakdown, cheap because the vectors exist anyway.

`analyse_tracks` runs a list of files with the next file's decode (an ffmpeg process) overlapping
the current file's embedding (torch), which on 2 cores hides most of the decode.
`TrackAnalysis.to_bytes` / `from_bytes` serialise a result (the catalog's feature cache).
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import re
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from engine.encoders.base import TextEncoder
from engine.encoders.musicnn import MSD_PREFIX, MTT_PREFIX, TOP_K_TAGS, top_tags
from engine.media import (
    CorruptMediaError,
    MediaError,
    MediaInfo,
    MediaLimits,
    NotMediaError,
    Segment,
    UnopenableMediaError,
    decode_audio,
    plan_segments,
    probe,
)
from engine.profiles import Encoders
from engine.render import EXCERPT_S
from engine.rhythm import rhythm
from engine.screening import check_duration, check_music
from engine.sndfile import DECODER as SNDFILE_DECODER
from engine.sndfile import sndfile_decode, sndfile_probe
from engine.video import content_hash as file_hash
from engine.zeroshot import track_sentence

log = logging.getLogger(__name__)

FFMPEG_DECODER = "ffmpeg"
ANALYSIS_VERSION = 1  # bump when what analyse_track computes changes: cached analyses are redone
MIN_SEGMENT_S = 1.0  # seconds: a segment the decoder left shorter than this (file ended early) is dropped
EXCERPT_EDGE_S = 5.0  # seconds at each end of a track the excerpt avoids (intros, fade-outs)
EXCERPT_STEP_S = 1.0  # seconds between candidate excerpt starts
EXCERPT_TIE = 1e-4  # candidate scores this close to the best count as ties (nearest the centre wins)
FALLBACK_TOP_TAGS = 2 * TOP_K_TAGS  # tags kept from a tagger without MTT/MSD vocabularies


# =================================================================================================
# results
# =================================================================================================


@dataclass
class DecodedTrack:
    """A track's analysed window, decoded once (step 1-2 of the module docstring)."""

    path: Path
    content_hash: str
    info: MediaInfo
    segments: list[Segment]  # the paper's segments, in track time
    audio: np.ndarray  # (N,) mono float32 from segments[0].start_s at `sample_rate`
    sample_rate: int  # Hz
    decode_s: float  # seconds spent probing and decoding
    decoder: str = FFMPEG_DECODER  # "ffmpeg", or "libsndfile" for files ffmpeg cannot open (engine/sndfile.py)

    def segment_audio(self) -> tuple[list[Segment], list[np.ndarray]]:
        """The segments that decoded to at least MIN_SEGMENT_S, and their samples.  # [(n_i,)]"""
        w0, sr = self.segments[0].start_s, self.sample_rate
        kept, clips = [], []
        for s in self.segments:
            clip = self.audio[round((s.start_s - w0) * sr) : round((s.end_s - w0) * sr)]
            if len(clip) >= MIN_SEGMENT_S * sr or (len(self.segments) == 1 and len(clip) > 0):
                kept.append(s)
                clips.append(clip)
        return kept, clips


@dataclass
class TrackAnalysis:
    """Everything the catalog stores about a track's audio (module docstring)."""

    content_hash: str  # sha256 of the file
    profile: str  # model profile whose encoders produced the vectors
    duration_s: float  # the whole track, seconds
    segments: list[Segment]  # the analysed segments, in track time
    segment_vectors: np.ndarray  # (S, D) music encoder's pooled vector per segment, float32
    tag_probs: dict[str, float]  # the tagger's full vocabulary ("mtt:guitar": p), mean over segments
    tempo_bpm: float  # 0.0 when no tempo was found
    loudness_db: float  # RMS dBFS over the analysed window
    onset_rate: float  # onsets per second
    excerpt_start_s: float  # the listening excerpt (choose_excerpt), seconds
    excerpt_duration_s: float
    sentence: str = ""  # track_sentence(title, artist, tags), embedded as text_vector
    text_vector: np.ndarray | None = None  # (Dt,) L2-normalised sentence vector, float32
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    version: int = ANALYSIS_VERSION
    decoder: str = FFMPEG_DECODER  # who decoded the audio: "ffmpeg" | "libsndfile"

    @property
    def music_vector(self) -> np.ndarray:
        """The track's music embedding: the mean of its segment vectors (paper section 5).  # (D,)"""
        return self.segment_vectors.mean(axis=0).astype(np.float32)

    @property
    def rhythm_array(self) -> np.ndarray:
        """(3,) tempo BPM, loudness dBFS, onsets/s: the zero-shot scorer's `Candidates.rhythm` row."""
        return np.asarray([self.tempo_bpm, self.loudness_db, self.onset_rate], dtype=np.float32)

    @property
    def top_mtt(self) -> list[tuple[str, float]]:
        """Top-5 MagnaTagATune tags, names without prefix (paper section 3)."""
        return top_tags(self.tag_probs)[0]

    @property
    def top_msd(self) -> list[tuple[str, float]]:
        """Top-5 Million Song Dataset tags, names without prefix (paper section 3)."""
        return top_tags(self.tag_probs)[1]

    @property
    def auto_tags(self) -> list[str]:
        """The automatic tags a track carries: top-5 MTT + top-5 MSD, by probability, de-duplicated.

        A tagger without those vocabularies gives its FALLBACK_TOP_TAGS most probable labels.
        """
        mtt, msd = top_tags(self.tag_probs)
        ranked = sorted(mtt + msd, key=lambda kv: -kv[1])
        if not ranked and not any(n.startswith((MTT_PREFIX, MSD_PREFIX)) for n in self.tag_probs):
            ranked = sorted(self.tag_probs.items(), key=lambda kv: -kv[1])[:FALLBACK_TOP_TAGS]
        return list(dict.fromkeys(display_tag(n) for n, _ in ranked))

    def with_text(self, sentence: str, vector: np.ndarray) -> TrackAnalysis:
        """A copy with another sentence vector (the metadata changed, the audio did not)."""
        return dataclasses.replace(self, sentence=sentence, text_vector=np.asarray(vector, dtype=np.float32).reshape(-1))

    def to_bytes(self) -> bytes:
        """npz: the arrays plus a JSON header (the feature cache's file format)."""
        meta = {
            "version": self.version,
            "content_hash": self.content_hash,
            "profile": self.profile,
            "duration_s": self.duration_s,
            "segments": [[s.index, s.start_s, s.end_s] for s in self.segments],
            "tag_names": list(self.tag_probs),
            "tempo_bpm": self.tempo_bpm,
            "loudness_db": self.loudness_db,
            "onset_rate": self.onset_rate,
            "excerpt_start_s": self.excerpt_start_s,
            "excerpt_duration_s": self.excerpt_duration_s,
            "sentence": self.sentence,
            "timings": self.timings,
            "decoder": self.decoder,
        }
        arrays = {
            "meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
            "segment_vectors": np.asarray(self.segment_vectors, dtype=np.float32),
            "tag_values": np.asarray(list(self.tag_probs.values()), dtype=np.float64),
        }
        if self.text_vector is not None:
            arrays["text_vector"] = np.asarray(self.text_vector, dtype=np.float32)
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> TrackAnalysis:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            meta = json.loads(z["meta"].tobytes().decode())
            values = z["tag_values"].tolist()
            return cls(
                content_hash=meta["content_hash"],
                profile=meta["profile"],
                duration_s=float(meta["duration_s"]),
                segments=[Segment(index=int(i), start_s=float(a), end_s=float(b)) for i, a, b in meta["segments"]],
                segment_vectors=z["segment_vectors"],
                tag_probs=dict(zip(meta["tag_names"], (float(v) for v in values), strict=True)),
                tempo_bpm=float(meta["tempo_bpm"]),
                loudness_db=float(meta["loudness_db"]),
                onset_rate=float(meta["onset_rate"]),
                excerpt_start_s=float(meta["excerpt_start_s"]),
                excerpt_duration_s=float(meta["excerpt_duration_s"]),
                sentence=meta["sentence"],
                text_vector=z["text_vector"] if "text_vector" in z.files else None,
                timings={str(k): float(v) for k, v in meta["timings"].items()},
                version=int(meta["version"]),
                decoder=str(meta.get("decoder", FFMPEG_DECODER)),  # analyses cached before the field: ffmpeg
            )


# =================================================================================================
# steps
# =================================================================================================


def display_tag(name: str) -> str:
    """"mtt:Male Vocal" -> "male vocal": the form payload tags and sentences use."""
    return name.split(":", 1)[-1].strip().lower()


def probe_track(
    path: str | Path, *, limits: MediaLimits = MediaLimits(), ffmpeg: str | None = None, fallback: bool = True
) -> tuple[MediaInfo, str]:
    """Probe an audio file with ffmpeg; if ffmpeg cannot open it, with libsndfile (`fallback`).

    Returns (info, decoder). Only a file ffmpeg could not open at all goes to libsndfile
    (`UnopenableMediaError`, `NotMediaError`); one ffmpeg opened and found truncated stays refused.
    When libsndfile cannot read it either, ffmpeg's error is raised.
    """
    path = Path(path)
    try:
        return probe(path, limits=limits, require_audio=True, ffmpeg=ffmpeg), FFMPEG_DECODER
    except (UnopenableMediaError, NotMediaError) as exc:
        if not fallback:
            raise
        try:
            info = sndfile_probe(path, limits=limits)
        except NotMediaError:
            raise exc from None
        log.info("ffmpeg cannot open %s (%s); decoding it with libsndfile", path, exc)
        return info, SNDFILE_DECODER


def decode_track(
    path: str | Path,
    *,
    sample_rate: int,
    limits: MediaLimits = MediaLimits(),
    ffmpeg: str | None = None,
    content_hash: str | None = None,
    min_duration_s: float = 0.0,
    check_content: bool = False,
    fallback: bool = True,
) -> DecodedTrack:
    """Probe `path` (audio required) and decode its analysed window once (module docstring, 1-2).

    `fallback`: files ffmpeg cannot open are decoded with libsndfile (`probe_track`).
    `min_duration_s`: shorter files raise `engine.screening.TooShortError` before any decoding;
    `check_content`: silence and constant tones raise `SilenceError` / `ConstantToneError`
    (engine/screening.py). Raises the typed `MediaError`s; a file whose window decodes to nothing
    is `CorruptMediaError`.
    """
    path = Path(path)
    t0 = time.perf_counter()
    info, decoder = probe_track(path, limits=limits, ffmpeg=ffmpeg, fallback=fallback)
    if min_duration_s > 0:
        check_duration(info.duration_s, min_duration_s)
    segments = plan_segments(info.duration_s)
    start, end = segments[0].start_s, segments[-1].end_s
    if decoder == FFMPEG_DECODER:
        audio = decode_audio(path, sample_rate=sample_rate, start=start, duration=end - start, ffmpeg=ffmpeg, limits=limits)
    else:
        audio = sndfile_decode(path, sample_rate=sample_rate, start=start, duration=end - start, limits=limits)
    if audio.size == 0:
        raise CorruptMediaError(f"{path}: no audio decoded in {start:.1f}-{end:.1f}s")
    if check_content:
        check_music(audio, sample_rate, name=path.name)
    digest = content_hash or file_hash(path)
    return DecodedTrack(path, digest, info, segments, audio, sample_rate, time.perf_counter() - t0, decoder)


def choose_excerpt(
    segments: Sequence[Segment],
    segment_vectors: np.ndarray,
    duration_s: float,
    *,
    length_s: float = EXCERPT_S,
    edge_s: float = EXCERPT_EDGE_S,
    step_s: float = EXCERPT_STEP_S,
) -> tuple[float, float]:
    """(start, length) in seconds of the listening excerpt most like the whole track (module docstring).

    segment_vectors (S, D) belong to `segments`, which lie in track time.
    """
    if duration_s <= length_s:
        return 0.0, float(duration_s)
    lo = max(edge_s, segments[0].start_s)
    hi = min(duration_s - edge_s, segments[-1].end_s) - length_s
    if hi < lo:
        return round((duration_s - length_s) / 2, 3), float(length_s)
    v = np.asarray(segment_vectors, dtype=np.float64)  # (S, D)
    mean = v.mean(axis=0)
    sims = (v @ mean) / np.maximum(np.linalg.norm(v, axis=1) * np.linalg.norm(mean), 1e-12)  # (S,)
    starts = np.unique(np.append(np.arange(lo, hi, step_s), hi))  # (K,)
    seg_a = np.asarray([s.start_s for s in segments])
    seg_b = np.asarray([s.end_s for s in segments])
    overlap = np.clip(np.minimum(starts[:, None] + length_s, seg_b) - np.maximum(starts[:, None], seg_a), 0.0, None)  # (K, S)
    score = (overlap * sims).sum(axis=1) / np.maximum(overlap.sum(axis=1), 1e-12)  # (K,)
    centre = (segments[0].start_s + segments[-1].end_s) / 2
    tied = np.flatnonzero(score >= score.max() - EXCERPT_TIE)
    best = tied[np.argmin(np.abs(starts[tied] + length_s / 2 - centre))]
    return round(float(starts[best]), 3), float(length_s)


def sentence_vectors(text_encoder: TextEncoder, sentences: Sequence[str]) -> np.ndarray:
    """L2-normalised sentence vectors of the text encoder as float32 numpy.  # (B, Dt)"""
    if not sentences:
        return np.zeros((0, int(text_encoder.dim)), dtype=np.float32)
    vecs = text_encoder.encode_sentences(list(sentences))
    if isinstance(vecs, torch.Tensor):
        vecs = vecs.detach().cpu().float().numpy()
    return np.asarray(vecs, dtype=np.float32)


def _words_title(text: str) -> str:
    """"battle-epic_2" -> "Battle Epic 2": separators to spaces, each word capitalised."""
    return " ".join(w[:1].upper() + w[1:] for w in text.replace("_", " ").replace("-", " ").split())


def generic_name(stem: str) -> tuple[bool, int | None]:
    """Whether a file or folder name says nothing of the music ("song", "Track 03", "01", "untitled"),
    and the number it carries: ("track_07") -> (True, 7); ("battle-epic") -> (False, None)."""
    m = _GENERIC_RE.match(stem.strip().lower())
    if m is None or not (m.group(1) or m.group(2)):
        return False, None
    return True, int(m.group(2)) if m.group(2) else None


GENERIC_WORDS = ("song", "track", "audio", "untitled", "music", "sound", "tune", "title", "unknown", "piste", "titel")
GENERIC_FOLDERS = frozenset({"music", "musics", "audio", "songs", "tracks", "sounds", "snd", "sfx", "ogg", "mp3", "flac", "wav", "default", "data", "media", "files", "albums", "downloads"})
_GENERIC_RE = re.compile(r"^(?:(" + "|".join(GENERIC_WORDS) + r")s?)?[\s_.()#-]*(\d{1,4})?[\s_.()-]*$")


def title_from_path(path: str | Path) -> str:
    """A title for a file without metadata, from its name: "battle-epic_2.ogg" -> "Battle Epic 2".

    A generic file name (`generic_name`: song, track, audio, untitled, a bare number...) takes its
    folder's name instead, with the number it carried: "Rainy Days/song.ogg" -> "Rainy Days",
    "aftermath_soundtrack/track25.opus" -> "Aftermath Soundtrack 25", unless the folder's name is
    generic too ("music/01.ogg" -> "01").
    """
    path = Path(path)
    generic, number = generic_name(path.stem)
    folder = path.parent.name
    if generic and folder and not generic_name(folder)[0] and folder.lower() not in GENERIC_FOLDERS:
        return _words_title(folder) + (f" {number}" if number is not None else "")
    return _words_title(path.stem) or path.name


def title_source(path: str | Path) -> str:
    """Where `title_from_path` found the title: "folder name" or "file name"."""
    path = Path(path)
    return "folder name" if title_from_path(path) != (_words_title(path.stem) or path.name) else "file name"


def track_text(title: str, artist: str | None, tags: Iterable[str], auto_tags: Iterable[str]) -> str:
    """The track sentence: metadata/manifest tags first (an admin's words), then the automatic ones."""
    return track_sentence(title, artist, [*tags, *auto_tags])


def embed_track(
    decoded: DecodedTrack,
    encoders: Encoders,
    *,
    title: str | None = None,
    artist: str | None = None,
    tags: Sequence[str] = (),
) -> TrackAnalysis:
    """Steps 3-6 of the module docstring on an already decoded track."""
    t0 = time.perf_counter()
    segments, clips = decoded.segment_audio()
    if not segments:
        raise CorruptMediaError(f"{decoded.path}: no segment decoded to {MIN_SEGMENT_S:.0f}s of audio")
    embeddings = encoders.music.encode_batch(clips)
    vectors = torch.stack([e.pooled.detach().float().cpu() for e in embeddings]).numpy()  # (S, D)
    weights = np.asarray([len(c) for c in clips], dtype=np.float64)
    weights /= weights.sum()
    tagged = embeddings if encoders.tagger is None else encoders.tagger.encode_batch(clips)  # paper: musicnn beside AST
    tag_probs: dict[str, float] = {}
    if tagged[0].tags:
        names = list(tagged[0].tags)
        probs = np.asarray([[e.tags[n] for n in names] for e in tagged if e.tags])  # (S, V)
        tag_probs = {n: float(p) for n, p in zip(names, weights @ probs, strict=True)}
    t_music = time.perf_counter()
    used = decoded.audio[: round((segments[-1].end_s - decoded.segments[0].start_s) * decoded.sample_rate)]
    r = rhythm(used, decoded.sample_rate)
    t_rhythm = time.perf_counter()
    excerpt_start, excerpt_len = choose_excerpt(segments, vectors, decoded.info.duration_s)
    analysis = TrackAnalysis(
        content_hash=decoded.content_hash,
        profile=encoders.profile.name,
        duration_s=float(decoded.info.duration_s),
        segments=segments,
        segment_vectors=vectors.astype(np.float32),
        tag_probs=tag_probs,
        tempo_bpm=float(r.tempo_bpm),
        loudness_db=float(r.loudness_db),
        onset_rate=float(r.onset_rate),
        excerpt_start_s=excerpt_start,
        excerpt_duration_s=excerpt_len,
        decoder=decoded.decoder,
    )
    sentence = track_text(title or title_from_path(decoded.path), artist, tags, analysis.auto_tags)
    analysis = analysis.with_text(sentence, sentence_vectors(encoders.text, [sentence])[0])
    t_text = time.perf_counter()
    analysed_s = sum(s.duration_s for s in segments)
    analysis.timings = {
        "decode": decoded.decode_s,
        "music": t_music - t0,
        "rhythm": t_rhythm - t_music,
        "text": t_text - t_rhythm,
        "total": decoded.decode_s + t_text - t0,
    }
    analysis.timings["x_realtime"] = analysed_s / max(analysis.timings["total"], 1e-9)
    log.debug(
        "analysed %s: %d segments (%.0fs) in %.2fs (%.0fx real time), tags %s",
        decoded.path.name, len(segments), analysed_s, analysis.timings["total"], analysis.timings["x_realtime"],
        ", ".join(analysis.auto_tags[:4]),
    )  # fmt: skip
    return analysis


def analyse_track(
    path: str | Path,
    encoders: Encoders,
    *,
    limits: MediaLimits = MediaLimits(),
    ffmpeg: str | None = None,
    title: str | None = None,
    artist: str | None = None,
    tags: Sequence[str] = (),
    content_hash: str | None = None,
) -> TrackAnalysis:
    """Analyse one audio file (module docstring). `title` defaults to one made from the file name.

    `tags`: metadata or manifest tags, which lead the track sentence. Raises the typed
    `MediaError`s for unreadable, corrupt, silent-less (no audio stream) or too long files.
    """
    decoded = decode_track(path, sample_rate=encoders.music.sample_rate, limits=limits, ffmpeg=ffmpeg, content_hash=content_hash)
    return embed_track(decoded, encoders, title=title, artist=artist, tags=tags)


@dataclass(frozen=True)
class TrackJob:
    """One file for `analyse_tracks`, with the metadata its sentence needs."""

    path: Path
    title: str | None = None
    artist: str | None = None
    tags: tuple[str, ...] = ()
    content_hash: str | None = None


def analyse_tracks(
    jobs: Iterable[TrackJob],
    encoders: Encoders,
    *,
    limits: MediaLimits = MediaLimits(),
    ffmpeg: str | None = None,
    min_duration_s: float = 0.0,
    check_content: bool = False,
) -> Iterator[tuple[TrackJob, TrackAnalysis | MediaError]]:
    """Analyse files in order, decoding the next one while the current one is embedded.

    `min_duration_s`, `check_content`: as `decode_track` (the catalog skips what is not music).
    Yields (job, analysis) or (job, the MediaError that file raised); any other exception
    propagates (it is a bug or an interruption, not a bad file).
    """
    sr = encoders.music.sample_rate

    def decode(job: TrackJob) -> DecodedTrack:
        return decode_track(
            job.path, sample_rate=sr, limits=limits, ffmpeg=ffmpeg, content_hash=job.content_hash,
            min_duration_s=min_duration_s, check_content=check_content,
        )  # fmt: skip

    queue = iter(jobs)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="track-decode") as pool:
        current = next(queue, None)
        pending: Future[DecodedTrack] | None = pool.submit(decode, current) if current is not None else None
        while current is not None and pending is not None:
            upcoming = next(queue, None)
            try:
                decoded = pending.result()
            except MediaError as exc:
                decoded = exc
            pending = pool.submit(decode, upcoming) if upcoming is not None else None
            if isinstance(decoded, MediaError):
                yield current, decoded
            else:
                try:
                    yield current, embed_track(decoded, encoders, title=current.title, artist=current.artist, tags=current.tags)
                except MediaError as exc:
                    yield current, exc
            current = upcoming


def tag_summary(tags: Mapping[str, float], k: int = TOP_K_TAGS) -> str:
    """"mtt: techno 0.77, electronic 0.49; msd: dance 0.31, ..." for logs and the CLI."""
    mtt, msd = top_tags(dict(tags), k)
    return "; ".join(f"{ns}: {', '.join(f'{n} {p:.2f}' for n, p in group)}" for ns, group in (("mtt", mtt), ("msd", msd)) if group)
