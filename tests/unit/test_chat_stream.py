"""Engine deltas -> OpenAI chunks and completions (pure translation, no engine)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from server.api.chat_stream import CompletionIdentity, collect_completion, finish_reason_of, stream_chunks
from server.engine import CompletionDelta

IDENTITY = CompletionIdentity(id="chatcmpl-1", model="m", system_fingerprint="fp", prompt_tokens=7, created=123)


async def deltas(*items: CompletionDelta) -> AsyncIterator[CompletionDelta]:
    for item in items:
        yield item


def story() -> AsyncIterator[CompletionDelta]:
    return deltas(
        CompletionDelta("Hel", 1, None),
        CompletionDelta("lo", 1, None),
        CompletionDelta("", 1, "length"),
    )


async def test_chunks_role_then_content_then_finish() -> None:
    chunks = [json.loads(c) async for c in stream_chunks(story(), IDENTITY, include_usage=False)]
    assert [c["choices"][0]["delta"] for c in chunks] == [
        {"role": "assistant", "content": ""},
        {"content": "Hel"},
        {"content": "lo"},
        {},
    ]
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, None, None, "length"]
    assert all(c["id"] == "chatcmpl-1" and c["created"] == 123 and "usage" not in c for c in chunks)


async def test_usage_chunk_closes_the_stream_when_asked() -> None:
    chunks = [json.loads(c) async for c in stream_chunks(story(), IDENTITY, include_usage=True)]
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
    assert all(c["usage"] is None for c in chunks[:-1])


async def test_collect_completion_joins_text_and_counts_tokens() -> None:
    completion = await collect_completion(story(), IDENTITY)
    assert completion.choices[0].message.content == "Hello"
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage.total_tokens == 10
    assert completion.object == "chat.completion"


def test_finish_reasons() -> None:
    assert finish_reason_of("length") == "length"
    assert finish_reason_of("stop") == "stop"
    assert finish_reason_of(None) == "stop"
