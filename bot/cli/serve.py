"""`musechat serve`: the long-running bot (bot/adapters/host.py) over one application.

Runs the platform adapters whose credentials are set (or those named by `--platform`), the
scheduled catalog refresh and media retention, and `/healthz` + `/readyz`. SIGTERM or SIGINT:
turns in flight finish within `--grace` seconds, new ones are told to come back, then it exits.

Logs: one line per event, JSON with `MUSECHAT_LOG_JSON=1` (or `--log-json`); tokens, secrets and
signed URLs never appear in them (`RedactingFilter`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import signal
import sys
from collections.abc import Iterable
from typing import Any

import typer

from bot.cli.common import EXIT_USER_ERROR, CliExit, cli_errors, open_app, out
from bot.settings import Settings, get_settings

log = logging.getLogger(__name__)

PLATFORMS = ("discord", "slack")
# secrets that look like tokens, and the signatures of signed URLs, wherever they appear in a message
TOKEN_PATTERNS = (
    re.compile(r"\bxox[abposr]-[A-Za-z0-9-]+"),  # Slack bot / user tokens
    re.compile(r"\bxapp-[A-Za-z0-9-]+"),  # Slack app-level tokens
    re.compile(r"\b[MNO][A-Za-z\d_-]{23,27}\.[A-Za-z\d_-]{6}\.[A-Za-z\d_-]{27,40}\b"),  # Discord bot token shape
)
BEARER = re.compile(r"(?i)(\bbearer\s+)[^\s\"',]+")
URL_SIGNATURE = re.compile(r"(?i)([?&](?:ex|is|hm|sig|signature|token|x-amz-signature|x-amz-credential))=[^&\s\"']+")
REDACTED = "[redacted]"


class RedactingFilter(logging.Filter):
    """Replace the configured secrets and anything shaped like a token or a URL signature."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if s and len(s) >= 6]

    def scrub(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
        text = BEARER.sub(lambda m: m.group(1) + REDACTED, text)
        text = URL_SIGNATURE.sub(lambda m: f"{m.group(1)}={REDACTED}", text)
        for pattern in TOKEN_PATTERNS:
            text = pattern.sub(REDACTED, text)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        record.msg, record.args = self.scrub(record.getMessage()), None
        if record.exc_text:
            record.exc_text = self.scrub(record.exc_text)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message (and the traceback, if any)."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_text or record.exc_info:
            data["traceback"] = record.exc_text or self.formatException(record.exc_info)  # type: ignore[arg-type]
        return json.dumps(data, ensure_ascii=False)


def configure_logging(settings: Settings, *, as_json: bool, level: int = logging.INFO) -> None:
    """Logging for `serve`: INFO, optionally JSON, every record scrubbed of the settings' secrets."""
    secrets = [
        v.get_secret_value()
        for v in (settings.discord_token, settings.slack_bot_token, settings.slack_app_token,
                  settings.slack_signing_secret, settings.reasoner_api_key, )
        if v is not None
    ]  # fmt: skip
    if settings.qdrant_api_key:
        secrets.append(settings.qdrant_api_key)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if as_json else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter(secrets))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level)


def chosen_platforms(settings: Settings, platform: str) -> list[str]:
    """The adapters to run: "auto" = those whose credentials are set; "none"; or one / "all" (credentials required)."""
    configured = {
        "discord": settings.discord_token is not None,
        "slack": settings.slack_bot_token is not None and (
            settings.slack_app_token is not None if settings.slack_mode == "socket" else settings.slack_signing_secret is not None
        ),
    }
    if platform == "auto":
        return [p for p in PLATFORMS if configured[p]]
    if platform == "none":
        return []
    wanted = list(PLATFORMS) if platform == "all" else [platform]
    missing = [p for p in wanted if not configured[p]]
    if missing:
        need = {
            "discord": "MUSECHAT_DISCORD_TOKEN",
            "slack": "MUSECHAT_SLACK_BOT_TOKEN and "
            + ("MUSECHAT_SLACK_APP_TOKEN (Socket Mode)" if settings.slack_mode == "socket" else "MUSECHAT_SLACK_SIGNING_SECRET (HTTP mode)"),
        }
        raise CliExit("; ".join(f"{p} needs {need[p]}" for p in missing), EXIT_USER_ERROR)
    return wanted


def cooldowns(settings: Settings, sql: Any) -> Any:
    """Per-user cooldowns kept in SQL (a token bucket per user: they survive a restart); None when off."""
    if settings.cooldown_turns <= 0 or settings.cooldown_refill_per_min <= 0:
        return None
    from storage.rate_limit_store import RateLimitStore

    return RateLimitStore(sql, capacity=settings.cooldown_turns, refill_per_s=settings.cooldown_refill_per_min / 60.0)


def build_adapters(names: list[str], service: Any, settings: Settings, app: Any = None) -> list[Any]:
    """The adapter objects (imported only when configured: their platform libraries load then).

    `app` (bot/app.py) gives the admin commands the catalog admin of this process."""
    adapters = []
    for name in names:
        if name == "discord":
            from bot.adapters.discord import DiscordAdapter

            adapters.append(
                DiscordAdapter(
                    service, settings, catalog_admin=app.admin() if app is not None else None,
                    limiter=cooldowns(settings, app.sql) if app is not None else None,
                )  # fmt: skip
            )
        elif name == "slack":
            from bot.adapters.slack import SlackAdapter

            adapters.append(
                SlackAdapter(
                    service, settings, http_host=settings.slack_http_host,
                    catalog_admin=app.admin() if app is not None else None, admin_user_ids=settings.slack_admins,
                    limiter=cooldowns(settings, app.sql) if app is not None else None,
                )  # fmt: skip
            )
    return adapters


async def _serve(settings: Settings, platform: str, cron: str | None, grace_s: float) -> None:
    from bot.adapters.host import Host

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):  # before anything is announced
        loop.add_signal_handler(sig, stop.set)
    names = chosen_platforms(settings, platform)
    async with open_app(settings) as app:
        host = Host(
            app, adapters=lambda service: build_adapters(names, service, settings, app), cron=cron, health_host=settings.health_host,
            health_port=settings.health_port or None, grace_s=grace_s,
        )  # fmt: skip

        def started(h: Host) -> None:
            sched = h.status.scheduler
            out.print(
                f"serving: {', '.join(names) or 'no platform adapters (none configured)'}; "
                + ("no refresh schedule (set one with `musechat catalog schedule CRON`)" if sched is None
                   else f"catalog refresh next at {sched.next_run_time}")
                + (f"; health on http://{settings.health_host}:{h.bound_port}/readyz" if h.bound_port else "")
            )  # fmt: skip

        await host.run(stop, on_started=started)
    out.print("stopped")


def serve(
    platform: str = typer.Option("auto", help="auto (the platforms whose credentials are set) | discord | slack | all | none."),
    cron: str = typer.Option(None, help="Override the stored refresh schedule (crontab expression)."),
    grace: float = typer.Option(20.0, help="Seconds turns in flight get to finish on SIGTERM."),
    log_json: bool = typer.Option(None, "--log-json/--log-text", help="JSON log lines (default: MUSECHAT_LOG_JSON)."),
) -> None:
    """Run the bot: platform adapters, scheduled catalog refreshes and media retention, /healthz and /readyz."""
    settings = get_settings()
    configure_logging(settings, as_json=settings.log_json if log_json is None else log_json)
    with cli_errors():
        if platform not in ("auto", "none", "all", *PLATFORMS):
            raise CliExit(f"unknown platform {platform!r}: choose auto, discord, slack, all or none", EXIT_USER_ERROR)
        if cron is not None:
            from bot.service.scheduler import parse_cron

            parse_cron(cron)
        asyncio.run(_serve(settings, platform, cron, grace))


def register_serve_command(app: typer.Typer) -> None:
    app.command("serve")(serve)


__all__ = ["RedactingFilter", "configure_logging", "register_serve_command", "serve"]
