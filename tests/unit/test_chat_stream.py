"""Engine deltas -> OpenAI chunks and completions (pure translation, no engine)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import replace

from server.api.chat_stream import CompletionIdentity, collect_completion, finish_reason_of, stream_chunks
from server.engine import CompletionDelta, TokenLogprob, ToolCallChunk, TopLogprob

IDENTITY = CompletionIdentity(id="chatcmpl-1", model="m", system_fingerprint="fp", prompt_tokens=7, created=123)


async def deltas(*items: CompletionDelta) -> AsyncIterator[CompletionDelta]:
    for item in items:
        yield item


def story() -> AsyncIterator[CompletionDelta]:
    """Three tokens; the engine reports 4 of the 7 prompt tokens cached once prefill is done."""
    return deltas(
        CompletionDelta(0, "Hel", 1, None, cached_tokens=4),
        CompletionDelta(0, "lo", 1, None, cached_tokens=4),
        CompletionDelta(0, "", 1, "length", cached_tokens=4),
    )


async def chunks_of(source: AsyncIterator[CompletionDelta], identity=IDENTITY, include_usage=False) -> list[dict]:
    return [json.loads(c) async for c in stream_chunks(source, identity, include_usage=include_usage)]


async def test_chunks_role_then_content_then_finish() -> None:
    chunks = await chunks_of(story())
    assert [c["choices"][0]["delta"] for c in chunks] == [
        {"role": "assistant", "content": ""},
        {"content": "Hel"},
        {"content": "lo"},
        {},
    ]
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, None, None, "length"]
    assert all(c["id"] == "chatcmpl-1" and c["created"] == 123 and "usage" not in c for c in chunks)


async def test_usage_chunk_closes_the_stream_when_asked() -> None:
    chunks = await chunks_of(story(), include_usage=True)
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {
        "prompt_tokens": 7,
        "completion_tokens": 3,
        "total_tokens": 10,
        "prompt_tokens_details": {"cached_tokens": 4},
    }
    assert all(c["usage"] is None for c in chunks[:-1])


async def test_collect_completion_joins_text_and_counts_tokens() -> None:
    completion = await collect_completion(story(), IDENTITY)
    assert completion.choices[0].message.content == "Hello"
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage.total_tokens == 10
    assert completion.usage.prompt_tokens_details.cached_tokens == 4
    assert completion.object == "chat.completion"
    assert "tool_calls" not in completion.model_dump()["choices"][0]["message"]


def two_choices() -> AsyncIterator[CompletionDelta]:
    return deltas(
        CompletionDelta(1, "B", 1, None),
        CompletionDelta(0, "A", 1, None),
        CompletionDelta(1, "b", 1, "stop"),
        CompletionDelta(0, "a", 1, "length"),
    )


async def test_n_choices_each_get_role_content_and_finish() -> None:
    identity = replace(IDENTITY, n=2)
    chunks = await chunks_of(two_choices(), identity)
    by_index: dict[int, list[dict]] = {0: [], 1: []}
    for chunk in chunks:
        (choice,) = chunk["choices"]
        by_index[choice["index"]].append(choice)
    for index, text, reason in ((0, "Aa", "length"), (1, "Bb", "stop")):
        choices = by_index[index]
        assert choices[0]["delta"] == {"role": "assistant", "content": ""}
        assert "".join(c["delta"].get("content") or "" for c in choices) == text
        assert [c["finish_reason"] for c in choices if c["finish_reason"]] == [reason]
        assert choices[-1]["delta"] == {}
    completion = await collect_completion(two_choices(), identity)
    assert [(c.index, c.message.content, c.finish_reason) for c in completion.choices] == [
        (0, "Aa", "length"),
        (1, "Bb", "stop"),
    ]
    assert completion.usage.completion_tokens == 4


def tool_call_story() -> AsyncIterator[CompletionDelta]:
    return deltas(
        CompletionDelta(0, "", 1, None, [ToolCallChunk(0, "call_1", "get_weather", '{"city": ')]),
        CompletionDelta(0, "", 1, None, [ToolCallChunk(0, arguments='"Paris"}')]),
        CompletionDelta(0, "", 1, "tool_calls", [ToolCallChunk(1, "call_2", "get_time", "{}")]),
    )


async def test_tool_call_deltas_follow_openai_streaming_shape() -> None:
    chunks = await chunks_of(tool_call_story())
    deltas_seen = [c["choices"][0]["delta"] for c in chunks]
    assert deltas_seen[1] == {
        "tool_calls": [
            {
                "index": 0,
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": '},
            }
        ]
    }
    assert deltas_seen[2] == {"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


async def test_collected_tool_calls() -> None:
    completion = await collect_completion(tool_call_story(), IDENTITY)
    message = completion.choices[0].message
    assert message.content is None
    assert [(c.id, c.function.name, c.function.arguments) for c in message.tool_calls] == [
        ("call_1", "get_weather", '{"city": "Paris"}'),
        ("call_2", "get_time", "{}"),
    ]
    assert completion.choices[0].finish_reason == "tool_calls"


async def test_logprobs_are_carried_streamed_and_collected() -> None:
    entry = TokenLogprob("Hi", -0.5, [72, 105], [TopLogprob("Hi", -0.5, [72, 105]), TopLogprob("Yo", -1.5, [89, 111])])
    source = [CompletionDelta(0, "Hi", 1, "stop", logprobs=[entry])]
    identity = replace(IDENTITY, logprobs=True)
    chunks = await chunks_of(deltas(*source), identity)
    content = chunks[1]["choices"][0]["logprobs"]["content"]
    assert content[0]["token"] == "Hi" and content[0]["top_logprobs"][1]["token"] == "Yo"
    completion = await collect_completion(deltas(*source), identity)
    assert completion.choices[0].logprobs.content[0].bytes == [72, 105]
    plain = await collect_completion(deltas(*source), IDENTITY)
    assert plain.choices[0].logprobs is None


def test_finish_reasons() -> None:
    assert finish_reason_of("length") == "length"
    assert finish_reason_of("tool_calls") == "tool_calls"
    assert finish_reason_of("stop") == "stop"
    assert finish_reason_of(None) == "stop"


def one_call() -> AsyncIterator[CompletionDelta]:
    return deltas(
        CompletionDelta(0, "", 1, None, [ToolCallChunk(0, "call_1", "get_weather", '{"city": ')]),
        CompletionDelta(0, "", 1, None, [ToolCallChunk(0, arguments='"Paris"}')]),
        CompletionDelta(0, "", 1, "tool_calls"),
    )


async def test_deprecated_functions_answer_with_function_call() -> None:
    legacy = replace(IDENTITY, function_call=True)
    message = (await collect_completion(one_call(), legacy)).model_dump()["choices"][0]
    assert message["finish_reason"] == "function_call"
    assert message["message"]["function_call"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    assert "tool_calls" not in message["message"] and message["message"]["content"] is None
    chunks = await chunks_of(one_call(), legacy)
    assert [c["choices"][0]["delta"] for c in chunks[1:]] == [
        {"function_call": {"name": "get_weather", "arguments": '{"city": '}},
        {"function_call": {"arguments": '"Paris"}'}},
        {},
    ]
    assert chunks[-1]["choices"][0]["finish_reason"] == "function_call"
