"""LoRA adapters on the served base model: validation, the on-disk store, engine registration.

Layout: `<root>/<name>/v<N>/` holds one version (peft's adapter_config.json and
adapter_model.safetensors, plus our manifest.json); `<root>/<name>/active` names
the version new requests use. The directory is the registry, so a restart finds
every adapter again.

Every version gets its own engine LoRA id and name (`name@vN`): vLLM keys its
caches (adapter slots, prefix-cache blocks) on those, so a replaced version can
never serve stale state. Requests hold a lease on the version they started
with; a replaced or deleted version leaves the engine when its last request ends.

Servers that share a database share one adapters directory too, and keep the
registry (owners, versions, the active pointer) in that database instead
(server/engine/registry.py sets `registry`): the store then serves what the
registry's latest reading (`registered`) names active, and claims version
numbers and ownership there.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import json
import logging
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from safetensors import safe_open
from vllm.lora.request import LoRARequest

from server.config import ModelEntry
from server.errors import ServerError
from server.observability.metrics import Metrics

if TYPE_CHECKING:
    from server.engine.registry import AdapterRegistry, Registered

logger = logging.getLogger(__name__)

ADAPTER_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_\-]{0,63}$")
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
MANIFEST_FILE = "manifest.json"
NO_ACTIVE_VERSION = "none"  # `active` when versions exist but none has been promoted
ACTIVE_FILE = "active"
OWNER_FILE = "owner.json"  # {"owner": <owner id>, "shared": bool}: who may change the adapter, who may use it
# Linear layers vLLM can put LoRA on for Llama/Mistral-style models.
SUPPORTED_TARGET_MODULES = frozenset({"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"})
DRAIN_TIMEOUT_S = 300


class AdapterError(ServerError):
    """Base of the adapter errors; each names the request field at fault."""

    status, type = 400, "invalid_request_error"


class InvalidAdapter(AdapterError):
    """The adapter cannot serve on this base model (400)."""

    code = "invalid_adapter"

    def __init__(self, message: str, param: str | None = "path") -> None:
        super().__init__(message)
        self.param = param


class AdapterNotFound(AdapterError):
    """No adapter of that name (404)."""

    status, code = 404, "adapter_not_found"

    def __init__(self, name: str, param: str | None = "lora_name") -> None:
        super().__init__(f"The adapter `{name}` does not exist.")
        self.param = param


class AdapterOwned(AdapterError):
    """Another owner's adapter: only its owner or an admin may add versions, activate, unload or delete it (403)."""

    status, type, code = 403, "permission_error", "adapter_not_owned"

    def __init__(self, name: str, param: str | None = "name") -> None:
        super().__init__(f"The adapter `{name}` belongs to another API key; only its owner or an admin may change it.")
        self.param = param


class AdapterQuotaExceeded(AdapterError):
    """An owner's adapters or an adapter's versions are at their quota (403)."""

    status, type, code = 403, "permission_error", "quota_exceeded"

    def __init__(self, message: str, param: str | None = "name") -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True, slots=True)
class Ownership:
    """Who owns an adapter (an opaque owner id) and whether its owner shared it with every key.

    Adapters without an owner file (put on disk by the operator) are the operator's, shared."""

    owner: str | None
    shared: bool

    def may_use(self, owner: str, admin: bool) -> bool:
        return admin or self.shared or self.owner == owner

    def may_change(self, owner: str, admin: bool) -> bool:
        return admin or (self.owner is not None and self.owner == owner)


OPERATOR_OWNED = Ownership(owner=None, shared=True)


def read_ownership(directory: Path) -> Ownership:
    try:
        raw = json.loads((directory / OWNER_FILE).read_text())
    except (OSError, ValueError):
        return OPERATOR_OWNED
    if not isinstance(raw, dict) or not isinstance(raw.get("owner"), str):
        return OPERATOR_OWNED
    return Ownership(owner=raw["owner"], shared=bool(raw.get("shared", False)))


def check_name(name: object, param: str = "name") -> str:
    if not isinstance(name, str) or not ADAPTER_NAME.match(name):
        raise InvalidAdapter(
            f"Adapter names are identifiers (a letter, then letters, digits, '_' or '-', at most 64): got {name!r}.",
            param,
        )
    return name


def module_shapes(model_config: dict) -> dict[str, tuple[int, int]]:
    """(in_features, out_features) of each LoRA-able linear layer of a Llama-style model."""
    hidden = model_config["hidden_size"]
    heads = model_config["num_attention_heads"]
    head_dim = model_config.get("head_dim") or hidden // heads
    kv = model_config.get("num_key_value_heads", heads) * head_dim
    inner = model_config["intermediate_size"]
    return {
        "q_proj": (hidden, heads * head_dim),
        "k_proj": (hidden, kv),
        "v_proj": (hidden, kv),
        "o_proj": (heads * head_dim, hidden),
        "gate_proj": (hidden, inner),
        "up_proj": (hidden, inner),
        "down_proj": (inner, hidden),
    }


@dataclass(frozen=True, slots=True)
class AdapterFacts:
    rank: int
    target_modules: tuple[str, ...]
    base_model: str | None


def inspect_adapter(path: Path, entry: ModelEntry, model_config: dict) -> AdapterFacts:
    """Everything that would make vLLM refuse (or misuse) the adapter, checked before it gets near the engine."""
    config_path, weights_path = path / CONFIG_FILE, path / WEIGHTS_FILE
    if not config_path.is_file() or not weights_path.is_file():
        raise InvalidAdapter(f"An adapter directory needs {CONFIG_FILE} and {WEIGHTS_FILE}.")
    try:
        config = json.loads(config_path.read_text())
        assert isinstance(config, dict)
    except (ValueError, AssertionError):
        raise InvalidAdapter(f"{CONFIG_FILE} is not a JSON object.") from None
    if config.get("peft_type", "LORA") != "LORA":
        raise InvalidAdapter(f"Only LoRA adapters are supported, not {config.get('peft_type')}.")
    rank = config.get("r")
    if not isinstance(rank, int) or rank < 1:
        raise InvalidAdapter(f"{CONFIG_FILE} has no valid rank `r`.")
    if rank > entry.lora.max_lora_rank:
        raise InvalidAdapter(f"Adapter rank {rank} is above this server's max_lora_rank {entry.lora.max_lora_rank}.")
    targets = config.get("target_modules") or []
    targets = [targets] if isinstance(targets, str) else list(targets)
    unsupported = sorted(set(targets) - SUPPORTED_TARGET_MODULES)
    if not targets or unsupported:
        raise InvalidAdapter(
            f"Unsupported target modules {unsupported or targets}; supported: {sorted(SUPPORTED_TARGET_MODULES)}."
        )
    manifest = read_manifest(path)
    base = manifest.get("base_model") or config.get("base_model_name_or_path")
    known = {*entry.names, entry.source, str(entry.source_path), entry.source_path.name}
    if base and base not in known:
        raise InvalidAdapter(f"The adapter was trained for `{base}`, not for the served model `{entry.name}`.")
    _check_weights(weights_path, rank, module_shapes(model_config))
    return AdapterFacts(rank=rank, target_modules=tuple(sorted(targets)), base_model=base)


def _check_weights(weights_path: Path, rank: int, shapes: dict[str, tuple[int, int]]) -> None:
    try:
        with safe_open(str(weights_path), framework="pt") as weights:
            items = [(key, weights.get_slice(key).get_shape()) for key in weights.keys()]  # noqa: SIM118  # a safetensors handle, not a dict
    except Exception as exc:  # noqa: BLE001  # safetensors raises its own error types for a broken header
        raise InvalidAdapter(f"{WEIGHTS_FILE} is not a readable safetensors file: {exc}") from None
    if not items:
        raise InvalidAdapter(f"{WEIGHTS_FILE} holds no tensors.")
    for key, shape in items:
        module = next((name for name in shapes if f".{name}." in key), None)
        if module is None or len(shape) != 2:
            continue
        in_features, out_features = shapes[module]
        expected = (rank, in_features) if "lora_A" in key else (out_features, rank) if "lora_B" in key else None
        if expected is not None and tuple(shape) != expected:
            raise InvalidAdapter(
                f"Tensor {key} has shape {list(shape)}, the served model needs {list(expected)}: "
                "the adapter was trained for a different base model."
            )


def read_manifest(path: Path) -> dict:
    try:
        manifest = json.loads((path / MANIFEST_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return manifest if isinstance(manifest, dict) else {}


@dataclass(slots=True)
class AdapterVersion:
    name: str
    version: int
    path: Path
    engine_id: int
    manifest: dict
    in_flight: int = 0
    drained: asyncio.Event = field(default_factory=asyncio.Event)
    retired: bool = False  # replaced or removed: new leases go to the version active now

    @property
    def lora_request(self) -> LoRARequest:
        return LoRARequest(
            lora_name=f"{self.name}@v{self.version}", lora_int_id=self.engine_id, lora_path=str(self.path)
        )


class AdapterStore:
    """The adapters of the served model, on disk and in the engine."""

    def __init__(self, root: Path, entry: ModelEntry, model_config: dict, engine_client) -> None:
        self.root = root
        self.entry = entry
        self.model_config = model_config
        self._engine = engine_client  # vLLM AsyncLLM: add_lora / remove_lora
        self._active: dict[str, AdapterVersion] = {}
        self._ids = itertools.count(1)
        self._lock = asyncio.Lock()
        self._retiring: set[asyncio.Task] = set()  # holds the tasks so they are not garbage-collected
        self.metrics = Metrics()  # the app puts its own here (app.py)
        self.registry: AdapterRegistry | None = None  # the shared database's registry (None: the directory is it)
        self.registered: Registered = {}  # with a registry: its latest reading of this model's adapters
        self.registered_generation = -1  # the registry generation `registered` was read at
        # LoRA `auto` (runtime.Engine): whether the engine has LoRA slots now, and how to get them (an in-place
        # restart with LoRA) before an adapter is loaded into it.
        self.lora_on = True
        self.ensure_lora: Callable[[str], Awaitable[None]] | None = None

    def load_existing(self) -> None:
        """Register the active version of every valid adapter on disk (vLLM loads weights on first use)."""
        self.root.mkdir(parents=True, exist_ok=True)
        for name in self._adapter_names():
            self._sync(name)

    def _adapter_names(self) -> list[str]:
        if self.registry is not None:
            return sorted(self.registered)
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and ADAPTER_NAME.match(p.name))

    def _active_number(self, name: str) -> int | None:
        if self.registry is not None:
            registered = self.registered.get(name)
            if registered is None or registered.active not in registered.versions:
                return None
            return registered.active
        directory = self.root / name
        return self._active_version_number(directory) if directory.is_dir() else None

    async def apply_registry(self, generation: int, registered: Registered) -> None:
        """Serve what the registry names active at `generation` (another server may have added, promoted or deleted);
        a reading older than the one applied (taken before this server's own change) is ignored."""
        async with self._lock:
            self._apply_registry(generation, registered)

    def _apply_registry(self, generation: int, registered: Registered) -> None:
        if generation < self.registered_generation:
            return
        self.registered, self.registered_generation = registered, generation
        self._sync_all()

    def _sync(self, name: str) -> None:
        """Serve the version the registry names active for `name` (none when it is gone or has none)."""
        directory = self.root / name
        number = self._active_number(name)
        current = self._active.get(name)
        if current is not None and current.version == number:
            return
        path = directory / f"v{number}"
        if number is not None:
            try:  # the folder may hold adapters of another base model, or damaged files
                inspect_adapter(path, self.entry, self.model_config)
            except InvalidAdapter as exc:
                logger.warning("not serving adapter %s v%d: %s", name, number, exc)
                number = None
        if number is None:
            self._active.pop(name, None)
        else:
            self._active[name] = AdapterVersion(name, number, path, next(self._ids), read_manifest(path))
        if current is not None:
            self._retire_later(current)

    def _sync_all(self) -> None:
        for name in {*self._active, *self._adapter_names()}:
            self._sync(name)

    def _retire_later(self, version: AdapterVersion) -> None:
        task = asyncio.create_task(self._retire(version))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def attach(self, engine_client, *, lora: bool = True) -> None:
        """Serve through a new engine (the old one died, or it restarted with LoRA): load the active versions into
        it again (`lora=False`: an engine without LoRA slots; versions are loaded once it has them)."""
        async with self._lock:
            self._engine = engine_client
            self.lora_on = lora
            for version in list(self._active.values()) if lora else []:
                try:
                    await engine_client.add_lora(version.lora_request)
                except Exception:  # its files may be gone or damaged: later requests for it get the engine's error
                    logger.exception("adapter %s v%d could not be loaded again", version.name, version.version)

    @staticmethod
    def _versions(directory: Path) -> list[int]:
        return sorted(int(p.name[1:]) for p in directory.glob("v*") if p.name[1:].isdigit() and p.is_dir())

    def _active_version_number(self, directory: Path) -> int | None:
        return self.active_in_directory(directory, self._versions(directory))

    @staticmethod
    def active_in_directory(directory: Path, versions: list[int]) -> int | None:
        """The version a directory's `active` file names (the latest where it names none valid; None: `none`)."""
        try:
            pointer = (directory / ACTIVE_FILE).read_text().strip()
        except OSError:
            pointer = ""
        if pointer == NO_ACTIVE_VERSION:
            return None
        try:
            chosen = int(pointer.removeprefix("v"))
        except ValueError:
            chosen = None
        return chosen if chosen in versions else (versions[-1] if versions else None)

    def list(self) -> list[AdapterVersion]:
        return [self._active[name] for name in sorted(self._active)]

    def ownership(self, name: str) -> Ownership | None:
        """The adapter's owner (None when no adapter of that name exists on disk)."""
        if self.registry is not None:
            registered = self.registered.get(name)
            return registered.ownership if registered is not None else None
        directory = self.root / name
        if not ADAPTER_NAME.match(name) or not directory.is_dir():
            return None
        return read_ownership(directory)

    def owned_by(self, owner: str) -> list[str]:
        """Names of the adapters (active or not) `owner` owns."""
        if self.registry is not None:
            return sorted(name for name, registered in self.registered.items() if registered.ownership.owner == owner)
        if not self.root.is_dir():
            return []
        return sorted(
            p.name
            for p in self.root.iterdir()
            if p.is_dir() and ADAPTER_NAME.match(p.name) and read_ownership(p).owner == owner
        )

    def is_inside_adapter(self, path: Path) -> str | None:
        """The adapter whose folder holds `path` (resolved), or None."""
        root = self.root.resolve()
        if path == root or root not in path.parents:
            return None
        return path.relative_to(root).parts[0]

    def versions(self, name: str) -> list[tuple[int, dict]]:
        """Every version of `name` on disk, oldest first, with its manifest (served or not)."""
        directory = self.root / check_name(name, "name")
        if self.registry is not None:
            registered = self.registered.get(name)
            if registered is None or not registered.versions:
                raise AdapterNotFound(name, "name")
            return sorted(registered.versions.items())
        versions = self._versions(directory) if directory.is_dir() else []
        if not versions:
            raise AdapterNotFound(name, "name")
        return [(number, read_manifest(directory / f"v{number}")) for number in versions]

    def get(self, name: str, param: str = "lora_name") -> AdapterVersion:
        version = self._active.get(name)
        if version is None:
            raise AdapterNotFound(name, param)
        return version

    def __contains__(self, name: str) -> bool:
        return name in self._active

    @asynccontextmanager
    async def lease(self, version: AdapterVersion, param: str = "lora_name") -> AsyncIterator[AdapterVersion]:
        """Keep `version` in the engine until the caller is done with it.

        A version retired since the request was prepared (promoted over or removed meanwhile) gives way to the one
        active now (AdapterNotFound when none is): leasing it would make vLLM load the retired weights again and
        keep them in its cache.
        """
        if version.retired:
            version = self.get(version.name, param)
        version.in_flight += 1
        version.drained.clear()
        try:
            yield version
        finally:
            version.in_flight -= 1
            if version.in_flight == 0:
                version.drained.set()

    async def add(
        self,
        name: str,
        source: Path,
        *,
        source_label: str,
        activate: bool = True,
        owner: str | None = None,
        admin: bool = True,
        shared: bool | None = None,
        max_versions: int | None = None,
        max_adapters: int | None = None,
    ) -> AdapterVersion:
        """Copy `source` in as the next version of `name`, load it, then switch new requests to it.

        With `activate=False` the version is only kept on disk (a fine-tune that did not beat the current one).
        A new adapter is `owner`'s (shared with every key when `shared`); an existing one takes new versions
        only from its owner or an admin (AdapterOwned). `max_versions` / `max_adapters`: the caller's quotas.
        """
        check_name(name)
        if name in self.entry.names:
            raise InvalidAdapter(f"`{name}` is the base model's own name; choose another adapter name.", "name")
        # File work runs in a thread: an 8B model's adapter is hundreds of MB, and streams must not stall.
        facts = await asyncio.to_thread(inspect_adapter, source, self.entry, self.model_config)
        if activate and not self.lora_on and self.ensure_lora is not None:
            await self.ensure_lora(f"adapter {name} added")  # outside the lock: the restart attaches (takes it)
        if self.registry is not None:
            manifest = self._manifest(name, 0, source, source_label, facts)
            quotas = {"max_versions": max_versions, "max_adapters": max_adapters}
            shared = bool(shared) if shared is not None else owner is None
            return await self._add_registered(
                self.registry, name, source, manifest, owner, admin, shared, activate, quotas
            )
        async with self._lock:
            directory = self.root / name
            exists = directory.is_dir()
            if exists and not read_ownership(directory).may_change(owner or "", admin):
                raise AdapterOwned(name)
            owned = len(self.owned_by(owner)) if not exists and max_adapters is not None and owner else 0
            if max_adapters is not None and owned >= max_adapters:
                raise AdapterQuotaExceeded(f"This API key owns {max_adapters} adapters, its quota; delete one first.")
            if exists and max_versions is not None and len(self._versions(directory)) >= max_versions:
                raise AdapterQuotaExceeded(
                    f"The adapter `{name}` has {max_versions} versions, the quota; delete the adapter or ask an admin."
                )
            directory.mkdir(parents=True, exist_ok=True)
            if not exists:
                ownership = {"owner": owner, "shared": bool(shared) if shared is not None else owner is None}
                # Another server may have made the adapter meanwhile: its owner then decides, as for any existing one.
                created = _create_atomically(directory / OWNER_FILE, json.dumps(ownership) + "\n")
                if not created and not read_ownership(directory).may_change(owner or "", admin):
                    raise AdapterOwned(name)
                if created:  # nothing served until a version is activated (a lookup meanwhile finds no version)
                    _write_atomically(directory / ACTIVE_FILE, f"{NO_ACTIVE_VERSION}\n")
            while True:  # the next number; another server taking it first makes the rename fail: take the next
                number = (self._versions(directory) or [0])[-1] + 1
                target = directory / f"v{number}"
                manifest = self._manifest(name, number, source, source_label, facts)
                try:
                    await asyncio.to_thread(_copy_version, source, target, manifest)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                        raise
            version = AdapterVersion(name, number, target, next(self._ids), manifest)
            if not activate:
                if not (directory / ACTIVE_FILE).exists():  # nothing to serve yet: say so, or a restart would pick it
                    _write_atomically(directory / ACTIVE_FILE, f"{NO_ACTIVE_VERSION}\n")
                self.metrics.adapter_added("stored")
                return version
            try:
                await self._engine.add_lora(version.lora_request)
            except Exception as exc:
                shutil.rmtree(directory if not exists else target, ignore_errors=True)
                self.metrics.adapter_added("failed")
                raise InvalidAdapter(f"The engine could not load the adapter: {exc}") from exc
            _write_atomically(directory / ACTIVE_FILE, f"v{number}\n")
            self.metrics.adapter_added("loaded")
            previous = self._active.get(name)
            self._active[name] = version
        if previous is not None:
            self._retire_later(previous)
        return version

    def _manifest(self, name: str, number: int, source: Path, source_label: str, facts: AdapterFacts) -> dict:
        return {
            **read_manifest(source),
            "name": name,
            "version": number,
            "base_model": self.entry.name,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "source": source_label,
            "rank": facts.rank,
            "target_modules": list(facts.target_modules),
        }

    async def _add_registered(
        self,
        registry: AdapterRegistry,
        name: str,
        source: Path,
        manifest: dict,
        owner: str | None,
        admin: bool,
        shared: bool,
        activate: bool,
        quotas: dict[str, int | None],
    ) -> AdapterVersion:
        """`add` with the shared database's registry: the number claimed there first, then the files, then the
        engine, then the active pointer; a failure on the way gives the claim back."""
        model = self.entry.name
        async with self._lock:
            claim = await registry.claim(model, name, manifest, owner=owner, admin=admin, shared=shared, **quotas)
            target = self.root / name / f"v{claim.version}"
            manifest = {**manifest, "version": claim.version}
            version = AdapterVersion(name, claim.version, target, next(self._ids), manifest)
            try:
                # The number is ours: a folder already there is what a failed attempt left.
                await asyncio.to_thread(_replace_version, source, target, manifest)
                if activate:
                    await self._engine.add_lora(version.lora_request)
            except Exception as exc:
                await registry.forget(model, name, claim)
                await asyncio.to_thread(shutil.rmtree, target, True)
                self.metrics.adapter_added("failed")
                if isinstance(exc, OSError):
                    raise
                raise InvalidAdapter(f"The engine could not load the adapter: {exc}") from exc
            if not activate:
                self.metrics.adapter_added("stored")
            else:
                await registry.activate(model, name, claim.version)
                self.metrics.adapter_added("loaded")
                previous = self._active.get(name)
                self._active[name] = version
                if previous is not None:
                    self._retire_later(previous)
            generation, models = await registry.load()
            self._apply_registry(generation, models.get(model, {}))  # its own version is served already
        return version

    async def remove(
        self, name: str, *, param: str = "name", owner: str | None = None, admin: bool = True
    ) -> AdapterVersion:
        """Stop new requests for `name` now and delete its files; the engine drops it once its running requests finish.

        Only its owner or an admin may (AdapterOwned); one who may not even use it is told it does not exist."""
        async with self._lock:
            version = self._active.get(name)
            ownership = self.ownership(name)
            if version is None or ownership is None or not ownership.may_use(owner or "", admin):
                raise AdapterNotFound(name, param)
            if not ownership.may_change(owner or "", admin):
                raise AdapterOwned(name, param)
            if self.registry is not None:  # checked again there: another server may have changed it meanwhile
                try:
                    removed = await self.registry.remove(
                        self.entry.name, name, self.root / name, owner=owner, admin=admin
                    )
                except (AdapterNotFound, AdapterOwned) as exc:
                    exc.param = param
                    raise
                del self._active[name]
                generation, models = await self.registry.load()
                self._apply_registry(generation, models.get(self.entry.name, {}))
            else:  # out of the registry at once (a rename), for every server; the files go after, off the event loop
                removed = self.root / f".removed-{name}-{uuid.uuid4().hex[:8]}"
                (self.root / name).rename(removed)
                del self._active[name]
            if removed is not None:
                await asyncio.to_thread(shutil.rmtree, removed, True)
        await self._retire(version)
        return version

    async def _retire(self, version: AdapterVersion) -> None:
        version.retired = True
        if version.in_flight:
            try:
                await asyncio.wait_for(version.drained.wait(), DRAIN_TIMEOUT_S)
            except TimeoutError:
                # Never pull weights from under running requests: leave this version to
                # vLLM's LRU adapter cache, which evicts it once nothing uses it.
                logger.warning(
                    "adapter %s v%d still busy after %ss; left to vLLM's cache",
                    version.name,
                    version.version,
                    DRAIN_TIMEOUT_S,
                )
                return
        if self._engine is not None and self.lora_on:  # a model not loaded yet, or without LoRA: nothing to remove
            await self._engine.remove_lora(version.engine_id)


def has_served_adapters(root: Path) -> bool:
    """Whether `root` holds an adapter with a version to serve (read from the directory alone, before any engine
    exists: LoRA `auto` starts the engine with LoRA when it does)."""
    if not root.is_dir():
        return False
    for directory in root.iterdir():
        if not (directory.is_dir() and ADAPTER_NAME.match(directory.name)):
            continue
        versions = AdapterStore._versions(directory)
        try:
            pointer = (directory / ACTIVE_FILE).read_text().strip()
        except OSError:
            pointer = ""
        if versions and pointer != NO_ACTIVE_VERSION:
            return True
    return False


def _copy_version(source: Path, target: Path, manifest: dict) -> None:
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            shutil.copyfile(source / name, staging / name)
        (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _replace_version(source: Path, target: Path, manifest: dict) -> None:
    """`_copy_version` where the number is already claimed: a folder left there by a failed attempt goes first."""
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(target, ignore_errors=True)
    _copy_version(source, target, manifest)


def _create_atomically(path: Path, text: str) -> bool:
    """Create `path` with `text`, whole, unless it exists (False): a hard link, which fails if another was first."""
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    with temporary.open("w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    try:
        os.link(temporary, path)
    except FileExistsError:
        return False
    finally:
        temporary.unlink()
    _fsync_directory(path.parent)
    return True


def _write_atomically(path: Path, text: str) -> None:
    """Replace `path` with `text` so that a crash leaves the old or the new content, never a torn or empty file."""
    temporary = path.with_suffix(".tmp")
    with temporary.open("w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    temporary.replace(path)
    _fsync_directory(path.parent)


def _fsync_directory(path: Path) -> None:
    directory = os.open(path, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def path_under(roots: tuple[Path, ...], candidate: str, param: str = "path") -> Path:
    """`candidate` resolved, if it lies under one of `roots` (no `..` or links leading out)."""
    resolved = Path(candidate).expanduser().resolve()
    for root in roots:
        root = root.resolve()
        if resolved == root or root in resolved.parents:
            return resolved
    # The roots are not named: keys that are not admins never see the server's filesystem paths.
    raise InvalidAdapter("Adapter paths must lie under one of the server's adapter source roots.", param)
