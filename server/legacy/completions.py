"""Legacy text completions: OpenAI's `logprobs` object and the merging of several prompts' streams.

Pure logic (no HTTP, no vLLM), unit-tested directly.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import TypeVar

from server.engine import TokenLogprob

T = TypeVar("T")


def legacy_logprobs(entries: Sequence[TokenLogprob], offset: int) -> tuple[dict, int]:
    """(OpenAI's completions `logprobs` object for these tokens, the text offset after them).

    `offset`: where the first token starts in the choice's text (after an echoed prompt, say).
    """
    tokens, token_logprobs, top, offsets = [], [], [], []
    for entry in entries:
        tokens.append(entry.token)
        token_logprobs.append(entry.logprob)
        top.append({candidate.token: candidate.logprob for candidate in entry.top_logprobs})
        offsets.append(offset)
        offset += len(entry.token)
    return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top, "text_offset": offsets}, offset


def echoed_prompt_logprobs(first_token: str, entries: Sequence[TokenLogprob]) -> dict:
    """OpenAI's `logprobs` object for an echoed prompt: its first token has no logprob (nothing comes before
    it), so its `token_logprobs` and `top_logprobs` entries are null; offsets count from the prompt's start."""
    rest, _ = legacy_logprobs(entries, len(first_token))
    return {
        "tokens": [first_token, *rest["tokens"]],
        "token_logprobs": [None, *rest["token_logprobs"]],
        "top_logprobs": [None, *rest["top_logprobs"]],
        "text_offset": [0, *rest["text_offset"]],
    }


async def merged(sources: Sequence[AsyncIterator[T]]) -> AsyncIterator[tuple[int, T]]:
    """(source position, item) from all sources as they come; one failing fails all, leaving cancels all."""
    if len(sources) == 1:
        async for item in sources[0]:
            yield 0, item
        return
    queue: asyncio.Queue[tuple[int, T] | tuple[int, BaseException] | None] = asyncio.Queue()
    done = object()

    async def pump(position: int, source: AsyncIterator[T]) -> None:
        try:
            async for item in source:
                await queue.put((position, item))
        except Exception as exc:  # noqa: BLE001 - handed to the reader, which raises it
            await queue.put((-1, exc))
        finally:
            await queue.put((position, done))  # type: ignore[arg-type]

    tasks = [asyncio.create_task(pump(position, source)) for position, source in enumerate(sources)]
    running = len(tasks)
    try:
        while running:
            position, item = await queue.get()  # type: ignore[misc]
            if position == -1:
                raise item  # type: ignore[misc]
            if item is done:
                running -= 1
                continue
            yield position, item  # type: ignore[misc]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
