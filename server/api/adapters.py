"""LoRA adapter management: `/v1/adapters` and vLLM's `/v1/load_lora_adapter` / `/v1/unload_lora_adapter`."""

from __future__ import annotations

import tempfile
from pathlib import Path

from pydantic import BaseModel, ConfigDict
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from server.api.errors import invalid_request, read_json_object
from server.api.protocol_resources import AdapterObject, Deleted, ListOf, json_response
from server.config import Settings
from server.engine import Engine
from server.engine.adapters import CONFIG_FILE, WEIGHTS_FILE, AdapterVersion, check_name, path_under


class AdapterFromPath(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    path: str


class VllmLoadLora(BaseModel):
    model_config = ConfigDict(extra="ignore")
    lora_name: str
    lora_path: str


class VllmUnloadLora(BaseModel):
    model_config = ConfigDict(extra="ignore")
    lora_name: str


def adapter_object(version: AdapterVersion) -> AdapterObject:
    manifest = version.manifest
    return AdapterObject(
        id=version.name,
        version=version.version,
        base_model=manifest.get("base_model"),
        created=manifest.get("created"),
        source=manifest.get("source"),
        rank=manifest.get("rank"),
        target_modules=manifest.get("target_modules"),
    )


def source_roots(settings: Settings) -> tuple[Path, ...]:
    return (settings.adapters_dir, *settings.adapter_source_roots)


async def create_adapter(request: Request) -> Response:
    """JSON `{"name", "path"}` (a peft directory under an allowed root), or a multipart upload of its two files."""
    engine: Engine = request.app.state.engine
    settings: Settings = request.app.state.settings
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        version = await _create_from_upload(request, engine)
    else:
        body = AdapterFromPath.model_validate(await read_json_object(request), strict=True)
        check_name(body.name)
        source = path_under(source_roots(settings), body.path)
        version = await engine.adapters.add(body.name, source, source_label=str(source))
    return json_response(adapter_object(version), status_code=201)


async def _create_from_upload(request: Request, engine: Engine) -> AdapterVersion:
    async with request.form(max_files=2, max_fields=4) as form:
        name = check_name(form.get("name"))
        with tempfile.TemporaryDirectory(prefix="adapter-upload-") as staging:
            for filename in (CONFIG_FILE, WEIGHTS_FILE):
                upload = form.get(filename)
                if not isinstance(upload, UploadFile):
                    raise invalid_request(f"Upload the file field `{filename}`.", param=filename)
                (Path(staging) / filename).write_bytes(await upload.read())
            return await engine.adapters.add(name, Path(staging), source_label="upload")


async def list_adapters(request: Request) -> Response:
    engine: Engine = request.app.state.engine
    return json_response(ListOf(data=[adapter_object(v) for v in engine.adapters.list()]))


async def delete_adapter(request: Request) -> Response:
    engine: Engine = request.app.state.engine
    name = check_name(request.path_params["name"])
    await engine.adapters.remove(name)
    return json_response(Deleted(id=name, object="adapter"))


async def vllm_load_lora_adapter(request: Request) -> PlainTextResponse:
    engine: Engine = request.app.state.engine
    body = VllmLoadLora.model_validate(await read_json_object(request), strict=True)
    check_name(body.lora_name, "lora_name")
    source = path_under(source_roots(request.app.state.settings), body.lora_path, "lora_path")
    await engine.adapters.add(body.lora_name, source, source_label=str(source))
    return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' added successfully.")


async def vllm_unload_lora_adapter(request: Request) -> PlainTextResponse:
    engine: Engine = request.app.state.engine
    body = VllmUnloadLora.model_validate(await read_json_object(request), strict=True)
    await engine.adapters.remove(check_name(body.lora_name, "lora_name"), param="lora_name")
    return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' removed successfully.")
