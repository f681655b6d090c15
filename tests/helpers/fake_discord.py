"""A local fake of Discord's REST API and attachment CDN, for wire tests with the real discord.py.

The real client talks HTTP to an aiohttp server on 127.0.0.1 (`discord.http.Route.BASE` is
pointed at it by `FakeDiscord.patched()`), so real serialization, real multipart uploads and the
real rate-limit code run. Gateway events are usually injected through
discord.py's own parser (`client._connection.parse_interaction_create(payload)`,
`parse_message_create(payload)`), with the payload builders below (shaped like Discord's,
`discord.types.*`). A minimal gateway (`/gateway`: HELLO, IDENTIFY, READY, heartbeat ACKs,
`await fake.dispatch(event, data)`) lets `client.start()` run for real; `patched()` points
`DiscordWebSocket.DEFAULT_GATEWAY` at it.

Every request is recorded (method, path without the `/api/v10` prefix, query, headers, JSON body
or multipart `payload_json`, uploaded files); `await fake.expect("POST", "/channels/*/messages")`
waits for the next matching one, in order. `fake.fail(...)` makes the next matching requests fail
(a 429 with `retry_after`, a 413 with code 40005). The CDN (`/cdn/<name>`) serves files with
behaviours for the download tests: a lying Content-Length, a slow body, a redirect elsewhere.

Discord quirks kept on purpose (platforms.md §1.11):
- JSON answers carry `Content-Type: application/json` exactly: `discord.http.json_or_text` parses
  JSON only for that exact value (`aiohttp.web.json_response` appends `; charset=utf-8`).
- A 429 carries a `Via` header and a JSON body, else discord.py takes it for a Cloudflare ban.
- Interaction payloads carry `attachment_size_limit` (discord.py 2.7 reads it unconditionally).
- A thread started from a message has the message's id.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Self

from aiohttp import web

API_PREFIX = "/api/v10"
DEFAULT_SIZE_LIMIT = 10 * 2**20  # bytes: discord.utils.DEFAULT_FILE_SIZE_LIMIT_BYTES
SNOWFLAKE_BASE = 1_300_000_000_000_000_000
BOT_TOKEN = "fake-bot-token"


@dataclass(frozen=True)
class RecordedFile:
    field: str  # "files[0]"
    filename: str
    content_type: str
    data: bytes


@dataclass(frozen=True)
class Recorded:
    """One request the fake received."""

    method: str
    path: str  # without the /api/v10 prefix, e.g. "/channels/1/messages"
    query: dict[str, str]
    headers: dict[str, str]
    json: Any  # the JSON body, or the multipart payload_json; None when there was none
    files: tuple[RecordedFile, ...] = ()
    multipart: bool = False
    at: float = field(default_factory=time.monotonic)  # when it arrived (seconds, monotonic)

    def file(self, index: int = 0) -> RecordedFile:
        return self.files[index]


@dataclass
class _Failure:
    method: str
    pattern: re.Pattern[str]
    status: int
    body: dict[str, Any]
    headers: dict[str, str]
    times: int
    when: Callable[[Recorded], bool] | None = None


@dataclass
class CdnFile:
    data: bytes
    content_type: str = "video/mp4"
    content_length: int | None = None  # a lie, when set (None: the real length)
    delay_s: float = 0.0  # sleep after the first chunk (a stalled host)
    redirect_to: str | None = None  # answer 302 to this URL
    status: int = 200
    hits: int = 0


def _pattern(path: str) -> re.Pattern[str]:
    """A path where "*" stands for one segment, e.g. "/channels/*/messages"."""
    return re.compile("^" + "/".join("[^/]+" if seg == "*" else re.escape(seg) for seg in path.split("/")) + "$")


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat()


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=json.dumps(data).encode(), status=status, content_type="application/json", headers=headers)


@dataclass
class FakeDiscord:
    """The fake server; use `async with FakeDiscord() as fake:` then `with fake.patched(): ...`."""

    app_id: int = SNOWFLAKE_BASE + 1
    bot_id: int = SNOWFLAKE_BASE + 1  # a bot user's id is its application's id
    bot_name: str = "MuseChat"
    guild_id: int = SNOWFLAKE_BASE + 2
    channel_id: int = SNOWFLAKE_BASE + 3  # a text channel in the guild
    log: list[Recorded] = field(default_factory=list)
    messages: dict[int, dict[str, Any]] = field(default_factory=dict)  # every message the bot posted or edited
    channels: dict[int, dict[str, Any]] = field(default_factory=dict)
    cdn: dict[str, CdnFile] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._ids = itertools.count(SNOWFLAKE_BASE + 1000)
        self._taken: set[int] = set()  # indexes into `log` that expect() has returned
        self._token_channel: dict[str, int] = {}  # interaction token -> its channel id
        self._new = asyncio.Condition()
        self._failures: list[_Failure] = []
        self._runner: web.AppRunner | None = None
        self.port = 0
        self.original: dict[str, int] = {}  # interaction token -> its response message id
        self.channels[self.channel_id] = self.text_channel_payload(self.channel_id)
        self._ws: web.WebSocketResponse | None = None
        self._ws_seq = 0
        self.identified = asyncio.Event()  # set when a client has sent IDENTIFY
        self.identify: dict[str, Any] | None = None  # that IDENTIFY's payload

    # --- lifecycle ---------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        app = web.Application(client_max_size=200 * 2**20)
        app.router.add_route("*", API_PREFIX + "/{tail:.*}", self._api)
        app.router.add_get("/cdn/{name}", self._cdn)
        app.router.add_get("/gateway", self._gateway)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._ws is not None and not self._ws.closed:
            await self._ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_base(self) -> str:
        return self.base_url + API_PREFIX

    @contextlib.contextmanager
    def patched(self) -> Iterator[None]:
        """Point discord.py's REST routes (bot, webhook and interaction) at this fake; restore after."""
        import yarl
        from discord.gateway import DiscordWebSocket
        from discord.http import Route

        saved = Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY
        Route.BASE = self.api_base
        DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(f"ws://127.0.0.1:{self.port}/gateway")
        try:
            yield
        finally:
            Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY = saved

    def snowflake(self) -> int:
        return next(self._ids)

    # --- what tests assert on ----------------------------------------------------------------------

    async def expect(self, method: str, path: str, timeout: float = 5.0) -> Recorded:
        """The next request (after those already expected) with this method and path; "*" = one segment.

        Requests before the match that do not match are skipped, not consumed: a later expect() for
        them still finds them (tree dispatch runs in tasks, so order across routes is not fixed).
        """
        pattern = _pattern(path)
        deadline = asyncio.get_running_loop().time() + timeout

        def find() -> Recorded | None:
            for i, rec in enumerate(self.log):
                if i in self._taken:
                    continue
                if rec.method == method.upper() and pattern.match(rec.path):
                    self._taken.add(i)
                    return rec
            return None

        async with self._new:
            while (rec := find()) is None:
                left = deadline - asyncio.get_running_loop().time()
                if left <= 0:
                    seen = "\n".join(f"  {r.method} {r.path}" for r in self.log)
                    raise AssertionError(f"no {method} {path} within {timeout}s; the fake received:\n{seen}")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._new.wait(), left)
            return rec

    async def no_request(self, method: str, path: str, wait_s: float = 0.3) -> None:
        """Assert that no (unexpected) request with this method and path arrives within `wait_s`."""
        await asyncio.sleep(wait_s)
        pattern = _pattern(path)
        extra = [r for i, r in enumerate(self.log) if i not in self._taken and r.method == method and pattern.match(r.path)]
        assert not extra, f"unexpected {method} {path}: {extra}"

    def requests(self, method: str, path: str) -> list[Recorded]:
        pattern = _pattern(path)
        return [r for r in self.log if r.method == method.upper() and pattern.match(r.path)]

    def fail(
        self,
        method: str,
        path: str,
        *,
        status: int = 429,
        body: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        times: int = 1,
        when: Callable[[Recorded], bool] | None = None,
    ) -> None:
        """Make the next `times` matching requests fail (default: a 429 with retry_after 0.2 s).

        `when`: only requests for which it is true (e.g. an edit that carries an embed).
        """
        if body is None:
            body = {"message": "You are being rate limited.", "retry_after": 0.2, "global": False}
        hdrs = {"Via": "1.1 google"} if status == 429 else {}
        hdrs.update(headers or {})
        self._failures.append(_Failure(method.upper(), _pattern(path), status, body, hdrs, times, when))

    def fail_too_large(self, method: str, path: str, *, times: int = 1) -> None:
        """The next upload is over the channel's limit: 413 with code 40005, as Discord answers."""
        self.fail(method, path, status=413, body={"code": 40005, "message": "Request entity too large"}, times=times)

    def add_cdn_file(self, name: str, data: bytes, **kwargs: Any) -> str:
        """Serve `data` at /cdn/<name> and return its URL (with a signature query, as Discord's have)."""
        self.cdn[name] = CdnFile(data, **kwargs)
        return f"{self.base_url}/cdn/{name}?ex=6a0b1c2d&is=6a09ca2d&hm=deadbeef"

    # --- payload builders (shapes from discord.types.*) ------------------------------------------

    def user_payload(self, user_id: int, name: str = "someone", *, bot: bool = False) -> dict[str, Any]:
        return {
            "id": str(user_id),
            "username": name,
            "discriminator": "0",
            "global_name": name,
            "avatar": None,
            "bot": bot,
            "public_flags": 0,
        }

    def bot_user_payload(self) -> dict[str, Any]:
        return {**self.user_payload(self.bot_id, self.bot_name, bot=True), "verified": True, "mfa_enabled": False, "flags": 0}

    def member_payload(self, user_id: int, name: str = "someone") -> dict[str, Any]:
        return {
            "user": self.user_payload(user_id, name),
            "roles": [],
            "joined_at": _now(),
            "deaf": False,
            "mute": False,
            "flags": 0,
            "permissions": "2248473465835073",
        }

    def text_channel_payload(self, channel_id: int, name: str = "general") -> dict[str, Any]:
        return {
            "id": str(channel_id),
            "type": 0,
            "guild_id": str(self.guild_id),
            "name": name,
            "position": 0,
            "permission_overwrites": [],
            "nsfw": False,
            "parent_id": None,
            "rate_limit_per_user": 0,
        }

    def thread_payload(self, thread_id: int, parent_id: int, name: str) -> dict[str, Any]:
        return {
            "id": str(thread_id),
            "type": 11,
            "guild_id": str(self.guild_id),
            "parent_id": str(parent_id),
            "owner_id": str(self.bot_id),
            "name": name,
            "last_message_id": None,
            "message_count": 0,
            "member_count": 1,
            "rate_limit_per_user": 0,
            "flags": 0,
            "thread_metadata": {
                "archived": False,
                "auto_archive_duration": 1440,
                "archive_timestamp": _now(),
                "locked": False,
                "create_timestamp": _now(),
            },
        }

    def dm_channel_payload(self, channel_id: int, user_id: int) -> dict[str, Any]:
        return {"id": str(channel_id), "type": 1, "recipients": [self.user_payload(user_id)], "last_message_id": None}

    def attachment_payload(
        self, url: str, *, filename: str = "clip.mp4", size: int, content_type: str | None = "video/mp4"
    ) -> dict[str, Any]:
        att: dict[str, Any] = {
            "id": str(self.snowflake()),
            "filename": filename,
            "size": size,
            "url": url,
            "proxy_url": url,
        }
        if content_type is not None:
            att["content_type"] = content_type
        return att

    def _interaction_base(
        self,
        type_: int,
        *,
        user_id: int,
        channel: dict[str, Any] | None,
        size_limit: int,
        dm: bool = False,
    ) -> dict[str, Any]:
        channel = channel or self.channels[self.channel_id]
        token = f"itoken-{self.snowflake()}"
        self._token_channel[token] = int(channel["id"])
        payload: dict[str, Any] = {
            "id": str(self.snowflake()),
            "application_id": str(self.app_id),
            "type": type_,
            "token": token,
            "version": 1,
            "channel_id": channel["id"],
            "channel": channel,
            "app_permissions": "2248473465835073",
            "locale": "en-US",
            "entitlements": [],
            "authorizing_integration_owners": {"0": str(self.guild_id)} if not dm else {"1": str(user_id)},
            "context": 1 if dm else 0,
            "attachment_size_limit": size_limit,
        }
        if dm:
            payload["user"] = self.user_payload(user_id)
        else:
            payload["guild_id"] = str(self.guild_id)
            payload["guild_locale"] = "en-US"
            payload["guild"] = {"id": str(self.guild_id), "locale": "en-US", "features": []}
            payload["member"] = self.member_payload(user_id)
        return payload

    def slash_command(
        self,
        name: str,
        *,
        user_id: int,
        options: list[dict[str, Any]] | None = None,
        attachments: list[dict[str, Any]] | None = None,
        channel: dict[str, Any] | None = None,
        size_limit: int = DEFAULT_SIZE_LIMIT,
        dm: bool = False,
    ) -> dict[str, Any]:
        """A CHAT_INPUT interaction; attachment options refer to `attachments` by id (data.resolved)."""
        payload = self._interaction_base(2, user_id=user_id, channel=channel, size_limit=size_limit, dm=dm)
        data: dict[str, Any] = {"id": str(self.snowflake()), "name": name, "type": 1, "options": options or []}
        if attachments:
            data["resolved"] = {"attachments": {a["id"]: a for a in attachments}}
        payload["data"] = data
        return payload

    def message_command(
        self,
        name: str,
        *,
        user_id: int,
        target: dict[str, Any],
        channel: dict[str, Any] | None = None,
        size_limit: int = DEFAULT_SIZE_LIMIT,
    ) -> dict[str, Any]:
        """A MESSAGE context-menu interaction on `target` (a message payload)."""
        payload = self._interaction_base(2, user_id=user_id, channel=channel, size_limit=size_limit)
        payload["data"] = {
            "id": str(self.snowflake()),
            "name": name,
            "type": 3,
            "target_id": target["id"],
            "resolved": {"messages": {target["id"]: target}},
        }
        return payload

    def component(
        self,
        custom_id: str,
        *,
        user_id: int,
        message: dict[str, Any],
        channel: dict[str, Any] | None = None,
        size_limit: int = DEFAULT_SIZE_LIMIT,
    ) -> dict[str, Any]:
        """A button press on `message` (a message payload carrying the button)."""
        if channel is None:
            channel = self.channels.get(int(message["channel_id"])) or self.channels[self.channel_id]
        payload = self._interaction_base(3, user_id=user_id, channel=channel, size_limit=size_limit)
        payload["message"] = message
        payload["data"] = {"custom_id": custom_id, "component_type": 2}
        return payload

    def modal_submit(
        self,
        custom_id: str,
        *,
        user_id: int,
        values: dict[str, str],
        message: dict[str, Any] | None = None,
        channel: dict[str, Any] | None = None,
        size_limit: int = DEFAULT_SIZE_LIMIT,
    ) -> dict[str, Any]:
        """A modal submission: one label (type 18) around a text input per `values` item."""
        if channel is None and message is not None:
            channel = self.channels.get(int(message["channel_id"]))
        payload = self._interaction_base(5, user_id=user_id, channel=channel, size_limit=size_limit)
        if message is not None:
            payload["message"] = message
        payload["data"] = {
            "custom_id": custom_id,
            "components": [
                {"type": 18, "id": i + 1, "component": {"type": 4, "id": i + 10, "custom_id": cid, "value": value}}
                for i, (cid, value) in enumerate(values.items())
            ],
        }
        return payload

    def user_message(
        self,
        *,
        channel_id: int,
        user_id: int,
        content: str = "",
        attachments: list[dict[str, Any]] | None = None,
        mentions_bot: bool = False,
        reference: dict[str, Any] | None = None,
        dm: bool = False,
    ) -> dict[str, Any]:
        """A MESSAGE_CREATE payload from a user (content stays "" unless the test sets it)."""
        msg: dict[str, Any] = {
            "id": str(self.snowflake()),
            "channel_id": str(channel_id),
            "author": self.user_payload(user_id),
            "content": content,
            "timestamp": _now(),
            "edited_timestamp": None,
            "tts": False,
            "mention_everyone": False,
            "mentions": [self.user_payload(self.bot_id, self.bot_name, bot=True)] if mentions_bot else [],
            "mention_roles": [],
            "attachments": attachments or [],
            "embeds": [],
            "pinned": False,
            "type": 19 if reference else 0,
            "flags": 0,
            "components": [],
        }
        if not dm:
            msg["guild_id"] = str(self.guild_id)
            msg["member"] = {k: v for k, v in self.member_payload(user_id).items() if k != "user"}
        if reference is not None:
            msg["message_reference"] = {"message_id": reference["id"], "channel_id": reference["channel_id"], "type": 0}
            msg["referenced_message"] = reference
        return msg

    # --- the server ----------------------------------------------------------------------------------

    def _bot_message(self, channel_id: int, body: dict[str, Any], files: tuple[RecordedFile, ...], *, mid: int | None = None, flags: int = 0) -> dict[str, Any]:
        attachments = []
        for i, f in enumerate(files):
            url = self.add_cdn_file(f"att-{self.snowflake()}-{f.filename}", f.data, content_type=f.content_type)
            attachments.append(
                {"id": str(self.snowflake()), "filename": f.filename, "size": len(f.data), "url": url, "proxy_url": url, "content_type": f.content_type}
            )
        msg = {
            "id": str(mid or self.snowflake()),
            "channel_id": str(channel_id),
            "author": self.user_payload(self.bot_id, self.bot_name, bot=True),
            "content": body.get("content") or "",
            "timestamp": _now(),
            "edited_timestamp": None,
            "tts": False,
            "mention_everyone": False,
            "mentions": [],
            "mention_roles": [],
            "attachments": attachments,
            "embeds": body.get("embeds") or [],
            "components": body.get("components") or [],
            "pinned": False,
            "type": 0,
            "flags": flags | int(body.get("flags") or 0),
            "application_id": str(self.app_id),
        }
        if int(channel_id) in self.channels and self.channels[int(channel_id)].get("guild_id"):
            msg["guild_id"] = str(self.guild_id)
        self.messages[int(msg["id"])] = msg
        return msg

    def _edit(self, mid: int, body: dict[str, Any], files: tuple[RecordedFile, ...]) -> dict[str, Any]:
        msg = dict(self.messages[mid])
        for key in ("content", "embeds", "components", "flags"):
            if key in body:
                msg[key] = body[key] if body[key] is not None else ("" if key == "content" else [])
        if "attachments" in body or files:
            kept = {a["id"]: a for a in msg["attachments"]}
            new = []
            for ref in body.get("attachments") or []:
                if str(ref.get("id")) in kept:
                    new.append(kept[str(ref["id"])])
            for f in files:
                url = self.add_cdn_file(f"att-{self.snowflake()}-{f.filename}", f.data, content_type=f.content_type)
                new.append({"id": str(self.snowflake()), "filename": f.filename, "size": len(f.data), "url": url, "proxy_url": url, "content_type": f.content_type})
            msg["attachments"] = new
        msg["edited_timestamp"] = _now()
        self.messages[mid] = msg
        return msg

    async def _record(self, request: web.Request, path: str) -> Recorded:
        body: Any = None
        files: list[RecordedFile] = []
        multipart = False
        ctype = request.headers.get("Content-Type", "")
        if ctype.startswith("multipart/"):
            multipart = True
            reader = await request.multipart()
            async for part in reader:
                data = await part.read()  # type: ignore[union-attr]
                if part.name == "payload_json":  # type: ignore[union-attr]
                    body = json.loads(data)
                else:
                    files.append(
                        RecordedFile(part.name or "", part.filename or "", part.headers.get("Content-Type", ""), bytes(data))  # type: ignore[union-attr]
                    )
        elif request.can_read_body:
            raw = await request.read()
            if raw:
                body = json.loads(raw)
        headers = {k: v for k, v in request.headers.items()}
        rec = Recorded(request.method, path, dict(request.query), headers, body, tuple(files), multipart)
        self.log.append(rec)
        async with self._new:
            self._new.notify_all()
        return rec

    async def _api(self, request: web.Request) -> web.StreamResponse:
        path = "/" + request.match_info["tail"]
        rec = await self._record(request, path)
        for failure in self._failures:
            if (
                failure.times > 0
                and failure.method == rec.method
                and failure.pattern.match(path)
                and (failure.when is None or failure.when(rec))
            ):
                failure.times -= 1
                return _json(failure.body, status=failure.status, headers=failure.headers)
        tokened = request.path.startswith((API_PREFIX + "/interactions", API_PREFIX + "/webhooks"))  # no bot token there
        if not tokened and request.headers.get("Authorization") != f"Bot {BOT_TOKEN}":
            return _json({"message": "401: Unauthorized", "code": 0}, status=401)
        return await self._route(rec)

    async def _route(self, rec: Recorded) -> web.Response:
        m, p, body = rec.method, rec.path, rec.json or {}
        seg = p.strip("/").split("/")
        if (m, p) == ("GET", "/users/@me"):
            return _json(self.bot_user_payload())
        if (m, p) == ("GET", "/oauth2/applications/@me"):
            return _json(self.application_payload())
        if m == "PUT" and seg[0] == "applications" and seg[-1] == "commands":
            return _json([{"description": "", **c, "id": str(self.snowflake()), "application_id": str(self.app_id), "version": "1"} for c in rec.json or []])
        if m == "POST" and seg[0] == "interactions" and seg[-1] == "callback":
            return self._callback(seg[2], body, rec.files)
        if seg[0] == "webhooks":
            token = seg[2]
            if len(seg) == 3 and m == "POST":
                flags = int(body.get("flags") or 0)
                msg = self._bot_message(self._token_channel.get(token, self.channel_id), body, rec.files, flags=flags)
                return _json(msg)
            if len(seg) == 5 and seg[3] == "messages":
                mid = self.original.get(token) if seg[4] == "@original" else int(seg[4])
                if mid is None or mid not in self.messages:
                    return _json({"message": "Unknown Message", "code": 10008}, status=404)
                if m == "GET":
                    return _json(self.messages[mid])
                if m == "PATCH":
                    return _json(self._edit(mid, body, rec.files))
                if m == "DELETE":
                    self.messages.pop(mid, None)
                    return web.Response(status=204)
        if seg[0] == "channels":
            cid = int(seg[1])
            if len(seg) == 2 and m == "GET":
                if cid not in self.channels:
                    return _json({"message": "Unknown Channel", "code": 10003}, status=404)
                return _json(self.channels[cid])
            if len(seg) == 3 and seg[2] == "messages" and m == "GET":  # history: newest first
                before = int(rec.query.get("before", 0)) or None
                found = [
                    msg
                    for mid, msg in sorted(self.messages.items(), reverse=True)
                    if int(msg["channel_id"]) == cid and (before is None or mid < before)
                ]
                return _json(found[: int(rec.query.get("limit", 50))])
            if len(seg) == 3 and seg[2] == "messages" and m == "POST":
                if cid not in self.channels:
                    return _json({"message": "Unknown Channel", "code": 10003}, status=404)
                return _json(self._bot_message(cid, body, rec.files))
            if len(seg) == 4 and seg[2] == "messages":
                mid = int(seg[3])
                if mid not in self.messages:
                    return _json({"message": "Unknown Message", "code": 10008}, status=404)
                if m == "PATCH":
                    return _json(self._edit(mid, body, rec.files))
                if m == "GET":
                    return _json(self.messages[mid])
            if len(seg) == 5 and seg[4] == "threads" and m == "POST":
                mid = int(seg[3])
                thread = self.thread_payload(mid, cid, body.get("name", "thread"))
                self.channels[mid] = thread
                return _json(thread, status=201)
        return _json({"message": f"fake Discord has no route {m} {p}", "code": 0}, status=404)

    def _callback(self, token: str, body: dict[str, Any], files: tuple[RecordedFile, ...]) -> web.Response:
        type_ = int(body.get("type", 0))
        data = body.get("data") or {}
        interaction: dict[str, Any] = {"id": str(self.snowflake()), "type": 2}
        resource: dict[str, Any] = {"type": type_}
        if type_ in (4, 5):  # a new message (type 5: "thinking")
            channel_id = self._token_channel.get(token, self.channel_id)
            msg = self._bot_message(channel_id, data, files, flags=(128 if type_ == 5 else 0))
            self.original[token] = int(msg["id"])
            interaction.update(
                response_message_id=msg["id"],
                response_message_loading=type_ == 5,
                response_message_ephemeral=bool(int(data.get("flags") or 0) & 64),
            )
            resource["message"] = msg
        return _json({"interaction": interaction, "resource": resource})

    def application_payload(self) -> dict[str, Any]:
        return {
            "id": str(self.app_id),
            "name": self.bot_name,
            "description": "",
            "icon": None,
            "bot_public": True,
            "bot_require_code_grant": False,
            "owner": self.user_payload(SNOWFLAKE_BASE + 9, "owner"),
            "verify_key": "0" * 64,
            "flags": 0,
            "summary": "",
        }

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        """HELLO, then READY after IDENTIFY (no guilds: READY is immediate), ACK every heartbeat."""
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self._ws = ws
        await ws.send_json({"op": 10, "d": {"heartbeat_interval": 45000}})
        async for frame in ws:
            msg = json.loads(frame.data)
            if msg["op"] == 1:
                await ws.send_json({"op": 11})
            elif msg["op"] == 2:
                self.identify = msg["d"]
                await self.dispatch(
                    "READY",
                    {
                        "v": 10,
                        "user": self.bot_user_payload(),
                        "guilds": [],
                        "session_id": "fake-session",
                        "resume_gateway_url": f"ws://127.0.0.1:{self.port}/gateway",
                        "application": {"id": str(self.app_id), "flags": 0},
                    },
                )
                self.identified.set()
        return ws

    async def dispatch(self, event: str, data: dict[str, Any]) -> None:
        """Send a gateway DISPATCH (op 0) to the connected client."""
        assert self._ws is not None, "no client on the gateway"
        self._ws_seq += 1
        await self._ws.send_json({"op": 0, "t": event, "s": self._ws_seq, "d": data})

    async def _cdn(self, request: web.Request) -> web.StreamResponse:
        rec = Recorded("GET", request.path, dict(request.query), dict(request.headers), None)
        self.log.append(rec)
        async with self._new:
            self._new.notify_all()
        f = self.cdn.get(request.match_info["name"])
        if f is None:
            return web.Response(status=404)
        f.hits += 1
        if f.redirect_to:
            raise web.HTTPFound(f.redirect_to)
        if f.status != 200:
            return web.Response(status=f.status)
        resp = web.StreamResponse(status=200, headers={"Content-Type": f.content_type})
        resp.content_length = f.content_length if f.content_length is not None else len(f.data)
        if f.content_length is not None and f.content_length < len(f.data):
            resp.content_length = None  # a lying server streams more than it announced: chunked
            resp.enable_chunked_encoding()
        await resp.prepare(request)
        chunk = 1 << 16
        for i in range(0, len(f.data), chunk):
            await resp.write(f.data[i : i + chunk])
            if f.delay_s and i == 0:
                await asyncio.sleep(f.delay_s)
        await resp.write_eof()
        return resp
