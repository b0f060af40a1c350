"""OpenAI Chat Completions conformance, field by field, each field streamed and not (official SDK).

`ask` runs one request either way and folds a stream into the same shape the
non-streaming response has, so every assertion applies to both wire forms.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import jsonschema
import openai
import pytest
from transformers import AutoTokenizer

from server.config import load_settings
from tests.conftest import MODEL

CAPITAL = [{"role": "user", "content": "What is the capital of France?"}]
STREAMED = pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city"],
        },
    },
}
TIME_TOOL = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Current time in a timezone",
        "parameters": {"type": "object", "properties": {"timezone": {"type": "string"}}, "required": ["timezone"]},
    },
}


@dataclass
class ChoiceResult:
    content: str | None = None
    finish_reason: str | None = None
    tool_calls: list[dict] = field(default_factory=list)
    logprobs: list[dict] | None = None
    role_chunks: int = 0


@dataclass
class Result:
    choices: dict[int, ChoiceResult]
    usage: dict | None
    chunk_ids: set[str] = field(default_factory=set)


def ask(client: openai.OpenAI, stream: bool, **params) -> Result:
    params = {"model": MODEL, "messages": CAPITAL, "max_tokens": 24, **params}
    if not stream:
        response = client.chat.completions.create(**params)
        choices = {
            choice.index: ChoiceResult(
                content=choice.message.content,
                finish_reason=choice.finish_reason,
                tool_calls=[call.model_dump() for call in choice.message.tool_calls or ()],
                logprobs=[entry.model_dump() for entry in choice.logprobs.content] if choice.logprobs else None,
            )
            for choice in response.choices
        }
        return Result(choices, response.usage.model_dump())
    result = Result({}, None)
    for chunk in client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **params):
        result.chunk_ids.add(chunk.id)
        if chunk.usage:
            result.usage = chunk.usage.model_dump()
        for choice in chunk.choices:
            state = result.choices.setdefault(choice.index, ChoiceResult(content=""))
            delta = choice.delta
            state.role_chunks += delta.role == "assistant"
            state.content += delta.content or ""
            for call in delta.tool_calls or ():
                if call.index >= len(state.tool_calls):
                    state.tool_calls.append(
                        {"id": call.id, "type": call.type, "function": {"name": call.function.name, "arguments": ""}}
                    )
                state.tool_calls[call.index]["function"]["arguments"] += call.function.arguments or ""
            if choice.logprobs and choice.logprobs.content:
                state.logprobs = (state.logprobs or []) + [entry.model_dump() for entry in choice.logprobs.content]
            state.finish_reason = choice.finish_reason or state.finish_reason
    for state in result.choices.values():
        assert state.role_chunks == 1, "each choice gets exactly one role chunk"
        state.content = state.content or (None if state.tool_calls else "")
    assert len(result.chunk_ids) == 1
    return result


def only(result: Result) -> ChoiceResult:
    assert list(result.choices) == [0]
    return result.choices[0]


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(load_settings(environ={}).served.source_path)


# --- messages, max_tokens, stop, usage ----------------------------------------


@STREAMED
def test_messages_and_usage(client, stream) -> None:
    result = ask(client, stream, temperature=0)
    choice = only(result)
    assert "Paris" in choice.content and choice.finish_reason == "stop"
    usage = result.usage
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > usage["prompt_tokens"]


@STREAMED
def test_max_tokens_finishes_with_length(client, stream) -> None:
    result = ask(client, stream, temperature=0, max_tokens=3, messages=[{"role": "user", "content": "Tell a story."}])
    assert only(result).finish_reason == "length" and result.usage["completion_tokens"] == 3


@STREAMED
def test_stop_is_not_in_output(client, stream) -> None:
    choice = only(ask(client, stream, temperature=0, stop=" Paris"))
    assert "Paris" not in choice.content and choice.finish_reason == "stop"


# --- n -------------------------------------------------------------------------


@STREAMED
def test_n_gives_n_indexed_choices(client, stream) -> None:
    result = ask(
        client,
        stream,
        n=3,
        temperature=1.0,
        seed=11,
        max_tokens=12,
        messages=[{"role": "user", "content": "Name an animal."}],
    )
    assert sorted(result.choices) == [0, 1, 2]
    assert all(choice.content and choice.finish_reason in ("stop", "length") for choice in result.choices.values())
    assert len({choice.content for choice in result.choices.values()}) > 1, "independent samples differ"
    assert result.usage["completion_tokens"] > 3


def test_n_above_server_limit_is_400(client) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model=MODEL, messages=CAPITAL, n=9)
    assert raised.value.param == "n"


# --- logprobs / top_logprobs -----------------------------------------------------


@STREAMED
def test_logprobs_per_token(client, stream) -> None:
    choice = only(ask(client, stream, temperature=0, logprobs=True, top_logprobs=3))
    entries = choice.logprobs
    assert entries and "".join(entry["token"] for entry in entries) == choice.content
    for entry in entries:
        assert entry["logprob"] <= 0 and entry["bytes"] == list(entry["token"].encode())
        top = entry["top_logprobs"]
        assert len(top) == 3
        assert [t["logprob"] for t in top] == sorted((t["logprob"] for t in top), reverse=True)
        assert top[0]["token"] == entry["token"]  # greedy: the sampled token is the most likely one


@STREAMED
def test_logprobs_without_top(client, stream) -> None:
    choice = only(ask(client, stream, temperature=0, logprobs=True, max_tokens=5))
    assert len(choice.logprobs) == 5 and all(entry["top_logprobs"] == [] for entry in choice.logprobs)


def test_no_logprobs_unless_asked(client) -> None:
    assert only(ask(client, False, temperature=0)).logprobs is None


@pytest.mark.parametrize(
    ("params", "param"),
    [({"logprobs": True, "top_logprobs": 21}, "top_logprobs"), ({"top_logprobs": 2}, "top_logprobs")],
)
def test_bad_logprobs_are_400(client, params, param) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model=MODEL, messages=CAPITAL, **params)
    assert raised.value.param == param


# --- logit_bias --------------------------------------------------------------------


@STREAMED
def test_logit_bias_minus_100_bans(client, tokenizer, stream) -> None:
    paris = tokenizer.encode(" Paris", add_special_tokens=False)[0]
    assert "Paris" in only(ask(client, stream, temperature=0)).content
    banned = only(ask(client, stream, temperature=0, logit_bias={str(paris): -100}))
    assert " Paris" not in banned.content


@STREAMED
def test_logit_bias_plus_100_forces(client, tokenizer, stream) -> None:
    (banana,) = tokenizer.encode(" banana", add_special_tokens=False)
    forced = only(ask(client, stream, temperature=0.8, max_tokens=4, logit_bias={str(banana): 100}))
    assert forced.content == " banana" * 4


@pytest.mark.parametrize("bias", [{"12": 101}, {"12": -100.5}, {"twelve": 1}, {"99999999": 5}])
def test_bad_logit_bias_is_400(client, bias) -> None:
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as raised:
            client.chat.completions.create(model=MODEL, messages=CAPITAL, logit_bias=bias, stream=stream)
        assert raised.value.param == "logit_bias"


# --- response_format -------------------------------------------------------------------


@STREAMED
def test_response_format_text(client, stream) -> None:
    assert "Paris" in only(ask(client, stream, temperature=0, response_format={"type": "text"})).content


@STREAMED
def test_response_format_json_object(client, stream) -> None:
    messages = [{"role": "system", "content": "Answer in JSON."}, *CAPITAL]
    choice = only(
        ask(client, stream, temperature=0, max_tokens=120, messages=messages, response_format={"type": "json_object"})
    )
    assert isinstance(json.loads(choice.content), dict)


CITY_SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 40},
        "country": {"type": "string", "maxLength": 40},
        "population_millions": {"type": "integer", "minimum": 0, "maximum": 100},
    },
    "required": ["city", "country", "population_millions"],
    "additionalProperties": False,
}


@STREAMED
def test_response_format_json_schema_strict(client, stream) -> None:
    choice = only(
        ask(
            client,
            stream,
            temperature=0,
            max_tokens=150,
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "city", "schema": CITY_SCHEMA, "strict": True},
            },
        )
    )
    jsonschema.validate(json.loads(choice.content), CITY_SCHEMA)
    assert choice.finish_reason == "stop"


@pytest.mark.parametrize(
    ("response_format", "param"),
    [
        (
            {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}},
            "response_format.json_schema.schema",
        ),
        (
            {"type": "json_schema", "json_schema": {"name": "x", "schema": {"properties": 5}}},
            "response_format.json_schema.schema",
        ),
        ({"type": "xml"}, "response_format"),
        ({"type": "json_schema"}, "response_format.json_schema"),
        ({"type": "json_schema", "json_schema": {"schema": CITY_SCHEMA}}, "response_format.json_schema.name"),
    ],
)
def test_bad_response_format_is_400(client, response_format, param) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model=MODEL, messages=CAPITAL, response_format=response_format)
    assert raised.value.param == param


# --- tools ---------------------------------------------------------------------------------

WEATHER_QUESTION = [{"role": "user", "content": "What is the weather like in Paris today?"}]


def assert_valid_call(call: dict, tools: list[dict]) -> dict:
    assert call["type"] == "function" and call["id"]
    by_name = {tool["function"]["name"]: tool["function"]["parameters"] for tool in tools}
    arguments = json.loads(call["function"]["arguments"])
    jsonschema.validate(arguments, by_name[call["function"]["name"]])
    return arguments


@STREAMED
def test_named_tool_choice_always_calls_that_tool(client, stream) -> None:
    tools = [WEATHER_TOOL, TIME_TOOL]
    choice = only(
        ask(
            client,
            stream,
            messages=WEATHER_QUESTION,
            tools=tools,
            temperature=0,
            max_tokens=60,
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
        )
    )
    assert choice.finish_reason == "tool_calls" and choice.content is None
    (call,) = choice.tool_calls
    assert call["function"]["name"] == "get_weather"
    assert isinstance(assert_valid_call(call, tools)["city"], str)


@STREAMED
def test_required_tool_choice(client, stream) -> None:
    tools = [WEATHER_TOOL, TIME_TOOL]
    choice = only(
        ask(
            client,
            stream,
            messages=WEATHER_QUESTION,
            tools=tools,
            tool_choice="required",
            parallel_tool_calls=False,
            temperature=0,
            max_tokens=80,
        )
    )
    assert choice.finish_reason == "tool_calls"
    assert len(choice.tool_calls) == 1
    assert_valid_call(choice.tool_calls[0], tools)


@STREAMED
def test_required_with_parallel_calls_allows_several(client, stream) -> None:
    tools = [WEATHER_TOOL, TIME_TOOL]
    choice = only(
        ask(
            client,
            stream,
            messages=WEATHER_QUESTION,
            tools=tools,
            tool_choice="required",
            temperature=0,
            max_tokens=120,
        )
    )
    assert choice.finish_reason == "tool_calls" and choice.tool_calls
    ids = [assert_valid_call(call, tools) and call["id"] for call in choice.tool_calls]
    assert len(set(ids)) == len(ids)


ORDER_TOOL = {
    "type": "function",
    "function": {
        "name": "place_order",
        "description": "Order items for delivery",
        "parameters": {
            "type": "object",
            "properties": {"items": {"type": "array", "items": {"$ref": "#/$defs/O"}, "minItems": 1, "maxItems": 2}},
            "required": ["items"],
            "$defs": {
                "O": {
                    "type": "object",
                    "properties": {"sku": {"type": "string", "maxLength": 8}},
                    "required": ["sku"],
                    "additionalProperties": False,
                }
            },
        },
    },
}


@STREAMED
def test_required_tool_choice_keeps_the_tools_defs(client, stream) -> None:
    tools = [ORDER_TOOL, WEATHER_TOOL]
    choice = only(
        ask(
            client,
            stream,
            messages=[{"role": "user", "content": "Order two apples."}],
            tools=tools,
            tool_choice="required",
            parallel_tool_calls=False,
            temperature=0,
            max_tokens=120,
        )
    )
    assert choice.finish_reason == "tool_calls" and len(choice.tool_calls) == 1
    call = choice.tool_calls[0]
    schema = {**ORDER_TOOL["function"]["parameters"]} if call["function"]["name"] == "place_order" else None
    if schema is not None:
        jsonschema.validate(json.loads(call["function"]["arguments"]), schema)
    else:
        assert_valid_call(call, tools)


@STREAMED
@pytest.mark.parametrize("tool_choice", ["named", "required"])
def test_forced_call_cut_by_max_tokens_is_not_a_call(client, stream, tool_choice) -> None:
    """Cut short, a forced call is no call, streamed or not: its text is content, no half-JSON call pieces."""
    choice = {"type": "function", "function": {"name": "get_weather"}} if tool_choice == "named" else "required"
    result = ask(
        client,
        stream,
        messages=WEATHER_QUESTION,
        tools=[WEATHER_TOOL],
        tool_choice=choice,
        temperature=0,
        max_tokens=None,
        max_completion_tokens=4,
    )
    cut = only(result)
    assert cut.finish_reason == "length" and cut.tool_calls == []
    assert cut.content and cut.content.lstrip().startswith(("{", "[")) and result.usage["completion_tokens"] == 4
    with pytest.raises(json.JSONDecodeError):
        json.loads(cut.content)


WEATHER_FUNCTION = WEATHER_TOOL["function"]


@STREAMED
def test_deprecated_functions_answer_with_function_call(client, stream) -> None:
    params = {
        "model": MODEL,
        "messages": WEATHER_QUESTION,
        "functions": [WEATHER_FUNCTION],
        "function_call": {"name": "get_weather"},
        "temperature": 0,
        "max_tokens": 60,
    }
    if not stream:
        choice = client.chat.completions.create(**params).choices[0]
        assert choice.finish_reason == "function_call" and choice.message.tool_calls is None
        call = choice.message.function_call
        name, arguments = call.name, call.arguments
    else:
        name, arguments, reasons = None, "", []
        for chunk in client.chat.completions.create(stream=True, **params):
            for piece in chunk.choices:
                assert piece.delta.tool_calls is None
                if piece.delta.function_call is not None:
                    name = name or piece.delta.function_call.name
                    arguments += piece.delta.function_call.arguments or ""
                reasons.append(piece.finish_reason)
        assert reasons[-1] == "function_call"
    assert name == "get_weather"
    jsonschema.validate(json.loads(arguments), WEATHER_FUNCTION["parameters"])


def test_deprecated_function_history_renders(client) -> None:
    messages = [
        *WEATHER_QUESTION,
        {
            "role": "assistant",
            "content": None,
            "function_call": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
        },
        {"role": "function", "name": "get_weather", "content": '{"temperature_c": 21, "sky": "sunny"}'},
    ]
    response = client.chat.completions.create(
        model=MODEL, messages=messages, functions=[WEATHER_FUNCTION], function_call="none", temperature=0, max_tokens=30
    )
    assert response.choices[0].message.content and response.choices[0].message.function_call is None


@STREAMED
def test_tool_choice_none_answers_in_text(client, stream) -> None:
    choice = only(ask(client, stream, tools=[WEATHER_TOOL], tool_choice="none", temperature=0))
    assert choice.tool_calls == [] and "Paris" in choice.content and choice.finish_reason == "stop"


@STREAMED
def test_auto_tool_choice_gives_text_or_a_valid_call(client, stream) -> None:
    choice = only(ask(client, stream, messages=WEATHER_QUESTION, tools=[WEATHER_TOOL], temperature=0, max_tokens=80))
    if choice.tool_calls:
        assert choice.finish_reason == "tool_calls"
        for call in choice.tool_calls:
            assert_valid_call(call, [WEATHER_TOOL])
    else:
        assert choice.content and "<tool_call>" not in choice.content


@STREAMED
def test_multi_turn_tool_use_renders(client, stream) -> None:
    messages = [
        *WEATHER_QUESTION,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_abc",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_abc", "content": '{"temperature_c": 18, "sky": "sunny"}'},
    ]
    choice = only(
        ask(client, stream, messages=messages, tools=[WEATHER_TOOL], tool_choice="none", temperature=0, max_tokens=40)
    )
    assert choice.content and choice.finish_reason in ("stop", "length")


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": [WEATHER_TOOL], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"tools": [WEATHER_TOOL], "tool_choice": "sometimes"}, "tool_choice"),
        ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools[0].function.name"),
        ({"tools": [{"type": "retrieval"}]}, "tools[0].type"),
    ],
)
def test_inconsistent_tool_options_are_400(client, params, param) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model=MODEL, messages=CAPITAL, **params)
    assert raised.value.param == param


def test_tool_message_without_id_is_400(client) -> None:
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=[*CAPITAL, {"role": "tool", "content": "x"}])


# --- stream_options, seed ------------------------------------------------------------


def test_stream_options_without_stream_is_400(client) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model=MODEL, messages=CAPITAL, stream_options={"include_usage": True})
    assert raised.value.param == "stream_options"


@STREAMED
def test_usage_matches_between_forms(client, stream) -> None:
    result = ask(client, stream, temperature=0, max_tokens=6)
    assert result.usage["completion_tokens"] == 6 or only(result).finish_reason == "stop"


@STREAMED
def test_seed_repeats_sampled_output(client, stream) -> None:
    params = {
        "temperature": 1.0,
        "seed": 99,
        "max_tokens": 20,
        "messages": [{"role": "user", "content": "Say a word."}],
    }
    assert only(ask(client, stream, **params)).content == only(ask(client, stream, **params)).content


# --- fields this server refuses rather than ignores ---------------------------------


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"audio": {"voice": "alloy", "format": "wav"}, "modalities": ["text", "audio"]}, "audio"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"function_call": "auto"}, "function_call"),
        ({"web_search_options": {}}, "web_search_options"),
    ],
)
def test_unsupported_openai_fields_are_400(client, params, param) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model=MODEL, messages=CAPITAL, **params)
    assert raised.value.param == param


@STREAMED
def test_accepted_and_ignored_openai_fields(client, stream) -> None:
    choice = only(
        ask(
            client,
            stream,
            temperature=0,
            metadata={"k": "v"},
            store=False,
            service_tier="auto",
            reasoning_effort="low",
            verbosity="low",
            prompt_cache_key="c1",
            safety_identifier="s1",
            prediction={"type": "content", "content": "Paris"},
            modalities=["text"],
            user="u1",
        )
    )
    assert "Paris" in choice.content
