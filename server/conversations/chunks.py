"""Fold streamed `chat.completion.chunk` objects back into the one `chat.completion` they add up to."""

from __future__ import annotations

from collections.abc import Iterable


def _merge_call(calls: list[dict], piece: dict) -> None:
    index = piece.get("index", 0)
    while len(calls) <= index:
        calls.append({"id": "", "type": "function", "function": {"name": "", "arguments": ""}})
    call = calls[index]
    if piece.get("id"):
        call["id"] = piece["id"]
    function = piece.get("function") or {}
    call["function"]["name"] += function.get("name") or ""
    call["function"]["arguments"] += function.get("arguments") or ""


class ChunkFolder:
    """Feed chunks one by one (`add`); `completion()` is what they add up to so far."""

    def __init__(self) -> None:
        self._head: dict = {}
        self._choices: dict[int, dict] = {}
        self._usage: dict | None = None

    def add(self, chunk: dict) -> None:
        if not self._head:
            self._head = {key: chunk.get(key) for key in ("id", "created", "model", "system_fingerprint")}
        if chunk.get("nightly") is not None:
            self._head["nightly"] = chunk["nightly"]
        if chunk.get("usage"):
            self._usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            state = self._choices.setdefault(
                choice.get("index", 0),
                {"content": [], "tool_calls": [], "function_call": None, "logprobs": None, "finish_reason": None},
            )
            delta = choice.get("delta") or {}
            if delta.get("content"):
                state["content"].append(delta["content"])
            for piece in delta.get("tool_calls") or ():
                _merge_call(state["tool_calls"], piece)
            if delta.get("function_call"):
                call = state["function_call"] or {"name": "", "arguments": ""}
                call["name"] += delta["function_call"].get("name") or ""
                call["arguments"] += delta["function_call"].get("arguments") or ""
                state["function_call"] = call
            if (choice.get("logprobs") or {}).get("content"):
                state["logprobs"] = (state["logprobs"] or []) + choice["logprobs"]["content"]
            if choice.get("finish_reason"):
                state["finish_reason"] = choice["finish_reason"]

    def completion(self) -> dict:
        choices = []
        for index in sorted(self._choices):
            state = self._choices[index]
            calls = state["tool_calls"]
            message: dict = {
                "role": "assistant",
                "content": "".join(state["content"]) or (None if calls or state["function_call"] else ""),
                "refusal": None,
            }
            if calls:
                message["tool_calls"] = calls
            if state["function_call"]:
                message["function_call"] = state["function_call"]
            choices.append(
                {
                    "index": index,
                    "message": message,
                    "finish_reason": state["finish_reason"],
                    "logprobs": {"content": state["logprobs"], "refusal": None} if state["logprobs"] else None,
                }
            )
        completion = {**self._head, "object": "chat.completion", "choices": choices, "usage": self._usage}
        return {key: value for key, value in completion.items() if value is not None or key == "usage"}


def fold_chunks(chunks: Iterable[dict]) -> dict:
    folder = ChunkFolder()
    for chunk in chunks:
        folder.add(chunk)
    return folder.completion()
