"""LoRA adapter management: `/v1/adapters` and vLLM's `/v1/load_lora_adapter` / `/v1/unload_lora_adapter`.

Every adapter has an owner (the key that created it); only its owner or an admin adds versions, unloads or
deletes it. A key sees and uses its own adapters and those shared (an admin's, shared by default, or the
operator's on disk); others' are answered as missing. Paths are shown to admins only.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from pydantic import BaseModel, ConfigDict
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from server.api.errors import invalid_request, read_json_object
from server.api.middleware import principal_of
from server.api.protocol_resources import AdapterObject, AdapterVersionObject, Deleted, ListOf, json_response
from server.config import Settings
from server.engine.adapters import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    AdapterNotFound,
    AdapterStore,
    AdapterVersion,
    InvalidAdapter,
    check_name,
    path_under,
)
from server.engine.pool import EnginePool
from server.gateway.keys import Principal
from server.gateway.service import authorize_adapter
from server.serving.catalog import ModelAdapters, ModelCatalog


class AdapterFromPath(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    path: str
    shared: bool | None = None  # admins only: every key may use it (default for an admin's adapter)
    base_model: str | None = None  # the served model it runs on (default: the server's own, or the one it has)


class VllmLoadLora(BaseModel):
    model_config = ConfigDict(extra="ignore")
    lora_name: str
    lora_path: str


class VllmUnloadLora(BaseModel):
    model_config = ConfigDict(extra="ignore")
    lora_name: str


def adapter_object(version: AdapterVersion, store: AdapterStore | ModelAdapters, principal: Principal) -> AdapterObject:
    manifest = version.manifest
    ownership = store.ownership(version.name)
    source = manifest.get("source")
    if not principal.admin and isinstance(source, str) and source.startswith(("/", "~")):
        source = "path"  # never a filesystem path for a key that is not an admin
    return AdapterObject(
        id=version.name,
        version=version.version,
        base_model=manifest.get("base_model"),
        created=manifest.get("created"),
        source=source,
        rank=manifest.get("rank"),
        target_modules=manifest.get("target_modules"),
        shared=ownership.shared if ownership is not None else None,
        owned=ownership is not None and ownership.owner == principal.owner,
        owner=(ownership.owner if ownership is not None else None) if principal.admin else None,
    )


def source_roots(settings: Settings) -> tuple[Path, ...]:
    return (settings.adapters_dir, *settings.adapter_source_roots)


def checked_source(request: Request, path: str, param: str) -> Path:
    """A source directory under an allowed root, and never inside the folder of an adapter the caller may not
    change (another key's weights must not be copied out under a new name)."""
    pool: EnginePool = request.app.state.engines
    principal = principal_of(request.scope)
    source = path_under(source_roots(request.app.state.settings), path, param)
    for _, store in pool.adapter_stores():
        inside = store.is_inside_adapter(source)
        if inside is not None and not principal.admin:
            ownership = store.ownership(inside)
            if ownership is None or not ownership.may_change(principal.owner, principal.admin):
                raise InvalidAdapter("Adapter paths may not point into another adapter's folder.", param)
    return source


async def add_version(
    request: Request,
    name: str,
    source: Path,
    source_label: str,
    shared: bool | None,
    param: str = "name",
    base_model: str | None = None,
) -> tuple[AdapterVersion, AdapterStore]:
    """Authorize (allowed_adapters, ownership, quotas), then add `source` as the next version of `name` on its
    base model (woken or loaded first: the adapter is loaded into its engine)."""
    pool: EnginePool = request.app.state.engines
    settings: Settings = request.app.state.settings
    principal = principal_of(request.scope)
    slot = pool.adapter_slot(name, base_model)
    catalog: ModelCatalog = request.app.state.catalog
    authorize_adapter(principal, name, catalog.adapters.ownership(name), param=param, change=True)
    if shared is not None and not principal.admin:
        raise invalid_request("Only admin keys may share adapters.", param="shared", code="invalid_value")
    quotas = settings.security.quotas
    async with pool.awake_adapters(slot) as store:
        version = await store.add(
            name,
            source,
            source_label=source_label,
            owner=principal.owner,
            admin=principal.admin,
            shared=shared if shared is not None else principal.admin,
            max_versions=None if principal.admin else quotas.adapter_versions,
            max_adapters=None if principal.admin else quotas.adapters,
        )
    return version, store


async def create_adapter(request: Request) -> Response:
    """JSON `{"name", "path"}` (a peft directory under an allowed root), or a multipart upload of its two files;
    `base_model` names the served model it runs on (default: the server's own)."""
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        version, store = await _create_from_upload(request)
    else:
        body = AdapterFromPath.model_validate(await read_json_object(request), strict=True)
        check_name(body.name)
        source = checked_source(request, body.path, "path")
        version, store = await add_version(
            request, body.name, source, str(source), body.shared, base_model=body.base_model
        )
    return json_response(adapter_object(version, store, principal_of(request.scope)), status_code=201)


async def _create_from_upload(request: Request) -> tuple[AdapterVersion, AdapterStore]:
    async with request.form(max_files=2, max_fields=5) as form:
        name = check_name(form.get("name"))
        base_model = form.get("base_model")
        if base_model is not None and not isinstance(base_model, str):
            raise invalid_request("`base_model` must be a model name.", param="base_model", code="invalid_value")
        shared_field = form.get("shared")
        if shared_field is not None and shared_field not in ("true", "false"):
            raise invalid_request("`shared` must be true or false.", param="shared", code="invalid_value")
        shared = None if shared_field is None else shared_field == "true"
        with tempfile.TemporaryDirectory(prefix="adapter-upload-") as staging:
            for filename in (CONFIG_FILE, WEIGHTS_FILE):
                upload = form.get(filename)
                if not isinstance(upload, UploadFile):
                    raise invalid_request(f"Upload the file field `{filename}`.", param=filename)
                (Path(staging) / filename).write_bytes(await upload.read())
            return await add_version(request, name, Path(staging), "upload", shared, base_model=base_model)


def visible(store: AdapterStore | ModelAdapters, principal: Principal) -> list[AdapterVersion]:
    """The served adapters `principal` may use: its own and the shared ones (every one, for an admin)."""
    versions = []
    for version in store.list():
        ownership = store.ownership(version.name)
        if ownership is not None and ownership.may_use(principal.owner, principal.admin):
            versions.append(version)
    return versions


async def list_adapters(request: Request) -> Response:
    catalog: ModelCatalog = request.app.state.catalog
    principal = principal_of(request.scope)
    data = [adapter_object(version, catalog.adapters, principal) for version in visible(catalog.adapters, principal)]
    return json_response(ListOf(data=data))


async def remove_adapter(request: Request, name: str, param: str) -> None:
    pool: EnginePool = request.app.state.engines
    principal = principal_of(request.scope)
    key = principal.key
    if key is not None and key.allowed_adapters is not None and name not in key.allowed_adapters:
        raise AdapterNotFound(name, param)
    slot = pool.adapter_slot(name)
    if slot.state == "awake":
        assert slot.adapters is not None
        await slot.adapters.remove(name, param=param, owner=principal.owner, admin=principal.admin)
        return
    async with pool.awake_adapters(slot) as store:  # its engine holds the adapter: wake it to unload it
        await store.remove(name, param=param, owner=principal.owner, admin=principal.admin)


async def list_adapter_versions(request: Request) -> Response:
    """`GET /v1/adapters/{name}/versions`: every version on disk, which one is served, and its manifest."""
    pool: EnginePool = request.app.state.engines
    name = check_name(request.path_params["name"])
    principal = principal_of(request.scope)
    store = pool.adapter_slot(name).adapters
    assert store is not None
    ownership = store.ownership(name)
    if ownership is None or not ownership.may_use(principal.owner, principal.admin):
        raise AdapterNotFound(name, "name")  # another key's private adapter is not even named
    versions = store.versions(name)
    active = store.get(name).version if name in store else None
    return json_response(
        ListOf(
            data=[
                AdapterVersionObject(
                    adapter=name,
                    version=number,
                    active=number == active,
                    created=manifest.get("created"),
                    source=manifest.get("source"),
                    fine_tuning_job=manifest.get("fine_tuning_job"),
                    eval_loss=manifest.get("general_loss", manifest.get("eval_loss")),
                    baseline_eval_loss=manifest.get("baseline_general_loss", manifest.get("baseline_eval_loss")),
                    recall=manifest.get("recall"),
                    baseline_recall=manifest.get("baseline_recall"),
                )
                for number, manifest in versions
            ]
        )
    )


async def delete_adapter(request: Request) -> Response:
    name = check_name(request.path_params["name"])
    await remove_adapter(request, name, "name")
    return json_response(Deleted(id=name, object="adapter"))


async def vllm_load_lora_adapter(request: Request) -> PlainTextResponse:
    body = VllmLoadLora.model_validate(await read_json_object(request), strict=True)
    check_name(body.lora_name, "lora_name")
    source = checked_source(request, body.lora_path, "lora_path")
    await add_version(request, body.lora_name, source, str(source), None, "lora_name")
    return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' added successfully.")


async def vllm_unload_lora_adapter(request: Request) -> PlainTextResponse:
    body = VllmUnloadLora.model_validate(await read_json_object(request), strict=True)
    await remove_adapter(request, check_name(body.lora_name, "lora_name"), "lora_name")
    return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' removed successfully.")
