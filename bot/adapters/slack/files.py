"""Fetch a user's video from Slack's file host (research/platforms.md §2.5).

Slack serves `url_private_download` only with the bot token as a Bearer header (and the
`files:read` scope); without them it answers 200 with its HTML sign-in page, which must not reach
ffmpeg as a "video". The download is capped by the size Slack announced, then by the bytes
counted, comes only from Slack's file hosts, and never follows a redirect (the token would travel
with it): bot/adapters/download.py. Slack Connect files and others arrive with
`file_access: "check_file_info"` and no URLs: `files.info` gives them.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from typing import Any

import aiohttp
from slack_sdk.web.async_client import AsyncWebClient

from bot.adapters.download import DownloadError, DownloadLimits, download_capped

log = logging.getLogger(__name__)

SLACK_FILE_HOSTS = ("files.slack.com",)  # where url_private_download points in production
_HTML_STARTS = (b"<!doctype html", b"<html")


class MissingScopeError(DownloadError):
    """Slack sent its sign-in page instead of the file: the app lacks `files:read` (or the token is wrong)."""


async def resolve_file(client: AsyncWebClient, file: dict[str, Any]) -> dict[str, Any]:
    """The file with its URLs and size, asking `files.info` when the event left them out."""
    if file.get("url_private_download") and file.get("file_access") != "check_file_info":
        return file
    info = await client.files_info(file=file["id"])
    return {**file, **dict(info.get("file") or {})}


def looks_like_html(data: bytes) -> bool:
    return data[:512].lstrip().lower().startswith(_HTML_STARTS)


async def fetch_file(
    session: aiohttp.ClientSession,
    file: dict[str, Any],
    *,
    token: str,
    max_bytes: int,
    allowed_hosts: Collection[str] = SLACK_FILE_HOSTS,
) -> bytes:
    """The file's bytes (DownloadError with a chat sentence otherwise)."""
    name = f"“{file.get('name') or 'your video'}”"
    url = file.get("url_private_download") or file.get("url_private")
    if not url:
        raise DownloadError(f"Slack did not give me a link to {name}; please upload it again.", "no url_private_download")
    data = await download_capped(
        session, url, limits=DownloadLimits(max_bytes=max_bytes), headers={"Authorization": f"Bearer {token}"},
        allowed_hosts=allowed_hosts, announced_size=_int_or_none(file.get("size")), name=name,
    )  # fmt: skip
    if looks_like_html(data):
        raise MissingScopeError(
            f"Slack sent me its sign-in page instead of {name}: the app needs the files:read scope "
            "(ask a workspace admin to reinstall it).",
            f"HTML instead of file {file.get('id')}",
        )
    return data


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None
