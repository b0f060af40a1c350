"""`/v1/templates`: prompt templates (seed 002), addressed by name or UUID; updating adds a version.

Each key has its own templates (another key's are not found); an admin key
lists every key's and reaches any by UUID.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response

from server.api.errors import read_json_object
from server.api.metering import check_template_quota
from server.api.middleware import principal_of
from server.api.protocol import ChatMessage, Penalty
from server.api.protocol_resources import ListOf, TemplateDeleted, TemplateObject, json_response
from server.gateway.templates import Template, TemplateContent, TemplateStore

TEMPLATE_NAME = r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,63}$"


class TemplateSampling(BaseModel):
    """Request fields a template may set; a request's own values win."""

    model_config = ConfigDict(extra="forbid", strict=True)

    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    seed: int | None = None
    stop: str | list[str] | None = None


class TemplateBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    messages: list[ChatMessage] = Field(min_length=1, max_length=256)
    description: str | None = Field(None, max_length=1000)
    model: str | None = Field(None, min_length=1)
    sampling: TemplateSampling | None = None

    def content(self) -> TemplateContent:
        return TemplateContent(
            messages=[message.model_dump(exclude_none=True) for message in self.messages],
            description=self.description,
            model=self.model,
            sampling=self.sampling.model_dump(exclude_none=True) if self.sampling is not None else None,
        )


class CreateTemplate(TemplateBody):
    name: str = Field(pattern=TEMPLATE_NAME)


def template_json(template: Template) -> TemplateObject:
    content = template.content
    return TemplateObject(
        id=template.id,
        name=template.name,
        version=template.version,
        description=content.description,
        messages=content.messages,
        model=content.model,
        sampling=content.sampling,
        created_at=int(template.created_at),
        updated_at=int(template.updated_at),
    )


def _store(request: Request) -> TemplateStore:
    return request.app.state.templates


async def create_template(request: Request) -> Response:
    principal = principal_of(request.scope)
    body = CreateTemplate.model_validate(await read_json_object(request))
    await check_template_quota(request)
    template = await _store(request).create(principal.owner, body.name, body.content())
    return json_response(template_json(template), status_code=201)


async def list_templates(request: Request) -> Response:
    principal = principal_of(request.scope)
    templates = await _store(request).list(principal.owner, admin=principal.admin)
    return json_response(ListOf(data=[template_json(template) for template in templates]))


async def get_template(request: Request) -> Response:
    principal = principal_of(request.scope)
    template = await _store(request).find(request.path_params["template"], principal.owner, admin=principal.admin)
    return json_response(template_json(template))


async def update_template(request: Request) -> Response:
    principal = principal_of(request.scope)
    body = TemplateBody.model_validate(await read_json_object(request))
    template = await _store(request).update(
        request.path_params["template"], principal.owner, body.content(), admin=principal.admin
    )
    return json_response(template_json(template))


async def delete_template(request: Request) -> Response:
    principal = principal_of(request.scope)
    template = await _store(request).delete(request.path_params["template"], principal.owner, admin=principal.admin)
    return json_response(TemplateDeleted(id=template.id, object="template.deleted", name=template.name))
