"""Int8 decoding for the reasoner's LLM on a CPU (engine/quantize.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from engine import reasoner as R
from engine.quantize import DECODE_ROWS, Int8DecodeLinear, cpu_int8_supported, quantize_for_cpu_decoding

needs_kernel = pytest.mark.skipif(not hasattr(torch, "_weight_int8pack_mm"), reason="this torch has no int8 pack kernel")


@needs_kernel
@pytest.mark.parametrize("rows", [1, DECODE_ROWS, DECODE_ROWS + 1, 37])
@pytest.mark.parametrize("bias", [False, True])
def test_int8_linear_matches_the_float_layer(rows, bias):
    torch.manual_seed(0)
    lin = nn.Linear(96, 40, bias=bias)
    q = Int8DecodeLinear(lin)
    x = torch.randn(rows, 96)
    want = lin(x)
    got = q(x)
    assert got.dtype == torch.float32 and got.shape == (rows, 40)
    # per-channel int8 weights (or bf16) and bf16 activations: ~1 % of the output's scale
    assert (got - want).abs().max() < 0.02 * want.abs().max()


@needs_kernel
def test_int8_weights_are_per_output_channel():
    lin = nn.Linear(8, 3, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0] * 8, [0.5, -0.25] * 4, [100.0, -2.0] * 4]))
    q = Int8DecodeLinear(lin)
    assert q.weight_int8.dtype == torch.int8
    assert q.weight_int8[:, 0].tolist() == [127, 127, 127]  # each row's largest weight maps to 127
    assert q.weight_int8[1, 1].item() == round(-0.25 / 0.5 * 127)
    assert q.weight_int8[2, 1].item() == round(-2.0 / 100.0 * 127)
    assert torch.allclose(q.scales.float(), torch.tensor([1.0, 0.5, 100.0]) / 127, rtol=1e-2)


@needs_kernel
def test_every_linear_of_the_llm_is_replaced_and_the_rest_kept():
    model, tok = R.tiny_llm(seed=0)
    n_linear = sum(type(m) is nn.Linear for m in model.modules())
    embed = model.get_input_embeddings().weight.clone()
    ids = tok("a calm piano piece for a lake", return_tensors="pt").input_ids
    with torch.no_grad():
        want = model(ids).logits
    assert quantize_for_cpu_decoding(model) == n_linear > 0
    assert not any(type(m) is nn.Linear for m in model.modules())
    assert torch.equal(model.get_input_embeddings().weight, embed)  # embeddings stay float32
    with torch.no_grad():
        got = model(ids).logits  # a prompt: the bfloat16 path
    assert got.dtype == torch.float32
    assert torch.corrcoef(torch.stack([got.flatten(), want.flatten()]))[0, 1] > 0.999


@needs_kernel
def test_decoding_steps_use_the_int8_kernel(monkeypatch):
    """A step of one token goes through the int8 kernel and gives the float model's next-token logits."""
    model, tok = R.tiny_llm(seed=0)
    ids = tok("a slow soft piano piece for a quiet lake at dawn", return_tensors="pt").input_ids
    assert ids.shape[1] - 1 > DECODE_ROWS
    with torch.no_grad():
        want = model(ids).logits[0, -1]
    quantize_for_cpu_decoding(model)
    calls: list[tuple[int, ...]] = []
    kernel = torch._weight_int8pack_mm

    def counting(x, w, s):
        calls.append(tuple(x.shape))
        return kernel(x, w, s)

    monkeypatch.setattr(torch, "_weight_int8pack_mm", counting)
    with torch.no_grad():
        cache = model(ids[:, :-1], use_cache=True).past_key_values  # the prompt: bfloat16 GEMMs
        assert calls == []
        got = model(ids[:, -1:], cache=cache, use_cache=True).logits[0, -1]  # one decoding step
    n_linear = sum(type(m).__name__ == "Int8DecodeLinear" for m in model.modules())
    assert len(calls) == n_linear and all(shape[0] == 1 for shape in calls)
    assert torch.corrcoef(torch.stack([got, want]))[0, 1] > 0.999


def test_load_reasoner_quantises_only_an_untrained_cpu_model(monkeypatch):
    R.clear_cache()
    r = R.load_reasoner(R.RANDOM_TINY, music_dim=4)
    kinds = {type(m).__name__ for m in r.llm.modules()}
    assert ("Int8DecodeLinear" in kinds) == cpu_int8_supported()
    R.clear_cache()
    off = R.load_reasoner(R.RANDOM_TINY, music_dim=4, config=R.ReasonerConfig(cpu_int8=False))
    assert not any(type(m).__name__ == "Int8DecodeLinear" for m in off.llm.modules())
    R.clear_cache()


def test_cpu_without_native_bfloat16_keeps_float32(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert cpu_int8_supported() is False
    R.clear_cache()
    r = R.load_reasoner(R.RANDOM_TINY, music_dim=4)
    assert not any(type(m).__name__ == "Int8DecodeLinear" for m in r.llm.modules())
    R.clear_cache()
