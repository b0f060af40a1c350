"""Our face of vLLM: one `AsyncLLM` in this process, started and stopped with the app.

Callers hand in a conversation and options; they get back a `PreparedChat`
(prompt rendered, limits checked, so errors come before any streaming) and
then an async stream of `CompletionDelta`s. Nothing here knows about HTTP.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import dataclass, field, replace
from pathlib import Path

from vllm import AsyncEngineArgs, SamplingParams
from vllm.exceptions import VLLMValidationError
from vllm.inputs import TokensPrompt
from vllm.outputs import CompletionOutput
from vllm.platforms import current_platform
from vllm.v1.engine.async_llm import AsyncLLM
from vllm.v1.engine.exceptions import EngineDeadError, EngineGenerateError

from server.config import ModelEntry
from server.cpu_features import cpu_dtype, cpu_flags
from server.engine.adapters import AdapterStore, AdapterVersion, has_served_adapters
from server.engine.errors import EngineUnavailable, InvalidOption
from server.engine.logprobs import TokenLogprob, token_logprobs
from server.engine.prompt import ChatTurn, render_prompt, special_token_pattern, special_token_strings
from server.engine.sampling import GenerationOptions, JsonConstraint, build_sampling_params
from server.engine.tools import ChoiceToolReader, ToolCallChunk, ToolUse, forced_call_schema
from server.supervision import start_supervised, stop

logger = logging.getLogger(__name__)

GiB = 1 << 30
WATCHDOG_INTERVAL_S = 0.5


@dataclass(frozen=True, slots=True)
class PreparedChat:
    prompt_token_ids: list[int]
    sampling_params: SamplingParams
    tool_use: ToolUse | None = None
    adapter: AdapterVersion | None = None

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)


@dataclass(frozen=True, slots=True)
class CompletionDelta:
    """What one choice produced since its previous delta; `finish_reason` is set on its last one."""

    index: int
    text: str
    new_tokens: int  # tokens generated since the previous delta
    finish_reason: str | None  # stop, length, tool_calls (or abort)
    tool_calls: list[ToolCallChunk] = field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None
    # Asked for with `prompt_logprobs`: on each choice's first delta, the prompt's tokens after its first
    # (which has no logprob: nothing comes before it).
    prompt_logprobs: list[TokenLogprob] | None = None
    # The prompt's tokens served from vLLM's prefix cache (not computed again), once prefill is done; None: unknown.
    cached_tokens: int | None = None


def engine_args_for(entry: ModelEntry, *, lora: bool | None = None) -> AsyncEngineArgs:
    """The vLLM engine arguments a registry entry stands for; `lora`: with LoRA slots or not (None: as the entry
    says, `auto` meaning with them)."""
    if entry.is_local and not entry.source_path.is_dir():
        raise FileNotFoundError(
            f"models.yaml: models[{entry.name}].source: {entry.source_path} does not exist"
            + (" (build it with `make model`)" if entry.name.startswith("smollm2") else "")
        )
    source = str(entry.source_path) if entry.is_local else entry.source
    return AsyncEngineArgs(
        model=source,
        tokenizer=entry.tokenizer,
        served_model_name=[entry.name],
        dtype=served_dtype(entry),
        max_model_len=entry.max_model_len,
        tensor_parallel_size=entry.tensor_parallel_size,
        pipeline_parallel_size=entry.pipeline_parallel_size,
        gpu_memory_utilization=entry.gpu_memory_utilization,
        # vLLM's CPU backend does not profile memory: the KV cache size is given.
        kv_cache_memory_bytes=entry.cpu_kv_cache_gib * GiB if current_platform.is_cpu() else None,
        enforce_eager=entry.enforce_eager,
        block_size=entry.block_size,
        enable_lora=entry.lora.enabled is not False if lora is None else lora,
        max_loras=entry.lora.max_loras,
        max_lora_rank=entry.lora.max_lora_rank,
        max_cpu_loras=entry.lora.max_cpu_loras,
        disable_log_stats=False,
        # Where the platform has it (CUDA, ROCm, XPU): an idle model sleeps (weights offloaded, KV cache freed).
        enable_sleep_mode=sleep_mode_available(),
    )


def served_dtype(entry: ModelEntry) -> str:
    """The dtype the engine computes `entry` in. On a CPU, `auto` is bfloat16 only where the CPU computes it
    natively, else float32: vLLM's own `auto` keeps a bfloat16 checkpoint's dtype on any x86 CPU, emulated without
    avx512_bf16/amx_bf16 (see models.yaml for what that costs)."""
    return cpu_dtype(entry.dtype, cpu_flags()) if current_platform.is_cpu() else entry.dtype


def sleep_mode_available() -> bool:
    """vLLM's sleep mode (level 1: weights to host memory, KV cache freed) exists on GPUs, not on its CPU backend."""
    return current_platform.is_sleep_mode_available()


_ENGINE_ENV_LOCK = threading.Lock()


def engine_variables(entry: ModelEntry) -> dict[str, str]:
    """The vLLM CPU variables an entry sets for its engine: its thread binding and the cores it leaves free."""
    named = {
        "VLLM_CPU_OMP_THREADS_BIND": entry.cpu_threads_bind,
        "VLLM_CPU_NUM_OF_RESERVED_CPU": entry.cpu_reserved_cores,
    }
    return {name: str(value) for name, value in named.items() if value is not None}


@contextmanager
def engine_environment(entry: ModelEntry) -> Iterator[None]:
    """The environment an entry's engine core process starts with: its CPU variables (`engine_variables`).

    vLLM reads them in the engine core process, which inherits this process's environment when it is spawned;
    engines start one at a time under this lock, so each gets its own."""
    with _ENGINE_ENV_LOCK:
        variables = engine_variables(entry) if current_platform.is_cpu() else {}
        before = {name: os.environ.get(name) for name in variables}
        os.environ.update(variables)
        try:
            yield
        finally:
            for name, value in before.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


def start_llm(entry: ModelEntry, *, lora: bool | None = None) -> AsyncLLM:
    """A new vLLM async engine for `entry` (blocking: tens of seconds on a CPU; call it in a thread)."""
    with engine_environment(entry):
        return AsyncLLM.from_engine_args(engine_args_for(entry, lora=lora))


def lora_at_start(entry: ModelEntry, adapters_dir: Path, adapters: AdapterStore | None) -> bool:
    """Whether an engine starts with LoRA slots: `lora.enabled` true, or `auto` with an adapter to serve.

    LoRA costs every token, base-model requests too (vLLM runs its LoRA kernels over the whole batch, and on its
    CPU backend LoRA turns compilation off): `auto` pays for it only once an adapter exists."""
    if entry.lora.enabled != "auto":
        return bool(entry.lora.enabled)
    if adapters is not None and adapters.list():
        return True
    return has_served_adapters(adapters_dir)


class Engine:
    """The served model: vLLM's async engine plus the model's registry entry.

    When vLLM's engine core dies, the watchdog restarts it in place (bounded tries, doubling back-off) while
    requests get `EngineUnavailable` with a retry hint; the adapters that were being served are loaded again.

    LoRA `auto`: an engine started without LoRA slots (no adapter to serve) is restarted in place with them when
    an adapter is first needed (a request naming one, an adapter added): new requests wait at a gate, the running
    ones finish, the engine restarts with LoRA, the adapters are loaded, the gate opens. Nothing fails meanwhile
    unless the switch outlasts `lora_wait_s` (then 503 with Retry-After).
    """

    def __init__(
        self,
        entry: ModelEntry,
        llm: AsyncLLM,
        adapters_dir: Path,
        *,
        adapters: AdapterStore | None = None,
        restart_attempts: int = 0,
        restart_backoff_s: float = 1.0,
        lora: bool = True,
        lora_wait_s: float = 300.0,
    ) -> None:
        self.entry = entry
        self._llm = llm
        self.lora_enabled = lora  # the engine has LoRA slots now
        self.lora_switching = False  # restarting in place to get them (LoRA `auto`)
        self.lora_switches = 0
        self._lora_wait_s = lora_wait_s
        self._lora_task: asyncio.Task | None = None  # the switch under way
        self._gate = asyncio.Event()  # cleared while the LoRA switch holds new requests back
        self._gate.set()
        self._in_flight = 0  # generate() calls inside the engine
        self._drained = asyncio.Event()
        self._drained.set()
        self._tokenizer = llm.get_tokenizer()
        self._specials = special_token_pattern(special_token_strings(self._tokenizer))
        self._death_logged = False
        self._restart_attempts = restart_attempts
        self._restart_backoff_s = restart_backoff_s
        self.restarting = False
        self._gave_up = False
        self.restarts = 0  # successful restarts since the server started
        self.asleep = False  # vLLM sleep mode: weights offloaded, KV cache freed (GPU only)
        if adapters is None:
            self.adapters = AdapterStore(adapters_dir, entry, llm.model_config.hf_config.to_dict(), llm)
            self.adapters.lora_on = lora
            self.adapters.load_existing()
        else:  # a model loaded again (on demand, after an unload): the same adapters, into the new engine
            self.adapters = adapters
            if not adapters.model_config:  # its config could not be read before it loaded
                adapters.model_config = llm.model_config.hf_config.to_dict()
                adapters.load_existing()
        self.adapters.ensure_lora = self.enable_lora
        self._watchdog: asyncio.Task | None = None

    @property
    def dtype(self) -> str:
        """The dtype vLLM computes in, its `auto` resolved (a float32 checkpoint serves in bfloat16 on a GPU)."""
        return str(self._llm.model_config.dtype).removeprefix("torch.")

    @classmethod
    async def start(
        cls,
        entry: ModelEntry,
        adapters_dir: Path,
        *,
        adapters: AdapterStore | None = None,
        restart_attempts: int = 0,
        restart_backoff_s: float = 1.0,
        lora_wait_s: float = 300.0,
    ) -> Engine:
        """Start an engine without blocking the event loop (the server keeps answering), watched; `close` ends it."""
        lora = await asyncio.to_thread(lora_at_start, entry, adapters_dir, adapters)
        if entry.lora.enabled == "auto":
            logger.info(
                "model %s starts %s LoRA (lora.enabled: auto; %s)",
                entry.name,
                "with" if lora else "without",
                "adapters to serve" if lora else "no adapters yet: switched on when one is first needed",
            )
        llm = await asyncio.to_thread(start_llm, entry, lora=lora)
        try:
            engine = cls(
                entry,
                llm,
                adapters_dir,
                adapters=adapters,
                restart_attempts=restart_attempts,
                restart_backoff_s=restart_backoff_s,
                lora=lora,
                lora_wait_s=lora_wait_s,
            )
            if adapters is not None:
                await adapters.attach(llm, lora=lora)
        except BaseException:
            await asyncio.to_thread(llm.shutdown)
            raise
        engine._watchdog = engine.start_watchdog()
        return engine

    async def close(self) -> None:
        """Stop watching and shut the engine down (its processes and memory go; the adapters store stays)."""
        await stop(self._watchdog)
        self._watchdog = None
        if self._lora_task is not None and not self._lora_task.done():  # a LoRA switch under way: let it land,
            with suppress(Exception):  # or its new engine would outlive this one (its failure was logged)
                await self._lora_task
        await asyncio.to_thread(self._llm.shutdown)

    async def sleep(self) -> None:
        """vLLM sleep mode, level 1 (only where `sleep_mode_available()`): weights offloaded, KV cache freed."""
        await self._llm.sleep(level=1)
        self.asleep = True

    async def wake(self) -> None:
        await self._llm.wake_up()
        self.asleep = False

    def start_watchdog(self, backoff_s: float = 1.0) -> asyncio.Task:
        """The watchdog below, supervised: a failure of its own is logged and it starts again."""
        return start_supervised("engine watchdog", self._watch_for_death, backoff_s)

    async def _watch_for_death(self) -> None:
        """Wake every request still waiting on a dead engine, then bring a new one up.

        vLLM fails the requests it knows of when its engine core dies, but one
        added while the core was dying can wait forever for output: so, while
        the engine is dead, fail whatever is still waiting.
        """
        while True:
            await asyncio.sleep(WATCHDOG_INTERVAL_S)
            if self._llm.errored and not self.lora_switching:  # the switch shuts its old engine down itself
                self._log_death_once()
                self._llm.output_processor.propagate_error(EngineDeadError())
                if self.restarts_left:
                    await self._restart()

    @property
    def restarts_left(self) -> bool:
        return self._restart_attempts > 0 and not self._gave_up

    async def _restart(self) -> None:
        """Replace the dead `AsyncLLM` with a new one; give up (503 until a person restarts) after the last try."""
        self.restarting = True
        dead = self._llm
        try:
            dead.output_processor.propagate_error(EngineDeadError())
            await asyncio.to_thread(dead.shutdown)  # reaps what is left of the dead engine's processes
            for attempt in range(1, self._restart_attempts + 1):
                wait_s = self._restart_backoff_s * 2 ** (attempt - 1)
                logger.warning(
                    "restarting vLLM engine for %s (try %d of %d)", self.entry.name, attempt, self._restart_attempts
                )
                try:
                    # In a thread: the engine core takes seconds to start, and the event loop keeps
                    # answering (503 with Retry-After) meanwhile. vLLM starts its output handler on first use.
                    llm = await asyncio.to_thread(start_llm, self.entry, lora=self.lora_enabled)
                except Exception:
                    logger.exception("engine restart %d failed; next try in %.1fs", attempt, wait_s)
                    await asyncio.sleep(wait_s)
                    continue
                dead.output_processor.propagate_error(EngineDeadError())  # anything that slipped in meanwhile
                self._llm = llm
                self._death_logged = False
                self.restarts += 1
                await self.adapters.attach(llm, lora=self.lora_enabled)
                logger.warning("vLLM engine for %s is serving again (restart %d)", self.entry.name, self.restarts)
                return
            self._gave_up = True
            logger.error("vLLM engine for %s did not restart after %d tries", self.entry.name, self._restart_attempts)
        finally:
            self.restarting = False

    # --- LoRA `auto`: LoRA slots only once an adapter is needed ----------------------------------------------

    @property
    def lora_state(self) -> str:
        """`on`, `off` (no LoRA slots: base-model requests run at full speed) or `switching` (restarting with them)."""
        return "switching" if self.lora_switching else "on" if self.lora_enabled else "off"

    async def enable_lora(self, reason: str) -> None:
        """Restart the engine in place with LoRA slots (LoRA `auto`), gracefully: new requests wait (at most
        `lora_wait_s`), running ones finish, then the engine restarts with LoRA and the adapters are loaded.
        A no-op when the engine has LoRA, or when the entry says `lora.enabled: false` (the engine then refuses
        the adapter, as before)."""
        if self.lora_enabled or self.entry.lora.enabled != "auto":
            return
        if self._lora_task is None or self._lora_task.done():  # callers that arrive meanwhile wait for the one switch
            self._lora_task = asyncio.create_task(self._switch_to_lora(reason), name=f"lora:{self.entry.name}")
        # Shielded: a caller that goes away (a client disconnecting) must not stop the switch half-way.
        await asyncio.shield(self._lora_task)

    async def _switch_to_lora(self, reason: str) -> None:
        metrics = self.adapters.metrics
        started = time.monotonic()
        self.lora_switching = True
        self._gate.clear()
        logger.warning(
            "model %s: LoRA needed (%s): holding new requests, draining %d running, restarting its engine with LoRA",
            self.entry.name,
            reason,
            self._in_flight,
        )
        try:
            try:
                await asyncio.wait_for(self._drained.wait(), self._lora_wait_s)
            except TimeoutError:
                logger.warning(
                    "model %s: %d requests still running after %.0fs; restarting with LoRA anyway (they fail)",
                    self.entry.name,
                    self._in_flight,
                    self._lora_wait_s,
                )
            logger.info("model %s: drained in %.1fs; restarting with LoRA", self.entry.name, time.monotonic() - started)
            old = self._llm
            await asyncio.to_thread(old.shutdown)
            try:
                llm = await asyncio.to_thread(start_llm, self.entry, lora=True)
            except Exception:
                logger.exception("model %s: engine did not start with LoRA; starting it again without", self.entry.name)
                metrics.lora_switched(self.entry.name, False, time.monotonic() - started)
                self._llm = await asyncio.to_thread(start_llm, self.entry, lora=False)
                await self.adapters.attach(self._llm, lora=False)
                raise EngineUnavailable(
                    "The model engine could not be started with LoRA adapters; please retry later.", retry_after_s=60
                ) from None
            self._llm = llm
            self.lora_enabled = True
            self.lora_switches += 1
            await self.adapters.attach(llm, lora=True)
            seconds = time.monotonic() - started
            metrics.lora_switched(self.entry.name, True, seconds)
            logger.warning("model %s: serving with LoRA now (switched in %.1fs)", self.entry.name, seconds)
        finally:
            self.lora_switching = False
            self._gate.set()

    async def _enter(self) -> None:
        """Count a request into the engine, first waiting while a LoRA switch holds new requests back."""
        if not self._gate.is_set():
            try:
                await asyncio.wait_for(self._gate.wait(), self._lora_wait_s)
            except TimeoutError:
                raise EngineUnavailable(
                    "The model engine is restarting with LoRA adapters; please retry shortly.", retry_after_s=10
                ) from None
        self._in_flight += 1
        self._drained.clear()

    def _leave(self) -> None:
        self._in_flight -= 1
        if self._in_flight == 0:
            self._drained.set()

    @property
    def retry_after_s(self) -> int:
        """What a refused caller is told to wait: an engine start takes tens of seconds on a CPU."""
        return 10 if self.restarting or self.restarts_left else 60

    @property
    def max_model_len(self) -> int:
        return self._llm.model_config.max_model_len

    @property
    def is_dead(self) -> bool:
        return self._llm.errored and not self.lora_switching

    @property
    def status(self) -> str:
        """`ok`, `restarting` (dead, a new engine coming up) or `engine_dead` (no more tries). A LoRA switch is
        `ok`: requests wait for it rather than fail (`lora_state` says `switching`)."""
        if not self.is_dead:
            return "ok"
        return "restarting" if self.restarting or self.restarts_left else "engine_dead"

    @property
    def running_requests(self) -> int:
        """Requests the engine holds (queued or generating)."""
        return self._llm.get_num_unfinished_requests()

    def count_tokens(self, text: str) -> int:
        return len(self._tokenizer.encode(text, add_special_tokens=False))

    async def complete(self, turns: Sequence[ChatTurn], options: GenerationOptions, request_id: str) -> str:
        """The whole text of one choice: for the server's own uses of its model (memory curation)."""
        prepared = self.prepare_chat(turns, options, stream=False)
        return "".join([delta.text async for delta in self.generate(prepared, request_id)])

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
        self._raise_if_dead()
        version = self.adapters.get(adapter, adapter_param) if adapter is not None else None
        _, token_ids = render_prompt(self._tokenizer, turns, tool_use, self.entry.tool_format, self._specials)
        if tool_use is not None and tool_use.offers_tools and tool_use.forced:
            # A required or named call is enforced by structured output, like vLLM's own server.
            options = replace(options, json=JsonConstraint(forced_call_schema(tool_use)))
        try:
            params = build_sampling_params(
                options,
                self.entry.sampling,
                prompt_tokens=len(token_ids),
                max_model_len=self.max_model_len,
                stream=stream,
                # Llama's <|python_tag|> and Mistral's [TOOL_CALLS] are special tokens the parser must see.
                skip_special_tokens=not (tool_use and tool_use.offers_tools and self.entry.tool_format != "hermes"),
            )
        except (ValueError, VLLMValidationError) as exc:  # vLLM's own checks on combinations of values
            raise InvalidOption(str(exc), getattr(exc, "parameter", None)) from exc
        return PreparedChat(token_ids, params, tool_use, version)

    # --- raw prompts and tokens (legacy completions, /tokenize, /detokenize) ---------------------------------

    @property
    def vocab_size(self) -> int:
        return len(self._tokenizer)

    def tokenize(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=add_special_tokens)

    def detokenize(self, token_ids: Sequence[int], param: str = "tokens") -> str:
        """The text of `token_ids`; an id outside the vocabulary is an `InvalidOption` naming `param`."""
        size = self.vocab_size
        for position, token_id in enumerate(token_ids):
            if not 0 <= token_id < size:
                raise InvalidOption(
                    f"Token id {token_id} at position {position} is not in the vocabulary (0-{size - 1}).", param
                )
        return self._tokenizer.decode(list(token_ids))

    def render_chat(self, turns: Sequence[ChatTurn], tool_use: ToolUse | None = None) -> tuple[str, list[int]]:
        """The chat prompt the model would see for `turns` (text and token ids), without generating."""
        return render_prompt(self._tokenizer, turns, tool_use, self.entry.tool_format)

    def prepare_prompt(
        self,
        token_ids: Sequence[int],
        options: GenerationOptions,
        *,
        stream: bool,
        adapter: str | None = None,
        adapter_param: str = "lora_name",
    ) -> PreparedChat:
        """A raw prompt (no chat template), for legacy text completions."""
        self._raise_if_dead()
        version = self.adapters.get(adapter, adapter_param) if adapter is not None else None
        try:
            params = build_sampling_params(
                options,
                self.entry.sampling,
                prompt_tokens=len(token_ids),
                max_model_len=self.max_model_len,
                stream=stream,
            )
        except (ValueError, VLLMValidationError) as exc:
            raise InvalidOption(str(exc), getattr(exc, "parameter", None)) from exc
        return PreparedChat(list(token_ids), params, None, version)

    async def generate(self, prepared: PreparedChat, request_id: str) -> AsyncIterator[CompletionDelta]:
        """Run the request; cancelling the iteration aborts it in the engine."""
        if prepared.adapter is not None and not self.lora_enabled:
            await self.enable_lora(f"a request for adapter {prepared.adapter.name}")
        await self._enter()
        try:
            async for delta in self._generate(prepared, request_id):
                yield delta
        finally:
            self._leave()

    async def _generate(self, prepared: PreparedChat, request_id: str) -> AsyncIterator[CompletionDelta]:
        self._raise_if_dead()
        prompt = TokensPrompt(prompt_token_ids=prepared.prompt_token_ids)
        top_logprobs = prepared.sampling_params.logprobs
        readers: dict[int, ChoiceToolReader] = {}
        prompt_entries: list[TokenLogprob] | None = None  # vLLM sends them once, at the end of prefill
        adapter = prepared.adapter
        try:
            async with self.adapters.lease(adapter) if adapter is not None else nullcontext() as leased:
                lora_request = leased.lora_request if leased is not None else None
                async for output in self._llm.generate(
                    prompt, prepared.sampling_params, request_id, lora_request=lora_request
                ):
                    if prompt_entries is None and output.prompt_logprobs:
                        prompt_entries = token_logprobs(
                            prepared.prompt_token_ids[1:],
                            output.prompt_logprobs[1:],  # type: ignore[arg-type]  # only the first is None
                            prepared.sampling_params.prompt_logprobs or 0,
                        )
                    for completion in output.outputs:
                        reader = readers.get(completion.index)
                        first = reader is None
                        if reader is None:
                            reader = ChoiceToolReader(prepared.tool_use, self.entry.tool_format)
                            readers[completion.index] = reader
                        delta = self._delta(completion, reader, top_logprobs, output.num_cached_tokens)
                        yield replace(delta, prompt_logprobs=prompt_entries) if first else delta
        except VLLMValidationError as exc:
            raise InvalidOption(str(exc), exc.parameter) from exc
        except (EngineDeadError, EngineGenerateError) as exc:
            self._log_death_once()
            raise self._unavailable() from exc

    def _delta(
        self,
        completion: CompletionOutput,
        reader: ChoiceToolReader,
        top_logprobs: int | None,
        cached_tokens: int | None,
    ) -> CompletionDelta:
        text, calls = reader.feed(completion.text)
        reason = completion.finish_reason
        if reason is not None:
            tail, more_calls = reader.finish(reason)
            text, calls = text + tail, calls + more_calls
            if reason == "stop" and reader.called:
                reason = "tool_calls"
        return CompletionDelta(
            index=completion.index,
            text=text,
            new_tokens=len(completion.token_ids),
            finish_reason=reason,
            tool_calls=calls,
            logprobs=self._content_logprobs(completion, top_logprobs),
            cached_tokens=cached_tokens,
        )

    @staticmethod
    def _content_logprobs(completion: CompletionOutput, top_logprobs: int | None) -> list[TokenLogprob] | None:
        if top_logprobs is None or not completion.logprobs:
            return None
        entries = token_logprobs(completion.token_ids, completion.logprobs, top_logprobs)
        if completion.finish_reason == "stop" and not isinstance(completion.stop_reason, str):
            # The end-of-turn token that stopped generation is not part of the content.
            entries = entries[:-1]
        return entries or None

    def _unavailable(self) -> EngineUnavailable:
        message = (
            "The model engine is restarting; please retry shortly."
            if self.restarting or self.restarts_left
            else "The model engine is not available; please retry later."
        )
        return EngineUnavailable(message, retry_after_s=self.retry_after_s)

    def _raise_if_dead(self) -> None:
        if self.is_dead:
            self._log_death_once()
            raise self._unavailable()

    def _log_death_once(self) -> None:
        if self.is_dead and not self._death_logged:
            self._death_logged = True
            logger.error(
                "vLLM engine for %s is dead: answering 503 to every generation request until %s",
                self.entry.name,
                "it has restarted" if self.restarts_left else "the server is restarted",
            )
