"""Micro-batching in a model worker: concurrent requests of one kind in one forward pass.

A worker serves several jobs at once (`worker_concurrency`), each on a model thread of its pool.
When several of them embed a video's frames at the same time, one forward pass over all their
frames uses a GPU far better than one pass each. `MicroBatcher` gathers the requests that arrive
within `max_wait_s` of the first one, up to `max_size` requests, runs them as ONE call on its own
thread, and hands each caller its own part of the result; the callers (model threads) block
meanwhile, so the worker's model concurrency stays what its pool allows.

`BatchingTextEncoder` does the same for the sentences of the queries and re-ranks a worker runs
at once (a turn's query encoding, paper 4.1), in one forward pass of the text encoder.

`BatchingImageEncoder` puts an `ImageEncoder` behind one: `encode_with_labels` (what
engine/video.py calls per video) becomes a request of the batch, and the batch runs the encoder's
`encode_batch_with_labels` (engine/encoders/base.py: one forward pass over every video's frames,
split back per video). A lone request waits `max_wait_s` (a few milliseconds) for company; with
`max_size` 1 nothing waits and nothing is batched.

Each batcher counts the batch sizes it ran (`sizes`: size -> batches), logged per batch and
reported by the worker's ping job (bot/jobs/worker.py).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np
import torch

from engine.encoders.base import ImageEncoder, TextEncoder, TextTokens

log = logging.getLogger(__name__)

I = TypeVar("I")  # noqa: E741 - a request's item
R = TypeVar("R")  # its result

DEFAULT_BATCH_SIZE = 8  # requests in one forward pass at most
DEFAULT_BATCH_WAIT_MS = 5.0  # ms the first request of a batch waits for others


@dataclass
class _Request(Generic[I, R]):
    item: I
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None


class MicroBatcher(Generic[I, R]):
    """Run `fn(items) -> results` (same order, same length) over requests submitted from threads, batched."""

    def __init__(self, fn: Callable[[list[I]], Sequence[R]], *, max_size: int, max_wait_s: float, name: str) -> None:
        if max_size < 1:
            raise ValueError("a batch holds at least one request")
        self.fn = fn
        self.max_size = max_size
        self.max_wait_s = max(0.0, max_wait_s)
        self.name = name
        self.sizes: Counter[int] = Counter()  # batch size -> batches run
        self._queue: queue.SimpleQueue[_Request[I, R] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name=f"batch-{name}", daemon=True)
        self._thread.start()

    def submit(self, item: I) -> R:
        """The result for `item`, computed in a batch with the requests that arrive with it (blocks)."""
        req: _Request[I, R] = _Request(item)
        self._queue.put(req)
        req.done.wait()
        if req.error is not None:
            raise req.error
        return req.result

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    def stats(self) -> dict[str, int]:
        """Batches run per size ({"1": 12, "3": 2}), as JSON."""
        return {str(k): v for k, v in sorted(self.sizes.items())}

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            deadline = time.monotonic() + self.max_wait_s
            stop = False
            while len(batch) < self.max_size:
                left = deadline - time.monotonic()
                try:
                    nxt = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            self._run(batch)
            if stop:
                return

    def _run(self, batch: list[_Request[I, R]]) -> None:
        t0 = time.perf_counter()
        try:
            results = list(self.fn([r.item for r in batch]))
            if len(results) != len(batch):
                raise RuntimeError(f"{self.name}: {len(results)} results for {len(batch)} requests")
            for r, res in zip(batch, results, strict=True):
                r.result = res
        except BaseException as exc:  # noqa: BLE001 - every caller of the batch gets the error
            for r in batch:
                r.error = exc
        finally:
            self.sizes[len(batch)] += 1
            log.info("%s: ran a batch of %d request(s) in %.0f ms", self.name, len(batch), 1000 * (time.perf_counter() - t0))
            for r in batch:
                r.done.set()


class BatchingImageEncoder(ImageEncoder):
    """An image encoder whose per-video calls (`encode_with_labels`) are micro-batched (module docstring)."""

    def __init__(self, inner: ImageEncoder, *, max_size: int = DEFAULT_BATCH_SIZE, max_wait_s: float = DEFAULT_BATCH_WAIT_MS / 1000) -> None:
        self.inner = inner
        self.dim = inner.dim
        self.input_size = inner.input_size
        self.batcher: MicroBatcher[tuple[np.ndarray, int], tuple[torch.Tensor, list[tuple[str, float]]]] = MicroBatcher(
            self._run, max_size=max_size, max_wait_s=max_wait_s, name="image embedding"
        )

    def _run(self, items: list[tuple[np.ndarray, int]]) -> list[tuple[torch.Tensor, list[tuple[str, float]]]]:
        if len(items) == 1:  # alone: exactly the unbatched call (a lone video's features equal the in-process ones bit for bit)
            frames, k = items[0]
            return [self.inner.encode_with_labels(frames, k)]
        ks = {k for _, k in items}
        if len(ks) == 1:
            return self.inner.encode_batch_with_labels([frames for frames, _ in items], ks.pop())
        return [self.inner.encode_with_labels(frames, k) for frames, k in items]  # mixed k: rare, one by one

    def encode_with_labels(self, frames: np.ndarray, k: int = 5) -> tuple[torch.Tensor, list[tuple[str, float]]]:
        return self.batcher.submit((frames, k))

    def encode(self, frames: np.ndarray) -> torch.Tensor:
        return self.inner.encode(frames)

    def labels(self, frames: np.ndarray, k: int = 5) -> list[tuple[str, float]]:
        return self.inner.labels(frames, k)

    def encode_batch_with_labels(self, batch: Sequence[np.ndarray], k: int = 5) -> list[tuple[torch.Tensor, list[tuple[str, float]]]]:
        return self.inner.encode_batch_with_labels(batch, k)

    def close(self) -> None:
        self.batcher.close()


SENTENCES, TOKENS = "sentences", "tokens"


class BatchingTextEncoder(TextEncoder):
    """A text encoder whose calls all run on its batcher's thread (tokenizers are not shared between
    threads), concurrent `encode_sentences` calls in one forward pass: the query encoding of the jobs
    a worker runs at once (the engine lets them meet here: `Engine.share_text_encoder`)."""

    def __init__(self, inner: TextEncoder, *, max_size: int = DEFAULT_BATCH_SIZE, max_wait_s: float = DEFAULT_BATCH_WAIT_MS / 1000) -> None:
        self.inner = inner
        self.dim = inner.dim
        self.batcher: MicroBatcher[tuple[str, list[str]], Any] = MicroBatcher(
            self._run, max_size=max_size, max_wait_s=max_wait_s, name="query encoding"
        )

    def _run(self, items: list[tuple[str, list[str]]]) -> list[Any]:
        out: list[Any] = [None] * len(items)
        sentences = [i for i, (kind, texts) in enumerate(items) if kind == SENTENCES and texts]
        if len(sentences) == 1:  # alone: exactly the unbatched call
            out[sentences[0]] = self.inner.encode_sentences(items[sentences[0]][1])
        elif sentences:
            vecs = self.inner.encode_sentences([t for i in sentences for t in items[i][1]])  # (sum B, D): one pass
            start = 0
            for i in sentences:
                n = len(items[i][1])
                out[i] = vecs[start : start + n]
                start += n
        for i, (kind, texts) in enumerate(items):
            if kind == TOKENS:
                out[i] = self.inner.encode_tokens(texts)  # token states keep their own padding: one by one
            elif not texts:
                out[i] = self.inner.encode_sentences(texts)
        return out

    def encode_sentences(self, texts: list[str]) -> torch.Tensor:
        return self.batcher.submit((SENTENCES, list(texts)))

    def encode_tokens(self, texts: list[str]) -> TextTokens:
        return self.batcher.submit((TOKENS, list(texts)))

    def close(self) -> None:
        self.batcher.close()


__all__ = ["DEFAULT_BATCH_SIZE", "DEFAULT_BATCH_WAIT_MS", "BatchingImageEncoder", "BatchingTextEncoder", "MicroBatcher"]
