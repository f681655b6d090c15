"""Capped downloads of users' uploads from a platform's file host (DESIGN.md, "Data flow", step 1).

Platforms hand the bot a URL (a Discord CDN attachment, a Slack `url_private_download`). The
adapter checks the size the platform announced before anything is fetched, then streams the body
with a byte cap (a server may lie about Content-Length), a total and a per-read timeout, and only
from the hosts it allows. Redirects are not followed: a bearer token must never travel to another
host (Slack's files need one). The bytes go to the conversation service, never the URL: signed CDN
URLs expire.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 16  # bytes read at a time
TOTAL_TIMEOUT_S = 120.0  # seconds for a whole download
CONNECT_TIMEOUT_S = 10.0  # seconds to connect
READ_TIMEOUT_S = 30.0  # seconds without a byte before giving up


class DownloadError(Exception):
    """An upload that could not be fetched; `user_message` is fit for the chat."""

    def __init__(self, user_message: str, detail: str | None = None) -> None:
        super().__init__(detail or user_message)
        self.user_message = user_message


class UploadTooLargeError(DownloadError):
    """The file is over the bot's byte cap (announced or counted)."""


@dataclass(frozen=True)
class DownloadLimits:
    max_bytes: int  # largest upload accepted
    total_timeout_s: float = TOTAL_TIMEOUT_S
    connect_timeout_s: float = CONNECT_TIMEOUT_S
    read_timeout_s: float = READ_TIMEOUT_S


def _mib(n: int) -> str:
    return f"{n / 2**20:.0f} MiB" if n >= 2**20 else f"{n / 1024:.0f} KiB"


def check_announced_size(size: int | None, limits: DownloadLimits, *, name: str = "your file") -> None:
    """Refuse before downloading when the platform says the file is over the cap."""
    if size is not None and size > limits.max_bytes:
        raise UploadTooLargeError(
            f"{name} is {_mib(size)}; the limit here is {_mib(limits.max_bytes)}. Send a shorter clip.",
            f"announced size {size} > {limits.max_bytes}",
        )


def safe_url(url: str) -> str:
    """A URL without its query (signed URLs carry their signature there): for logs."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


async def download_capped(
    session: aiohttp.ClientSession,
    url: str,
    *,
    limits: DownloadLimits,
    headers: Mapping[str, str] | None = None,
    allowed_hosts: Collection[str] | None = None,
    announced_size: int | None = None,
    name: str = "your file",
) -> bytes:
    """The body of `url`, at most `limits.max_bytes` bytes; `DownloadError` with a chat sentence otherwise.

    `allowed_hosts`: host names the URL may point at (None: any). Redirects are refused.
    """
    check_announced_size(announced_size, limits, name=name)
    host = urlsplit(url).hostname or ""
    if allowed_hosts is not None and host not in allowed_hosts:
        raise DownloadError(f"I can only fetch {name} from the platform's own file host.", f"host {host!r} not allowed")
    timeout = aiohttp.ClientTimeout(
        total=limits.total_timeout_s, sock_connect=limits.connect_timeout_s, sock_read=limits.read_timeout_s
    )
    try:
        async with session.get(url, headers=dict(headers or {}), timeout=timeout, allow_redirects=False) as resp:
            if resp.status != 200:
                raise DownloadError(
                    f"I could not fetch {name} (the file host answered {resp.status}); please upload it again.",
                    f"GET {safe_url(url)} -> {resp.status}",
                )
            if resp.content_length is not None and resp.content_length > limits.max_bytes:
                check_announced_size(resp.content_length, limits, name=name)
            body = bytearray()
            async for chunk in resp.content.iter_chunked(CHUNK_BYTES):
                body += chunk
                if len(body) > limits.max_bytes:
                    raise UploadTooLargeError(
                        f"{name} is over the limit of {_mib(limits.max_bytes)}; send a shorter clip.",
                        f"GET {safe_url(url)}: more than {limits.max_bytes} bytes",
                    )
            return bytes(body)
    except TimeoutError as exc:
        raise DownloadError(f"Fetching {name} took too long; please try again.", f"GET {safe_url(url)}: timeout") from exc
    except aiohttp.ClientError as exc:
        log.warning("download of %s failed: %s", safe_url(url), type(exc).__name__)
        raise DownloadError(f"I could not fetch {name}; please upload it again.", f"GET {safe_url(url)}: {exc}") from exc
