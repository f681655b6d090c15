"""Table 3's text metrics: BERTScore F1 and InfoLM's AB divergence, L2 and Fisher-Rao (paper 5.4).

The paper scores the generated justifications against the simulated conversations' reasoning
statements with BERTScore F1 and three InfoLM measures, computed as published:

- BERTScore (Zhang et al. 2020; `greedy_match` is ours, see `bertscore`): contextual token embeddings of candidate and reference, L2
  normalised, greedy matching by cosine: recall = mean over reference tokens of the best cosine
  to a candidate token, precision the other way round, F1 their harmonic mean; the [CLS]/[SEP]
  (BOS/EOS) positions are left out; no idf weighting and no baseline rescaling (the package's
  defaults). The model the BERTScore authors default to for English is roberta-large, layer 17
  (`BERTSCORE_DEFAULT`). Weights are never fetched here: give a local copy of it
  (`BertScoreConfig.model_dir`), else the profile's own text encoder (its last layer) stands in,
  and every report says which: a substitute's numbers are not comparable with the paper's.
- InfoLM (Colombo et al. 2022; torchmetrics' implementation): a masked language model turns each
  text into a distribution over its vocabulary (every position masked in turn, temperature 0.25, idf-weighted), and the
  measures compare the candidate's and the reference's distributions: AB divergence (alpha =
  beta = 1 here, our choice: the paper gives none), L2 distance and Fisher-Rao distance. InfoLM's
  default masked LM is bert-base-uncased (`INFOLM_DEFAULT`): give a local copy, or any local
  masked-LM folder, labelled as given. With none, a causal LM stands in (`infolm_scores_causal`,
  the profile's reasoner LLM): each position's distribution is the LM's prediction of that token
  from the tokens before it (not from both sides, as a masked LM's), with the same temperature,
  idf weighting and measures; the report labels it SUBSTITUTE, and its numbers are not comparable
  with the paper's.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from engine.encoders.base import TextEncoder

log = logging.getLogger(__name__)

BERTSCORE_DEFAULT = "roberta-large"  # bert_score's default English model
BERTSCORE_DEFAULT_LAYER = 17  # bert_score's model2layers["roberta-large"]
INFOLM_DEFAULT = "bert-base-uncased"  # InfoLM's (and torchmetrics') default masked LM
INFOLM_TEMPERATURE = 0.25  # InfoLM's default
INFOLM_MEASURES = ("ab_divergence", "l2_distance", "fisher_rao_distance")  # paper Table 3
AB_ALPHA, AB_BETA = 1.0, 1.0  # AB divergence parameters (the paper does not give them)
MAX_TOKENS = 512  # longest text scored, tokens


@dataclass(frozen=True)
class BertScoreConfig:
    model_dir: str | Path | None = None  # a local copy of roberta-large (or another HF encoder folder)
    num_layers: int | None = BERTSCORE_DEFAULT_LAYER  # hidden-state layer of model_dir (None: the last)


@dataclass(frozen=True)
class BertScore:
    f1: float  # mean over sentences
    precision: float
    recall: float
    per_sentence_f1: list[float]
    label: str  # which model produced it


def _check(preds: list[str], refs: list[str]) -> None:
    if len(preds) != len(refs) or not preds:
        raise ValueError(f"need as many candidates as references (at least one), got {len(preds)} and {len(refs)}")


def greedy_match(cand: torch.Tensor, ref: torch.Tensor) -> tuple[float, float, float]:
    """BERTScore's greedy matching (Zhang et al. 2020, eq. 1-3, no idf): candidate tokens (Tc, D) and
    reference tokens (Tr, D) -> (precision, recall, F1)."""
    if cand.shape[0] == 0 or ref.shape[0] == 0:
        return 0.0, 0.0, 0.0
    sim = F.normalize(cand.double(), dim=-1) @ F.normalize(ref.double(), dim=-1).T  # (Tc, Tr) cosines
    p = float(sim.max(dim=1).values.mean())  # each candidate token's best reference token
    r = float(sim.max(dim=0).values.mean())  # each reference token's best candidate token
    f = 2 * p * r / (p + r) if p + r > 0 else 0.0
    return p, r, f


def _hf_token_states(model_dir: Path, num_layers: int | None, texts: list[str]) -> list[torch.Tensor]:
    """Hidden states of layer `num_layers` (None: the last) of a local HF encoder, special tokens left out."""
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    model = AutoModel.from_pretrained(model_dir, local_files_only=True).eval()
    out = []
    with torch.no_grad():
        for text in texts:
            batch = tok([text], truncation=True, max_length=MAX_TOKENS, return_tensors="pt", return_special_tokens_mask=True)
            special = batch.pop("special_tokens_mask")[0].bool()
            hidden = model(**batch, output_hidden_states=True).hidden_states  # embeddings + one per layer
            layer = hidden[-1 if num_layers is None else num_layers][0]  # (T, D)
            out.append(layer[~special].float())
    return out


def _encoder_token_states(encoder: TextEncoder, texts: list[str]) -> list[torch.Tensor]:
    """The profile encoder's token states, the first and last real token ([CLS]/[SEP], BOS/EOS) left out."""
    tok = encoder.encode_tokens(list(texts))  # (B, T, D), (B, T)
    out = []
    for states, mask in zip(tok.states, tok.mask, strict=True):
        real = states[mask][:MAX_TOKENS]  # (T', D)
        out.append(real[1:-1].float())
    return out


def bertscore(preds: list[str], refs: list[str], *, config: BertScoreConfig | None = None, encoder: TextEncoder | None = None, encoder_name: str = "") -> BertScore:
    """BERTScore of each candidate against its reference (module docstring), averaged.

    With `config.model_dir` the local HF model is used at `config.num_layers`; otherwise `encoder`
    (the profile's text encoder, its last layer) stands in, labelled as a substitute. The greedy
    matching is ours (`greedy_match`): torchmetrics 1.9's batched BERTScore pairs the sentences of
    a batch of unequal lengths wrongly (it indexes length-sorted rows with the sort order instead
    of its inverse), so a batch's scores differ from the same pairs scored one by one.
    """
    _check(preds, refs)
    config = config or BertScoreConfig()
    if config.model_dir is not None:
        path = Path(config.model_dir)
        if not path.is_dir():
            raise FileNotFoundError(f"BERTScore model folder {path} does not exist")
        cands, targets = (_hf_token_states(path, config.num_layers, list(t)) for t in (preds, refs))
        layer = "last layer" if config.num_layers is None else f"layer {config.num_layers}"
        label = f"BERTScore F1: {path.name} ({layer}, local copy)"
    elif encoder is not None:
        cands, targets = (_encoder_token_states(encoder, list(t)) for t in (preds, refs))
        label = f"BERTScore F1: SUBSTITUTE, the profile's text encoder {encoder_name or type(encoder).__name__} (last layer), not {BERTSCORE_DEFAULT}"
    else:
        raise ValueError(f"BERTScore needs a local copy of {BERTSCORE_DEFAULT} (or another encoder folder) or the profile's text encoder")
    scores = [greedy_match(c, r) for c, r in zip(cands, targets, strict=True)]
    p, r, f = (float(np.mean([s[i] for s in scores])) for i in range(3))
    return BertScore(f1=f, precision=p, recall=r, per_sentence_f1=[s[2] for s in scores], label=label)


@dataclass(frozen=True)
class InfoLMScore:
    ab_divergence: float  # corpus-level means (lower is better)
    l2_distance: float
    fisher_rao_distance: float
    label: str


def infolm_scores(
    preds: list[str],
    refs: list[str],
    mlm_dir: str | Path,
    *,
    temperature: float = INFOLM_TEMPERATURE,
    alpha: float = AB_ALPHA,
    beta: float = AB_BETA,
) -> InfoLMScore:
    """InfoLM's AB divergence, L2 and Fisher-Rao distances with the masked LM in `mlm_dir` (module docstring).

    torchmetrics computes each text's distribution and the measures; the texts' order is restored
    here with the inverse of its length sort (its own `infolm` uses the sort order itself, the
    batching bug described in `bertscore`), and the distributions are computed once for the three
    measures.
    """
    import importlib

    # the module, not the function of the same name its package exports
    tm = importlib.import_module("torchmetrics.functional.text.infolm")
    from transformers import AutoConfig

    _check(preds, refs)
    path = Path(mlm_dir)
    if not path.is_dir():
        raise FileNotFoundError(f"InfoLM masked-LM folder {path} does not exist")
    max_len = min(MAX_TOKENS, int(getattr(AutoConfig.from_pretrained(path, local_files_only=True), "max_position_embeddings", MAX_TOKENS)))
    tokenizer, model = tm._load_tokenizer_and_model(str(path), None)
    special = tm._get_special_tokens_map(tokenizer)
    p_ids, p_mask, t_ids, t_mask = tm._infolm_update(list(preds), list(refs), tokenizer, max_len)

    def distributions(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # (N, V) in the texts' order
        loader = tm._get_dataloader(ids, mask, True, 64, 0)  # idf weighting, as InfoLM
        dist = tm._get_data_distribution(model, loader, temperature, True, special, False)  # length-sorted order
        order = loader.dataset.sorting_indices  # sorted row k is text order[k]
        out = torch.empty_like(dist)
        out[order] = dist
        return out

    p_dist, t_dist = distributions(p_ids, p_mask), distributions(t_ids, t_mask)
    values = {}
    for measure in INFOLM_MEASURES:
        a, b = (alpha, beta) if measure == "ab_divergence" else (None, None)
        values[measure] = float(tm._InformationMeasure(measure, a, b)(p_dist, t_dist).mean())
    label = f"InfoLM: {path.name} (local masked LM; the paper's default is {INFOLM_DEFAULT}), temperature {temperature:g}, AB alpha {alpha:g} beta {beta:g}"
    return InfoLMScore(values["ab_divergence"], values["l2_distance"], values["fisher_rao_distance"], label)


def _idf(id_lists: list[list[int]]) -> dict[int, float]:
    """Inverse document frequencies over `id_lists`, as torchmetrics' TextDataset computes them for InfoLM."""
    n = len(id_lists)
    df = Counter(t for ids in id_lists for t in set(ids))
    return {t: math.log((n + 1) / (c + 1)) for t, c in df.items()}


@torch.no_grad()
def causal_distributions(texts: list[str], model: Any, tokenizer: Any, *, temperature: float = INFOLM_TEMPERATURE) -> torch.Tensor:
    """InfoLM's per-text vocabulary distribution from a causal LM: (N, V), rows sum to 1.

    Position i's distribution is softmax(logits of the tokens before i / temperature), the LM's
    prediction of token i; a text's distribution is their idf-weighted mean (idf over `texts`, as
    InfoLM; equal weights when every token is in every text). The first token is predicted from
    the tokenizer's BOS (else EOS) token; an empty text gets that first prediction alone.
    """
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    ids_of = [list(tokenizer(t, add_special_tokens=False)["input_ids"])[: MAX_TOKENS - 1] for t in texts]
    idf = _idf(ids_of)
    device = next(model.parameters()).device
    rows = []
    for ids in ids_of:
        context = torch.tensor([[start, *ids[:-1]]], device=device)  # (1, T): predicts ids[0..T-1]
        probs = F.softmax(model(context).logits[0].float() / temperature, dim=-1)  # (T, V)
        if not ids:  # an empty text (a model that wrote nothing): what the LM expects with no text at all
            rows.append(probs[0])
            continue
        w = torch.tensor([idf[t] for t in ids], dtype=probs.dtype, device=device)  # (T,)
        if float(w.sum()) <= 0:
            w = torch.ones_like(w)
        rows.append((w[:, None] * probs).sum(0) / w.sum())  # (V,)
    return torch.stack(rows).cpu()


def infolm_scores_causal(
    preds: list[str],
    refs: list[str],
    model: Any,
    tokenizer: Any,
    name: str,
    *,
    temperature: float = INFOLM_TEMPERATURE,
    alpha: float = AB_ALPHA,
    beta: float = AB_BETA,
) -> InfoLMScore:
    """InfoLM's three measures with a causal LM standing in for the masked LM (module docstring), labelled SUBSTITUTE."""
    import importlib

    tm = importlib.import_module("torchmetrics.functional.text.infolm")
    _check(preds, refs)
    p_dist = causal_distributions(list(preds), model, tokenizer, temperature=temperature)
    t_dist = causal_distributions(list(refs), model, tokenizer, temperature=temperature)
    values = {}
    for measure in INFOLM_MEASURES:
        a, b = (alpha, beta) if measure == "ab_divergence" else (None, None)
        values[measure] = float(tm._InformationMeasure(measure, a, b)(p_dist, t_dist).mean())
    label = (
        f"InfoLM: SUBSTITUTE {name} (a causal LM's left-context predictions, not the masked LM {INFOLM_DEFAULT}; "
        f"not comparable with the paper), temperature {temperature:g}, AB alpha {alpha:g} beta {beta:g}"
    )
    return InfoLMScore(values["ab_divergence"], values["l2_distance"], values["fisher_rao_distance"], label)
