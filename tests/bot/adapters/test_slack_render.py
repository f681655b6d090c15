"""Block Kit rendering of replies (bot/adapters/slack/render.py): pure functions, exact blocks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bot.adapters.slack import render
from bot.service.contract import Action, ActionKind, MediaFile
from bot.service.replies import Reply, ReplyKind, TrackCard

ALL_ACTIONS = (ActionKind.USE, ActionKind.ANOTHER, ActionKind.REFINE, ActionKind.START_OVER)


def _card(**kw) -> TrackCard:
    base = dict(
        track_id="ab" * 32, catalog_id="c1", rank=1, title="Battle Epic", artist="Wesnoth <team>",
        mtt_tags=("orchestral", "epic"), msd_tags=("soundtrack", "epic"), tags=("battle",), score=0.8, search_score=0.7,
        parts={}, duration_s=125.4, licence="GPL-2.0+", tempo_bpm=128.2, reason="Big drums for a big chase.",
        reason_source="tag summary", excerpt=MediaFile(Path("/tmp/x.mp3"), "battle-epic.mp3", "audio/mpeg", 1000),
    )  # fmt: skip
    base.update(kw)
    return TrackCard(**base)


def _reply(tracks=None, **kw) -> Reply:
    tracks = (_card(),) if tracks is None else tracks
    base = dict(kind=ReplyKind.RECOMMENDATION, conversation_id=12, turn_index=3, mode="zero-shot", tracks=tracks,
                actions=ALL_ACTIONS)  # fmt: skip
    base.update(kw)
    return Reply(**base)


def test_card_has_title_artist_facts_reason_and_four_buttons() -> None:
    blocks = render.card_blocks(_reply())
    assert blocks[0] == {"type": "header", "text": {"type": "plain_text", "text": "🎵 Battle Epic"}}
    assert blocks[1]["text"]["text"] == "by *Wesnoth &lt;team&gt;*"
    assert [f["text"] for f in blocks[1]["fields"]] == [
        "*Tags*\norchestral, epic, soundtrack, battle",
        "*Tempo*\n128 BPM",
        "*Licence*\nGPL-2.0+",
        "*Length*\n2:05",
        "*Mode*\nzero-shot",
    ]
    assert blocks[2] == {"type": "section", "block_id": "reason", "text": {"type": "mrkdwn", "text": "Big drums for a big chase."}}
    assert blocks[3]["elements"][0]["text"] == "reason: tag summary"
    actions = blocks[-1]
    assert actions["type"] == "actions"
    assert [(b["action_id"], b["text"]["text"], b["value"]) for b in actions["elements"]] == [
        ("mc_use", "Use this", "mc1:use:12:3"),
        ("mc_another", "Another", "mc1:another:12:3"),
        ("mc_refine", "Refine…", "mc1:refine:12:3"),
        ("mc_restart", "Start over", "mc1:restart:12:3"),
    ]
    assert actions["elements"][0]["style"] == "primary"
    # every value parses back to the action it names: any process handles any click
    assert Action.parse(actions["elements"][1]["value"]) == Action(ActionKind.ANOTHER, 12, 3)
    json.dumps(blocks)  # JSON-serialisable as sent


@pytest.mark.parametrize(
    ("kw", "expected"),
    [
        ({"reason_pending": True}, render.PENDING_REASON),
        ({"reason_pending": True, "_partial": "Big drums"}, "Big drums …"),
        ({"reason_pending": True, "_streamed": True}, render.STREAMED_REASON),
    ],
    ids=["pending", "partial", "streamed"],
)
def test_reason_section_while_the_reason_is_written(kw: dict, expected: str) -> None:
    partial = kw.pop("_partial", "")
    streamed = kw.pop("_streamed", False)
    blocks = render.card_blocks(_reply(**kw), partial=partial, streamed=streamed)
    reason = next(b for b in blocks if b.get("block_id") == "reason")
    assert reason["text"]["text"] == expected


def test_words_not_understood_and_missing_from_the_catalog_are_said() -> None:
    reply = _reply(tracks=(_card(),), understood="more drums", unmatched=("asdf",), unavailable=("more opera",))
    texts = [e["text"] for b in render.card_blocks(reply) if b["type"] == "context" for e in b["elements"]]
    assert texts[-1] == "understood: more drums · not understood: asdf · nothing in the catalog for: more opera"


def test_filters_understood_and_missing_excerpt_are_shown() -> None:
    reply = _reply(
        tracks=(_card(excerpt=None, excerpt_note="excerpt unavailable", tempo_bpm=None),),
        understood="more drums", filters="licence CC-BY; under 2:00",
    )
    blocks = render.card_blocks(reply)
    texts = [e["text"] for b in blocks if b["type"] == "context" for e in b["elements"]]
    assert texts == ["reason: tag summary · excerpt unavailable", "understood: more drums · filters: licence CC-BY; under 2:00"]
    assert "*Tempo*\n—" in [f["text"] for f in blocks[1]["fields"]]


def test_exhausted_reply_shows_its_message_and_only_its_buttons() -> None:
    reply = _reply(tracks=(), kind=ReplyKind.EXHAUSTED, message="No track left under 1 minute.", actions=(ActionKind.START_OVER,))
    blocks = render.card_blocks(reply)
    assert blocks[0] == {"type": "section", "text": {"type": "mrkdwn", "text": "No track left under 1 minute."}}
    assert [b["value"] for b in blocks[-1]["elements"]] == ["mc1:restart:12:3"]
    assert render.card_text(reply) == "No track left under 1 minute."


def test_no_buttons_no_actions_block() -> None:
    assert all(b["type"] != "actions" for b in render.card_blocks(_reply(actions=())))


def test_long_text_is_cut_to_slack_limits() -> None:
    blocks = render.card_blocks(_reply(tracks=(_card(title="x" * 400, reason="y" * 5000),)))
    assert len(blocks[0]["text"]["text"]) == render.HEADER_MAX_CHARS
    assert len(blocks[2]["text"]["text"]) == render.SECTION_MAX_CHARS


def test_placeholder_shows_status_and_queue_position() -> None:
    text, blocks = render.placeholder("waiting for a model worker", ahead=2)
    assert text == "🎧 waiting for a model worker (2 ahead of you)"
    assert blocks == [{"type": "context", "elements": [{"type": "mrkdwn", "text": text}]}]


def test_refine_modal_round_trips_its_target() -> None:
    target = render.RefineTarget("mc1:refine:12:3", "C1", "1700000000.000100")
    view = render.refine_modal(target)
    assert view["callback_id"] == render.REFINE_VIEW
    assert render.RefineTarget.load(view["private_metadata"]) == target
    (block,) = view["blocks"]
    assert (block["block_id"], block["element"]["type"], block["element"]["action_id"]) == ("refine", "plain_text_input", "text")
    submitted = {"state": {"values": {"refine": {"text": {"type": "plain_text_input", "value": "more drums"}}}}}
    assert render.modal_value(submitted, render.REFINE_BLOCK, render.REFINE_INPUT)["value"] == "more drums"


def test_music_modal_has_a_file_input_and_a_text_box() -> None:
    view = render.music_modal(channel="C1", words="calm piano")
    video, words = view["blocks"]
    assert video["element"] == {"type": "file_input", "action_id": "file", "filetypes": list(render.VIDEO_FILETYPES), "max_files": 1}
    assert words["optional"] is True and words["element"]["initial_value"] == "calm piano"
    assert json.loads(view["private_metadata"]) == {"c": "C1"}


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ([{"id": "F1", "mimetype": "image/png", "filetype": "png"}, {"id": "F2", "mimetype": "video/mp4"}], "F2"),
        ([{"id": "F3", "mimetype": "application/octet-stream", "filetype": "mov"}], "F3"),
        ([{"id": "F4", "mimetype": "audio/mpeg", "filetype": "mp3"}], None),
        ([], None),
    ],
)
def test_first_video(files: list, expected: str | None) -> None:
    found = render.first_video(files)
    assert (found or {}).get("id") == expected


def test_mention_free() -> None:
    assert render.mention_free("<@U0BOT>  more   drums", "U0BOT") == "more drums"


def test_the_manifest_in_the_readme_names_what_the_adapter_listens_to() -> None:
    """bot/adapters/slack/manifest.yaml: the shortcut's callback id and the slash commands the adapter registers."""
    from pathlib import Path

    import yaml

    import bot.adapters.slack.adapter as adapter_mod
    from bot.adapters.slack import render as render_mod

    manifest = yaml.safe_load((Path(adapter_mod.__file__).with_name("manifest.yaml")).read_text())
    source = Path(adapter_mod.__file__).read_text()
    commands = [c["command"] for c in manifest["features"]["slash_commands"]]
    assert commands == ["/music", "/music-admin"] and all(f'"{c}"' in source for c in commands)
    (shortcut,) = manifest["features"]["shortcuts"]
    assert shortcut["type"] == "message" and shortcut["callback_id"] == render_mod.SHORTCUT_CALLBACK
    scopes = set(manifest["oauth_config"]["scopes"]["bot"])
    assert {"files:read", "files:write", "chat:write", "commands"} <= scopes
