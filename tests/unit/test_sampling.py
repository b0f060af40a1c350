"""Completion budgets and sampling parameters (pure functions)."""

from __future__ import annotations

import pytest
from vllm.sampling_params import RequestOutputKind

from server.config import SamplingDefaults
from server.engine.errors import ContextLengthExceeded
from server.engine.sampling import GenerationOptions, build_sampling_params, completion_budget


def test_explicit_budget_that_fits_is_kept() -> None:
    assert completion_budget(100, None, prompt_tokens=20, max_model_len=2048) == 100


def test_explicit_budget_over_context_is_an_error() -> None:
    with pytest.raises(ContextLengthExceeded, match="2048 tokens.*2060 tokens \\(20 in the messages, 2040"):
        completion_budget(2040, None, prompt_tokens=20, max_model_len=2048)


def test_default_budget_is_clamped_to_what_is_left() -> None:
    assert completion_budget(None, 4096, prompt_tokens=48, max_model_len=2048) == 2000
    assert completion_budget(None, 64, prompt_tokens=48, max_model_len=2048) == 64
    assert completion_budget(None, None, prompt_tokens=48, max_model_len=2048) == 2000


def test_prompt_filling_the_context_is_an_error() -> None:
    with pytest.raises(ContextLengthExceeded, match="leaving no room"):
        completion_budget(None, None, prompt_tokens=2048, max_model_len=2048)


def test_request_values_override_model_defaults() -> None:
    defaults = SamplingDefaults(temperature=0.7, top_p=0.9, max_tokens=32)
    params = build_sampling_params(
        GenerationOptions(temperature=0.3, stop=["END"], seed=7, presence_penalty=1.0),
        defaults,
        prompt_tokens=10,
        max_model_len=100,
        stream=True,
    )
    assert params.temperature == 0.3 and params.top_p == 0.9 and params.max_tokens == 32
    assert params.stop == ["END"] and params.seed == 7 and params.presence_penalty == 1.0
    assert params.output_kind == RequestOutputKind.DELTA


def test_non_streaming_asks_for_the_final_output_only() -> None:
    params = build_sampling_params(
        GenerationOptions(), SamplingDefaults(), prompt_tokens=10, max_model_len=100, stream=False
    )
    assert params.output_kind == RequestOutputKind.FINAL_ONLY
    assert params.max_tokens == 90 and params.temperature == 1.0


def test_vllm_extensions_and_prompt_logprobs_reach_the_sampling_parameters() -> None:
    params = build_sampling_params(
        GenerationOptions(top_k=5, min_p=0.2, stop_token_ids=[7, 9], logprobs=2, prompt_logprobs=2),
        SamplingDefaults(),
        prompt_tokens=10,
        max_model_len=100,
        stream=False,
    )
    assert (params.top_k, params.min_p, params.stop_token_ids) == (5, 0.2, [7, 9])
    assert params.logprobs == 2 and params.prompt_logprobs == 2
    unset = build_sampling_params(
        GenerationOptions(), SamplingDefaults(), prompt_tokens=1, max_model_len=9, stream=False
    )
    assert (unset.min_p, unset.stop_token_ids, unset.prompt_logprobs) == (0.0, [], None)
