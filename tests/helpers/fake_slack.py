"""A local fake of Slack's Web API, its file host and its Socket Mode websocket (aiohttp, 127.0.0.1).

The real slack_sdk / slack-bolt code talks HTTP to it: `AsyncWebClient(token=..., base_url=fake.api_url)`
(research/platforms.md §2.11). What it serves:

- `POST|GET /api/<method>`: arguments merged from the query string, a form body and a JSON body, as
  the real API accepts all three; every call is recorded (`SlackCall`) and answered `{"ok": true, ...}`
  (or an injected error: `fail(method, ...)`, a 429 with `Retry-After`: `rate_limit(method)`);
- `files.getUploadURLExternal` hands out `upload_url = <fake>/upload/<file_id>`; `POST /upload/<id>`
  stores the raw bytes; `files.completeUploadExternal` shares them (`uploads[file_id]`);
- chat messages are kept (`messages[(channel, ts)]`), edited by `chat.update`, streams by
  `chat.startStream` / `appendStream` / `stopStream`;
- `GET /files-pri/<id>/<name>`: a user's private file, served only with `Authorization: Bearer <bot
  token>` (else Slack's HTML login page), in the variants the downloader must survive (`add_file`);
- `GET /link`: the Socket Mode websocket (`apps.connections.open` answers its URL); `push(envelope)`
  sends an envelope to the connected app, `expect_socket_ack(envelope_id)` waits for its ack.

Tests wait for calls with `await fake.expect("chat.postMessage")` (the next unconsumed call of that
method, in order) and read everything with `fake.calls(method)`.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

BOT_TOKEN = "xoxb-test"
APP_TOKEN = "xapp-test"
TEAM_ID = "T0TEAM"
BOT_USER_ID = "U0BOT"
BOT_ID = "B0BOT"
LOGIN_PAGE = b"<!DOCTYPE html><html><head><title>Slack</title></head><body>Sign in to Slack</body></html>"


@dataclass
class SlackCall:
    """One request the fake received."""

    method: str  # API method ("chat.postMessage"), or "upload" / "files-pri" for the raw routes
    args: dict[str, Any]  # query + form + JSON, merged
    headers: Mapping[str, str]
    http_method: str = "POST"
    body_kind: str = "query"  # "json" | "form" | "query" | "bytes"
    body: bytes = b""

    def json_arg(self, name: str) -> Any:
        """An argument the SDK sends as a JSON string (files.completeUploadExternal's `files`)."""
        value = self.args[name]
        return json.loads(value) if isinstance(value, str) else value


@dataclass
class PrivateFile:
    """A file a user shared, as the event shows it, and how the file host behaves for it."""

    id: str
    name: str
    mimetype: str
    content: bytes
    announced_size: int  # `size` in the event / files.info
    behaviour: str = "ok"  # ok | login (HTML page even with the token) | redirect | no-length
    url_private_download: str = ""
    served: int = 0  # times the bytes were served

    def as_event_file(self) -> dict[str, Any]:
        filetype = self.name.rsplit(".", 1)[-1].lower() if "." in self.name else "binary"
        return {
            "id": self.id,
            "name": self.name,
            "title": self.name,
            "mimetype": self.mimetype,
            "filetype": filetype,
            "size": self.announced_size,
            "mode": "hosted",
            "url_private": self.url_private_download,
            "url_private_download": self.url_private_download,
        }


@dataclass
class Upload:
    file_id: str
    filename: str
    length: int
    data: bytes | None = None
    title: str = ""
    channel_id: str = ""
    thread_ts: str = ""
    initial_comment: str = ""


@dataclass
class _Failure:
    error: str
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    times: int = 1


class FakeSlack:
    """The fake server (module docstring). Use as `async with FakeSlack() as fake:`."""

    def __init__(self, *, bot_token: str = BOT_TOKEN, app_token: str = APP_TOKEN) -> None:
        self.bot_token = bot_token
        self.app_token = app_token
        self.requests: list[SlackCall] = []
        self.messages: dict[tuple[str, str], dict[str, Any]] = {}
        self.uploads: dict[str, Upload] = {}
        self.files: dict[str, PrivateFile] = {}
        self.views: list[dict[str, Any]] = []
        self.socket_acks: list[dict[str, Any]] = []
        self._consumed: set[int] = set()
        self._changed = asyncio.Condition()
        self._failures: dict[str, list[_Failure]] = {}
        self._ts = itertools.count(1)
        self._ids = itertools.count(1)
        self._ws: list[web.WebSocketResponse] = []
        self._runner: web.AppRunner | None = None
        self.port = 0

    # --- lifecycle ------------------------------------------------------------------------------

    async def __aenter__(self) -> FakeSlack:
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/api/{method}", self._api)
        app.router.add_post("/upload/{file_id}", self._upload)
        app.router.add_get("/files-pri/{file_id}/{name}", self._private_file)
        app.router.add_get("/elsewhere/{name}", self._elsewhere)
        app.router.add_get("/link", self._socket)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for ws in list(self._ws):
            await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.url}/api/"

    @property
    def host(self) -> str:
        return "127.0.0.1"

    # --- test controls --------------------------------------------------------------------------

    def fail(self, method: str, error: str = "internal_error", *, status: int = 200, times: int = 1) -> None:
        """The next `times` calls of `method` answer `{"ok": false, "error": error}`."""
        self._failures.setdefault(method, []).append(_Failure(error, status, times=times))

    def rate_limit(self, method: str, *, retry_after_s: int = 1, times: int = 1) -> None:
        """The next `times` calls of `method` answer 429 with Retry-After."""
        self._failures.setdefault(method, []).append(
            _Failure("ratelimited", 429, {"Retry-After": str(retry_after_s)}, times=times)
        )

    def add_file(
        self,
        content: bytes,
        name: str = "clip.mp4",
        mimetype: str = "video/mp4",
        *,
        announced_size: int | None = None,
        behaviour: str = "ok",
    ) -> PrivateFile:
        """Register a user's private file; returns it (`.as_event_file()` is the event's `files[]` entry)."""
        file_id = f"F{next(self._ids):07d}"
        f = PrivateFile(
            id=file_id, name=name, mimetype=mimetype, content=content,
            announced_size=len(content) if announced_size is None else announced_size, behaviour=behaviour,
        )  # fmt: skip
        f.url_private_download = f"{self.url}/files-pri/{TEAM_ID}-{file_id}/{name}"
        self.files[file_id] = f
        return f

    def calls(self, method: str | None = None) -> list[SlackCall]:
        return [r for r in self.requests if method is None or r.method == method]

    async def expect(self, method: str, timeout: float = 5.0) -> SlackCall:
        """The next call of `method` not yet returned by `expect`, waiting up to `timeout` seconds."""

        def peek() -> int | None:
            for i, r in enumerate(self.requests):
                if r.method == method and i not in self._consumed:
                    return i
            return None

        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(lambda: peek() is not None), timeout)
            except TimeoutError:
                seen = ", ".join(r.method for r in self.requests) or "nothing"
                raise AssertionError(f"no {method} call within {timeout}s (received: {seen})") from None
            i = peek()
            assert i is not None
            self._consumed.add(i)
            return self.requests[i]

    async def expect_none(self, method: str, within: float = 0.3) -> None:
        """Assert no unconsumed call of `method` arrives within `within` seconds."""
        try:
            call = await self.expect(method, timeout=within)
        except AssertionError:
            return
        raise AssertionError(f"unexpected {method}: {call.args}")

    def thread_messages(self, channel: str, thread_ts: str) -> list[dict[str, Any]]:
        """Messages the bot posted in a thread, oldest first (its parent excluded)."""
        return [
            m for (ch, ts), m in sorted(self.messages.items(), key=lambda kv: float(kv[0][1]))
            if ch == channel and m.get("thread_ts") == thread_ts
        ]  # fmt: skip

    # --- socket mode ----------------------------------------------------------------------------

    async def wait_socket(self, timeout: float = 5.0) -> None:
        """Wait until the app has opened the websocket."""
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: bool(self._ws)), timeout)

    async def push(self, envelope: dict[str, Any]) -> None:
        """Send a Socket Mode envelope ({"envelope_id", "type", "payload", ...}) to every connected app."""
        for ws in list(self._ws):
            await ws.send_str(json.dumps(envelope))

    async def expect_socket_ack(self, envelope_id: str, timeout: float = 5.0) -> dict[str, Any]:
        async with self._changed:
            await asyncio.wait_for(
                self._changed.wait_for(lambda: any(a.get("envelope_id") == envelope_id for a in self.socket_acks)),
                timeout,
            )
        return next(a for a in self.socket_acks if a.get("envelope_id") == envelope_id)

    # --- handlers -------------------------------------------------------------------------------

    async def _record(self, call: SlackCall) -> None:
        async with self._changed:
            self.requests.append(call)
            self._changed.notify_all()

    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        args: dict[str, Any] = dict(request.query)
        kind = "query"
        body = await request.read()
        ctype = request.content_type
        if body and ctype == "application/json":
            args.update(json.loads(body))
            kind = "json"
        elif body and ctype in ("application/x-www-form-urlencoded", "multipart/form-data"):
            args.update({k: v for k, v in (await request.post()).items() if isinstance(v, str)})
            kind = "form"
        call = SlackCall(method, args, dict(request.headers), request.method, kind, body)
        await self._record(call)
        auth = request.headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else args.get("token", "")
        if token not in (self.bot_token, self.app_token):
            return web.json_response({"ok": False, "error": "not_authed" if not token else "invalid_auth"})
        failures = self._failures.get(method)
        if failures:
            failure = failures[0]
            failure.times -= 1
            if failure.times <= 0:
                failures.pop(0)
            return web.json_response({"ok": False, "error": failure.error}, status=failure.status, headers=failure.headers)
        handler = getattr(self, "_m_" + method.replace(".", "_"), None)
        data = handler(args) if handler is not None else {}
        return web.json_response({"ok": True, **data})

    def _next_ts(self) -> str:
        n = next(self._ts)
        return f"{1_700_000_000 + n}.{n:06d}"

    # the methods (args -> extra response fields)

    def _m_auth_test(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"url": "https://musechat-test.slack.com/", "team": "Test", "user": "musechat",
                "team_id": TEAM_ID, "user_id": BOT_USER_ID, "bot_id": BOT_ID, "is_enterprise_install": False}  # fmt: skip

    def _m_apps_connections_open(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"url": f"ws://127.0.0.1:{self.port}/link"}

    def _post(self, args: dict[str, Any], **extra: Any) -> dict[str, Any]:
        ts = self._next_ts()
        channel = str(args.get("channel", ""))
        message = {"ts": ts, "text": args.get("text", ""), "blocks": _blocks(args.get("blocks")),
                   "thread_ts": args.get("thread_ts"), "user": BOT_USER_ID, "bot_id": BOT_ID, **extra}  # fmt: skip
        self.messages[(channel, ts)] = message
        return {"channel": channel, "ts": ts, "message": message}

    def _m_chat_postMessage(self, args: dict[str, Any]) -> dict[str, Any]:
        return self._post(args)

    def _m_chat_postEphemeral(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"message_ts": self._next_ts()}

    def _m_chat_update(self, args: dict[str, Any]) -> dict[str, Any]:
        channel, ts = str(args.get("channel", "")), str(args.get("ts", ""))
        message = self.messages.setdefault((channel, ts), {"ts": ts})
        if "text" in args:
            message["text"] = args["text"]
        if "blocks" in args:
            message["blocks"] = _blocks(args["blocks"])
        message["edits"] = message.get("edits", 0) + 1
        return {"channel": channel, "ts": ts, "text": message.get("text", "")}

    def _m_chat_delete(self, args: dict[str, Any]) -> dict[str, Any]:
        self.messages.pop((str(args.get("channel", "")), str(args.get("ts", ""))), None)
        return {"channel": args.get("channel"), "ts": args.get("ts")}

    def _m_chat_startStream(self, args: dict[str, Any]) -> dict[str, Any]:
        out = self._post({**args, "text": _chunk_text(args)}, streaming=True)
        return {"channel": out["channel"], "ts": out["ts"]}

    def _m_chat_appendStream(self, args: dict[str, Any]) -> dict[str, Any]:
        message = self.messages[(str(args["channel"]), str(args["ts"]))]
        message["text"] = message.get("text", "") + _chunk_text(args)
        return {"channel": args["channel"], "ts": args["ts"]}

    def _m_chat_stopStream(self, args: dict[str, Any]) -> dict[str, Any]:
        message = self.messages[(str(args["channel"]), str(args["ts"]))]
        message["text"] = message.get("text", "") + _chunk_text(args)
        if args.get("blocks"):
            message["blocks"] = _blocks(args["blocks"])
        message["streaming"] = False
        return {"channel": args["channel"], "ts": args["ts"], "message": message}

    def _m_views_open(self, args: dict[str, Any]) -> dict[str, Any]:
        view = json.loads(args["view"]) if isinstance(args.get("view"), str) else dict(args.get("view") or {})
        view["id"] = f"V{next(self._ids):07d}"
        self.views.append(view)
        return {"view": view}

    def _m_views_update(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"view": args.get("view")}

    def _m_files_info(self, args: dict[str, Any]) -> dict[str, Any]:
        f = self.files.get(str(args.get("file", "")))
        if f is None:
            return {"file": {}}
        return {"file": f.as_event_file()}

    def _m_files_getUploadURLExternal(self, args: dict[str, Any]) -> dict[str, Any]:
        file_id = f"F{next(self._ids):07d}"
        self.uploads[file_id] = Upload(file_id, str(args.get("filename", "")), int(args.get("length", 0)))
        return {"upload_url": f"{self.url}/upload/{file_id}", "file_id": file_id}

    def _m_files_completeUploadExternal(self, args: dict[str, Any]) -> dict[str, Any]:
        files = json.loads(args["files"]) if isinstance(args.get("files"), str) else list(args.get("files") or [])
        out = []
        for f in files:
            up = self.uploads[f["id"]]
            up.title = f.get("title") or up.filename
            up.channel_id = str(args.get("channel_id") or args.get("channels") or "")
            up.thread_ts = str(args.get("thread_ts") or "")
            up.initial_comment = str(args.get("initial_comment") or "")
            out.append({"id": up.file_id, "title": up.title, "name": up.filename})
        return {"files": out}

    async def _upload(self, request: web.Request) -> web.Response:
        file_id = request.match_info["file_id"]
        data = await request.read()
        await self._record(SlackCall("upload", {"file_id": file_id}, dict(request.headers), "POST", "bytes", data))
        up = self.uploads.get(file_id)
        if up is None:
            return web.Response(status=404, text="no such upload")
        up.data = data
        return web.Response(text=f"OK - {len(data)}")

    async def _private_file(self, request: web.Request) -> web.StreamResponse:
        file_id = request.match_info["file_id"].rsplit("-", 1)[-1]
        await self._record(SlackCall("files-pri", {"file_id": file_id}, dict(request.headers), "GET", "query"))
        f = self.files.get(file_id)
        if f is None:
            return web.Response(status=404)
        if request.headers.get("Authorization") != f"Bearer {self.bot_token}" or f.behaviour == "login":
            return web.Response(body=LOGIN_PAGE, content_type="text/html")
        if f.behaviour == "redirect":
            raise web.HTTPFound(f"http://localhost:{self.port}/elsewhere/{f.name}")
        f.served += 1
        if f.behaviour == "no-length":  # chunked: the size is only known by counting
            resp = web.StreamResponse(headers={"Content-Type": f.mimetype})
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            for i in range(0, len(f.content), 1 << 16):
                await resp.write(f.content[i : i + (1 << 16)])
            await resp.write_eof()
            return resp
        return web.Response(body=f.content, content_type=f.mimetype)

    async def _elsewhere(self, request: web.Request) -> web.Response:
        await self._record(SlackCall("elsewhere", {}, dict(request.headers), "GET", "query"))
        return web.Response(body=b"not the file")

    async def _socket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async with self._changed:
            self._ws.append(ws)
            self._changed.notify_all()
        await ws.send_str(json.dumps({"type": "hello", "num_connections": len(self._ws)}))
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    async with self._changed:
                        self.socket_acks.append(json.loads(msg.data))
                        self._changed.notify_all()
        finally:
            async with self._changed:
                self._ws.remove(ws)
        return ws


def _blocks(value: Any) -> list[dict[str, Any]]:
    if value is None:
        return []
    return json.loads(value) if isinstance(value, str) else list(value)


def _chunk_text(args: dict[str, Any]) -> str:
    text = str(args.get("markdown_text") or "")
    chunks = args.get("chunks")
    if isinstance(chunks, str):
        chunks = json.loads(chunks)
    for c in chunks or []:
        if c.get("type") == "markdown_text":
            text += c.get("text", "")
    return text


# =================================================================================================
# signed requests, as Slack sends them in HTTP mode (bolt's own scenario tests build them this way)
# =================================================================================================

SIGNING_SECRET = "test-signing-secret"


def signed_headers(body: str, *, secret: str = SIGNING_SECRET, timestamp: int | None = None,
                   content_type: str = "application/json") -> dict[str, str]:  # fmt: skip
    """Headers of a request signed with slack_sdk's own SignatureVerifier."""
    import time

    from slack_sdk.signature import SignatureVerifier

    ts = str(int(time.time()) if timestamp is None else timestamp)
    return {
        "content-type": content_type,
        "x-slack-request-timestamp": ts,
        "x-slack-signature": SignatureVerifier(secret).generate_signature(timestamp=ts, body=body),
    }


def event_body(event: dict[str, Any], *, event_id: str = "Ev0001", team_id: str = TEAM_ID) -> str:
    """An Events API `event_callback` body (JSON)."""
    return json.dumps({
        "token": "verification-token", "team_id": team_id, "api_app_id": "A0APP", "type": "event_callback",
        "event": event, "event_id": event_id, "event_time": 1_700_000_000,
        "authorizations": [{"enterprise_id": None, "team_id": team_id, "user_id": BOT_USER_ID, "is_bot": True}],
    })  # fmt: skip


def interactive_body(payload: dict[str, Any]) -> str:
    """An interactivity body (form-encoded `payload=<json>`)."""
    from urllib.parse import quote

    return "payload=" + quote(json.dumps(payload))


def command_body(command: str, text: str = "", **fields: str) -> str:
    """A slash-command body (form-encoded)."""
    from urllib.parse import urlencode

    base = {"command": command, "text": text, "team_id": TEAM_ID, "channel_id": "C0CHAN", "user_id": "U0USER",
            "user_name": "ed", "trigger_id": "1337.42.trigger", "response_url": "http://127.0.0.1:9/unused"}  # fmt: skip
    return urlencode({**base, **fields})
