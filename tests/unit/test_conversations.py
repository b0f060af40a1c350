"""Stored completions / responses store (SQLite and PostgreSQL), chunk folding, Responses translation (pure)."""

from __future__ import annotations

import json

import pytest

from server.api.stored_chat import Keeper
from server.conversations.chunks import fold_chunks
from server.conversations.errors import StoredCompletionNotFound, StoredResponseNotFound
from server.conversations.responses import (
    ResponseEvents,
    ResponseShell,
    ResponsesRequest,
    chat_payload,
    input_messages,
    listed_input_items,
    response_object,
)
from server.conversations.store import ConversationStore, StoredChat, StoredResponse
from server.errors import InvalidParam
from tests.conftest import StoreLocation


def chat(number: int, model: str = "m", **metadata: str) -> StoredChat:
    return StoredChat(
        id=f"chatcmpl-{number}",
        model=model,
        created=1000 + number,
        metadata=metadata,
        messages=[{"role": "user", "content": f"question {number}"}],
        completion={"id": f"chatcmpl-{number}", "object": "chat.completion", "model": model, "choices": []},
    )


@pytest.fixture
async def store(store_location: StoreLocation):
    """The store on a SQLite file and on PostgreSQL (where servers that share a database keep it)."""
    opened = ConversationStore(store_location("conversations.sqlite3"))
    await opened.open()
    yield opened
    await opened.close()


async def test_chats_page_filter_and_belong_to_their_owner(store) -> None:
    for number in range(5):
        await store.save_chat(
            "alice", chat(number, model="a" if number % 2 else "b", topic="even" if number % 2 == 0 else "odd")
        )
    await store.save_chat("bob", chat(9))
    first = await store.list_chats("alice", limit=2)
    assert [item.id for item in first.items] == ["chatcmpl-0", "chatcmpl-1"] and first.has_more
    rest = await store.list_chats("alice", after="chatcmpl-1", limit=10)
    assert [item.id for item in rest.items] == ["chatcmpl-2", "chatcmpl-3", "chatcmpl-4"] and not rest.has_more
    newest = await store.list_chats("alice", order="desc", limit=2)
    assert [item.id for item in newest.items] == ["chatcmpl-4", "chatcmpl-3"]
    assert [i.id for i in (await store.list_chats("alice", model="a")).items] == ["chatcmpl-1", "chatcmpl-3"]
    even = await store.list_chats("alice", metadata={"topic": "even"})
    assert [item.id for item in even.items] == ["chatcmpl-0", "chatcmpl-2", "chatcmpl-4"]
    assert (await store.list_chats("alice", metadata={"topic": "none"})).items == []
    assert [item.id for item in (await store.list_chats("bob")).items] == ["chatcmpl-9"]
    with pytest.raises(StoredCompletionNotFound):
        await store.get_chat("bob", "chatcmpl-0")
    with pytest.raises(StoredCompletionNotFound):
        await store.list_chats("bob", after="chatcmpl-0")


async def test_chat_metadata_update_and_delete(store) -> None:
    await store.save_chat("alice", chat(1, k="v"))
    updated = await store.update_chat_metadata("alice", "chatcmpl-1", {"k": "w", "x": "y"})
    assert updated.metadata == {"k": "w", "x": "y"}
    assert (await store.get_chat("alice", "chatcmpl-1")).messages == [{"role": "user", "content": "question 1"}]
    with pytest.raises(StoredCompletionNotFound):
        await store.update_chat_metadata("bob", "chatcmpl-1", {})
    with pytest.raises(StoredCompletionNotFound):
        await store.delete_chat("bob", "chatcmpl-1")
    await store.delete_chat("alice", "chatcmpl-1")
    with pytest.raises(StoredCompletionNotFound):
        await store.get_chat("alice", "chatcmpl-1")


async def test_responses_are_kept_per_owner(store) -> None:
    items = [{"id": "msg_1", "type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}]
    stored = StoredResponse("resp_1", 5, {"id": "resp_1"}, [{"role": "user", "content": "hi"}], items)
    await store.save_response("alice", stored)
    assert await store.get_response("alice", "resp_1") == stored
    with pytest.raises(StoredResponseNotFound) as raised:
        await store.get_response("bob", "resp_1", "previous_response_id")
    assert raised.value.param == "previous_response_id"
    await store.delete_response("alice", "resp_1")
    with pytest.raises(StoredResponseNotFound):
        await store.delete_response("alice", "resp_1")


def chunk(choices: list[dict], usage: dict | None = None) -> dict:
    return {
        "id": "c1",
        "object": "chat.completion.chunk",
        "created": 7,
        "model": "m",
        "system_fingerprint": "fp",
        "choices": choices,
        "usage": usage,
    }


STREAM = [
    chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}}]),
    chunk([{"index": 0, "delta": {"content": "Let me check."}}]),
    chunk(
        [
            {
                "index": 0,
                "delta": {
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city": '},
                        }
                    ]
                },
            }
        ]
    ),
    chunk([{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}}]),
    chunk([{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]),
    chunk([], {"prompt_tokens": 5, "completion_tokens": 9, "total_tokens": 14}),
]


def test_fold_chunks_gives_the_completion() -> None:
    completion = fold_chunks(STREAM)
    assert completion["id"] == "c1" and completion["object"] == "chat.completion"
    (choice,) = completion["choices"]
    assert choice["message"]["content"] == "Let me check." and choice["finish_reason"] == "tool_calls"
    assert choice["message"]["tool_calls"] == [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    ]
    assert completion["usage"]["total_tokens"] == 14


def request(**fields) -> ResponsesRequest:
    return ResponsesRequest.model_validate({"model": "m", "input": "hi", **fields}, strict=True)


WEATHER = {
    "type": "function",
    "name": "get_weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}


def test_input_items_become_chat_messages() -> None:
    items = [
        {
            "role": "user",
            "content": [{"type": "input_text", "text": "Weather in "}, {"type": "input_text", "text": "Paris?"}],
        },
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city": "Paris"}'},
        {"type": "function_call", "call_id": "call_2", "name": "get_weather", "arguments": '{"city": "Lyon"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "It is sunny."}]},
    ]
    messages = input_messages(items)
    assert messages[0] == {"role": "user", "content": "Weather in Paris?"}
    assert [call["id"] for call in messages[1]["tool_calls"]] == ["call_1", "call_2"] and messages[1]["content"] is None
    assert messages[2] == {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}
    assert messages[3] == {"role": "assistant", "content": "It is sunny."}
    for bad, param in [
        ([{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}], "input[0].content[0]"),
        ([{"type": "web_search_call"}], "input[0].type"),
        ([{"type": "function_call_output", "output": "x"}], "input[0].call_id"),
        ([{"role": "tool", "content": "x"}], "input[0].role"),
    ]:
        with pytest.raises(InvalidParam) as raised:
            input_messages(bad)
        assert raised.value.param == param


def test_chat_payload_maps_the_fields_and_passes_extensions_through() -> None:
    body = request(
        instructions="Be brief.",
        tools=[WEATHER],
        tool_choice={"type": "function", "name": "get_weather"},
        max_output_tokens=20,
        temperature=0.5,
        text={"format": {"type": "json_schema", "name": "answer", "schema": {"type": "object"}, "strict": True}},
        stream=True,
    )
    payload = {**body.model_dump(exclude_none=True), "nightly": ["group", "goal"], "guardrail_policy": "no swearing"}
    history = [{"role": "user", "content": "earlier"}, {"role": "assistant", "content": "reply"}]
    chat, conversation = chat_payload(body, payload, history)
    assert chat["messages"][0] == {"role": "system", "content": "Be brief."}
    assert chat["messages"][1:] == conversation == [*history, {"role": "user", "content": "hi"}]
    assert chat["tools"][0]["function"]["name"] == "get_weather"
    assert chat["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert chat["max_completion_tokens"] == 20 and chat["temperature"] == 0.5 and chat["stream"] is True
    assert chat["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "answer", "schema": {"type": "object"}, "strict": True},
    }
    assert chat["nightly"] == ["group", "goal"] and chat["guardrail_policy"] == "no swearing"
    assert "input" not in chat and "instructions" not in chat and "max_output_tokens" not in chat


def test_unsupported_responses_fields_are_refused() -> None:
    for fields, param in [
        ({"background": True}, "background"),
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "name": "other"}}, "tool_choice"),
        ({"include": ["message.output_text.logprobs"]}, "include"),
        ({"metadata": {"k": "v" * 600}}, "metadata"),
    ]:
        with pytest.raises(InvalidParam) as raised:
            request(**fields)
        assert raised.value.param == param


def test_unhonoured_responses_fields_are_dropped_unless_drop_params_is_false() -> None:
    fields = {"reasoning": {"effort": "low"}, "service_tier": "auto", "top_logprobs": 2}
    chat, _ = chat_payload(request(**fields), {"input": "hi", **fields}, [])
    assert not set(fields) & set(chat)
    with pytest.raises(InvalidParam) as raised:
        request(**fields, drop_params=False)
    assert raised.value.param == "reasoning, service_tier, top_logprobs"


def test_truncation_auto_fits_the_conversation_middle_out() -> None:
    chat, _ = chat_payload(request(truncation="auto"), {"input": "hi", "truncation": "auto"}, [])
    assert chat["transforms"] == ["middle-out"]
    chat, _ = chat_payload(request(truncation="disabled"), {"input": "hi", "truncation": "disabled"}, [])
    assert "transforms" not in chat


def test_response_object_from_a_completion() -> None:
    shell = ResponseShell("resp_1", request(max_output_tokens=5, metadata={"k": "v"}), created_at=9)
    completion = fold_chunks(STREAM)
    response, turn = response_object(shell, completion)
    assert response["id"] == "resp_1" and response["object"] == "response" and response["status"] == "completed"
    message, call = response["output"]
    assert message["type"] == "message" and message["content"][0] == {
        "type": "output_text",
        "text": "Let me check.",
        "annotations": [],
        "logprobs": [],
    }
    assert call["type"] == "function_call" and call["call_id"] == "call_1" and call["arguments"] == '{"city": "Paris"}'
    assert response["usage"]["input_tokens"] == 5 and response["usage"]["output_tokens"] == 9
    assert response["metadata"] == {"k": "v"} and response["max_output_tokens"] == 5
    assert turn["content"] == "Let me check." and turn["tool_calls"][0]["id"] == "call_1"
    cut = {
        **completion,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Par"}, "finish_reason": "length"}],
    }
    response, _ = response_object(shell, cut)
    assert response["status"] == "incomplete" and response["incomplete_details"] == {"reason": "max_output_tokens"}


def test_stream_events_follow_openais_order() -> None:
    events_of = ResponseEvents(ResponseShell("resp_1", request(), created_at=9))
    events = events_of.start("m")
    for item in STREAM:
        events += events_of.feed(item)
    events += events_of.finish()
    kinds = [event["type"] for event in events]
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [event["sequence_number"] for event in events] == list(range(len(events)))
    final = events[-1]["response"]
    assert final["status"] == "completed" and [item["type"] for item in final["output"]] == ["message", "function_call"]
    assert final["output"][1]["arguments"] == '{"city": "Paris"}' and final["usage"]["total_tokens"] == 14
    assert events[8]["output_index"] == 1 and events[5]["text"] == "Let me check."
    json.dumps(events)  # all plain JSON


def test_input_items_are_listed_back_typed_with_ids() -> None:
    (text,) = listed_input_items("hi")
    assert text["type"] == "message" and text["role"] == "user" and text["id"].startswith("msg_")
    assert text["content"] == [{"type": "input_text", "text": "hi"}] and text["status"] == "completed"
    call = {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"}
    output = {"type": "function_call_output", "call_id": "c1", "output": "ok"}
    listed = listed_input_items([{"role": "assistant", "content": "sure"}, call, output])
    assert listed[0]["content"] == [{"type": "output_text", "text": "sure"}]
    assert listed[1]["id"].startswith("fc_") and listed[1]["call_id"] == "c1"
    assert listed[2]["id"].startswith("fco_") and listed[2]["output"] == "ok"


def _chunk(content: str | None, finish: str | None = None) -> str:
    delta = {"role": "assistant", "content": content} if content is not None else {}
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return json.dumps(
        {"id": "chatcmpl-k", "object": "chat.completion.chunk", "created": 7, "model": "m", "choices": [choice]}
    )


async def _chunks(*items: str, fail: Exception | None = None):
    for item in items:
        yield item
    if fail is not None:
        raise fail


async def test_keeper_stores_a_whole_stream_folded_and_passes_it_through(store) -> None:
    keeper = Keeper(store, "owner-a", {"model": "m", "messages": [{"role": "user", "content": "hi"}], "metadata": {}})
    sent = [data async for data in keeper.streamed(_chunks(_chunk("Hel"), _chunk("lo"), _chunk(None, "stop")))]
    assert len(sent) == 3
    stored = await store.get_chat("owner-a", "chatcmpl-k")
    assert stored.completion["choices"][0]["message"]["content"] == "Hello"
    assert stored.messages == [{"role": "user", "content": "hi"}]


async def test_keeper_stores_nothing_when_the_stream_fails_midway(store) -> None:
    keeper = Keeper(store, "owner-a", {"model": "m", "messages": []})
    with pytest.raises(RuntimeError):
        async for _ in keeper.streamed(_chunks(_chunk("Hel"), fail=RuntimeError("engine died"))):
            pass
    with pytest.raises(StoredCompletionNotFound) as caught:
        await store.get_chat("owner-a", "chatcmpl-k")
    assert caught.value.status == 404 and caught.value.param == "completion_id"
