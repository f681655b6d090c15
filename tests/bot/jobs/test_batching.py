"""bot/jobs/batching.py: concurrent requests of one kind run as one call, each caller gets its own part."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from bot.jobs.batching import BatchingImageEncoder, BatchingTextEncoder, MicroBatcher
from engine.encoders import hf

WAIT_S = 5.0  # long enough for every thread of a test to arrive: the batch closes when full, never on this


def _concurrently(fn, items: list) -> list:
    start = threading.Barrier(len(items))

    def call(item):
        start.wait()
        return fn(item)

    with ThreadPoolExecutor(len(items)) as pool:
        return list(pool.map(call, items))


def test_requests_arriving_together_run_as_one_batch_and_each_gets_its_result() -> None:
    calls: list[list[int]] = []

    def square(items: list[int]) -> list[int]:
        calls.append(sorted(items))
        return [i * i for i in items]

    b = MicroBatcher(square, max_size=4, max_wait_s=WAIT_S, name="squares")
    try:
        assert _concurrently(b.submit, [1, 2, 3, 4]) == [1, 4, 9, 16]
    finally:
        b.close()
    assert calls == [[1, 2, 3, 4]] and b.stats() == {"4": 1}
    lone = MicroBatcher(square, max_size=4, max_wait_s=0.05, name="squares")
    try:
        assert lone.submit(5) == 25  # alone: it waits out max_wait_s, then runs
    finally:
        lone.close()
    assert lone.stats() == {"1": 1}


def test_a_batch_never_exceeds_its_size() -> None:
    b = MicroBatcher(lambda items: [x + 1 for x in items], max_size=2, max_wait_s=0.2, name="small")
    try:
        assert _concurrently(b.submit, list(range(5))) == [1, 2, 3, 4, 5]
    finally:
        b.close()
    assert max(int(k) for k in b.stats()) <= 2 and sum(int(k) * v for k, v in b.stats().items()) == 5


def test_a_failed_batch_fails_each_of_its_callers_and_the_next_batch_runs() -> None:
    def fn(items: list[int]) -> list[int]:
        if 0 in items:
            raise ValueError("no zero")
        return items

    b = MicroBatcher(fn, max_size=2, max_wait_s=WAIT_S, name="fails")
    try:
        with pytest.raises(ValueError, match="no zero"):
            _concurrently(b.submit, [0, 7])
        assert _concurrently(b.submit, [8, 9]) == [8, 9]
    finally:
        b.close()


def test_one_means_no_batching_and_no_waiting() -> None:
    with pytest.raises(ValueError):
        MicroBatcher(lambda items: items, max_size=0, max_wait_s=0, name="none")


def test_videos_embedded_at_once_are_one_forward_pass_equal_to_each_alone() -> None:
    inner = hf.ClipImageEncoder(*hf.tiny_clip())
    passes = []
    forward = inner.model.vision_model.forward
    inner.model.vision_model.forward = lambda *a, **k: passes.append(k["pixel_values"].shape[0]) or forward(*a, **k)  # type: ignore[method-assign]
    enc = BatchingImageEncoder(inner, max_size=3, max_wait_s=WAIT_S)
    rng = np.random.default_rng(0)
    videos = [rng.integers(0, 256, (n, inner.input_size, inner.input_size, 3), dtype=np.uint8) for n in (4, 2, 5)]
    try:
        together = _concurrently(enc.encode_with_labels, videos)
    finally:
        enc.close()
    assert passes == [11]  # one vision pass over every video's frames
    assert enc.batcher.stats() == {"3": 1}
    for (f_b, labels_b), video in zip(together, videos, strict=True):
        f_a, labels_a = inner.encode_with_labels(video)
        torch.testing.assert_close(f_b, f_a, rtol=1e-4, atol=1e-5)
        assert [n for n, _ in labels_b] == [n for n, _ in labels_a]


@pytest.mark.parametrize("name", ["minilm", "clip"])
def test_sentences_encoded_at_once_are_one_forward_pass_equal_to_each_alone(name: str) -> None:
    from engine.encoders.minilm import MiniLMTextEncoder

    inner = MiniLMTextEncoder() if name == "minilm" else hf.ClipTextEncoder(*hf.tiny_clip())
    enc = BatchingTextEncoder(inner, max_size=3, max_wait_s=WAIT_S)
    asks = [["more drums"], ["calm piano for a wedding video", "no vocals"], ["a much longer sentence about epic orchestral battle music"]]
    calls = []
    encode = inner.encode_sentences
    inner.encode_sentences = lambda texts: calls.append(len(texts)) or encode(texts)  # type: ignore[method-assign]
    try:
        together = _concurrently(enc.encode_sentences, asks)
        tokens = enc.encode_tokens(["more drums"])  # token states: passed through, on the same thread
    finally:
        enc.close()
    assert calls == [4] and enc.batcher.stats() == {"1": 1, "3": 1}  # three callers, one pass; then the tokens alone
    for vecs, texts in zip(together, asks, strict=True):
        torch.testing.assert_close(vecs, encode(texts), rtol=1e-4, atol=1e-5)  # other padding: float rounding only
    assert tokens.states.shape[0] == 1 and torch.equal(tokens.states, inner.encode_tokens(["more drums"]).states)
