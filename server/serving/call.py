"""One chat call, as the serving pipeline reads it, and the run it gives back: plain, typed, no wire format.

`api/chat.py` builds a `ChatCall` from the HTTP request; `ChatService.start`
runs it and returns a `ChatRun` (identity, metadata headers, an async stream
of the engine's deltas) for the HTTP layer to write as JSON or SSE.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass, field

from server.engine import ChatTurn, CompletionDelta, GenerationOptions, ToolUse
from server.gateway.service import RequestAccount

MEMORIES_USED_HEADER = "x-nightly-memories-used"
ADAPTION_HEADER = "x-adaption-adapter"


@dataclass(frozen=True, slots=True)
class MemoryRequest:
    """`nightly`: recall from this group into the prompt, and remember the exchange afterwards."""

    group: str
    user_goal: str


@dataclass(frozen=True, slots=True)
class PolicyRequest:
    """`guardrail_policy`: whole answers checked before any is sent; streams every `chunk_size`
    deltas over the latest `sliding_window` units."""

    policy: str
    chunk_size: int = 10
    sliding_window: int = 5


@dataclass(frozen=True, slots=True)
class AdapterTarget:
    """`lora_name`: the adapter to run on; or, when adaption targets it, the adapter it trains
    (`is_target`), run on only when `run_on_target` (`adaption_inference`) and promoted."""

    lora_name: str | None = None
    is_target: bool = False
    run_on_target: bool = False


@dataclass(frozen=True, slots=True)
class AdaptionTrigger:
    """`finetune_thresh`: count the call towards training `adapter` from the memory group."""

    adapter: str
    threshold: int
    min_group: int


@dataclass(frozen=True, slots=True)
class ChatCall:
    models: tuple[str, ...]  # the candidates, in order: `model` then the fallbacks
    turns: tuple[ChatTurn, ...]
    options: GenerationOptions
    account: RequestAccount  # who calls and what the usage record says
    caller: str  # the owner of the caller's memory groups and jobs
    stream: bool = False
    tool_use: ToolUse | None = None
    memory: MemoryRequest | None = None
    policy: PolicyRequest | None = None
    adapter: AdapterTarget = AdapterTarget()
    adaption: AdaptionTrigger | None = None
    middle_out: bool = False
    provider_body: Mapping[str, object] = field(default_factory=dict)  # the OpenAI fields, for a provider
    keep_alive: str | float | None = None  # Ollama's: how long the model stays awake once idle (None: its own)


@dataclass(frozen=True, slots=True)
class MemoryUse:
    group: str
    memories_used: int


@dataclass(slots=True)
class ChatRun:
    """A started call: who answers, the response headers, and the deltas (each choice's output in order).

    Iterate `deltas` to the end (or `aclose()` the run): the request is settled when they finish,
    fail or are closed. `usage()` is final once they are."""

    id: str
    model: str
    system_fingerprint: str
    n: int
    logprobs: bool
    memory: MemoryUse | None
    headers: dict[str, str]
    account: RequestAccount
    deltas: AsyncIterator[CompletionDelta] = None  # type: ignore[assignment]  # set by ChatService.start
    created: int = field(default_factory=lambda: int(time.time()))

    def usage(self) -> tuple[int, int, int]:
        """(prompt_tokens, completion_tokens, cached_tokens) so far; cached: of the prompt's, from the prefix cache."""
        return self.account.prompt_tokens, self.account.completion_tokens, self.account.cached_tokens

    def respond(self, body: object) -> None:
        """The response body, for the usage log when the request allows it."""
        self.account.respond(self.account.prompt_tokens, self.account.completion_tokens, body)

    async def aclose(self) -> None:
        if isinstance(self.deltas, AsyncGenerator):
            await self.deltas.aclose()
