"""The chat pipeline: one `ChatCall` in, one `ChatRun` out, the same steps on every route.

    admission (gateway: authorize every candidate, rate limit)
    -> memory recall into the prompt (`nightly`)
    -> the first candidate that serves: the local engine (adapter, middle-out, prompt, credits reserved,
       generation) or an upstream provider (the gateway's proxy, credits reserved), its deltas metered
    -> the output policy (whole answers, or streamed windows with zero leak)
    -> write-back of the exchange to memory, then adaption's trigger
    -> settlement, exactly once, when the deltas end, fail or are closed

Streams wait for their first output before the run is handed back, so a request
the engine or the provider refuses still gets a proper error (and the next
fallback is tried). Knows nothing of HTTP: it raises the packages' typed errors.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import Protocol

from server.config import QuotaSettings
from server.engine import ChatTurn, CompletionDelta, GenerationOptions, PreparedChat, ToolUse
from server.engine.prompt import latest_user_text, with_context_block
from server.gateway.errors import InsufficientCredits, QuotaExceeded
from server.gateway.routing import (
    Route,
    Router,
    completion_deltas,
    first_that_serves,
    stream_deltas,
    upstream_payload,
)
from server.gateway.service import Admission, Charge, Gateway, RequestAccount
from server.gateway.transforms import fit_context
from server.guardrails.checker import Verdict
from server.guardrails.stream import checked_whole, guarded
from server.memory.service import Recalled
from server.serving.call import ADAPTION_HEADER, MEMORIES_USED_HEADER, ChatCall, ChatRun, MemoryUse
from server.serving.catalog import LocalModel, ModelCatalog

logger = logging.getLogger(__name__)

UPSTREAM_TOKENS_PER_TURN = 4  # what a chat template adds around each turn, for an upstream's reservation


class ServingEngine(Protocol):
    """What the pipeline uses of the engine (`server.engine.Engine`; a fake one in unit tests)."""

    @property
    def max_model_len(self) -> int: ...

    def count_tokens(self, text: str) -> int: ...

    def prepare_chat(
        self,
        turns: Sequence[ChatTurn],
        options: GenerationOptions,
        *,
        stream: bool,
        tool_use: ToolUse | None = None,
        adapter: str | None = None,
        adapter_param: str = "lora_name",
    ) -> PreparedChat: ...

    def generate(self, prepared: PreparedChat, request_id: str) -> AsyncIterator[CompletionDelta]: ...


class EngineLease(Protocol):
    engine: ServingEngine

    def release(self) -> None: ...

    def release_with(self, holder: object) -> None: ...


class Engines(Protocol):
    """Several served models (`server.engine.pool.EnginePool`): a request holds its model's engine awake."""

    async def lease(self, name: str, keep_alive: str | float | None = None) -> EngineLease: ...


class Memory(Protocol):
    async def recall(
        self,
        owner: str,
        name: str,
        user_goal: str,
        query: str,
        count_tokens: Callable[[str], int],
        top_k: int | None = None,
    ) -> Recalled: ...

    def remember_later(
        self,
        owner: str,
        name: str,
        user_goal: str,
        request_id: str,
        user_text: str,
        answer: str,
        then: Callable[[], Awaitable[None]] | None = None,
    ) -> asyncio.Task[None] | None: ...

    async def check_quota(self, owner: str, name: str, adding: int, quotas: QuotaSettings) -> None: ...


class Adaption(Protocol):
    async def record_call(
        self, owner: str, group: str, adapter: str, threshold: int, min_group: int, base_model: str | None = None
    ) -> object: ...


class Checker(Protocol):
    async def check(self, policy: str, text: str) -> Verdict: ...


@dataclass(frozen=True, slots=True)
class _Started:
    run: ChatRun
    deltas: AsyncGenerator[CompletionDelta]


class ChatService:
    def __init__(
        self,
        catalog: ModelCatalog,
        engine: ServingEngine,
        gateway: Gateway,
        router: Router,
        memory: Memory,
        adaption: Adaption,
        checker: Checker,
        *,
        system_fingerprint: str,
        middle_out_reserve_tokens: int,
        memory_quotas: QuotaSettings,
        memory_add_per_token: float,
        engines: Engines | None = None,
    ) -> None:
        self.catalog = catalog
        self.engine = engine  # the server's own model (token counts for memory and upstream estimates)
        self.engines = engines  # every served model by name; None: `engine` serves every local request
        self.gateway = gateway
        self.router = router
        self.memory = memory
        self.adaption = adaption
        self.checker = checker
        self.system_fingerprint = system_fingerprint
        self.middle_out_reserve_tokens = middle_out_reserve_tokens
        self.memory_quotas = memory_quotas
        self.memory_add_per_token = memory_add_per_token

    async def start(self, call: ChatCall) -> ChatRun:
        """Admit and start the call; its typed errors are raised here until the first output (streams)."""
        steps = self._steps(call)
        run = await anext(steps)
        assert isinstance(run, ChatRun)
        run.deltas = steps  # type: ignore[assignment]  # from here on it yields only deltas
        return run

    def _adapters(self, call: ChatCall) -> list[tuple[str, str]]:
        """(adapter, param) pairs the key must be allowed: each candidate naming one, and `lora_name`."""
        pairs = [(adapter, "lora_name") for adapter in map(self.catalog.adapter_of, call.models) if adapter]
        if call.adapter.lora_name is not None:
            pairs.append((call.adapter.lora_name, "lora_name"))
        return list(dict.fromkeys(pairs))

    async def _steps(self, call: ChatCall) -> AsyncGenerator[ChatRun | CompletionDelta]:
        names = [self.catalog.canonical(name) for name in call.models]
        async with self.gateway.admission(call.account, names, self._adapters(call)) as admission:
            self._authorize_owners(call)
            recalled = await self._recall(call)
            started = await first_that_serves(
                call.models, functools.partial(self._start, call, admission, recalled), self.router.fell_back
            )
            yield started.run
            async for delta in started.deltas:
                yield delta
        await self._stored()  # settled above; committed before the caller sends the response's last byte

    async def _stored(self) -> None:
        """Wait until the request's usage record and debit are committed, never cancelling the writes: a store
        whose writes fail keeps them queued and retries them (logged); the response is not failed for it."""
        waits = [
            asyncio.ensure_future(self.gateway.usage.written()),
            asyncio.ensure_future(self.gateway.keys.written()),
        ]
        await asyncio.wait(waits)
        for wait in waits:
            if not wait.cancelled():
                wait.exception()  # retrieved here; the store has logged it

    def _authorize_owners(self, call: ChatCall) -> None:
        """Adapter ownership: another key's unshared adapter is missing (404); training one needs your own (403)."""
        trained = call.adaption.adapter if call.adaption is not None else None
        for adapter, param in self._adapters(call):
            ownership = self.catalog.adapters.ownership(adapter)
            self.gateway.authorize_adapter(
                call.account.principal, adapter, ownership, param=param, change=adapter == trained
            )

    async def _recall(self, call: ChatCall) -> Recalled | None:
        if call.memory is None:
            return None
        query = latest_user_text(call.turns)
        entry = self.catalog.entry_for(call.models[0])  # how many memories the model asked first can use
        return await self.memory.recall(
            call.caller,
            call.memory.group,
            call.memory.user_goal,
            query,
            self.engine.count_tokens,
            entry.memory_top_k if entry is not None else None,
        )

    async def _start(self, call: ChatCall, admission: Admission, recalled: Recalled | None, name: str) -> _Started:
        route = self.catalog.route(name)
        turns = list(call.turns)
        if recalled is not None and recalled.block:
            turns = with_context_block(turns, recalled.block)
        run_id = f"chatcmpl-{uuid.uuid4().hex}"
        headers = {MEMORIES_USED_HEADER: str(len(recalled.memories))} if recalled is not None else {}
        if route.provider is None:
            local = self.catalog.local_model(
                route.model,
                call.adapter.lora_name,
                adapter_is_target=call.adapter.is_target,
                run_on_target=call.adapter.run_on_target,
            )
            deltas = await self._local(call, admission, local, route, turns, run_id)
            model = local.adapter or local.entry.name
            headers |= self._adaption_header(call, local)
        else:
            deltas = await self._upstream(call, admission, route, turns, recalled)
            model = route.label
        if call.policy is not None:
            check = functools.partial(self.checker.check, call.policy.policy)
            if call.stream:
                deltas = guarded(deltas, check, call.policy.chunk_size, call.policy.sliding_window)
            else:
                deltas = checked_whole(deltas, check)
        if call.memory is not None:
            deltas = self._remembered(call, deltas)
        if call.stream:
            deltas = await _started(deltas)
        run = ChatRun(
            id=run_id,
            model=model,
            system_fingerprint=self.system_fingerprint,
            n=call.options.n,
            logprobs=call.options.logprobs is not None,
            memory=MemoryUse(call.memory.group, len(recalled.memories))
            if call.memory is not None and recalled is not None
            else None,
            headers=headers,
            account=call.account,
        )
        return _Started(run, deltas)

    def _most_tokens(self, prompt_tokens: int, call: ChatCall, max_model_len: int | None = None) -> int:
        """What a request may use at most: its prompt, and each choice's completion limit (or the rest of
        the context), capped by the context."""
        room = max((max_model_len or self.engine.max_model_len) - prompt_tokens, 0)
        limit = call.options.max_tokens
        per_choice = min(limit, room) if limit is not None else room
        return prompt_tokens + call.options.n * per_choice

    async def _local(
        self,
        call: ChatCall,
        admission: Admission,
        local: LocalModel,
        route: Route,
        turns: list[ChatTurn],
        run_id: str,
    ) -> AsyncGenerator[CompletionDelta]:
        call.account.served_by(route, local.entry.name, local.adapter)
        # The model's engine, held awake for the request (loaded or woken first: this may wait).
        lease = await self.engines.lease(local.entry.name, call.keep_alive) if self.engines is not None else None
        engine = lease.engine if lease is not None else self.engine
        try:
            prepared = await self._prepare_local(call, engine, local, turns)
            await admission.reserve(self._most_tokens(prepared.prompt_tokens, call, engine.max_model_len))
        except BaseException:
            if lease is not None:
                lease.release()
            raise
        call.account.prompt_tokens = prepared.prompt_tokens  # charged from here on
        deltas = _metered(engine.generate(prepared, run_id), call.account)
        if lease is None:
            return deltas
        held = _leased(deltas, lease)
        lease.release_with(held)  # a run never iterated (the client left first) hands its model back too
        return held

    async def _prepare_local(
        self, call: ChatCall, engine: ServingEngine, local: LocalModel, turns: list[ChatTurn]
    ) -> PreparedChat:
        def prepare(fitted: list[ChatTurn]) -> PreparedChat:
            return engine.prepare_chat(
                fitted,
                call.options,
                stream=call.stream,
                tool_use=call.tool_use,
                adapter=local.adapter,
                adapter_param=local.adapter_param,
            )

        if call.middle_out:
            reserve = call.options.max_tokens or self.middle_out_reserve_tokens
            # Rendering and tokenizing run off the event loop: one huge request must not stall the others.
            return await asyncio.to_thread(
                fit_context,
                turns,
                prepare,
                engine.max_model_len - reserve,
                engine.count_tokens,
                engine.max_model_len,
            )
        return await asyncio.to_thread(prepare, turns)

    async def _upstream(
        self, call: ChatCall, admission: Admission, route: Route, turns: list[ChatTurn], recalled: Recalled | None
    ) -> AsyncGenerator[CompletionDelta]:
        call.account.served_by(route, route.model)
        count = self.engine.count_tokens
        estimate = sum(count(turn.content) + UPSTREAM_TOKENS_PER_TURN for turn in turns)
        await admission.reserve(self._most_tokens(estimate, call))
        call.account.prompt_tokens = estimate  # until the provider reports its own count
        payload = upstream_payload(
            call.provider_body, route, call.stream, turns if recalled is not None and recalled.block else None
        )
        reported = _Reported()
        request_id = call.account.request_id
        if call.stream:
            deltas = stream_deltas(await self.router.stream(route, payload, request_id), reported)
        else:
            deltas = completion_deltas(await self.router.complete(route, payload, request_id), reported)
        return _counted_upstream(deltas, call.account, reported, count)

    def _adaption_header(self, call: ChatCall, local: LocalModel) -> dict[str, str]:
        """Which weights an `adaption_inference` request ran on (no version yet is not an error)."""
        if not call.adapter.run_on_target:
            return {}
        if local.adapter is None:
            return {ADAPTION_HEADER: f"base-model; no promoted version of {call.adapter.lora_name} yet"}
        return {ADAPTION_HEADER: f"{local.adapter}@v{self.catalog.adapter_version(local.adapter)}"}

    async def _remembered(
        self, call: ChatCall, deltas: AsyncGenerator[CompletionDelta]
    ) -> AsyncGenerator[CompletionDelta]:
        """`deltas` unchanged; once complete (not if the client left midway), the exchange is remembered,
        then counted towards adaption."""
        assert call.memory is not None
        text: list[str] = []
        async for delta in deltas:
            if delta.index == 0:
                text.append(delta.text)
            yield delta
        memory, trigger, caller = call.memory, call.adaption, call.caller
        user_text = latest_user_text(call.turns)
        charge = await self._write_back_paid(call, user_text)
        if charge is None:
            return
        then = None
        if trigger is not None:
            # The adapter trained is one of the served model that answered (a provider's answer: the server's own).
            base_model = call.account.model if call.account.provider is None else None

            async def then() -> None:  # counted once the exchange is stored, so the group size is current
                await self.adaption.record_call(
                    caller, memory.group, trigger.adapter, trigger.threshold, trigger.min_group, base_model
                )

        stored = self.memory.remember_later(
            caller,
            memory.group,
            memory.user_goal,
            call.account.request_id,
            user_text,
            "".join(text),
            then,
        )
        if stored is not None:  # stored before the response's last byte (waited for, never cancelled from here)
            await asyncio.wait([stored])
            if stored.cancelled() or stored.exception() is not None:  # logged by the memory service
                await self.gateway.refund(charge)

    async def _write_back_paid(self, call: ChatCall, user_text: str) -> Charge | None:
        """The charge for remembering the exchange (`memory_add_per_token` per token of the user's text), within
        the key's memory quota; None when over quota or not covered: the answer has gone out, so the exchange is
        only not remembered (logged), the response never fails for it. Admins are neither limited nor charged."""
        assert call.memory is not None
        principal = call.account.principal
        try:
            if not principal.admin:
                await self.memory.check_quota(call.caller, call.memory.group, 1, self.memory_quotas)
            credits = 0.0
            if principal.key is not None and principal.key.credits is not None and self.memory_add_per_token:
                tokens = await asyncio.to_thread(self.engine.count_tokens, user_text)
                credits = self.memory_add_per_token * tokens
            return await self.gateway.charge(principal, credits, "remembering this exchange")
        except (QuotaExceeded, InsufficientCredits) as exc:
            logger.warning(
                "memory write-back skipped for request %s (group %r): %s",
                call.account.request_id,
                call.memory.group,
                exc,
            )
            return None


async def _started(deltas: AsyncGenerator[CompletionDelta]) -> AsyncGenerator[CompletionDelta]:
    """`deltas` with the first one already produced (so its errors are raised here)."""
    try:
        first = await anext(deltas)
    except StopAsyncIteration:  # nothing at all (a provider's empty stream)
        first = None

    async def replay() -> AsyncGenerator[CompletionDelta]:
        try:
            if first is not None:
                yield first
            async for item in deltas:
                yield item
        finally:
            await deltas.aclose()

    return replay()


async def _leased(deltas: AsyncGenerator[CompletionDelta], lease: EngineLease) -> AsyncGenerator[CompletionDelta]:
    """`deltas`, the model held awake until they end (or are closed)."""
    try:
        async with aclosing(deltas) as source:
            async for delta in source:
                yield delta
    finally:
        lease.release()


async def _closing(deltas: AsyncIterator[CompletionDelta]) -> AsyncGenerator[CompletionDelta]:
    """`deltas`, closed with this generator (so closing the pipeline's end closes the provider's stream)."""
    async with aclosing(deltas) as source:  # type: ignore[type-var]
        async for delta in source:
            yield delta


async def _metered(deltas: AsyncIterator[CompletionDelta], account: RequestAccount) -> AsyncGenerator[CompletionDelta]:
    """`deltas` unchanged, their tokens counted into the request's usage as they come (so a request
    cut short is charged for what it generated); choice 0's text kept as the logged response body."""
    text: list[str] = []
    async for delta in deltas:
        account.completion_tokens += delta.new_tokens
        if delta.cached_tokens is not None:
            account.cached_tokens = delta.cached_tokens
        if delta.index == 0:
            text.append(delta.text)
        yield delta
    account.respond(account.prompt_tokens, account.completion_tokens, "".join(text))


class _Reported:
    """The provider's own token counts, when it sends them."""

    def __init__(self) -> None:
        self.usage: tuple[int, int, int] | None = None

    def __call__(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> None:
        self.usage = (prompt_tokens, completion_tokens, cached_tokens)


async def _counted_upstream(
    deltas: AsyncIterator[CompletionDelta],
    account: RequestAccount,
    reported: _Reported,
    count_tokens: Callable[[str], int],
) -> AsyncGenerator[CompletionDelta]:
    """A provider's deltas, counted as they come with our tokenizer (what a stream cut short, or one
    without a usage chunk, is charged), replaced by the provider's own counts once it reports them."""
    text: list[str] = []
    try:
        async for delta in _closing(deltas):
            piece = delta.text + "".join((call.name or "") + call.arguments for call in delta.tool_calls)
            if piece:
                account.completion_tokens += count_tokens(piece)
            if delta.index == 0:
                text.append(delta.text)
            yield delta
    finally:
        if reported.usage is not None:
            account.prompt_tokens, account.completion_tokens, account.cached_tokens = reported.usage
    account.respond(account.prompt_tokens, account.completion_tokens, "".join(text))
