"""The model catalog: what a model name serves here, and through which provider.

One answer for chat, `/v1/models`, `/v1/endpoints` and fine-tuning: the served
model (by its name or an alias), its LoRA adapters (vLLM's convention: an
adapter's name as `model`), and `model@provider` for the providers in
models.yaml (`@local` is this server).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from server.config import ModelEntry, ProviderEntry
from server.engine.errors import AdapterOfAnotherModel
from server.errors import ServerError
from server.gateway.errors import ModelUnavailable, ProviderNotFound
from server.gateway.routing import LOCAL_PROVIDER, Route, parse_model_ref


class AdapterNames(Protocol):
    """What the catalog reads of the adapter registry (`engine.adapters`)."""

    def __contains__(self, name: str) -> bool: ...

    def list(self) -> list: ...  # AdapterVersion-like: `.name`, `.version`

    def get(self, name: str) -> Any: ...  # AdapterVersion-like

    def ownership(self, name: str) -> Any: ...  # engine.adapters.Ownership, or None when there is no such adapter


class ModelAdapters:
    """The adapters of every served model, as one: an adapter name is unique on the server and belongs to one
    base model (its `parent`)."""

    def __init__(self, stores: Mapping[str, AdapterNames]) -> None:
        self.stores = dict(stores)

    def __contains__(self, name: str) -> bool:
        return any(name in store for store in self.stores.values())

    def list(self) -> list:
        return sorted((version for store in self.stores.values() for version in store.list()), key=lambda v: v.name)

    def parent(self, name: str) -> str | None:
        """The base model `name`'s adapter runs on (None when no model serves such an adapter)."""
        return next((model for model, store in self.stores.items() if name in store), None)

    def holder(self, name: str) -> str | None:
        """The base model whose adapters folder holds `name`, served or not yet (a trained version not promoted)."""
        return next((model for model, store in self.stores.items() if store.ownership(name) is not None), None)

    def listed(self) -> list[tuple[str, Any]]:
        """(parent model, version) for every adapter served."""
        return [(model, version) for model, store in self.stores.items() for version in store.list()]

    def get(self, name: str) -> Any:
        model = self.parent(name)
        return self.stores[model].get(name) if model is not None else next(iter(self.stores.values())).get(name)

    def ownership(self, name: str) -> Any:
        for store in self.stores.values():
            found = store.ownership(name)
            if found is not None:
                return found
        return None

    def store(self, model: str) -> AdapterNames:
        return self.stores[model]


@dataclass(frozen=True, slots=True)
class LocalModel:
    """A request's local model: the base model entry, the adapter to run on (or None) and the param naming it."""

    entry: ModelEntry
    adapter: str | None
    adapter_param: str


class ModelCatalog:
    """`served`: one entry, or every served entry (the first is the server's own); `adapters`: the first's
    adapters, or each served model's by its name."""

    def __init__(
        self,
        served: ModelEntry | Sequence[ModelEntry],
        adapters: AdapterNames | Mapping[str, AdapterNames],
        providers: Sequence[ProviderEntry],
    ) -> None:
        self.models: tuple[ModelEntry, ...] = (served,) if isinstance(served, ModelEntry) else tuple(served)
        self.served = self.models[0]
        stores = adapters if isinstance(adapters, Mapping) else {self.served.name: adapters}
        self.adapters = ModelAdapters(stores)
        self.providers = {provider.name: provider for provider in providers}

    def base_model(self, name: str) -> ModelEntry | None:
        """The served model `name` names (its name or an alias; adapters are not base models)."""
        return next((entry for entry in self.models if name in entry.names), None)

    def parent_entry(self, adapter: str) -> ModelEntry:
        """The base model an adapter runs on."""
        parent = self.adapters.parent(adapter)
        return self.base_model(parent) or self.served if parent is not None else self.served

    def entry_for(self, name: str) -> ModelEntry | None:
        """The served model a request for `name` runs on (an adapter's base model); None for another provider's."""
        model, provider = parse_model_ref(name)
        if provider not in (None, LOCAL_PROVIDER):
            return None
        return self.parent_entry(model) if self.is_adapter(model) else self.base_model(model)

    def is_adapter(self, name: str) -> bool:
        return name in self.adapters

    def adapter_version(self, name: str) -> int:
        return self.adapters.get(name).version

    def serves_here(self, name: str) -> bool:
        return self.is_adapter(name) or self.base_model(name) is not None

    def local_names(self) -> list[str]:
        """Every name this server's engines answer to: the served models, their aliases and their adapters."""
        return [*(name for entry in self.models for name in entry.names), *(v.name for v in self.adapters.list())]

    def route(self, name: str) -> Route:
        """Where a request for `name` goes; ModelUnavailable or ProviderNotFound when nowhere."""
        model, provider = parse_model_ref(name)
        if provider is None or provider == LOCAL_PROVIDER:
            if not self.serves_here(model):
                raise ModelUnavailable(name)
            return Route(model, None)
        entry = self.providers.get(provider)
        if entry is None:
            raise ProviderNotFound(provider)
        if model not in entry.models:
            raise ModelUnavailable(name)
        return Route(model, provider)

    def canonical(self, name: str) -> str:
        """What a key's `allowed_models` names: an alias as its model, an adapter as its base model,
        `model@local` as the local model; `model@provider` as itself."""
        model, provider = parse_model_ref(name)
        if provider is not None and provider != LOCAL_PROVIDER:
            return name
        if self.is_adapter(model):
            return self.parent_entry(model).name
        entry = self.base_model(model)
        if entry is not None:
            return entry.name
        return model if provider is not None else name

    def adapter_of(self, name: str) -> str | None:
        """The adapter a candidate name runs on by itself (`alpha`, `alpha@local`), or None."""
        model, provider = parse_model_ref(name)
        local = provider is None or provider == LOCAL_PROVIDER
        return model if local and self.is_adapter(model) else None

    def endpoints(self) -> list[tuple[str, str]]:
        """Every (model, provider) pair a request may name as `model@provider`."""
        pairs = [(model, LOCAL_PROVIDER) for model in self.local_names()]
        for provider in self.providers.values():
            pairs += [(model, provider.name) for model in provider.models]
        return pairs

    def local_model(
        self, model: str, lora_name: str | None, *, adapter_is_target: bool, run_on_target: bool
    ) -> LocalModel:
        """The weights a local request runs on.

        `model` may name an adapter (vLLM's way); `lora_name` names one too, or, when adaption
        targets it (`adapter_is_target`), the adapter to run on only if `run_on_target` and a
        promoted version exists (else the base model)."""
        if self.is_adapter(model):
            if lora_name is not None and lora_name != model:
                raise ConflictingAdapters()
            return LocalModel(self.parent_entry(model), model, "model")
        entry = self.base_model(model)
        if entry is None:
            raise ModelUnavailable(model)
        if adapter_is_target:
            holder = self.adapters.holder(lora_name) if lora_name is not None else None
            if holder is not None and holder != entry.name:  # adaption trains and serves it on its own model only
                raise AdapterOfAnotherModel(lora_name or "", holder, entry.name)
            ready = run_on_target and lora_name is not None and lora_name in self.adapters.store(entry.name)
            return LocalModel(entry, lora_name if ready else None, "lora_name")
        if lora_name is not None and lora_name in self.adapters and lora_name not in self.adapters.store(entry.name):
            raise AdapterOfAnotherModel(lora_name, self.adapters.parent(lora_name) or "", entry.name)
        return LocalModel(entry, lora_name, "lora_name")


class ConflictingAdapters(ServerError):
    status, type, param = 400, "invalid_request_error", "lora_name"

    def __init__(self) -> None:
        super().__init__("`model` names one adapter and `lora_name` another.")
