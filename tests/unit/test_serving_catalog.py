"""The model catalog (what a name serves, where) and the provider wire <-> deltas translation."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from server.config import ModelEntry, ProviderEntry
from server.engine import ChatTurn, ToolCall
from server.gateway.errors import ModelUnavailable, ProviderNotFound
from server.gateway.routing import Route, completion_deltas, stream_deltas, upstream_payload
from server.serving.catalog import ConflictingAdapters, ModelCatalog

SERVED = ModelEntry(name="small", aliases=("s",), source="./nowhere", max_model_len=100)
PROVIDERS = [ProviderEntry(name="up", base_url="http://127.0.0.1:1/v1", models=("big",))]


@dataclass
class Version:
    name: str
    version: int


class Adapters:
    def __init__(self, *names: str) -> None:
        self.versions = {name: Version(name, 3) for name in names}

    def __contains__(self, name: str) -> bool:
        return name in self.versions

    def list(self) -> list[Version]:
        return list(self.versions.values())

    def get(self, name: str) -> Version:
        return self.versions[name]

    def ownership(self, name: str) -> object | None:
        return object() if name in self.versions else None


CATALOG = ModelCatalog(SERVED, Adapters("alpha"), PROVIDERS)


def test_routes() -> None:
    assert CATALOG.route("small") == Route("small", None)
    assert CATALOG.route("s@local") == Route("s", None)
    assert CATALOG.route("alpha") == Route("alpha", None)
    assert CATALOG.route("big@up") == Route("big", "up")
    with pytest.raises(ModelUnavailable):
        CATALOG.route("big")
    with pytest.raises(ModelUnavailable):
        CATALOG.route("small@up")
    with pytest.raises(ProviderNotFound):
        CATALOG.route("small@mars")


def test_canonical_names_and_adapters() -> None:
    assert [CATALOG.canonical(name) for name in ("s", "alpha", "s@local", "big@up", "nope")] == [
        "small",
        "small",
        "small",
        "big@up",
        "nope",
    ]
    assert [CATALOG.adapter_of(name) for name in ("alpha", "alpha@local", "small", "alpha@up")] == [
        "alpha",
        "alpha",
        None,
        None,
    ]
    assert CATALOG.local_names() == ["small", "s", "alpha"]
    assert ("alpha", "local") in CATALOG.endpoints() and ("big", "up") in CATALOG.endpoints()
    assert CATALOG.base_model("s") is SERVED and CATALOG.base_model("alpha") is None
    assert CATALOG.adapter_version("alpha") == 3


def test_local_model() -> None:
    assert CATALOG.local_model("alpha", None, adapter_is_target=False, run_on_target=False).adapter == "alpha"
    with pytest.raises(ConflictingAdapters):
        CATALOG.local_model("alpha", "beta", adapter_is_target=False, run_on_target=False)
    target = CATALOG.local_model("s", "alpha", adapter_is_target=True, run_on_target=True)
    assert (target.entry, target.adapter, target.adapter_param) == (SERVED, "alpha", "lora_name")
    not_yet = CATALOG.local_model("s", "gamma", adapter_is_target=True, run_on_target=True)
    assert not_yet.adapter is None  # no promoted version yet: the base model


def test_upstream_payload_takes_the_route_model_and_the_prepared_turns() -> None:
    body = {"model": "big@up", "messages": [{"role": "user", "content": "hi"}], "temperature": 0.5}
    turns = [
        ChatTurn("system", "memory"),
        ChatTurn("assistant", "", (ToolCall("c1", "f", "{}"),)),
        ChatTurn("user", "hi"),
    ]
    payload = upstream_payload(body, Route("big", "up"), True, turns)
    assert payload["model"] == "big" and payload["temperature"] == 0.5
    assert payload["stream_options"] == {"include_usage": True}
    assert payload["messages"][0] == {"role": "system", "content": "memory"}
    assert payload["messages"][1]["tool_calls"][0]["function"] == {"name": "f", "arguments": "{}"}
    assert upstream_payload(body, Route("big", "up"), False, None)["messages"] == body["messages"]


async def test_provider_chunks_become_deltas_and_usage() -> None:
    async def chunks() -> AsyncIterator[dict]:
        yield {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}
        yield {"choices": [{"index": 0, "delta": {"content": "Hi"}}]}
        tool = {"index": 0, "id": "c1", "type": "function", "function": {"name": "f", "arguments": "{"}}
        yield {"choices": [{"index": 0, "delta": {"tool_calls": [tool]}}]}
        yield {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}
        yield {
            "choices": [],
            "usage": {"prompt_tokens": 7, "completion_tokens": 3, "prompt_tokens_details": {"cached_tokens": 5}},
        }

    counted: list[tuple[int, int, int]] = []
    deltas = [delta async for delta in stream_deltas(chunks(), lambda *usage: counted.append(usage))]
    assert [d.text for d in deltas] == ["Hi", "", ""]  # the role chunk is ours to send
    assert deltas[1].tool_calls[0].name == "f" and deltas[1].tool_calls[0].arguments == "{"
    assert deltas[2].finish_reason == "tool_calls" and counted == [(7, 3, 5)]


async def test_provider_completion_becomes_one_delta_per_choice() -> None:
    completion = {
        "choices": [
            {"index": 0, "message": {"content": "A"}, "finish_reason": "stop"},
            {"index": 1, "message": {"content": "B"}, "finish_reason": "length", "logprobs": {"content": []}},
        ],
        "usage": {"prompt_tokens": 4, "completion_tokens": 2},
    }
    counted: list[tuple[int, int, int]] = []  # a provider that reports no cached tokens: none
    deltas = [delta async for delta in completion_deltas(completion, lambda *usage: counted.append(usage))]
    assert [(d.index, d.text, d.finish_reason) for d in deltas] == [(0, "A", "stop"), (1, "B", "length")]
    assert deltas[1].logprobs == [] and counted == [(4, 2, 0)]


SECOND = ModelEntry(name="second", aliases=("two",), source="./nowhere", max_model_len=100)
MULTI = ModelCatalog([SERVED, SECOND], {"small": Adapters("alpha"), "second": Adapters("bravo")}, PROVIDERS)


def test_several_models_each_with_its_adapters() -> None:
    from server.engine.errors import AdapterOfAnotherModel

    assert MULTI.route("two") == Route("two", None) and MULTI.route("bravo@local") == Route("bravo", None)
    assert [MULTI.canonical(name) for name in ("s", "two", "alpha", "bravo", "bravo@local")] == [
        "small", "second", "small", "second", "second"
    ]  # fmt: skip
    assert MULTI.local_names() == ["small", "s", "second", "two", "alpha", "bravo"]
    assert MULTI.adapters.parent("bravo") == "second" and MULTI.adapters.parent("nope") is None
    run = MULTI.local_model("bravo", None, adapter_is_target=False, run_on_target=False)
    assert (run.entry.name, run.adapter, run.adapter_param) == ("second", "bravo", "model")
    run = MULTI.local_model("two", "bravo", adapter_is_target=False, run_on_target=False)
    assert (run.entry.name, run.adapter) == ("second", "bravo")
    with pytest.raises(AdapterOfAnotherModel, match="belongs to the model `second`, not `small`"):
        MULTI.local_model("small", "bravo", adapter_is_target=False, run_on_target=False)
    # adaption's target adapter: runs when promoted on its base model; another model's adapter is never its target
    run = MULTI.local_model("two", "bravo", adapter_is_target=True, run_on_target=True)
    assert (run.entry.name, run.adapter) == ("second", "bravo")
    run = MULTI.local_model("two", "new", adapter_is_target=True, run_on_target=True)
    assert (run.entry.name, run.adapter) == ("second", None)
    with pytest.raises(AdapterOfAnotherModel, match="belongs to the model `second`, not `small`"):
        MULTI.local_model("small", "bravo", adapter_is_target=True, run_on_target=True)
    assert MULTI.adapters.holder("bravo") == "second" and MULTI.adapters.holder("new") is None
    assert sorted(pair[1].name for pair in MULTI.adapters.listed()) == ["alpha", "bravo"]
    assert ("bravo", "local") in MULTI.endpoints() and ("two", "local") in MULTI.endpoints()


def test_the_entry_a_name_runs_on() -> None:
    """What sizes a request's memory block (`memory_top_k`): the served model a name runs on, an adapter's base."""
    names = ("s", "two", "alpha", "bravo", "bravo@local", "second")
    assert [MULTI.entry_for(name).name for name in names] == ["small", "second", "small", "second", "second", "second"]
    assert MULTI.entry_for("nowhere") is None
    assert MULTI.entry_for("big@up") is None  # another provider's model
