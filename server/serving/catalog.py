"""The model catalog: what a model name serves here, and through which provider.

One answer for chat, `/v1/models`, `/v1/endpoints` and fine-tuning: the served
model (by its name or an alias), its LoRA adapters (vLLM's convention: an
adapter's name as `model`), and `model@provider` for the providers in
models.yaml (`@local` is this server).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from server.config import ModelEntry, ProviderEntry
from server.errors import ServerError
from server.gateway.errors import ModelUnavailable, ProviderNotFound
from server.gateway.routing import LOCAL_PROVIDER, Route, parse_model_ref


class AdapterNames(Protocol):
    """What the catalog reads of the adapter registry (`engine.adapters`)."""

    def __contains__(self, name: str) -> bool: ...

    def list(self) -> list: ...  # AdapterVersion-like: `.name`, `.version`

    def get(self, name: str) -> Any: ...  # AdapterVersion-like

    def ownership(self, name: str) -> Any: ...  # engine.adapters.Ownership, or None when there is no such adapter


@dataclass(frozen=True, slots=True)
class LocalModel:
    """A request's local model: the base model entry, the adapter to run on (or None) and the param naming it."""

    entry: ModelEntry
    adapter: str | None
    adapter_param: str


class ModelCatalog:
    def __init__(self, served: ModelEntry, adapters: AdapterNames, providers: Sequence[ProviderEntry]) -> None:
        self.served = served
        self.adapters = adapters
        self.providers = {provider.name: provider for provider in providers}

    def base_model(self, name: str) -> ModelEntry | None:
        """The served model, when `name` is its name or an alias (adapters are not base models)."""
        return self.served if name in self.served.names else None

    def is_adapter(self, name: str) -> bool:
        return name in self.adapters

    def adapter_version(self, name: str) -> int:
        return self.adapters.get(name).version

    def serves_here(self, name: str) -> bool:
        return self.is_adapter(name) or self.base_model(name) is not None

    def local_names(self) -> list[str]:
        """Every name this server's engine answers to: the served model, its aliases and its adapters."""
        return [*self.served.names, *(version.name for version in self.adapters.list())]

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
        if self.is_adapter(model) or self.base_model(model) is not None:
            return self.served.name
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
            return LocalModel(self.served, model, "model")
        entry = self.base_model(model)
        if entry is None:
            raise ModelUnavailable(model)
        if adapter_is_target:
            ready = run_on_target and lora_name is not None and lora_name in self.adapters
            return LocalModel(entry, lora_name if ready else None, "lora_name")
        return LocalModel(entry, lora_name, "lora_name")


class ConflictingAdapters(ServerError):
    status, type, param = 400, "invalid_request_error", "lora_name"

    def __init__(self) -> None:
        super().__init__("`model` names one adapter and `lora_name` another.")
