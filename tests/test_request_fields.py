"""Every field the request models accept, endpoint by endpoint: a test shows it has OpenAI's effect (vLLM's, for
vLLM's extensions), or a 400 naming it when it cannot be honoured.

`FIELD_TESTS` names, for each field of chat completions, legacy completions, embeddings and Responses requests,
the test that shows its effect; `test_every_accepted_field_has_an_effect_test` fails when a request model gains a
field without one. Fields the server reads but does not honour (OpenAI's `service_tier`, vLLM's `use_beam_search`,
...) and unknown fields are dropped, as `drop_params` (default true) says, and refused, each named, when the request
sets `drop_params: false`: the tests below show both, and that the honoured extensions are not among them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TypeVar

import httpx
import openai
import pytest
from transformers import AutoTokenizer

from server.api.completions import CompletionRequest
from server.api.embeddings import EmbeddingRequest
from server.api.protocol import ChatCompletionRequest
from server.api.tokenize import DetokenizeRequest, TokenizeRequest
from server.config import load_settings
from server.conversations.responses import RESPONSES_FIELDS, ResponsesRequest
from tests.conftest import MODEL, assert_error

T = TypeVar("T")
EMBEDDING_MODEL = "all-minilm-l6-v2"
SEA = [{"role": "user", "content": "Write one sentence about the sea."}]
SHORT_ANSWER = [{"role": "user", "content": "What is 2+2? Answer with the number only."}]

C, S, G = "tests/test_conformance.py", "tests/test_openai_surface.py", "tests/test_gateway_usage.py"
HERE = "tests/test_request_fields.py"
SAMPLING = f"{HERE}::test_sampling_restrictions_reduce_to_greedy"
PENALTIES = f"{HERE}::test_penalties_curb_repetition"
LENGTH = f"{HERE}::test_min_tokens_and_ignore_eos_lengthen_the_answer"
USER = f"{HERE}::test_user_is_recorded_with_the_usage"
DROP = f"{HERE}::test_unhonoured_fields_are_dropped_or_refused_with_drop_params_false"
TOKENIZE = f"{HERE}::test_tokenize_and_detokenize_fields"

FIELD_TESTS: dict[str, dict[str, str]] = {
    "chat": {
        "model": "tests/test_chat_api.py::test_alias_resolves_to_canonical_name",
        "messages": f"{C}::test_messages_and_usage",
        "stream": "tests/test_chat_api.py::test_streaming_through_sdk_matches_non_streaming",
        "stream_options": "tests/test_chat_api.py::test_stream_usage_chunk_when_asked",
        "temperature": SAMPLING,
        "top_p": SAMPLING,
        "max_tokens": f"{C}::test_max_tokens_finishes_with_length",
        "max_completion_tokens": "tests/test_chat_api.py::test_max_completion_tokens_is_honoured",
        "stop": f"{C}::test_stop_is_not_in_output",
        "seed": f"{C}::test_seed_repeats_sampled_output",
        "presence_penalty": PENALTIES,
        "frequency_penalty": PENALTIES,
        "n": f"{C}::test_n_gives_n_indexed_choices",
        "user": USER,
        "logprobs": f"{C}::test_logprobs_per_token",
        "top_logprobs": f"{C}::test_logprobs_per_token",
        "logit_bias": f"{C}::test_logit_bias_plus_100_forces",
        "response_format": f"{C}::test_response_format_json_schema_strict",
        "tools": f"{C}::test_named_tool_choice_always_calls_that_tool",
        "tool_choice": f"{C}::test_tool_choice_none_answers_in_text",
        "parallel_tool_calls": f"{C}::test_required_tool_choice",
        "functions": f"{C}::test_deprecated_functions_answer_with_function_call",
        "function_call": f"{C}::test_deprecated_functions_answer_with_function_call",
        "store": f"{S}::test_stored_chat_completions_lifecycle",
        "metadata": f"{S}::test_stored_chat_completions_lifecycle",
        "lora_name": "tests/test_adapters.py::test_adapters_answer_distinguishably",
        "keep_alive": "tests/test_multi_model.py::test_on_demand_load_with_requests_waiting_then_idle_unload_and_wake",
        "nightly": "tests/test_memory.py::test_fact_told_earlier_is_answered_from_memory",
        "finetune_thresh": "tests/test_adaption.py::test_facts_told_through_chat_train_an_adapter_that_recalls_them",
        "min_finetune_group": "tests/test_adaption.py::test_facts_told_through_chat_train_an_adapter_that_recalls_them",
        "adaption_inference": "tests/test_adaption.py::test_facts_told_through_chat_train_an_adapter_that_recalls_them",
        "guardrail_policy": "tests/test_guardrails.py::test_violating_answer_is_a_400_without_its_text",
        "chunk_size": "tests/test_guardrails.py::test_violating_stream_never_leaks",
        "sliding_window": "tests/test_guardrails.py::test_violating_stream_never_leaks",
        "top_k": SAMPLING,
        "min_p": SAMPLING,
        "min_tokens": LENGTH,
        "ignore_eos": LENGTH,
        "repetition_penalty": PENALTIES,
        "stop_token_ids": f"{HERE}::test_stop_token_ids_end_the_text",
        "models": "tests/test_gateway_routing.py::test_fallbacks_skip_unknown_and_unreachable_models",
        "transforms": "tests/test_gateway_chat.py::test_middle_out_fits_the_conversation_and_usage_counts_what_was_sent",
        "template": "tests/test_gateway_templates.py::test_chat_renders_the_template_with_its_defaults",
        "variables": "tests/test_gateway_templates.py::test_chat_renders_the_template_with_its_defaults",
        "session_id": f"{G}::test_usage_groups_by_session_tag_user_model_key_and_day",
        "tags": f"{G}::test_usage_groups_by_session_tag_user_model_key_and_day",
        "log_query_body": f"{G}::test_bodies_are_logged_unless_the_request_opts_out",
        "log_response_body": f"{G}::test_bodies_are_logged_unless_the_request_opts_out",
        "drop_params": DROP,
        "signature": f"{G}::test_bodies_are_logged_unless_the_request_opts_out",
        "region": f"{G}::test_bodies_are_logged_unless_the_request_opts_out",
        "use_custom_keys": f"{HERE}::test_fields_refused_on_every_request",
    },
    "completions": {
        "model": f"{S}::test_completions_sdk",
        "prompt": f"{S}::test_completions_sdk",
        "suffix": f"{S}::test_bad_completions_requests",
        "max_tokens": f"{S}::test_completions_sdk",
        "temperature": SAMPLING,
        "top_p": SAMPLING,
        "n": f"{S}::test_completions_n_prompts_echo_and_logprobs",
        "best_of": f"{S}::test_bad_completions_requests",
        "stream": f"{S}::test_completions_sdk",
        "stream_options": f"{S}::test_completions_sdk",
        "logprobs": f"{S}::test_completions_echo_with_logprobs_scores_the_prompt",
        "echo": f"{S}::test_completions_echo_with_logprobs_scores_the_prompt",
        "stop": f"{S}::test_completions_stop",
        "presence_penalty": PENALTIES,
        "frequency_penalty": PENALTIES,
        "seed": f"{HERE}::test_completions_seed_and_logit_bias",
        "logit_bias": f"{HERE}::test_completions_seed_and_logit_bias",
        "user": USER,
        "top_k": SAMPLING,
        "min_p": SAMPLING,
        "min_tokens": LENGTH,
        "ignore_eos": LENGTH,
        "repetition_penalty": PENALTIES,
        "stop_token_ids": f"{HERE}::test_stop_token_ids_end_the_text",
        "lora_name": f"{HERE}::test_fields_refused_on_every_request",
        "drop_params": DROP,
    },
    "embeddings": {
        "model": f"{S}::test_embeddings_sdk_gives_unit_vectors_that_rank_meaning",
        "input": f"{S}::test_embeddings_float_base64_and_token_arrays_agree",
        "encoding_format": f"{S}::test_embeddings_float_base64_and_token_arrays_agree",
        "dimensions": f"{S}::test_bad_embeddings_requests",
        "user": USER,
        "drop_params": DROP,
    },
    "responses": {
        "model": f"{S}::test_responses_create_retrieve_delete",
        "input": f"{S}::test_responses_create_retrieve_delete",
        "instructions": f"{S}::test_responses_create_retrieve_delete",
        "previous_response_id": f"{S}::test_responses_previous_response_id_continues_the_conversation",
        "tools": f"{S}::test_responses_function_tools_round_trip",
        "tool_choice": f"{S}::test_responses_function_tools_round_trip",
        "parallel_tool_calls": f"{HERE}::test_responses_parallel_tool_calls_and_metadata",
        "text": f"{S}::test_responses_structured_output_and_max_output_tokens",
        "max_output_tokens": f"{S}::test_responses_structured_output_and_max_output_tokens",
        "temperature": SAMPLING,
        "top_p": SAMPLING,
        "stream": f"{S}::test_responses_stream_typed_events",
        "store": f"{S}::test_responses_create_retrieve_delete",
        "metadata": f"{HERE}::test_responses_parallel_tool_calls_and_metadata",
        "user": USER,
        "truncation": f"{HERE}::test_responses_truncation_auto_fits_the_conversation",
        "include": "tests/unit/test_conversations.py::test_unsupported_responses_fields_are_refused",
        "background": f"{S}::test_bad_responses_requests",
        "conversation": f"{HERE}::test_fields_refused_on_every_request",
        "max_tool_calls": f"{HERE}::test_fields_refused_on_every_request",
        "reasoning": DROP,
        "service_tier": DROP,
        "prompt_cache_key": DROP,
        "safety_identifier": DROP,
        "top_logprobs": DROP,
        "stream_options": DROP,
    },
    "tokenize": {
        "model": f"{S}::test_bad_tokenize_requests",
        "prompt": f"{S}::test_tokenize_and_detokenize_round_trip",
        "messages": f"{S}::test_tokenize_messages_counts_what_chat_prompts",
        "tools": TOKENIZE,
        "add_special_tokens": TOKENIZE,
        "add_generation_prompt": TOKENIZE,
        "continue_final_message": TOKENIZE,
        "return_token_strs": f"{S}::test_tokenize_and_detokenize_round_trip",
        "lora_name": TOKENIZE,
        "drop_params": DROP,
    },
    "detokenize": {
        "model": TOKENIZE,
        "tokens": f"{S}::test_tokenize_and_detokenize_round_trip",
        "lora_name": TOKENIZE,
        "drop_params": DROP,
    },
}

REQUEST_FIELDS = {
    "chat": set(ChatCompletionRequest.model_fields),
    "completions": set(CompletionRequest.model_fields),
    "embeddings": set(EmbeddingRequest.model_fields),
    "responses": set(ResponsesRequest.model_fields) | RESPONSES_FIELDS,
    "tokenize": set(TokenizeRequest.model_fields),
    "detokenize": set(DetokenizeRequest.model_fields),
}


def test_every_accepted_field_has_an_effect_test() -> None:
    for endpoint, fields in REQUEST_FIELDS.items():
        assert set(FIELD_TESTS[endpoint]) == fields, endpoint
        for field_name, node in FIELD_TESTS[endpoint].items():
            path, name = node.split("::")
            module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
            assert callable(getattr(module, name, None)), f"{endpoint}.{field_name}: {node} does not exist"


# --- sampling ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(load_settings(environ={}).served.source_path)


@pytest.fixture(scope="module")
def baselines() -> dict:
    """Baseline answers, made once per module and compared against by several rows."""
    return {}


def once(baselines: dict, key: tuple, make: Callable[[], T]) -> T:
    if key not in baselines:
        baselines[key] = make()
    return baselines[key]


def generate(http: httpx.Client, endpoint: str, body: dict) -> tuple[str, dict, dict]:
    """(the text, the first choice, usage) of one request to `endpoint` with `body`."""
    if endpoint == "chat":
        answer = http.post("/v1/chat/completions", json={"model": MODEL, "messages": SEA, **body})
        assert answer.status_code == 200, answer.text
        choice = answer.json()["choices"][0]
        return choice["message"]["content"], choice, answer.json()["usage"]
    if endpoint == "completions":
        answer = http.post("/v1/completions", json={"model": MODEL, "prompt": "The sea is", **body})
        assert answer.status_code == 200, answer.text
        choice = answer.json()["choices"][0]
        return choice["text"], choice, answer.json()["usage"]
    body = {("max_output_tokens" if name == "max_tokens" else name): value for name, value in body.items()}
    answer = http.post("/v1/responses", json={"model": MODEL, "input": SEA[0]["content"], **body})
    assert answer.status_code == 200, answer.text
    response = answer.json()
    return response["output"][0]["content"][0]["text"], response, response["usage"]


@pytest.mark.parametrize(
    ("endpoint", "restriction"),
    [
        ("chat", {"top_k": 1}),
        ("chat", {"top_p": 1e-6}),
        ("chat", {"min_p": 1.0}),
        ("completions", {"top_k": 1}),
        ("completions", {"top_p": 1e-6}),
        ("completions", {"min_p": 1.0}),
        ("responses", {"top_p": 1e-6}),
    ],
)
def test_sampling_restrictions_reduce_to_greedy(
    http: httpx.Client, baselines: dict, endpoint: str, restriction: dict
) -> None:
    """temperature 0 is greedy, 1.5 is not; top_k 1, a tiny top_p and min_p 1 keep only the likeliest token.

    Five tokens: the embedded model's bfloat16 logits carry 8 significant bits, so two tokens can tie for likeliest,
    and greedy decoding and the sampler may break such a tie differently (here at the sixth token)."""
    hot = {"max_tokens": 5, "temperature": 1.5}
    greedy = once(baselines, ("greedy", endpoint), lambda: generate(http, endpoint, {**hot, "temperature": 0})[0])
    sampled = once(
        baselines,
        ("sampled", endpoint),
        lambda: {generate(http, endpoint, {**hot, "seed": seed})[0] for seed in (1, 2)},
    )
    assert sampled != {greedy}, "sampling at temperature 1.5 should not be greedy"
    assert generate(http, endpoint, {**hot, "seed": 1, **restriction})[0] == greedy


def repeated_tokens(tokenizer, text: str) -> int:
    """How many of the text's tokens already occurred earlier in it: what the penalties push down."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    return len(ids) - len(set(ids))


@pytest.mark.parametrize(
    ("endpoint", "penalty"),
    [
        ("chat", {"frequency_penalty": 2.0}),
        ("chat", {"presence_penalty": 2.0}),
        ("chat", {"repetition_penalty": 2.0}),
        ("completions", {"frequency_penalty": 2.0}),
        ("completions", {"presence_penalty": 2.0}),
        ("completions", {"repetition_penalty": 2.0}),
    ],
)
def test_penalties_curb_repetition(
    http: httpx.Client, tokenizer, baselines: dict, endpoint: str, penalty: dict
) -> None:
    """Greedy, the same length either way (`ignore_eos`): penalised, the text repeats fewer of its tokens."""
    if endpoint == "chat":
        url, body = "/v1/chat/completions", {"messages": [{"role": "user", "content": "Write a poem about the sea."}]}
    else:
        url, body = "/v1/completions", {"prompt": "The sea is"}
    body = {"model": MODEL, "max_tokens": 32, "temperature": 0, "ignore_eos": True, **body}

    def text(answer: httpx.Response) -> str:
        assert answer.status_code == 200, answer.text
        choice = answer.json()["choices"][0]
        return choice["message"]["content"] if endpoint == "chat" else choice["text"]

    plain = once(baselines, ("unpenalised", endpoint), lambda: text(http.post(url, json=body)))
    penalised = text(http.post(url, json={**body, **penalty}))
    assert repeated_tokens(tokenizer, penalised) < repeated_tokens(tokenizer, plain), (plain, penalised)


def templated_prompt(http: httpx.Client) -> list[int]:
    """The chat prompt as token ids, so legacy completions answer as chat does and end with the end-of-turn token."""
    return http.post("/tokenize", json={"model": MODEL, "messages": SHORT_ANSWER}).json()["tokens"]


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_min_tokens_and_ignore_eos_lengthen_the_answer(http: httpx.Client, endpoint: str) -> None:
    if endpoint == "chat":
        url, body = "/v1/chat/completions", {"messages": SHORT_ANSWER}
    else:
        url, body = "/v1/completions", {"prompt": templated_prompt(http)}
    body = {"model": MODEL, "max_tokens": 24, "temperature": 0, **body}

    def run(**extra: object) -> tuple[str, int]:
        answer = http.post(url, json={**body, **extra})
        assert answer.status_code == 200, answer.text
        return answer.json()["choices"][0]["finish_reason"], answer.json()["usage"]["completion_tokens"]

    reason, tokens = run()
    assert reason == "stop" and tokens < 12, (reason, tokens)
    assert run(min_tokens=16)[1] >= 16
    assert run(ignore_eos=True) == ("length", 24)


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_stop_token_ids_end_the_text(http: httpx.Client, tokenizer, endpoint: str) -> None:
    greedy, choice, _ = generate(http, endpoint, {"max_tokens": 12, "temperature": 0})
    ids = tokenizer.encode(greedy, add_special_tokens=False)
    position = next(index for index in range(2, len(ids)) if ids[index] not in ids[:index])
    cut, choice, _ = generate(http, endpoint, {"max_tokens": 12, "temperature": 0, "stop_token_ids": [ids[position]]})
    assert choice["finish_reason"] == "stop"
    assert greedy.startswith(cut) and len(cut) < len(greedy.rstrip()), (greedy, cut)


def test_completions_seed_and_logit_bias(http: httpx.Client, tokenizer) -> None:
    body = {"model": MODEL, "prompt": "My favourite fruit is", "max_tokens": 8, "temperature": 1.0}

    def text(**extra: object) -> str:
        answer = http.post("/v1/completions", json={**body, **extra})
        assert answer.status_code == 200, answer.text
        return answer.json()["choices"][0]["text"]

    assert text(seed=5) == text(seed=5)
    assert {text(seed=seed) for seed in (6, 7, 8)} != {text(seed=5)}
    (banana,) = tokenizer.encode(" banana", add_special_tokens=False)
    assert text(seed=5, max_tokens=4, logit_bias={str(banana): 100}) == " banana" * 4


# --- usage records, Responses' own fields ----------------------------------------------------------------------


@pytest.mark.parametrize("endpoint", ["chat", "completions", "embeddings", "responses"])
def test_user_is_recorded_with_the_usage(http: httpx.Client, endpoint: str) -> None:
    user = f"end-user-{endpoint}"
    url, body = {
        "chat": ("/v1/chat/completions", {"model": MODEL, "messages": SEA, "max_tokens": 1}),
        "completions": ("/v1/completions", {"model": MODEL, "prompt": "Hi", "max_tokens": 1}),
        "embeddings": ("/v1/embeddings", {"model": EMBEDDING_MODEL, "input": "Hi"}),
        "responses": ("/v1/responses", {"model": MODEL, "input": "Hi", "max_output_tokens": 1}),
    }[endpoint]
    answer = http.post(url, json={**body, "user": user})
    assert answer.status_code == 200, answer.text
    (record,) = http.get(f"/v1/usage/requests/{answer.headers['x-request-id']}").json()["data"]
    assert record["user"] == user and record["status"] == 200


WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def test_responses_parallel_tool_calls_and_metadata(client: openai.OpenAI) -> None:
    response = client.responses.create(
        model=MODEL,
        input="What is the weather in Paris, Rome and Oslo?",
        tools=[WEATHER],
        tool_choice="required",
        parallel_tool_calls=False,
        temperature=0,
        max_output_tokens=80,
        metadata={"ticket": "T-1"},
    )
    assert [item.type for item in response.output] == ["function_call"]
    assert response.parallel_tool_calls is False and response.metadata == {"ticket": "T-1"}
    assert client.responses.retrieve(response.id).metadata == {"ticket": "T-1"}


LONG_TURN = "The lighthouse keeper wrote in the log every night about the weather and the ships. " * 20


def test_responses_truncation_auto_fits_the_conversation(http: httpx.Client) -> None:
    turns = [{"role": "user" if index % 2 == 0 else "assistant", "content": LONG_TURN} for index in range(16)]
    body = {"model": MODEL, "input": [*turns, {"role": "user", "content": "What did he write about?"}]}
    refused = http.post("/v1/responses", json={**body, "max_output_tokens": 4})
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "context_length_exceeded"
    fitted = http.post("/v1/responses", json={**body, "max_output_tokens": 4, "truncation": "auto"})
    assert fitted.status_code == 200, fitted.text
    response = fitted.json()
    assert response["truncation"] == "auto" and 0 < response["usage"]["input_tokens"] <= 2048 - 4


# --- dropped, or refused ---------------------------------------------------------------------------------------

# OpenAI fields this server reads past, and vLLM extensions it does not honour: none may change the answer
# silently, so with `drop_params: false` each is a 400 naming it.
CHAT_UNHONOURED = {
    "service_tier": "auto",
    "prediction": {"type": "content", "content": "Paris"},
    "reasoning_effort": "low",
    "verbosity": "low",
    "prompt_cache_key": "k1",
    "safety_identifier": "s1",
    "structured_outputs": {"regex": "[0-9]+"},
    "use_beam_search": True,
    "chat_template": "{{ messages }}",
    "bad_words": ["sea"],
    "allowed_token_ids": [1, 2, 3],
    "include_stop_str_in_output": True,
    "skip_special_tokens": False,
    "prompt_logprobs": 1,
    "priority": 1,
    "continue_final_message": True,
}
COMPLETIONS_UNHONOURED = {
    "structured_outputs": {"regex": "[0-9]+"},
    "response_format": {"type": "json_object"},
    "use_beam_search": True,
    "bad_words": ["sea"],
    "allowed_token_ids": [1, 2, 3],
    "include_stop_str_in_output": True,
    "prompt_logprobs": 1,
    "truncate_prompt_tokens": 3,
}
EMBEDDINGS_UNHONOURED = {"truncate_prompt_tokens": 3, "normalize": False, "priority": 1}
# vLLM's /tokenize and /detokenize fields this server does not honour
TOKENIZE_UNHONOURED = {"chat_template": "{{ messages }}", "mm_processor_kwargs": {}}
DETOKENIZE_UNHONOURED = {"skip_special_tokens": False}
RESPONSES_UNHONOURED = {
    "reasoning": {"effort": "low"},
    "service_tier": "auto",
    "prompt_cache_key": "k1",
    "safety_identifier": "s1",
    "top_logprobs": 2,
    "stream_options": {"include_obfuscation": False},
}
HONOURED_EXTENSIONS = {
    "top_k": 40,
    "min_p": 0.05,
    "min_tokens": 1,
    "ignore_eos": False,
    "repetition_penalty": 1.1,
    "stop_token_ids": [0],
}
BASE = {
    "chat": ("/v1/chat/completions", {"model": MODEL, "messages": SEA, "max_tokens": 6, "temperature": 0}),
    "completions": ("/v1/completions", {"model": MODEL, "prompt": "The sea is", "max_tokens": 6, "temperature": 0}),
    "embeddings": ("/v1/embeddings", {"model": EMBEDDING_MODEL, "input": "The sea is"}),
    "responses": (
        "/v1/responses",
        {"model": MODEL, "input": SEA[0]["content"], "max_output_tokens": 6, "temperature": 0},
    ),
    "tokenize": ("/tokenize", {"model": MODEL, "prompt": "The sea is"}),
    "detokenize": ("/detokenize", {"model": MODEL, "tokens": [504, 3214, 314]}),
}
UNHONOURED = {
    "chat": CHAT_UNHONOURED,
    "completions": COMPLETIONS_UNHONOURED,
    "embeddings": EMBEDDINGS_UNHONOURED,
    "responses": RESPONSES_UNHONOURED,
    "tokenize": TOKENIZE_UNHONOURED,
    "detokenize": DETOKENIZE_UNHONOURED,
}


def answer_of(response: httpx.Response) -> object:
    assert response.status_code == 200, response.text
    data = response.json()
    if "choices" in data:
        return [choice.get("message", {}).get("content", choice.get("text")) for choice in data["choices"]]
    if "output" in data:
        return data["output"][0]["content"][0]["text"]
    if "tokens" in data or "prompt" in data:
        return data.get("tokens", data.get("prompt"))
    return [item["embedding"] for item in data["data"]]


@pytest.mark.parametrize("endpoint", list(UNHONOURED))
def test_unhonoured_fields_are_dropped_or_refused_with_drop_params_false(http: httpx.Client, endpoint: str) -> None:
    url, body = BASE[endpoint]
    unhonoured = {**UNHONOURED[endpoint], "frobnicate": 1}
    plain = answer_of(http.post(url, json=body))
    # Dropped by default (and with drop_params true): the answer is the one without them.
    assert answer_of(http.post(url, json={**body, **unhonoured})) == plain
    assert answer_of(http.post(url, json={**body, **unhonoured, "drop_params": True})) == plain
    # Refused, each named, with drop_params false.
    for name, value in unhonoured.items():
        refused = http.post(url, json={**body, name: value, "drop_params": False})
        error = assert_error(refused, 400, "invalid_value", name)
        assert name in error["message"]
    # The extensions this server honours are not unsupported.
    if endpoint in ("chat", "completions"):
        assert http.post(url, json={**body, **HONOURED_EXTENSIONS, "drop_params": False}).status_code == 200


@pytest.mark.parametrize(
    ("url", "fields", "status", "code", "param"),
    [
        ("/v1/chat/completions", {"use_custom_keys": True}, 400, "invalid_value", "use_custom_keys"),
        ("/v1/chat/completions", {"audio": {"voice": "alloy", "format": "wav"}}, 400, "invalid_value", "audio"),
        ("/v1/chat/completions", {"min_p": 1.5}, 400, "invalid_value", "min_p"),
        ("/v1/chat/completions", {"stop_token_ids": [-1]}, 400, "invalid_value", "stop_token_ids[0]"),
        ("/v1/completions", {"lora_name": "no-such-adapter"}, 404, "adapter_not_found", "lora_name"),
        ("/v1/completions", {"min_p": -0.1}, 400, "invalid_value", "min_p"),
        ("/v1/responses", {"conversation": "conv_1"}, 400, "invalid_value", "conversation"),
        ("/v1/responses", {"max_tool_calls": 2}, 400, "invalid_value", "max_tool_calls"),
    ],
)
def test_fields_refused_on_every_request(
    http: httpx.Client, url: str, fields: dict, status: int, code: str, param: str
) -> None:
    endpoint = {"/v1/chat/completions": "chat", "/v1/completions": "completions", "/v1/responses": "responses"}[url]
    assert_error(http.post(url, json={**BASE[endpoint][1], **fields}), status, code, param)


def test_tokenize_and_detokenize_fields(http: httpx.Client, tokenizer) -> None:
    chat = {"model": MODEL, "messages": SEA}
    tool = {"type": "function", "function": {"name": "get_tide", "parameters": {"type": "object", "properties": {}}}}
    plain = http.post("/tokenize", json=chat).json()["count"]
    # tool definitions are rendered into the prompt, as chat renders them
    assert http.post("/tokenize", json={**chat, "tools": [tool]}).json()["count"] > plain
    # add_special_tokens: the tokenizer's own choice, as in Hugging Face's tokenizer
    for add in (True, False):
        tokens = http.post("/tokenize", json={"model": MODEL, "prompt": "The sea", "add_special_tokens": add}).json()
        assert tokens["tokens"] == tokenizer("The sea", add_special_tokens=add)["input_ids"]
    # what cannot be honoured is refused, named
    for field, value in (("add_generation_prompt", False), ("continue_final_message", True)):
        assert_error(http.post("/tokenize", json={**chat, field: value}), 400, "invalid_value", field)
    assert_error(
        http.post("/tokenize", json={**chat, "add_special_tokens": True}), 400, "invalid_value", "add_special_tokens"
    )
    # the tokenizer is the named model's; an adapter shares it, and a missing one is named
    for path, body in (("/tokenize", {"prompt": "x"}), ("/detokenize", {"tokens": [504]})):
        assert_error(http.post(path, json={**body, "model": "no-such-model"}), 404, "model_not_found", "model")
        assert_error(
            http.post(path, json={**body, "lora_name": "no-such-adapter"}), 404, "adapter_not_found", "lora_name"
        )
