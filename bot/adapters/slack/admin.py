"""`/music-admin status|refresh`: catalog administration from Slack, for configured admins only.

The adapter gets a `CatalogAdmin` (bot/service/catalog_admin.py) and the admins' Slack user ids
from whoever builds it (`serve`); without them the command says it is not enabled here. Answers are
ephemeral: only the admin who asked sees them. A refresh runs in the background (it can take
minutes); its report follows when it is done. The live catalog keeps serving meanwhile, and a
failed refresh leaves it as it was (the catalog store swaps versions atomically).
"""

from __future__ import annotations

from typing import Any

USAGE = "Usage: `/music-admin status` or `/music-admin refresh`."
NOT_ENABLED = "Catalog administration is not enabled in this bot process; use `musechat catalog` on the server."
NOT_ADMIN = "Only the bot's admins can manage the catalog."


def status_text(status: Any) -> str:
    """A few lines from `CatalogAdmin.status()`."""
    lines = [f"*Catalog:* {status.live_points} tracks live" + (f" (version `{status.live_version_name}`)" if status.live_version_name else "")]
    lines.append(f"*Folders:* {len(status.folders)}" + "".join(f"\n• `{f.path}` ({f.licence or 'no licence'})" for f in status.folders[:10]))
    if status.running is not None:
        lines.append(f"*Refresh running* since {status.running.started_at:%Y-%m-%d %H:%M} UTC")
    if status.last_runs:
        last = status.last_runs[0]
        lines.append(f"*Last refresh:* {last.status.value} at {last.started_at:%Y-%m-%d %H:%M} UTC" + (f" ({last.error})" if last.error else ""))
    if status.failures:
        lines.append(f"*Files that failed last time:* {len(status.failures)}")
    if status.schedule is not None:
        lines.append(f"*Schedule:* `{status.schedule.cron}`" + ("" if status.schedule.enabled else " (paused)"))
    return "\n".join(lines)


def report_text(report: Any) -> str:
    """One sentence from a `RefreshReport`."""
    text = (
        f"Catalog refreshed: {report.tracks} tracks (added {report.added}, changed {report.changed}, "
        f"removed {report.removed}; {report.analysed} analysed, {report.reused} reused) in {report.seconds:.0f} s."
    )
    if report.failures:
        text += f" {len(report.failures)} files failed; see `/music-admin status`."
    return text
