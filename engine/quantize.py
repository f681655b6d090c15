"""Fast CPU inference for the reasoner's LLM: int8 weights for decoding, bfloat16 for the prompt.

Writing a reason token by token reads every weight of the LLM once per token. On a 2-core CPU
that memory traffic, not arithmetic, sets the pace: SmolLM2-135M in float32 reads ~540 MB a token
(~70-90 ms here). `Int8DecodeLinear` replaces each `nn.Linear` of a frozen model with

- int8 weights, one scale per output channel (weight-only: activations stay in floating point,
  unlike `torch.ao.quantization.quantize_dynamic`, whose per-tensor int8 activations raised the
  lite model's NLL on a reason from 2.09 to 3.34 nats and made it invent names), multiplied by
  torch's `_weight_int8pack_mm` kernel for the few rows of a decoding step;
- the same weights in bfloat16 for a prompt (many rows), where the int8 kernel is slower than a
  bfloat16 GEMM.

Everything else (embeddings, norms, attention, the KV cache, the logits) stays float32: the module
takes and returns the caller's dtype. On the lite model: NLL of a few-shot reason 2.0879 nats
(float32: 2.0852); per decoding step ~24-40 ms instead of ~70-90 ms on this machine
(benchmarks/bench_reasons.py measures whole reasons). Only for frozen inference: a LoRA or any
training needs the real `nn.Linear` (peft wraps it), so a trained reasoner is left as it is.
"""

from __future__ import annotations

import logging

import torch
from torch import nn
from torch.nn import functional as F

log = logging.getLogger(__name__)

DECODE_ROWS = 4  # up to this many rows (tokens x batch) a step uses the int8 kernel; more: bfloat16 GEMM


def cpu_int8_supported() -> bool:
    """Whether this CPU runs the int8 x bfloat16 kernels fast (AVX-512 with bf16, or AMX).

    Without native bfloat16 the bfloat16 paths are emulated and slower than float32, so callers
    keep float32 there.
    """
    if not hasattr(torch, "_weight_int8pack_mm"):
        return False
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # an older or newer torch without these probes
        return False


class Int8DecodeLinear(nn.Module):
    """A frozen `nn.Linear`: int8 weights (per output channel) for decoding steps, bfloat16 for prompts."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        w = linear.weight.detach().float()  # (out, in)
        scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0  # (out,)
        self.in_features, self.out_features = int(w.shape[1]), int(w.shape[0])
        self.register_buffer("weight_int8", torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8))
        self.register_buffer("scales", scale.to(torch.bfloat16))
        self.register_buffer("weight_bf16", w.to(torch.bfloat16))
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().to(torch.bfloat16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in) -> (..., out), x's dtype
        shape = x.shape
        x2 = x.reshape(-1, self.in_features).to(torch.bfloat16)  # (rows, in)
        if x2.shape[0] <= DECODE_ROWS:
            y = torch._weight_int8pack_mm(x2, self.weight_int8, self.scales)
            if self.bias is not None:
                y = y + self.bias
        else:
            y = F.linear(x2, self.weight_bf16, self.bias)
        return y.reshape(*shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def decodes_in_int8(model: nn.Module) -> bool:
    """Whether `quantize_for_cpu_decoding` replaced any of the model's linear layers."""
    return any(isinstance(m, Int8DecodeLinear) for m in model.modules())


def quantize_for_cpu_decoding(model: nn.Module) -> int:
    """Replace every `nn.Linear` of a frozen `model` in place by `Int8DecodeLinear`; returns how many.

    Tied weights (an LM head sharing the embedding matrix) are copied: the embedding stays float32.
    """
    n = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                setattr(parent, name, Int8DecodeLinear(child))
                n += 1
    if hasattr(model, "config") and getattr(model.config, "tie_word_embeddings", False):
        model.config.tie_word_embeddings = False  # the head is its own (quantised) copy now
    log.info("int8 decoding: %d linear layers quantised (weights int8 + bfloat16)", n)
    return n
