"""Memory's query encoder: its training data stays apart from the tuning and test sets, which encoder a setting
names, the held-out split, and an embedder whose queries have their own encoder."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.models import Dense

from server.memory.embedder import Embedder
from server.memory.query_encoder import (
    BASE_MODEL,
    BUILTIN_SOURCE,
    HELD_OUT_PERCENT,
    is_held_out,
    load_pairs,
    query_model_source,
)
from server.model_sources import resolve_packaged
from tests import memory_testset  # its functions are named test_*: imported whole, pytest does not collect them
from tests.memory_corpus import distractors, labelled_facts

SHARED_WORDS = 5  # no run of this many words may be shared with a tuning or test text


def word_runs(text: str) -> set[str]:
    words = re.findall(r"[a-z0-9']+", text.lower())
    if len(words) < SHARED_WORDS:
        return {" ".join(words)}
    return {" ".join(words[start : start + SHARED_WORDS]) for start in range(len(words) - SHARED_WORDS + 1)}


def evaluated_texts() -> set[str]:
    texts = {text for fact in memory_testset.test_facts() for text in (fact.fact, fact.question)}
    texts |= {text for fact in labelled_facts() for text in (fact.fact, fact.question)}
    for conversation in memory_testset.test_sessions():
        texts |= {turn.text for turn in conversation.turns} | {question.question for question in conversation.questions}
    return texts | set(memory_testset.test_distractors(2000)) | set(distractors(2000))


def test_training_pairs_share_no_five_words_in_a_row_with_the_tuning_and_test_sets() -> None:
    pairs = load_pairs()
    assert len(pairs) > 2000
    assert len({pair.positive for pair in pairs}) == len(pairs)
    evaluated = set().union(*(word_runs(text) for text in evaluated_texts()))
    shared = [
        text for pair in pairs for text in (pair.query, pair.positive, pair.negative) if word_runs(text) & evaluated
    ]
    assert not shared


def test_held_out_rows_are_a_stable_share() -> None:
    pairs = load_pairs()
    held = [pair for pair in pairs if is_held_out(pair)]
    assert abs(len(held) / len(pairs) - HELD_OUT_PERCENT / 100) < 0.03
    assert held == [pair for pair in load_pairs() if is_held_out(pair)]


def test_which_encoder_a_setting_names() -> None:
    assert query_model_source("auto", BASE_MODEL) == BUILTIN_SOURCE
    assert query_model_source("auto", "/models/bge-small") is None  # trained against MiniLM's memories only
    assert query_model_source("same", BASE_MODEL) is None
    assert query_model_source("/models/my-query-encoder", BASE_MODEL) == "/models/my-query-encoder"
    with pytest.raises(ValueError, match="trained against"):
        query_model_source(BUILTIN_SOURCE, "/models/bge-small")


@pytest.fixture(scope="module")
def other_query_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MiniLM with its last layer's output weights perturbed: an encoder of the same size that embeds differently."""
    model = SentenceTransformer(resolve_packaged(BASE_MODEL), device="cpu")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        weight = model[0].auto_model.encoder.layer[-1].output.dense.weight
        weight += 0.05 * torch.randn(weight.shape, generator=generator)
    folder = tmp_path_factory.mktemp("query-encoder")
    model.save(str(folder))
    return folder


async def test_queries_have_their_own_encoder_and_short_texts_keep_the_stored_texts_model(
    other_query_encoder: Path,
) -> None:
    plain = Embedder(BASE_MODEL, query_dtype="float32")
    embedder = Embedder(BASE_MODEL, query_dtype="float32", query_source=str(other_query_encoder))
    texts = ["What is my dog called?", "I live in Leeds.", "Only talk about cooking."]
    try:
        assert np.allclose(embedder.encode(texts), plain.encode(texts), atol=1e-6)  # stored texts
        assert np.allclose(embedder.encode_short(texts), plain.encode_short(texts), atol=1e-6)
        assert not np.allclose(embedder.encode_queries(texts), plain.encode_queries(texts), atol=1e-2)
        # Queries and short texts share one batching thread; each row comes from its own model.
        mixed = await asyncio.gather(
            *(embedder.embed_queries([text]) for text in texts), *(embedder.embed_short([text]) for text in texts)
        )
        assert np.allclose(np.vstack(mixed[:3]), embedder.encode_queries(texts), atol=1e-5)
        assert np.allclose(np.vstack(mixed[3:]), embedder.encode_short(texts), atol=1e-5)
        assert (await embedder.embed_short([])).shape == (0, embedder.dimensions)
    finally:
        await embedder.close()
        await plain.close()


def test_a_query_encoder_of_another_size_is_refused(tmp_path: Path) -> None:
    model = SentenceTransformer(resolve_packaged(BASE_MODEL), device="cpu")
    model.append(Dense(model.get_embedding_dimension(), 16))  # a 16-wide output
    model.save(str(tmp_path))
    with pytest.raises(ValueError, match="does not embed"):
        Embedder(BASE_MODEL, query_dtype="float32", query_source=str(tmp_path))
