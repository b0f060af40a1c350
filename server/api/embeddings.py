"""`POST /v1/embeddings`: OpenAI's embeddings, answered by the server's memory embedding model.

`model` names that model (its short name or source, as `name@local` too); the served chat models do not embed
(400 `model_not_supported`, naming the model that does), any other name is a 404 `model_not_found`.

Input: a string, a list of strings, a token array or a list of token arrays (in
the embedding model's own vocabulary); `encoding_format` float or base64
(little-endian float32, as OpenAI sends it). The model has one native size:
`dimensions` other than it is refused. Inputs longer than the model reads are
refused rather than cut silently.
"""

from __future__ import annotations

import asyncio
import base64
from pathlib import PurePath
from typing import Literal

import numpy as np
from pydantic import Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from server.api.errors import invalid_request, read_json_object
from server.api.local_access import metered, priced
from server.api.protocol import DroppableRequest
from server.config import Settings
from server.gateway.errors import ModelUnavailable
from server.gateway.routing import LOCAL_PROVIDER, Route, parse_model_ref
from server.gateway.service import Admission, Gateway
from server.memory.embedder import Embedder
from server.model_sources import PACKAGE_PREFIX
from server.serving.catalog import ModelCatalog

MAX_INPUTS = 2048


class EmbeddingRequest(DroppableRequest):
    model: str = Field(min_length=1)
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = Field(None, max_length=256)


def embedding_model_names(source: str) -> list[str]:
    """Names a request may use for the embedding model: the configured source and its short name, first."""
    if source.startswith(PACKAGE_PREFIX):
        short = source.removeprefix(PACKAGE_PREFIX).removeprefix("gt_").replace("_", "-")
    else:
        short = PurePath(source.rstrip("/")).name
    return [short, source]


def embedding_model(catalog: ModelCatalog, source: str, name: str) -> str:
    """The embedding model's public name when `name` names it (its short name or source, any case, `@local` too).
    A served chat model (or alias, or adapter) is a 400 naming the model that embeds; anything else a 404."""
    names = embedding_model_names(source)
    model, provider = parse_model_ref(name)
    local = provider is None or provider == LOCAL_PROVIDER
    if local and model.lower() in {known.lower() for known in names}:
        return names[0]
    if local and catalog.serves_here(model):
        raise invalid_request(
            f"`{model}` is a chat model; embeddings here come from `{names[0]}` (the memory embedding model).",
            param="model",
            code="model_not_supported",
        )
    raise ModelUnavailable(name)


def _inputs(body: EmbeddingRequest) -> tuple[list[str] | None, list[list[int]] | None]:
    """(texts, None) or (None, token arrays), each non-empty."""
    value = body.input
    if isinstance(value, str):
        value = [value]
    if not value:
        raise invalid_request("`input` must not be empty.", param="input", code="invalid_value")
    if len(value) > MAX_INPUTS:
        raise invalid_request(f"`input` may hold at most {MAX_INPUTS} items.", param="input", code="invalid_value")
    if all(isinstance(item, int) for item in value):
        return None, [value]  # type: ignore[list-item]
    if all(isinstance(item, str) for item in value):
        for index, text in enumerate(value):
            if not text:
                raise invalid_request(
                    f"`input[{index}]` is an empty string.", param=f"input[{index}]", code="invalid_value"
                )
        return value, None  # type: ignore[return-value]
    for index, ids in enumerate(value):
        if not ids:
            raise invalid_request(
                f"`input[{index}]` is an empty token array.", param=f"input[{index}]", code="invalid_value"
            )
    return None, value  # type: ignore[return-value]


def encoded(vector: np.ndarray, encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return vector.astype(float).tolist()


async def create_embeddings(request: Request) -> Response:
    return await metered(request, lambda gateway, admission: _embeddings(request, gateway, admission))


async def _embeddings(request: Request, gateway: Gateway, admission: Admission) -> Response:
    account = admission.account
    settings: Settings = request.app.state.settings
    embedder: Embedder = request.app.state.memory.embedder
    body = EmbeddingRequest.model_validate(await read_json_object(request), strict=True)
    account.user = body.user
    public = embedding_model(request.app.state.catalog, settings.memory.embedding_model, body.model)
    gateway.authorize(account.principal, [public])
    await gateway.admit(account.principal)
    account.served_by(Route(public, None), public)
    if body.dimensions is not None and body.dimensions != embedder.dimensions:
        raise invalid_request(
            f"`{public}` makes {embedder.dimensions}-dimensional embeddings only; `dimensions` {body.dimensions} "
            "is not supported (leave it out, or send the native size).",
            param="dimensions",
            code="invalid_value",
        )
    texts, token_arrays = _inputs(body)
    if token_arrays is not None:
        vocab = embedder.vocab_size
        for index, ids in enumerate(token_arrays):
            bad = next((token for token in ids if not 0 <= token < vocab), None)
            if bad is not None:
                raise invalid_request(
                    f"Token id {bad} in `input` is not in the embedding model's vocabulary (0-{vocab - 1}).",
                    param="input" if len(token_arrays) == 1 else f"input[{index}]",
                    code="invalid_value",
                )
        texts = [embedder.decode(ids) for ids in token_arrays]
    assert texts is not None
    counts = await asyncio.to_thread(embedder.count_tokens, texts)
    for index, count in enumerate(counts):
        if count > embedder.max_tokens:
            raise invalid_request(
                f"`input[{index}]` is {count} tokens long; `{public}` reads at most {embedder.max_tokens}.",
                param="input" if isinstance(body.input, str) else f"input[{index}]",
                code="context_length_exceeded",
            )
    prompt_tokens = sum(counts)
    rate = settings.metering.embeddings_per_token
    async with priced(request, admission, rate, prompt_tokens, "embedding these inputs"):
        vectors = await embedder.embed(texts)
    usage = {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}
    answer = {
        "object": "list",
        "data": [
            {"object": "embedding", "index": index, "embedding": encoded(vector, body.encoding_format)}
            for index, vector in enumerate(vectors)
        ],
        "model": public,
        "usage": usage,
    }
    account.respond(prompt_tokens, 0, {"object": "list", "model": public, "usage": usage})
    admission.settle(200)
    return JSONResponse(answer)
