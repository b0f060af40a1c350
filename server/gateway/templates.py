"""Prompt templates (seed 002): stored messages with `{{slot}}` placeholders, versioned, per owner.

A template has a stable UUID and a name unique per owner; updating it adds a
version, and requests use the latest. `render` is pure.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from contextlib import suppress
from dataclasses import dataclass

from server.gateway.errors import MissingVariable, TemplateNameTaken, TemplateNotFound
from server.storage import Database, Location, Row

UPDATE_ATTEMPTS = 5  # tries at the next version number, which a concurrent update elsewhere may take
SLOT = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_.\-]*)\s*\}\}")

MIGRATIONS = (
    """
    CREATE TABLE templates (
        id TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        name TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        UNIQUE (owner, name)
    );
    CREATE TABLE template_versions (
        template_id TEXT NOT NULL REFERENCES templates(id) ON DELETE CASCADE,
        version INTEGER NOT NULL,
        description TEXT,
        messages TEXT NOT NULL,
        model TEXT,
        sampling TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (template_id, version)
    );
    """,
)


def _fill(text: str, variables: dict[str, str]) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in variables:
            raise MissingVariable(name)
        return variables[name]

    return SLOT.sub(value, text)


def render(messages: list[dict], variables: dict[str, str]) -> list[dict]:
    """Messages (wire dicts) with every `{{slot}}` in their text replaced; unused variables are fine."""
    rendered = []
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            message = {**message, "content": _fill(content, variables)}
        elif isinstance(content, list):
            parts = [
                {**part, "text": _fill(part["text"], variables)}
                if isinstance(part, dict) and isinstance(part.get("text"), str)
                else part
                for part in content
            ]
            message = {**message, "content": parts}
        rendered.append(message)
    return rendered


@dataclass(frozen=True, slots=True)
class TemplateContent:
    """One version's content: what a create or an update sets."""

    messages: list[dict]
    description: str | None = None
    model: str | None = None  # used when a request names no model
    sampling: dict | None = None  # request fields (temperature, max_tokens, ...) used when the request leaves them out


@dataclass(frozen=True, slots=True)
class Template:
    id: str
    owner: str
    name: str
    version: int
    content: TemplateContent
    created_at: float
    updated_at: float


def _template(row: Row) -> Template:
    return Template(
        id=row["id"],
        owner=row["owner"],
        name=row["name"],
        version=row["version"],
        content=TemplateContent(
            messages=json.loads(row["messages"]),
            description=row["description"],
            model=row["model"],
            sampling=json.loads(row["sampling"]) or None,
        ),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


_LATEST = """
    SELECT t.id, t.owner, t.name, t.created_at, v.version, v.description, v.messages, v.model, v.sampling,
           v.created_at AS updated_at
    FROM templates t JOIN template_versions v ON v.template_id = t.id
    WHERE v.version = (SELECT MAX(version) FROM template_versions WHERE template_id = t.id)
"""


class TemplateStore(Database):
    MIGRATIONS = MIGRATIONS
    SCHEMA = "templates"

    def __init__(self, location: Location) -> None:
        super().__init__(location, "template-store")

    async def create(self, owner: str, name: str, content: TemplateContent) -> Template:
        return await self._run(self._create, owner, name, content)

    def _create(self, owner: str, name: str, content: TemplateContent) -> Template:
        template_id = str(uuid.uuid4())
        try:
            with self.db.transaction():
                self.db.execute(
                    "INSERT INTO templates (id, owner, name, created_at) VALUES (?, ?, ?, ?)",
                    (template_id, owner, name, time.time()),
                )
                self._add_version(template_id, 1, content)
        except self.db.integrity_errors:
            raise TemplateNameTaken(name) from None
        return self._find(template_id, owner, admin=False)

    def _add_version(self, template_id: str, version: int, content: TemplateContent) -> None:
        self.db.execute(
            "INSERT INTO template_versions (template_id, version, description, messages, model, sampling, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                template_id,
                version,
                content.description,
                json.dumps(content.messages),
                content.model,
                json.dumps(content.sampling or {}),
                time.time(),
            ),
        )

    async def find(self, reference: str, owner: str, *, admin: bool) -> Template:
        """By UUID or by the owner's name; an admin reaches any template by UUID."""
        return await self._run(self._find, reference, owner, admin)

    def _find(self, reference: str, owner: str, admin: bool) -> Template:
        row = self.db.execute(
            _LATEST + " AND t.owner = ? AND (t.id = ? OR t.name = ?)", (owner, reference, reference)
        ).fetchone()
        if row is None and admin:
            row = self.db.execute(_LATEST + " AND t.id = ?", (reference,)).fetchone()
        if row is None:
            raise TemplateNotFound(reference)
        return _template(row)

    async def list(self, owner: str, *, admin: bool) -> list[Template]:
        return await self._run(self._list, owner, admin)

    def _list(self, owner: str, admin: bool) -> list[Template]:
        if admin:
            rows = self.db.execute(_LATEST + " ORDER BY t.created_at")
        else:
            rows = self.db.execute(_LATEST + " AND t.owner = ? ORDER BY t.created_at", (owner,))
        return [_template(row) for row in rows]

    async def update(self, reference: str, owner: str, content: TemplateContent, *, admin: bool) -> Template:
        """Add a version; requests use it from now on."""
        return await self._run(self._update, reference, owner, content, admin)

    def _update(self, reference: str, owner: str, content: TemplateContent, admin: bool) -> Template:
        for _ in range(UPDATE_ATTEMPTS - 1):
            with suppress(*self.db.integrity_errors):  # another server sharing the database took the version first
                return self._add_next_version(reference, owner, content, admin)
        return self._add_next_version(reference, owner, content, admin)

    def _add_next_version(self, reference: str, owner: str, content: TemplateContent, admin: bool) -> Template:
        current = self._find(reference, owner, admin)
        self._add_version(current.id, current.version + 1, content)
        return self._find(current.id, current.owner, admin=False)

    async def delete(self, reference: str, owner: str, *, admin: bool) -> Template:
        return await self._run(self._delete, reference, owner, admin)

    def _delete(self, reference: str, owner: str, admin: bool) -> Template:
        current = self._find(reference, owner, admin)
        self.db.execute("DELETE FROM templates WHERE id = ?", (current.id,))
        return current


def expand(payload: dict, template: Template, variables: dict[str, str]) -> dict:
    """The request with the template applied: its messages (then the request's) rendered, and its
    default model and sampling values filling what the request leaves out."""
    content = template.content
    expanded = {**(content.sampling or {}), **payload}
    messages = payload.get("messages", [])
    if isinstance(messages, list):  # anything else is left for validation to refuse
        expanded["messages"] = render([*content.messages, *messages], variables)
    if expanded.get("model") is None and content.model is not None:
        expanded["model"] = content.model
    return expanded
