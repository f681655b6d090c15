"""The fake Slack API against the real slack_sdk and slack-bolt: the wire the Slack adapter stands on.

No adapter code here: these tests pin what the libraries send (argument encodings, the three calls
of files_upload_v2, the streaming methods, Socket Mode acks) and what bolt does with signed, badly
signed and stale requests, so the adapter's tests can trust the fake.
"""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest
from aiohttp import web
from slack_bolt.async_app import AsyncApp
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from tests.helpers.fake_slack import (
    APP_TOKEN,
    BOT_TOKEN,
    BOT_USER_ID,
    SIGNING_SECRET,
    TEAM_ID,
    FakeSlack,
    event_body,
    interactive_body,
    signed_headers,
)


@pytest.fixture
async def fake():
    async with FakeSlack() as server:
        yield server


@pytest.fixture
async def client(fake: FakeSlack):
    web_client = AsyncWebClient(token=BOT_TOKEN, base_url=fake.api_url)
    yield web_client


def _app(client: AsyncWebClient) -> AsyncApp:
    return AsyncApp(client=client, signing_secret=SIGNING_SECRET)


# --- the Web API: argument encodings ---------------------------------------------------------------


async def test_arguments_arrive_as_json_query_and_form(fake: FakeSlack, client: AsyncWebClient) -> None:
    """chat.postMessage sends JSON, auth.test the query string, api_call(data=) a form; all merge."""
    await client.chat_postMessage(channel="C1", text="hello", thread_ts="1.2")
    post = await fake.expect("chat.postMessage")
    assert (post.body_kind, post.args) == ("json", {"channel": "C1", "text": "hello", "thread_ts": "1.2"})
    assert post.headers["Authorization"] == f"Bearer {BOT_TOKEN}"

    auth = await client.auth_test()
    assert (auth["user_id"], auth["team_id"]) == (BOT_USER_ID, TEAM_ID)
    assert (await fake.expect("auth.test")).body_kind == "query"

    await client.api_call("chat.postEphemeral", data={"channel": "C1", "user": "U1", "text": "psst"})
    eph = await fake.expect("chat.postEphemeral")
    assert (eph.body_kind, eph.args) == ("form", {"channel": "C1", "user": "U1", "text": "psst"})

    info = await client.files_info(file="F1")
    assert (await fake.expect("files.info")).http_method == "GET"
    assert info["ok"] is True


async def test_errors_and_bad_tokens_raise_slack_api_error(fake: FakeSlack, client: AsyncWebClient) -> None:
    fake.fail("chat.update", "message_not_found")
    with pytest.raises(SlackApiError) as err:
        await client.chat_update(channel="C1", ts="1.1", text="x")
    assert err.value.response["error"] == "message_not_found"
    bad = AsyncWebClient(token="xoxb-wrong", base_url=fake.api_url)
    with pytest.raises(SlackApiError) as err:
        await bad.chat_postMessage(channel="C1", text="x")
    assert err.value.response["error"] == "invalid_auth"


async def test_files_upload_v2_into_a_thread_makes_three_calls_and_the_bytes_land(
    fake: FakeSlack, client: AsyncWebClient
) -> None:
    data = bytes(range(256)) * 40
    resp = await client.files_upload_v2(
        content=data, filename="excerpt.mp3", title="Excerpt", channel="C1", thread_ts="1700000001.000001"
    )
    step1 = await fake.expect("files.getUploadURLExternal")
    assert step1.args["filename"] == "excerpt.mp3" and int(step1.args["length"]) == len(data)
    step2 = await fake.expect("upload")
    assert step2.body == data
    step3 = await fake.expect("files.completeUploadExternal")
    assert step3.args["channel_id"] == "C1" and step3.args["thread_ts"] == "1700000001.000001"
    (shared,) = step3.json_arg("files")
    assert shared["title"] == "Excerpt"
    assert [r.method for r in fake.requests] == ["files.getUploadURLExternal", "upload", "files.completeUploadExternal"]
    upload = fake.uploads[shared["id"]]
    assert (upload.data, upload.thread_ts, upload.channel_id) == (data, "1700000001.000001", "C1")
    assert resp["file"]["id"] == shared["id"]


async def test_chat_stream_starts_appends_and_stops(fake: FakeSlack, client: AsyncWebClient) -> None:
    stream = await client.chat_stream(
        channel="C1", thread_ts="1.1", recipient_team_id=TEAM_ID, recipient_user_id="U1", buffer_size=8
    )
    await stream.append(markdown_text="Strings ")  # 8 chars: flushes -> startStream
    await stream.append(markdown_text="and ")  # buffered
    await stream.stop(markdown_text="drums.")
    start = await fake.expect("chat.startStream")
    assert start.args["thread_ts"] == "1.1" and start.args["recipient_user_id"] == "U1"
    stop = await fake.expect("chat.stopStream")
    assert stop.args["ts"] == stream.ts and stop.args["channel"] == "C1"
    assert fake.messages[("C1", stream.ts)]["text"] == "Strings and drums."
    assert fake.messages[("C1", stream.ts)]["thread_ts"] == "1.1"


# --- bolt: signed requests through async_dispatch --------------------------------------------------


async def test_signed_event_dispatch_runs_the_listener(fake: FakeSlack, client: AsyncWebClient) -> None:
    app = _app(client)
    seen: asyncio.Queue = asyncio.Queue()

    @app.event("app_mention")
    async def mention(event, say):
        await say(text="heard you", thread_ts=event["ts"])
        seen.put_nowait(event["text"])

    body = event_body({"type": "app_mention", "user": "U1", "text": "<@U0BOT> hi", "ts": "1.5", "channel": "C1"})
    resp = await app.async_dispatch(AsyncBoltRequest(body=body, headers=signed_headers(body)))
    assert resp.status == 200
    assert await asyncio.wait_for(seen.get(), 5) == "<@U0BOT> hi"
    post = await fake.expect("chat.postMessage")
    assert post.args == {"channel": "C1", "text": "heard you", "thread_ts": "1.5", "team_id": TEAM_ID}


async def test_block_action_acks_and_the_listener_sees_the_value(fake: FakeSlack, client: AsyncWebClient) -> None:
    app = _app(client)
    values: asyncio.Queue = asyncio.Queue()

    @app.action("mc_use")
    async def use(ack, action):
        await ack()
        values.put_nowait(action["value"])

    payload = {
        "type": "block_actions", "user": {"id": "U1"}, "team": {"id": TEAM_ID}, "api_app_id": "A0APP",
        "container": {"type": "message", "channel_id": "C1", "message_ts": "1.9"}, "channel": {"id": "C1"},
        "trigger_id": "t.1", "actions": [{"action_id": "mc_use", "block_id": "b", "type": "button", "value": "mc1:use:1:1"}],
    }  # fmt: skip
    body = interactive_body(payload)
    resp = await app.async_dispatch(
        AsyncBoltRequest(body=body, headers=signed_headers(body, content_type="application/x-www-form-urlencoded"))
    )
    assert resp.status == 200
    assert await asyncio.wait_for(values.get(), 5) == "mc1:use:1:1"


# --- bolt: the HTTP-mode web app on 127.0.0.1 ------------------------------------------------------


@pytest.fixture
async def served_app(fake: FakeSlack, client: AsyncWebClient):
    app = _app(client)
    heard: list[str] = []

    @app.event("app_mention")
    async def mention(event, say):
        heard.append(event["text"])
        await say(text="ok", thread_ts=event["ts"])

    runner = web.AppRunner(app.web_app(path="/slack/events"))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    async with aiohttp.ClientSession() as session:
        yield session, f"http://127.0.0.1:{port}/slack/events", heard
    await runner.cleanup()


MENTION = {"type": "app_mention", "user": "U1", "text": "<@U0BOT> hi", "ts": "1.5", "channel": "C1"}


async def test_http_mode_url_verification_answers_the_challenge(served_app) -> None:
    session, url, _ = served_app
    body = json.dumps({"token": "t", "challenge": "c-123", "type": "url_verification"})
    async with session.post(url, data=body, headers=signed_headers(body)) as resp:
        assert resp.status == 200
        assert (await resp.json())["challenge"] == "c-123"


@pytest.mark.parametrize(
    "case",
    ["bad_signature", "stale_timestamp", "unsigned"],
)
async def test_http_mode_rejects_bad_and_stale_signatures_and_does_nothing(
    served_app, fake: FakeSlack, case: str
) -> None:
    session, url, heard = served_app
    body = event_body(MENTION)
    if case == "bad_signature":
        headers = signed_headers(body, secret="not-the-secret")
    elif case == "stale_timestamp":
        headers = signed_headers(body, timestamp=int(time.time()) - 6 * 60)  # validly signed, 6 minutes old
    else:
        headers = {"content-type": "application/json"}
    async with session.post(url, data=body, headers=headers) as resp:
        assert resp.status == 401
    await asyncio.sleep(0.2)
    assert heard == []
    assert fake.calls("chat.postMessage") == []


async def test_http_mode_valid_signature_runs_the_listener(served_app, fake: FakeSlack) -> None:
    session, url, heard = served_app
    body = event_body(MENTION)
    async with session.post(url, data=body, headers=signed_headers(body)) as resp:
        assert resp.status == 200
    post = await fake.expect("chat.postMessage")
    assert post.args["thread_ts"] == "1.5"
    assert heard == ["<@U0BOT> hi"]


# --- Socket Mode against the fake websocket --------------------------------------------------------


async def test_socket_mode_connects_receives_an_envelope_and_acks_it(fake: FakeSlack, client: AsyncWebClient) -> None:
    from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler

    app = _app(client)
    retries: asyncio.Queue = asyncio.Queue()

    @app.event("app_mention")
    async def mention(event, say, context, request):
        retries.put_nowait(request.headers.get("x-slack-retry-num"))
        await say(text="socket ok", thread_ts=event["ts"])

    handler = AsyncSocketModeHandler(app, APP_TOKEN)
    try:
        await handler.connect_async()
        opened = await fake.expect("apps.connections.open")
        assert opened.headers["Authorization"] == f"Bearer {APP_TOKEN}"
        await fake.wait_socket()
        envelope = {
            "envelope_id": "env-1", "type": "events_api", "accepts_response_payload": False,
            "retry_attempt": 1, "retry_reason": "timeout", "payload": json.loads(event_body(MENTION)),
        }  # fmt: skip
        await fake.push(envelope)
        assert (await fake.expect_socket_ack("env-1"))["envelope_id"] == "env-1"
        assert (await fake.expect("chat.postMessage")).args["text"] == "socket ok"
        assert await asyncio.wait_for(retries.get(), 5) == ["1"]
    finally:
        await handler.close_async()
