"""The terminal adapter: a conversation at the prompt, rendered with rich (DESIGN.md, "Who uses it").

Like every adapter it is thin: it reads the user's lines, calls one method of the conversation
service per line and renders the `Reply`. The commands that host it (`musechat chat`,
`recommend`, `demo`) live in bot/cli/.
"""

from __future__ import annotations

import asyncio
import getpass
import logging
import shutil
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.markup import escape
from rich.panel import Panel
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

log = logging.getLogger(__name__)

console = Console(stderr=True)  # status lines, errors
out = Console()  # cards, paths, results

PLATFORM = "terminal"
PREVIEW_NAME = "musechat-preview-{conversation}-turn{turn}.mp4"  # written into --out-dir
CHAT_HELP = (
    "Type what you think of the track (\"more upbeat\", \"no vocals\", \"under 2 minutes\", \"CC-BY only\"), "
    "or /another, /use (write the preview video), /help, /quit."
)
PARTS_SHOWN = ("semantic", "pace", "steering", "fusion", "not like rejected")
LIVE_REFRESH_HZ = 12.0  # redraws per second of the status line and the growing reason



# =================================================================================================
# formatting
# =================================================================================================


def render_reply(reply: Any) -> Panel | Text:
    """A reply as rich renderables: the track card(s), or the service's sentence."""
    from bot.service.conversation import ReplyKind

    if reply.kind is ReplyKind.EXHAUSTED:
        return Panel(Text(reply.message), title=f"turn {reply.turn_index} · {reply.mode}", border_style="yellow")
    if reply.kind is ReplyKind.PREVIEW:
        return Text(reply.message)
    blocks = []
    for card in reply.tracks:
        t = Table.grid(padding=(0, 1))
        t.add_column(style="bold cyan", no_wrap=True)
        t.add_column(overflow="fold")
        head = Text(card.title, style="bold")
        if card.artist:
            head.append(f" — {card.artist}", style="")
        t.add_row("track" if len(reply.tracks) == 1 else f"#{card.rank}", head)
        if card.mtt_tags:
            t.add_row("tags MTT", ", ".join(card.mtt_tags))
        if card.msd_tags:
            t.add_row("tags MSD", ", ".join(card.msd_tags))
        facts = [f"{card.duration_s:.0f} s"]
        if card.tempo_bpm:
            facts.append(f"{card.tempo_bpm:.0f} BPM")
        if card.licence:
            facts.append(f"licence {card.licence}")
        t.add_row("about", ", ".join(facts))
        parts = ", ".join(f"{name} {card.parts[name]:+.2f}" for name in PARTS_SHOWN if name in card.parts)
        t.add_row("score", f"{card.score:.2f} ({parts})" if parts else f"{card.score:.2f}")
        t.add_row("mode", reply.mode)
        t.add_row("why", Text(f"[{card.reason_source}] ", style="dim") + Text(card.reason))
        if card.excerpt_path is None:
            t.add_row("listen", Text(card.excerpt_note or "excerpt unavailable", style="yellow"))
        blocks.append(t)
    footer = []
    if reply.understood:
        footer.append(f"understood: {reply.understood}")
    if reply.unmatched:
        footer.append(f"not understood: {', '.join(reply.unmatched)}")
    if reply.unavailable:
        footer.append(f"nothing in the catalog for: {', '.join(reply.unavailable)}")
    if reply.filters:
        footer.append(f"filters: {reply.filters}")
    if footer:
        blocks.append(Text(" · ".join(footer), style="dim"))
    return Panel(Group(*blocks), title=f"turn {reply.turn_index} · {reply.mode}", border_style="green", expand=False)


def save_preview(reply: Any, out_dir: Path) -> Path | None:
    """Copy a "use this" reply's preview out of the media store under a readable name."""
    if reply.preview_path is None:
        return None
    out_dir.mkdir(parents=True, exist_ok=True)
    dest = out_dir / PREVIEW_NAME.format(conversation=reply.conversation_id, turn=reply.turn_index)
    shutil.copyfile(reply.preview_path, dest)
    out.print(f"preview written to {dest.resolve()}", soft_wrap=True, highlight=False)
    return dest


def print_reply(reply: Any) -> None:
    """Print a reply; file paths go on lines of their own, never wrapped (to copy them whole)."""
    out.print(render_reply(reply))
    for card in reply.tracks:
        if card.excerpt_path is not None:
            label = "listen" if len(reply.tracks) == 1 else f"listen #{card.rank}"
            out.print(f"{label}: {card.excerpt_path}", soft_wrap=True, highlight=False)


def reply_json(reply: Any) -> dict[str, Any]:
    """A reply as plain JSON data (for `recommend --json`)."""
    return {
        "conversation_id": reply.conversation_id,
        "turn": reply.turn_index,
        "kind": reply.kind.value,
        "mode": reply.mode,
        "understood": reply.understood,
        "unavailable": list(reply.unavailable),
        "filters": reply.filters,
        "message": reply.message,
        "tracks": [
            {
                "rank": c.rank,
                "track_id": c.track_id,
                "catalog_id": c.catalog_id,
                "title": c.title,
                "artist": c.artist,
                "mtt_tags": list(c.mtt_tags),
                "msd_tags": list(c.msd_tags),
                "tags": list(c.tags),
                "score": round(c.score, 4),
                "parts": {k: round(v, 4) for k, v in c.parts.items()},
                "duration_s": round(c.duration_s, 3),
                "tempo_bpm": None if c.tempo_bpm is None else round(c.tempo_bpm, 2),
                "licence": c.licence,
                "reason": c.reason,
                "reason_source": c.reason_source,
                "excerpt": None if c.excerpt_path is None else str(c.excerpt_path),
                "excerpt_note": c.excerpt_note,
                "source": c.source,
            }
            for c in reply.tracks
        ],
        "timings_s": {k: round(v, 4) for k, v in reply.timings.items()},
    }


def print_error(message: str) -> None:
    """One line on stderr, never wrapped."""
    console.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True, highlight=False)


async def with_status(coro_fn: Any, message: str) -> Any:
    """Run a service call under a rich status line that its progress callbacks update."""
    with console.status(message) as status:
        return await coro_fn(lambda m: status.update(f"{m}…"))


class ReasonView:
    """The status line and, once the LLM writes (MUSECHAT_REASONER=local|http), its reason growing under it."""

    def __init__(self, message: str) -> None:
        self.spinner = Spinner("dots", text=message)
        self.reason = Text(style="italic")

    def status(self, message: str) -> None:
        self.spinner.update(text=f"{message}…")

    def token(self, piece: str) -> None:
        if not self.reason.plain:
            self.spinner.update(text="writing the reason…")
        self.reason.append(piece)

    def __rich__(self) -> RenderableType:
        if not self.reason.plain:
            return self.spinner
        return Group(self.spinner, Text.assemble(("why ", "bold cyan"), self.reason))


async def with_reason_stream(coro_fn: Any, message: str) -> Any:
    """Like `with_status`, and the reason grows on screen as the reasoner writes it.

    `coro_fn(on_status, on_reason_token)` is a service call. The view is transient (rich Live): once
    the reply is back, `print_reply` prints the whole card in its place.
    """
    view = ReasonView(message)
    with Live(view, console=console, transient=True, refresh_per_second=LIVE_REFRESH_HZ):
        return await coro_fn(view.status, view.token)


STAGE_LABELS = {"scan": "scanning", "analyse": "embedding", "towers": "trained AST towers (g_mt)", "excerpt": "cutting excerpts", "write": "writing catalog"}


def print_skipped(failures, duplicates=(), to: Console = console) -> None:
    """The files a refresh skipped, with their reasons, those indexed without an excerpt, and the
    copies of audio indexed (or skipped) under another path."""
    from bot.service.catalog_admin import reason_counts

    counts = reason_counts(failures)
    if duplicates:
        counts["duplicate"] = len(duplicates)
    if counts:
        to.print(f"skipped {sum(counts.values())} file(s): " + ", ".join(f"{n} {kind}" for kind, n in counts.items()))
    # soft_wrap: a path is never folded into pieces (the terminal wraps the line; copying keeps the path whole)
    for f in failures:
        label = "skipped" if f.stage == "analyse" else "no excerpt for"
        to.print(f"[yellow]{label}[/yellow] {escape(f.path)}: {escape(f.reason or f.error)}", soft_wrap=True)
    for path, kept in duplicates:
        to.print(f"[yellow]skipped[/yellow] {escape(path)}: duplicate of {escape(kept)}", soft_wrap=True)


async def refresh_with_progress(admin) -> None:
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TextColumn("{task.fields[name]}"), console=console, transient=True,
    ) as bar:  # fmt: skip
        tasks: dict[str, int] = {}

        def progress(p) -> None:
            if p.stage not in tasks:
                tasks[p.stage] = bar.add_task(STAGE_LABELS.get(p.stage, p.stage), total=max(p.total, 1), name="")
            bar.update(tasks[p.stage], completed=p.done, total=max(p.total, 1), name=Path(p.path).name if p.path else "")

        report = await admin.refresh(progress=progress)
    out.print(
        f"catalog version {report.version_name}: {report.tracks} tracks "
        f"({report.added} added, {report.changed} changed, {report.removed} removed; "
        f"{report.analysed} embedded, {report.reused} reused) in {report.seconds:.1f} s"
    )
    if report.analysed:
        out.print(f"embedding speed: {report.tracks_per_minute:.1f} tracks/min, {report.x_realtime:.0f}x real time")
    if report.tower_tracks:
        out.print(f"trained AST towers: {report.tower_tracks} tracks decoded again for g_mt's vectors and their candidate clips")
    print_skipped(report.failures, report.duplicates)
    for note in report.notes:
        console.print(f"[yellow]note:[/yellow] {note}")


# =================================================================================================
# the chat
# =================================================================================================


class Lines:
    """stdin lines read by a daemon thread (a blocked read must not keep the process alive at exit)."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[str | None] = asyncio.Queue()
        threading.Thread(target=self._read, name="musechat-stdin", daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                line = sys.stdin.readline()
            except (OSError, ValueError):
                line = ""
            self._loop.call_soon_threadsafe(self._queue.put_nowait, line.rstrip("\n") if line else None)
            if not line:
                return

    async def next(self) -> str | None:
        return await self._queue.get()


async def run_chat(svc: Any, video: Path | None, text: str | None, resume: int | None, out_dir: Path) -> None:
    """The chat at the prompt over an open conversation service, until /quit or end of input."""
    from bot.service.conversation import ConversationError
    from engine.media import MediaError

    if True:
        if resume is not None:
            state = await svc.state(resume)
            cid = resume
            out.print(f"conversation {cid}: {len(state.turns)} turn(s) so far")
            if text:
                reply = await with_reason_stream(lambda cb, tok: svc.message(cid, text, on_status=cb, on_reason_token=tok), "thinking…")
                print_reply(reply)
        else:
            what = f"decoding and embedding {video.name}…" if video is not None else "searching the catalog…"
            reply = await with_reason_stream(
                lambda cb, tok: svc.start(
                    video=video, text=text or "", platform=PLATFORM, channel_id=f"chat-{uuid.uuid4().hex[:12]}",
                    user_id=getpass.getuser(), on_status=cb, on_reason_token=tok,
                ),
                what,
            )  # fmt: skip
            cid = reply.conversation_id
            out.print(f"conversation {cid} (continue it later with: musechat chat --resume {cid})")
            print_reply(reply)
        out.print(Text(CHAT_HELP, style="dim"))
        lines = Lines()
        while True:
            out.print("you> ", end="")
            line = await lines.next()
            if line is None:
                out.print()
                break
            line = line.strip()
            if not line:
                continue
            command = line.lower()
            if command in ("/quit", "/exit", "/q"):
                break
            if command in ("/help", "/?"):
                out.print(CHAT_HELP)
                continue
            try:
                if command in ("/use", "/use this"):
                    reply = await with_status(lambda cb: svc.use_this(cid, on_status=cb), "rendering the preview…")
                    print_reply(reply)
                    save_preview(reply, out_dir)
                    continue
                if command.startswith("/another"):
                    words = line[len("/another") :].strip()
                    reply = await with_reason_stream(
                        lambda cb, tok: svc.another(cid, text=words, on_status=cb, on_reason_token=tok), "looking for another…"
                    )
                elif command.startswith("/"):
                    out.print(f"unknown command {escape(line.split()[0])}. {CHAT_HELP}")
                    continue
                else:
                    reply = await with_reason_stream(lambda cb, tok: svc.message(cid, line, on_status=cb, on_reason_token=tok), "thinking…")
                print_reply(reply)
                save_preview(reply, out_dir)  # "use this" in words renders the preview like /use
            except (ConversationError, MediaError) as e:  # one message failed; the chat goes on
                print_error(e.user_message)
        out.print(f"bye (conversation {cid})")


