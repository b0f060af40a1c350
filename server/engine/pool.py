"""Several models behind one server: one vLLM engine per served model, loaded on demand, put to sleep when idle.

Each served registry entry has a `ModelSlot`: its engine (or none while unloaded), its adapters (kept across
unloads: an adapter belongs to one base model), its state and when it was last used. The first served model is
the server's own (memory curation, adaption): loaded at start and never put to sleep. Others are loaded at start
(`load: startup`) or on their first request (`load: on_demand`); after `keep_alive` idle seconds (the entry's, or
the last request's, as Ollama's `keep_alive`) they sleep: vLLM's sleep mode where the platform has it (GPU:
weights offloaded, KV cache freed, woken in seconds), else a full unload (CPU: the engine is shut down and started
again on the next request). `max_loaded_models` bounds how many are awake: the least recently used idle one
sleeps to make room.

A request asks `lease(name)`: it waits (up to `model_load_timeout_s`) while its model loads or wakes, then holds
it awake until the lease is released. Nothing here knows about HTTP.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from vllm.platforms import current_platform

from server.config import ModelEntry, check_gpu_shares, parse_keep_alive
from server.engine.adapters import AdapterStore, InvalidAdapter
from server.engine.errors import AdapterOfAnotherModel, EngineUnavailable
from server.engine.placement import this_process_cpus, with_cpu_bindings
from server.engine.runtime import Engine, sleep_mode_available
from server.observability.metrics import Metrics
from server.supervision import start_supervised, stop

logger = logging.getLogger(__name__)

REAP_INTERVAL_S = 0.5


class ModelLoadTimeout(EngineUnavailable):
    """The request's model did not load (or wake) within `model_load_timeout_s`: retry later."""

    code = "model_loading"


class ModelLoadFailed(EngineUnavailable):
    """The model's engine could not be started (the log says why)."""

    code = "model_load_failed"


@dataclass(eq=False)
class ModelSlot:
    entry: ModelEntry
    adapters_dir: Path
    primary: bool  # the server's own model: loaded at start, never put to sleep
    adapters: AdapterStore | None = None
    engine: Engine | None = None
    state: str = "unloaded"  # unloaded, loading, awake, unloading, sleeping (vLLM sleep mode)
    keep_alive_s: float | None = None  # the entry's, until a request says otherwise
    last_used: float = field(default_factory=time.monotonic)
    leases: int = 0
    waiting: int = 0  # requests waiting for it to load or wake
    loads: int = 0  # loads and wakes since the server started
    last_load_s: float | None = None
    error: str | None = None  # why the latest load failed
    task: asyncio.Task | None = None  # the load or wake under way
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one transition (load, wake, sleep) at a time

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def busy(self) -> bool:
        """Requests hold it, or its engine still runs some (a stream whose lease was already handed back)."""
        return (
            self.leases > 0
            or self.waiting > 0
            or (self.engine is not None and not self.engine.asleep and self.engine.running_requests)
        )

    def idle_for(self, now: float) -> float:
        return now - self.last_used

    def describe(self) -> dict:
        """What /health and /v1/models say of it (like `ollama ps`)."""
        return {
            "state": self.state,
            "loaded": self.state == "awake",
            "load": "startup" if self.primary else self.entry.load,
            "keep_alive_s": None if self.primary else self.keep_alive_s,
            "running_requests": self.engine.running_requests if self.state == "awake" and self.engine else 0,
            "lora": self.engine.lora_state if self.engine is not None else None,
            "loads": self.loads,
            "last_load_s": None if self.last_load_s is None else round(self.last_load_s, 3),
            **({"error": self.error} if self.error else {}),
        }


class Lease:
    """A request's hold on an awake model; released once (explicitly, or when the holder is garbage-collected)."""

    def __init__(self, pool: EnginePool, slot: ModelSlot) -> None:
        assert slot.engine is not None
        self.engine: Engine = slot.engine
        self._pool = pool
        self._slot = slot
        self._released = False
        slot.leases += 1

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._slot.leases -= 1
            self._slot.last_used = time.monotonic()

    def release_with(self, holder: object) -> None:
        """Release when `holder` (a generator that may never be started) is collected, if not released before."""
        weakref.finalize(holder, self.release)


@dataclass(frozen=True, slots=True)
class PoolSettings:
    max_loaded_models: int | None = None
    load_timeout_s: float = 300.0
    restart_attempts: int = 0
    restart_backoff_s: float = 1.0


class EnginePool:
    def __init__(
        self,
        entries: Sequence[ModelEntry],
        adapters_dir_for: Callable[[ModelEntry], Path],
        settings: PoolSettings,
        metrics: Metrics | None = None,
        *,
        is_gpu: bool | None = None,
    ) -> None:
        if (not current_platform.is_cpu()) if is_gpu is None else is_gpu:
            check_gpu_shares(entries)  # ConfigError: the served models' shares of the GPU do not fit
        else:
            entries = with_cpu_bindings(entries, this_process_cpus())  # several engines: cores of their own
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.sleep_mode = sleep_mode_available()
        self.slots: dict[str, ModelSlot] = {}
        self._names: dict[str, str] = {}
        for index, entry in enumerate(entries):
            slot = ModelSlot(entry, adapters_dir_for(entry), primary=index == 0, keep_alive_s=entry.keep_alive_s)
            self.slots[entry.name] = slot
            for name in entry.names:
                self._names[name] = entry.name
        self._room = asyncio.Condition()  # notified when a model goes to sleep or a lease ends
        self._reaper: asyncio.Task | None = None

    # --- lifecycle -------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the startup models (the primary first; nothing is served before they are up), set the others'
        adapters up from their config files, and start the idle reaper."""
        for slot in self.slots.values():
            self.metrics.model_in_state(slot.name, slot.state)
        for slot in self.slots.values():
            if slot.primary or slot.entry.load == "startup":
                await self._load(slot, reason="start-up", raise_errors=True)
            else:
                slot.adapters = await asyncio.to_thread(unloaded_adapters, slot.entry, slot.adapters_dir)
                logger.info("model %s will be loaded on its first request (load: on_demand)", slot.name)
        self._reaper = start_supervised("model keep_alive", self._reap)

    async def close(self) -> None:
        await stop(self._reaper)
        for slot in reversed(list(self.slots.values())):
            if slot.task is not None:
                slot.task.cancel()
            if slot.engine is not None:
                await slot.engine.close()
                slot.engine = None

    # --- lookup ------------------------------------------------------------------------------------------------

    @property
    def primary(self) -> Engine:
        slot = next(iter(self.slots.values()))
        assert slot.engine is not None  # loaded at start, never put to sleep
        return slot.engine

    def slot(self, name: str) -> ModelSlot | None:
        canonical = self._names.get(name)
        return self.slots[canonical] if canonical is not None else None

    def adapter_stores(self) -> list[tuple[ModelEntry, AdapterStore]]:
        return [(slot.entry, slot.adapters) for slot in self.slots.values() if slot.adapters is not None]

    def engines(self) -> list[Engine]:
        """The engines that exist now (awake or asleep)."""
        return [slot.engine for slot in self.slots.values() if slot.engine is not None]

    def adapter_slot(self, adapter: str, base_model: str | None = None, param: str = "base_model") -> ModelSlot:
        """The model an adapter is (or is to be) served on: the one whose folder holds it, else `base_model`,
        else the server's own. InvalidAdapter / AdapterOfAnotherModel when `base_model` does not fit."""
        holder = next(
            (s for s in self.slots.values() if s.adapters is not None and s.adapters.ownership(adapter) is not None),
            None,
        )
        if base_model is None:
            return holder or next(iter(self.slots.values()))
        slot = self.slot(base_model)
        if slot is None:
            raise InvalidAdapter(f"`{base_model}` is not a model this server serves.", param)
        if holder is not None and holder is not slot:
            raise AdapterOfAnotherModel(adapter, holder.name, slot.name, param)
        return slot

    @asynccontextmanager
    async def awake_adapters(self, slot: ModelSlot) -> AsyncIterator[AdapterStore]:
        """`slot`'s adapters with its engine awake (loaded first if need be): adding one loads it into the engine."""
        lease = await self.lease(slot.name)
        try:
            assert slot.adapters is not None
            yield slot.adapters
        finally:
            lease.release()

    def describe(self) -> dict[str, dict]:
        return {slot.name: slot.describe() for slot in self.slots.values()}

    # --- requests -------------------------------------------------------------------------------------------------

    async def lease(self, name: str, keep_alive: str | float | None = None) -> Lease:
        """Hold `name`'s model awake for a request, loading or waking it first (waiting at most the load timeout).

        `keep_alive` (a request's; None: it says nothing): how long the model stays awake once idle, from now on
        (Ollama's meaning: seconds or a duration, negative for ever, 0 to sleep as soon as the request is done)."""
        slot = self.slot(name)
        if slot is None:
            raise KeyError(name)
        if keep_alive is not None and not slot.primary:
            slot.keep_alive_s = parse_keep_alive(keep_alive)
        slot.last_used = time.monotonic()
        if slot.state != "awake":
            await self._wait_awake(slot)
        return Lease(self, slot)

    async def _wait_awake(self, slot: ModelSlot) -> None:
        timeout = self.settings.load_timeout_s
        deadline = time.monotonic() + timeout
        slot.waiting += 1  # a model someone waits for is not idle, whatever its keep_alive
        try:
            while slot.state != "awake":
                if slot.task is None or slot.task.done():
                    slot.task = asyncio.create_task(self._load(slot, reason="request"), name=f"load:{slot.name}")
                task = slot.task
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                done, _ = await asyncio.wait({task}, timeout=left)
                if done and slot.state == "unloaded" and slot.error is not None:
                    raise ModelLoadFailed(
                        f"The model `{slot.name}` could not be loaded; please retry later.", retry_after_s=30
                    )
        finally:
            slot.waiting -= 1
        if slot.state != "awake":
            logger.warning("a request for %s gave up after waiting %.0fs for it to load", slot.name, timeout)
            raise ModelLoadTimeout(
                f"The model `{slot.name}` is still loading (waited {timeout:g}s); please retry shortly.",
                retry_after_s=max(1, min(60, round(timeout))),
            )

    # --- transitions -------------------------------------------------------------------------------------------

    def _set_state(self, slot: ModelSlot, state: str) -> None:
        slot.state = state
        self.metrics.model_in_state(slot.name, state)

    async def _load(self, slot: ModelSlot, *, reason: str, raise_errors: bool = False) -> None:
        """Start (or wake) the model, first putting the least recently used idle one to sleep when at the bound."""
        async with slot.lock:
            if slot.state == "awake":
                return
            await self._make_room(slot)
            waking = slot.state == "sleeping" and slot.engine is not None
            kind = "wake" if waking else "start"
            self._set_state(slot, "loading")
            logger.info(
                "%s model %s (%s)%s",
                "waking" if waking else "loading",
                slot.name,
                reason,
                "" if waking else f" from {slot.entry.source}",
            )
            started = time.monotonic()
            try:
                if waking:
                    assert slot.engine is not None
                    await slot.engine.wake()
                else:
                    slot.engine = await Engine.start(
                        slot.entry,
                        slot.adapters_dir,
                        adapters=slot.adapters,
                        restart_attempts=self.settings.restart_attempts,
                        restart_backoff_s=self.settings.restart_backoff_s,
                        lora_wait_s=self.settings.load_timeout_s,
                    )
                    slot.adapters = slot.engine.adapters
            except Exception as exc:  # logged; requests waiting for it get a 503 and the next one tries again
                seconds = time.monotonic() - started
                slot.error = f"{type(exc).__name__}: {exc}"
                self.metrics.model_loaded(slot.name, kind, False, seconds)
                logger.exception("model %s failed to %s after %.1fs", slot.name, kind, seconds)
                if waking and slot.engine is not None:
                    await slot.engine.close()
                slot.engine = None
                self._set_state(slot, "unloaded")
                if raise_errors:
                    raise
                return
            seconds = time.monotonic() - started
            slot.error = None
            slot.loads += 1
            slot.last_load_s = seconds
            slot.last_used = time.monotonic()
            self.metrics.model_loaded(slot.name, kind, True, seconds)
            self._set_state(slot, "awake")
            logger.info("model %s is %s in %.1fs", slot.name, "awake" if waking else "loaded", seconds)

    async def _make_room(self, wanted: ModelSlot) -> None:
        """At the `max_loaded_models` bound: the least recently used idle model sleeps (waiting for one to be idle)."""
        bound = self.settings.max_loaded_models
        if bound is None:
            return
        while True:
            awake = [slot for slot in self.slots.values() if slot is not wanted and slot.state in ("awake", "loading")]
            if len(awake) < bound:
                return
            idle = sorted(
                (slot for slot in awake if slot.state == "awake" and not slot.primary and not slot.busy),
                key=lambda slot: slot.last_used,
            )
            if idle:
                victim = idle[0]
                logger.info("max_loaded_models %d reached: %s goes to sleep for %s", bound, victim.name, wanted.name)
                async with victim.lock:
                    if victim.state == "awake" and not victim.busy:
                        await self._sleep(victim, reason="max_loaded_models")
                continue
            async with self._room:
                try:
                    await asyncio.wait_for(self._room.wait(), timeout=REAP_INTERVAL_S)
                except TimeoutError:
                    pass

    async def _sleep(self, slot: ModelSlot, *, reason: str) -> None:
        """vLLM sleep mode where available, else shut the engine down (the adapters stay, for the next load)."""
        if slot.state != "awake" or slot.engine is None or slot.primary:
            return
        engine = slot.engine
        self._set_state(slot, "unloading")
        started = time.monotonic()
        try:
            if self.sleep_mode:
                await engine.sleep()
                self._set_state(slot, "sleeping")
            else:
                slot.engine = None
                await engine.close()
                self._set_state(slot, "unloaded")
        except Exception:
            logger.exception("model %s could not be put to sleep; unloading it", slot.name)
            slot.engine = None
            await engine.close()
            self._set_state(slot, "unloaded")
        slot.keep_alive_s = slot.entry.keep_alive_s  # a request's keep_alive lasts until the model goes (Ollama's)
        self.metrics.model_slept(slot.name, reason)
        logger.info(
            "model %s is %s (%s) in %.1fs",
            slot.name,
            "asleep" if slot.state == "sleeping" else "unloaded",
            reason,
            time.monotonic() - started,
        )
        async with self._room:
            self._room.notify_all()

    async def _reap(self) -> None:
        """Every half second: models idle for longer than their keep_alive go to sleep."""
        while True:
            await asyncio.sleep(REAP_INTERVAL_S)
            now = time.monotonic()
            for slot in list(self.slots.values()):
                if (
                    slot.state == "awake"
                    and not slot.primary
                    and slot.keep_alive_s is not None
                    and not slot.busy
                    and slot.idle_for(now) >= slot.keep_alive_s
                    and not slot.lock.locked()
                ):
                    async with slot.lock:
                        if slot.state == "awake" and not slot.busy:
                            await self._sleep(slot, reason="keep_alive")


def unloaded_adapters(entry: ModelEntry, adapters_dir: Path) -> AdapterStore:
    """The adapters of a model not loaded yet: checked against its config file; loaded into its engine later."""
    from transformers import AutoConfig

    source = str(entry.source_path) if entry.is_local else entry.source
    try:
        config = AutoConfig.from_pretrained(source).to_dict()
    except (OSError, ValueError) as exc:  # not there (yet): its first request's load says why
        logger.warning("model %s: cannot read its config (%s); its adapters are served once it loads", entry.name, exc)
        return AdapterStore(adapters_dir, entry, {}, None)
    store = AdapterStore(adapters_dir, entry, config, None)
    store.load_existing()
    return store
