"""The serving pipeline's failure paths, with a fake engine (failure injection) and the real gateway stores.

Engine error before the first token, an error mid-stream, a policy violation
mid-stream, a client that leaves, an upstream that times out before the
fallback answers; each request settled exactly once with the tokens it used,
and credits reserved so concurrent requests never overdraw a key.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from server.config import GatewaySettings, ModelEntry, ProviderEntry, QuotaSettings
from server.engine import ChatTurn, CompletionDelta, GenerationOptions, PreparedChat, ToolUse
from server.engine.errors import EngineUnavailable
from server.gateway.errors import InsufficientCredits, NotAllowed, QuotaExceeded, UpstreamFailed
from server.gateway.keys import KeySpec, KeyStore, Principal
from server.gateway.routing import Router
from server.gateway.service import Gateway, RequestAccount
from server.gateway.templates import TemplateStore
from server.gateway.usage import UsageRecord, UsageStore
from server.guardrails.checker import Verdict
from server.guardrails.errors import GuardrailViolation
from server.memory.service import Recalled
from server.serving.call import AdaptionTrigger, ChatCall, ChatRun, MemoryRequest, PolicyRequest
from server.serving.catalog import ModelCatalog
from server.serving.pipeline import ChatService

MODEL = "fake-model"
FORBIDDEN = "forbidden"


@dataclass
class FakeEngine:
    """Yields the scripted words one token each; `fail_at` raises EngineUnavailable before that word."""

    words: Sequence[str] = ("Hello", " there", " friend", ".")
    fail_at: int | None = None
    delay_s: float = 0.0
    max_model_len: int = 1000
    generated: int = 0
    cached_tokens: int = 2  # of the prompt's, as if served from the prefix cache

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def prepare_chat(
        self,
        turns: Sequence[ChatTurn],
        options: GenerationOptions,
        *,
        stream: bool,
        tool_use: ToolUse | None = None,
        adapter: str | None = None,
        adapter_param: str = "lora_name",
    ) -> PreparedChat:
        tokens = sum(self.count_tokens(turn.content) for turn in turns)
        return PreparedChat(prompt_token_ids=[0] * tokens, sampling_params=None)  # type: ignore[arg-type]

    async def generate(self, prepared: PreparedChat, request_id: str) -> AsyncIterator[CompletionDelta]:
        for position, word in enumerate(self.words):
            if position == self.fail_at:
                raise EngineUnavailable("The model engine is not available; please retry later.")
            await asyncio.sleep(self.delay_s)
            self.generated += 1
            last = position == len(self.words) - 1
            yield CompletionDelta(0, word, 1, "stop" if last else None, cached_tokens=self.cached_tokens)


class NoAdapters:
    def __contains__(self, name: str) -> bool:
        return False

    def list(self) -> list:
        return []

    def get(self, name: str) -> object:
        raise KeyError(name)

    def ownership(self, name: str) -> None:
        return None


@dataclass
class FakeMemory:
    remembered: list[str] = field(default_factory=list)

    async def recall(
        self,
        owner: str,
        name: str,
        user_goal: str,
        query: str,
        count_tokens: Callable[[str], int],
        top_k: int | None = None,
    ) -> Recalled:
        return Recalled(block="", memories=())

    then: list = field(default_factory=list)

    fail_store: bool = False  # failure injection: the write-back task fails (a full disk, a broken store)

    def remember_later(self, owner, name, user_goal, request_id, user_text, answer, then=None) -> asyncio.Task | None:
        if self.fail_store:

            async def failing() -> None:
                raise OSError("no space left on device")

            return asyncio.create_task(failing())
        self.remembered.append(answer)
        self.then.append(then)
        return None

    async def check_quota(self, owner: str, name: str, adding: int, quotas: QuotaSettings) -> None:
        """Counts what this fake remembered as the group's memories (one per exchange)."""
        if len(self.remembered) + adding > quotas.memories_per_group:
            raise QuotaExceeded(f"quota of {quotas.memories_per_group} memories in `{name}`", "text")


@dataclass
class Adaption:
    calls: list[tuple] = field(default_factory=list)

    async def record_call(
        self, owner: str, group: str, adapter: str, threshold: int, min_group: int, base_model: str | None = None
    ) -> None:
        self.calls.append((owner, group, adapter, threshold, min_group, base_model))


class WordChecker:
    """Flags any window that holds the forbidden word."""

    async def check(self, policy: str, text: str) -> Verdict:
        flagged = FORBIDDEN in text
        return Verdict(flagged, 1.0 if flagged else 0.0, "forbidden word" if flagged else "")


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never answers: an upstream that always times out."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield listener.getsockname()[1]


@dataclass
class Served:
    service: ChatService
    engine: FakeEngine
    memory: FakeMemory
    keys: KeyStore
    usage: UsageStore
    adaption: Adaption


@pytest.fixture
async def served(tmp_path: Path, silent_port: int) -> AsyncIterator[Served]:
    keys, usage = KeyStore(tmp_path / "keys.sqlite3"), UsageStore(tmp_path / "usage.sqlite3")
    templates = TemplateStore(tmp_path / "templates.sqlite3")
    providers = [
        ProviderEntry(name="slow", base_url=f"http://127.0.0.1:{silent_port}/v1", models=(MODEL,), timeout_s=0.2)
    ]
    router = Router(providers)
    for store in (keys, usage, templates):
        await store.open()
    engine, memory, adaption = FakeEngine(), FakeMemory(), Adaption()
    entry = ModelEntry(name=MODEL, source="./nowhere", max_model_len=1000)
    gateway = Gateway(GatewaySettings(), keys, usage, templates, router)
    service = ChatService(
        ModelCatalog(entry, NoAdapters(), providers),
        engine,
        gateway,
        router,
        memory,
        adaption,
        WordChecker(),
        system_fingerprint="fp",
        middle_out_reserve_tokens=16,
        memory_quotas=QuotaSettings(memories_per_group=2),
        memory_add_per_token=2.0,
    )
    try:
        yield Served(service, engine, memory, keys, usage, adaption)
    finally:
        await router.close()
        for store in (usage, templates, keys):
            await store.close()


OPEN = Principal(owner="tester", admin=True)
counter = iter(range(1_000_000))


def call(principal: Principal = OPEN, *, models: tuple[str, ...] = (MODEL,), **fields: object) -> ChatCall:
    account = RequestAccount(f"req-{next(counter)}", principal)
    options = fields.pop("options", GenerationOptions(max_tokens=10))
    return ChatCall(
        models=models,
        turns=(ChatTurn("user", "say hello please"),),
        options=options,  # type: ignore[arg-type]
        account=account,
        caller=principal.owner,
        **fields,  # type: ignore[arg-type]
    )


async def drain(run: ChatRun) -> list[CompletionDelta]:
    return [delta async for delta in run.deltas]


async def records(served: Served, request_id: str) -> list[UsageRecord]:
    return await served.usage.find(request_id, None)


async def test_a_whole_answer_is_settled_once_with_its_tokens(served: Served) -> None:
    chat = call()
    run = await served.service.start(chat)
    assert "".join(delta.text for delta in await drain(run)) == "Hello there friend."
    assert run.usage() == (3, 4, 2) and run.model == MODEL  # 2 of the prompt's 3 tokens from the prefix cache
    (record,) = await records(served, chat.account.request_id)
    assert (record.status, record.prompt_tokens, record.completion_tokens) == (200, 3, 4)


async def test_engine_error_before_the_first_token_is_raised_by_start(served: Served) -> None:
    served.engine.fail_at = 0
    chat = call(stream=True)
    with pytest.raises(EngineUnavailable):
        await served.service.start(chat)
    (record,) = await records(served, chat.account.request_id)
    assert (record.status, record.error_code, record.completion_tokens) == (503, "engine_unavailable", 0)


async def test_engine_error_mid_stream_ends_the_deltas_and_charges_what_was_generated(served: Served) -> None:
    served.engine.fail_at = 2
    chat = call(stream=True)
    run = await served.service.start(chat)  # the first output came: the run is handed back
    received = []
    with pytest.raises(EngineUnavailable):
        async for delta in run.deltas:
            received.append(delta.text)
    assert received == ["Hello", " there"]
    (record,) = await records(served, chat.account.request_id)
    assert (record.status, record.completion_tokens) == (503, 2)


async def test_policy_violation_mid_stream_leaks_nothing_and_finishes_with_content_filter(served: Served) -> None:
    served.engine.words = ("Fine", " words", " then", f" {FORBIDDEN}", " ones", ".")
    chat = call(stream=True, memory=MemoryRequest("g", "goal"), policy=PolicyRequest("no forbidden words", 1, 1))
    run = await served.service.start(chat)
    received: list[CompletionDelta] = []
    with pytest.raises(GuardrailViolation):
        async for delta in run.deltas:
            received.append(delta)
    text = "".join(delta.text for delta in received)
    assert FORBIDDEN not in text and text.startswith("Fine")
    assert received[-1].finish_reason == "content_filter"
    assert served.memory.remembered == []  # a cut answer is not remembered
    (record,) = await records(served, chat.account.request_id)
    assert (record.status, record.error_code) == (400, "guardrail_violation")
    assert record.completion_tokens == served.engine.generated


async def test_whole_answer_violation_releases_nothing(served: Served) -> None:
    served.engine.words = ("All", f" {FORBIDDEN}", ".")
    run = await served.service.start(call(policy=PolicyRequest("no forbidden words")))
    received = []
    with pytest.raises(GuardrailViolation):
        async for delta in run.deltas:
            received.append(delta.text)
    assert "".join(received) == ""


async def test_a_client_that_leaves_is_settled_499_with_the_tokens_generated(served: Served) -> None:
    key, _ = await served.keys.create(KeySpec(name="k", credits=1000))
    chat = call(Principal(key.owner, False, key), stream=True, memory=MemoryRequest("g", "goal"))
    run = await served.service.start(chat)
    await anext(run.deltas)
    await run.aclose()  # what the HTTP layer does when the client goes away
    await run.aclose()  # and again: still settled once
    (record,) = await records(served, chat.account.request_id)
    assert (record.status, record.error_code) == (499, "client_closed_request")
    assert record.completion_tokens == served.engine.generated < len(served.engine.words)
    assert served.memory.remembered == []
    spent = record.prompt_tokens + record.completion_tokens
    assert (await served.keys.get(key.id)).credits == 1000 - spent  # the reservation's rest refunded


async def test_a_cancelled_request_is_settled_499(served: Served) -> None:
    served.engine.delay_s = 0.05
    chat = call()
    run = await served.service.start(chat)
    task = asyncio.ensure_future(drain(run))
    await asyncio.sleep(0.08)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    (record,) = await records(served, chat.account.request_id)
    assert record.status == 499 and 0 < record.completion_tokens < len(served.engine.words)


async def test_an_upstream_timeout_falls_back_to_the_next_model(served: Served) -> None:
    chat = call(models=(f"{MODEL}@slow", MODEL), stream=True)
    run = await served.service.start(chat)
    assert run.model == MODEL and "".join(d.text for d in await drain(run)) == "Hello there friend."
    (record,) = await records(served, chat.account.request_id)
    assert (record.status, record.provider, record.model) == (200, None, MODEL)


async def test_an_upstream_timeout_alone_is_a_504(served: Served) -> None:
    chat = call(models=(f"{MODEL}@slow",))
    with pytest.raises(UpstreamFailed) as failed:
        await served.service.start(chat)
    assert failed.value.status == 504
    (record,) = await records(served, chat.account.request_id)
    assert (record.status, record.provider) == (504, "slow")


async def test_concurrent_requests_never_take_a_balance_below_zero(served: Served) -> None:
    """200 credits, 10 concurrent requests that may each use 60 tokens (3 prompt + 57 completion)."""
    key, _ = await served.keys.create(KeySpec(name="k", credits=200))
    principal = Principal(key.owner, False, key)
    served.engine.delay_s = 0.01
    balances: list[int] = []

    async def watch() -> None:
        while True:
            balances.append((await served.keys.get(key.id)).credits)
            await asyncio.sleep(0.005)

    async def one() -> str:
        try:
            run = await served.service.start(call(principal, options=GenerationOptions(max_tokens=57)))
        except InsufficientCredits:
            return "402"
        await drain(run)
        return "200"

    watcher = asyncio.ensure_future(watch())
    outcomes = await asyncio.gather(*(one() for _ in range(10)))
    watcher.cancel()
    final = (await served.keys.get(key.id)).credits
    assert "402" in outcomes and "200" in outcomes
    assert min([*balances, final]) >= 0
    assert final == 200 - outcomes.count("200") * (3 + 4)  # each answer used 3 prompt + 4 completion tokens


async def test_a_complete_answer_is_remembered_then_counted_for_adaption(served: Served) -> None:
    chat = call(memory=MemoryRequest("g", "goal"), adaption=AdaptionTrigger("alpha", 3, 2))
    await drain(await served.service.start(chat))
    assert served.memory.remembered == ["Hello there friend."]
    (then,) = served.memory.then
    await then()  # the memory service runs it once the exchange is stored
    assert served.adaption.calls == [("tester", "g", "alpha", 3, 2, MODEL)]  # the model that answered trains


async def test_the_write_back_is_charged_and_skipped_over_quota_or_credits_never_failing_the_answer(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    key, _ = await served.keys.create(KeySpec(name="k", credits=100))
    tenant = Principal(key.owner, False, key)

    async def nightly_chat() -> str:
        chat = call(tenant, memory=MemoryRequest("g", "goal"), options=GenerationOptions(max_tokens=4))
        answer = "".join(delta.text for delta in await drain(await served.service.start(chat)))
        (record,) = await records(served, chat.account.request_id)
        assert record.status == 200
        await served.keys.written()
        return answer

    # 3 prompt + 4 completion tokens for the chat; remembering "say hello please" (3 tokens) at 2 credits a token.
    assert await nightly_chat() == "Hello there friend."
    assert served.memory.remembered == ["Hello there friend."]
    assert (await served.keys.get(key.id)).credits == 100 - 7 - 6
    assert await nightly_chat() == "Hello there friend."
    assert (await served.keys.get(key.id)).credits == 100 - 2 * (7 + 6)
    # The group holds its quota of 2: the answer still comes, the exchange is not stored nor charged for.
    with caplog.at_level("WARNING", logger="server.serving.pipeline"):
        assert await nightly_chat() == "Hello there friend."
    assert len(served.memory.remembered) == 2 and "memory write-back skipped" in caplog.text
    assert (await served.keys.get(key.id)).credits == 100 - 2 * (7 + 6) - 7

    # A balance that covers the chat but not remembering it: the answer comes, nothing is stored or overdrawn.
    poor, _ = await served.keys.create(KeySpec(name="poor", credits=10))
    served.memory.remembered.clear()
    tenant = Principal(poor.owner, False, poor)
    caplog.clear()
    with caplog.at_level("WARNING", logger="server.serving.pipeline"):
        assert await nightly_chat() == "Hello there friend."
    assert served.memory.remembered == [] and "remembering this exchange" in caplog.text
    assert (await served.keys.get(poor.id)).credits == 10 - 7


async def test_a_write_back_that_fails_to_store_is_refunded(served: Served) -> None:
    key, _ = await served.keys.create(KeySpec(name="k", credits=100))
    served.memory.fail_store = True
    chat = call(Principal(key.owner, False, key), memory=MemoryRequest("g", "goal"))
    assert "".join(delta.text for delta in await drain(await served.service.start(chat))) == "Hello there friend."
    await served.keys.written()
    assert (await served.keys.get(key.id)).credits == 100 - 7  # the chat's tokens only: the 6 credits came back


async def test_every_candidate_is_authorized_before_anything_runs(served: Served) -> None:
    key, _ = await served.keys.create(KeySpec(name="k", allowed_models=(MODEL,), credits=100))
    chat = call(Principal(key.owner, False, key), models=(MODEL, f"{MODEL}@slow"))
    with pytest.raises(NotAllowed) as refused:
        await served.service.start(chat)
    assert refused.value.param == "model" and served.engine.generated == 0
    (record,) = await records(served, chat.account.request_id)
    assert (record.status, record.error_code) == (403, "model_not_allowed")
    assert (await served.keys.get(key.id)).credits == 100
