"""Tool-call formats: prompting, parsing and the streaming filter (pure logic)."""

from __future__ import annotations

import json

import jsonschema
import pytest

from server.engine.prompt import ChatTurn, build_conversation
from server.engine.tools import (
    ChoiceToolReader,
    ToolCall,
    ToolCallStream,
    ToolSpec,
    ToolUse,
    forced_call_schema,
    new_call_id,
    parse_tool_calls,
)

WEATHER = ToolSpec(
    "get_weather",
    "Current weather for a city",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)
TIME = ToolSpec("get_time", None, None)
CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>{% endfor %}"
)
NATIVE = "{% if tools %}{{ tools | tojson }}{% endif %}{% for m in messages %}{{ m.tool_calls }}{% endfor %}"


@pytest.mark.parametrize(
    ("tool_format", "text", "content", "calls"),
    [
        (
            "hermes",
            'Sure.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
            "Sure.",
            [("get_weather", {"city": "Paris"})],
        ),
        (
            "hermes",
            '<tool_call>{"name": "a", "arguments": {}}</tool_call><tool_call>{"name": "b", "arguments": {"x": 1}}',
            None,
            [("a", {}), ("b", {"x": 1})],
        ),
        (
            "mistral",
            '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Oslo"}}]',
            None,
            [("get_weather", {"city": "Oslo"})],
        ),
        (
            "llama3_json",
            '{"name": "get_weather", "parameters": {"city": "Rome"}}',
            None,
            [("get_weather", {"city": "Rome"})],
        ),
        (
            "llama3_json",
            '<|python_tag|>{"name": "a", "parameters": {}}; {"name": "b", "parameters": {"y": 2}}',
            None,
            [("a", {}), ("b", {"y": 2})],
        ),
    ],
)
def test_native_formats_parse(tool_format, text, content, calls) -> None:
    parsed_content, parsed = parse_tool_calls(tool_format, text)
    assert parsed_content == content
    assert [(call.name, json.loads(call.arguments)) for call in parsed] == calls
    assert len({call.id for call in parsed}) == len(parsed)


@pytest.mark.parametrize(
    ("tool_format", "text"),
    [
        ("hermes", "Just an answer."),
        ("hermes", "<tool_call>{not json}</tool_call>"),
        ("mistral", "[TOOL_CALLS] nonsense"),
        ("llama3_json", "{ this is not a call"),
        ("llama3_json", '{"no_name": 1}'),
    ],
)
def test_text_that_is_not_a_valid_call_stays_content(tool_format, text) -> None:
    assert parse_tool_calls(tool_format, text) == (text, [])


def test_call_ids() -> None:
    assert new_call_id("hermes").startswith("call_")
    mistral_id = new_call_id("mistral")
    assert len(mistral_id) == 9 and mistral_id.isalnum()


def feed_all(stream: ToolCallStream, pieces: list[str]) -> str:
    return "".join(stream.feed(piece) for piece in pieces)


def test_stream_lets_content_through_and_holds_a_split_marker() -> None:
    stream = ToolCallStream("hermes")
    assert stream.feed("Let me check <tool") == "Let me check "
    assert stream.feed('_call>{"name": "get_time", ') == ""
    assert feed_all(stream, ['"arguments": {}}', "</tool_call>"]) == ""
    content, calls = stream.finish()
    assert content == "" and [call.name for call in calls] == ["get_time"]


def test_stream_releases_a_false_alarm() -> None:
    stream = ToolCallStream("hermes")
    assert stream.feed("a <to") == "a "
    assert stream.feed("p> b") == "<top> b"
    assert stream.finish() == ("", [])


def test_llama_stream_only_treats_leading_json_as_a_call() -> None:
    prose = ToolCallStream("llama3_json")
    assert feed_all(prose, ["  ", "Hello {x}"]) == "  Hello {x}"
    call = ToolCallStream("llama3_json")
    assert feed_all(call, [" {", '"name": "get_time", "parameters": {}}']) == ""
    assert [c.name for c in call.finish()[1]] == ["get_time"]


def test_unparsable_held_text_is_returned_as_content() -> None:
    stream = ToolCallStream("mistral")
    assert stream.feed("[TOOL_CALLS] oops") == ""
    assert stream.finish() == ("[TOOL_CALLS] oops", [])


def test_forced_schemas() -> None:
    use = ToolUse((WEATHER, TIME), mode="required", parallel=False)
    schema = forced_call_schema(use)
    assert schema["type"] == "array" and schema["minItems"] == 1 and schema["maxItems"] == 1
    assert [item["properties"]["name"]["enum"] for item in schema["items"]["anyOf"]] == [["get_weather"], ["get_time"]]
    assert "maxItems" not in forced_call_schema(ToolUse((WEATHER,), mode="required"))
    assert forced_call_schema(ToolUse((WEATHER, TIME), mode="named", named="get_weather")) == WEATHER.parameters
    assert forced_call_schema(ToolUse((TIME,), mode="named", named="get_time"))["type"] == "object"


def test_reader_reads_a_named_call_whole_at_the_end() -> None:
    reader = ChoiceToolReader(ToolUse((WEATHER,), mode="named", named="get_weather"), "hermes")
    assert reader.feed('{"city": ') == ("", []) and reader.feed('"Paris"}') == ("", [])
    content, chunks = reader.finish("stop")
    assert content == "" and [(c.index, c.name, c.arguments) for c in chunks] == [
        (0, "get_weather", '{"city": "Paris"}')
    ]
    assert chunks[0].id and reader.called


def test_reader_required_parses_at_the_end() -> None:
    reader = ChoiceToolReader(ToolUse((WEATHER, TIME), mode="required"), "hermes")
    assert reader.feed('[{"name": "get_time", "arguments": {}}]') == ("", [])
    content, chunks = reader.finish()
    assert content == "" and [(c.index, c.name, c.arguments) for c in chunks] == [(0, "get_time", "{}")]
    truncated = ChoiceToolReader(ToolUse((WEATHER,), mode="required"), "hermes")
    truncated.feed('[{"name": "get_wea')
    assert truncated.finish() == ('[{"name": "get_wea', []) and not truncated.called


def test_reader_without_tools_passes_text_through() -> None:
    reader = ChoiceToolReader(ToolUse((WEATHER,), mode="none"), "hermes")
    assert reader.feed("<tool_call>x") == ("<tool_call>x", [])


def test_hermes_conversation_for_templates_without_tools() -> None:
    turns = [
        ChatTurn("system", "Be brief."),
        ChatTurn("user", "Weather in Paris?"),
        ChatTurn("assistant", "", tool_calls=(ToolCall("call_1", "get_weather", '{"city": "Paris"}'),)),
        ChatTurn("tool", "18C, sunny", tool_call_id="call_1"),
    ]
    conversation, extra = build_conversation(CHATML, turns, ToolUse((WEATHER,)))
    assert extra == {}
    assert conversation[0]["role"] == "system" and conversation[0]["content"].startswith("Be brief.\n\n# Tools")
    assert '"name": "get_weather"' in conversation[0]["content"]
    assert (
        conversation[2]["content"]
        == '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    )
    assert conversation[3] == {"role": "tool", "content": "<tool_response>\n18C, sunny\n</tool_response>"}


def test_native_conversation_passes_tools_to_the_template() -> None:
    turns = [
        ChatTurn("user", "Weather?"),
        ChatTurn("assistant", "", tool_calls=(ToolCall("abcdefghi", "get_weather", '{"city": "Oslo"}'),)),
        ChatTurn("tool", "cold", tool_call_id="abcdefghi"),
    ]
    conversation, extra = build_conversation(NATIVE, turns, ToolUse((WEATHER,)))
    assert extra["tools"][0]["function"]["name"] == "get_weather"
    assert conversation[1]["tool_calls"][0]["function"]["arguments"] == {"city": "Oslo"}
    assert conversation[2]["tool_call_id"] == "abcdefghi"
    _, no_tools = build_conversation(NATIVE, turns, ToolUse((WEATHER,), mode="none"))
    assert no_tools == {}


def test_mistral_gets_nine_character_call_ids_consistently() -> None:
    turns = [
        ChatTurn("assistant", "", tool_calls=(ToolCall("call_0123456789abcdef", "get_time", "{}"),)),
        ChatTurn("tool", "noon", tool_call_id="call_0123456789abcdef"),
        ChatTurn("tool", "kept", tool_call_id="abcDEF123"),
    ]
    conversation, _ = build_conversation(NATIVE, turns, None, "mistral")
    mapped = conversation[0]["tool_calls"][0]["id"]
    assert len(mapped) == 9 and mapped.isalnum() and conversation[1]["tool_call_id"] == mapped
    assert conversation[2]["tool_call_id"] == "abcDEF123"
    llama, _ = build_conversation(NATIVE, turns, None, "llama3_json")
    assert llama[0]["tool_calls"][0]["id"] == "call_0123456789abcdef"


ORDER = ToolSpec(
    "place_order",
    "Order items",
    {
        "type": "object",
        "properties": {"items": {"type": "array", "items": {"$ref": "#/$defs/O"}}},
        "required": ["items"],
        "$defs": {"O": {"type": "object", "properties": {"sku": {"type": "string"}, "next": {"$ref": "#/$defs/O"}}}},
    },
)


def test_required_schema_keeps_the_tools_defs_at_its_root() -> None:
    schema = forced_call_schema(ToolUse((ORDER, WEATHER), mode="required"))
    assert set(schema["$defs"]) == {"place_order__O"}
    arguments = schema["items"]["anyOf"][0]["properties"]["arguments"]
    assert "$defs" not in arguments and arguments["properties"]["items"]["items"] == {"$ref": "#/$defs/place_order__O"}
    assert schema["$defs"]["place_order__O"]["properties"]["next"] == {"$ref": "#/$defs/place_order__O"}
    jsonschema.validate([{"name": "place_order", "arguments": {"items": [{"sku": "a", "next": {"sku": "b"}}]}}], schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate([{"name": "place_order", "arguments": {"items": [{"sku": 5}]}}], schema)


def test_same_definition_name_in_two_tools_stays_apart() -> None:
    parameters = {"type": "object", "properties": {"o": {"$ref": "#/$defs/O"}}, "$defs": {"O": {"type": "integer"}}}
    other = ToolSpec("other", None, parameters)
    schema = forced_call_schema(ToolUse((ORDER, other), mode="required"))
    assert schema["$defs"]["other__O"] == {"type": "integer"} and schema["$defs"]["place_order__O"]["type"] == "object"


def test_reader_drops_a_truncated_forced_call() -> None:
    cut = ChoiceToolReader(ToolUse((WEATHER,), mode="named", named="get_weather"), "hermes")
    cut.feed("{")
    assert cut.finish("length") == ("{", []) and not cut.called
    cut_required = ChoiceToolReader(ToolUse((WEATHER,), mode="required"), "hermes")
    cut_required.feed('[{"name": "get_weather", "arguments": {}}]')
    assert cut_required.finish("length") == ('[{"name": "get_weather", "arguments": {}}]', [])
