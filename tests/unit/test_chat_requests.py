"""Chat request parsing: deprecated function calling, error params, disconnects (no engine)."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import ValidationError

from server.api.chat import until_disconnected
from server.api.errors import from_validation_error, known_api_error
from server.api.protocol import ChatCompletionRequest, InvalidParam, NamedToolChoice

USER = [{"role": "user", "content": "Hi"}]
FUNCTION = {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}


def parse(**fields: object) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"model": "m", "messages": USER, **fields}, strict=True)


def error_of(**fields: object) -> dict:
    with pytest.raises((ValidationError, InvalidParam)) as raised:
        parse(**fields)
    exc = raised.value
    return (from_validation_error(exc) if isinstance(exc, ValidationError) else known_api_error(exc)).body()["error"]


def test_json_schema_without_name_names_the_param() -> None:
    error = error_of(response_format={"type": "json_schema", "json_schema": {"schema": {"type": "object"}}})
    assert error["param"] == "response_format.json_schema.name"
    assert error["code"] == "missing_required_parameter"
    assert error_of(response_format={"type": "json_schema"})["param"] == "response_format.json_schema"
    assert error_of(response_format={"type": "xml"})["param"] == "response_format"


def test_functions_become_tools_and_function_call_the_tool_choice() -> None:
    body = parse(functions=[FUNCTION], function_call={"name": "get_weather"})
    assert [tool.function.name for tool in body.tools] == ["get_weather"]
    assert isinstance(body.tool_choice, NamedToolChoice) and body.tool_choice.function.name == "get_weather"
    assert body.parallel_tool_calls is False and body.answers_with_function_call
    assert parse(functions=[FUNCTION], function_call="none").tool_choice == "none"
    assert parse(functions=[FUNCTION]).tool_choice is None
    assert not parse().answers_with_function_call


def test_function_call_needs_functions_and_excludes_tools() -> None:
    assert error_of(function_call="auto")["param"] == "function_call"
    tool = {"type": "function", "function": FUNCTION}
    assert error_of(functions=[FUNCTION], tools=[tool])["param"] == "functions"
    assert error_of(functions=[FUNCTION], function_call={"name": "other"})["param"] == "tool_choice"


def test_function_history_becomes_tool_calls_and_results() -> None:
    messages = [
        *USER,
        {"role": "assistant", "content": None, "function_call": {"name": "get_weather", "arguments": "{}"}},
        {"role": "function", "name": "get_weather", "content": "sunny"},
    ]
    body = parse(messages=messages, functions=[FUNCTION])
    call, result = body.messages[1], body.messages[2]
    assert call.tool_calls[0].function.name == "get_weather"
    assert result.role == "tool" and result.tool_call_id == call.tool_calls[0].id and result.text() == "sunny"
    nameless = [*USER, {"role": "function", "content": "x"}]
    assert error_of(messages=nameless)["param"] == "messages[1].name"


def test_metadata_follows_openais_limits() -> None:
    assert parse(metadata={"k": "v"}, store=True).metadata == {"k": "v"}
    assert error_of(metadata={str(i): "v" for i in range(17)})["param"] == "metadata"
    assert error_of(metadata={"k": "v" * 513})["param"] == "metadata"


class LeavingClient:
    """An ASGI request whose client disconnects after `after_s`."""

    def __init__(self, after_s: float) -> None:
        self.after_s = after_s

    async def receive(self) -> dict:
        await asyncio.sleep(self.after_s)
        return {"type": "http.disconnect"}


async def test_client_leaving_cancels_the_work_and_gives_none() -> None:
    cancelled = asyncio.Event()

    async def slow_work() -> str:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            await asyncio.sleep(0.05)  # still unwinding when the caller looks at it
            cancelled.set()
            raise
        return "never"

    assert await until_disconnected(LeavingClient(0.05), slow_work()) is None
    assert cancelled.is_set()


async def test_work_that_finishes_first_gives_its_result_or_error() -> None:
    async def quick() -> str:
        return "done"

    async def failing() -> str:
        raise ValueError("boom")

    assert await until_disconnected(LeavingClient(5), quick()) == "done"
    with pytest.raises(ValueError, match="boom"):
        await until_disconnected(LeavingClient(5), failing())


def test_unsupported_fields_are_dropped_unless_drop_params_is_false() -> None:
    extras = {"service_tier": "auto", "use_beam_search": True}
    assert parse(**extras).model_extra == extras  # kept aside, never read
    error = error_of(**extras, drop_params=False)
    assert error["param"] == "service_tier, use_beam_search" and "use_beam_search" in error["message"]
    # vLLM's honoured extensions are fields, not extras
    honoured = parse(top_k=3, min_p=0.1, min_tokens=2, ignore_eos=True, repetition_penalty=1.2, stop_token_ids=[5])
    assert honoured.model_extra == {} and honoured.stop_token_ids == [5]
    assert error_of(use_custom_keys=True)["param"] == "use_custom_keys"
    assert parse(use_custom_keys=False).use_custom_keys is False
    assert error_of(stop_token_ids=[-1])["param"] == "stop_token_ids[0]"
    assert error_of(min_p=1.5)["param"] == "min_p"
