"""Stored chat completions (`store: true`) and Responses, in one SQLite database, per owner.

Each row belongs to the owner (API key fingerprint) that created it; every read,
update and delete is scoped to that owner, so another key's ids are simply absent.
Listing pages by insertion order (`seq`), `after` an id, ascending or descending.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

from server.conversations.errors import StoredCompletionNotFound, StoredResponseNotFound
from server.storage import POSTGRES, Database, Location

CONVERSATIONS_DATABASE = "conversations.sqlite3"

MIGRATIONS = (
    """
    CREATE TABLE chat_completions (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        owner TEXT NOT NULL,
        model TEXT NOT NULL,
        created INTEGER NOT NULL,
        metadata TEXT NOT NULL,
        messages TEXT NOT NULL,
        completion TEXT NOT NULL
    );
    CREATE INDEX chat_completions_owner ON chat_completions (owner, seq);
    CREATE TABLE responses (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        owner TEXT NOT NULL,
        created INTEGER NOT NULL,
        response TEXT NOT NULL,
        conversation TEXT NOT NULL,
        input_items TEXT NOT NULL
    );
    CREATE INDEX responses_owner ON responses (owner, seq);
    """,
)
# PostgreSQL (servers sharing a database): the same tables, numbered by an identity column.
POSTGRES_MIGRATIONS = (
    MIGRATIONS[0].replace("INTEGER PRIMARY KEY AUTOINCREMENT", "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY"),
)
# A metadata key's value, per engine (metadata is a JSON object of strings).
METADATA_VALUE = {
    "sqlite": "EXISTS (SELECT 1 FROM json_each(metadata) WHERE json_each.key = ? AND json_each.value = ?)",
    "postgresql": "CAST(metadata AS jsonb) ->> CAST(? AS TEXT) = ?",
}

Order = Literal["asc", "desc"]


@dataclass(frozen=True, slots=True)
class StoredChat:
    id: str
    model: str
    created: int
    metadata: dict[str, str]
    messages: list[dict]  # the request's messages, as sent
    completion: dict  # the chat.completion object answered


@dataclass(frozen=True, slots=True)
class StoredResponse:
    id: str
    created: int
    response: dict  # the Response object answered
    conversation: list[dict]  # chat messages up to and including this response's output
    input_items: list[dict]  # this request's own input, as Responses items with ids


@dataclass(frozen=True, slots=True)
class Page:
    items: list[StoredChat]
    has_more: bool


def _chat(row) -> StoredChat:
    return StoredChat(
        id=row["id"],
        model=row["model"],
        created=row["created"],
        metadata=json.loads(row["metadata"]),
        messages=json.loads(row["messages"]),
        completion=json.loads(row["completion"]),
    )


class ConversationStore(Database):
    """Stored chat completions and Responses: a SQLite file, or the shared PostgreSQL database (where one server
    continues what another stored)."""

    MIGRATIONS = MIGRATIONS
    POSTGRES_MIGRATIONS = POSTGRES_MIGRATIONS
    SCHEMA = "conversations"

    def __init__(self, location: Location) -> None:
        super().__init__(location, "conversations")

    # --- stored chat completions ------------------------------------------------------------------------------

    async def save_chat(self, owner: str, chat: StoredChat) -> None:
        await self._run(self._save_chat, owner, chat)

    def _save_chat(self, owner: str, chat: StoredChat) -> None:
        self.db.execute(
            "INSERT INTO chat_completions (id, owner, model, created, metadata, messages, completion)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                chat.id,
                owner,
                chat.model,
                chat.created,
                json.dumps(chat.metadata),
                json.dumps(chat.messages),
                json.dumps(chat.completion),
            ),
        )

    async def list_chats(
        self,
        owner: str,
        *,
        model: str | None = None,
        metadata: dict[str, str] | None = None,
        after: str | None = None,
        limit: int = 20,
        order: Order = "asc",
    ) -> Page:
        return await self._run(self._list_chats, owner, model, metadata or {}, after, limit, order)

    def _list_chats(
        self, owner: str, model: str | None, metadata: dict[str, str], after: str | None, limit: int, order: Order
    ) -> Page:
        where, args = ["owner = ?"], [owner]
        if model is not None:
            where.append("model = ?")
            args.append(model)
        for key, value in metadata.items():
            where.append(METADATA_VALUE["postgresql" if self.db.dialect is POSTGRES else "sqlite"])
            args += [key, value]
        if after is not None:
            cursor = self.db.execute("SELECT seq FROM chat_completions WHERE id = ? AND owner = ?", (after, owner))
            row = cursor.fetchone()
            if row is None:
                raise StoredCompletionNotFound(after, "after")
            where.append("seq > ?" if order == "asc" else "seq < ?")
            args.append(row["seq"])
        direction = "ASC" if order == "asc" else "DESC"
        rows = self.db.execute(
            f"SELECT * FROM chat_completions WHERE {' AND '.join(where)} ORDER BY seq {direction} LIMIT ?",
            (*args, limit + 1),
        ).fetchall()
        return Page([_chat(row) for row in rows[:limit]], has_more=len(rows) > limit)

    async def get_chat(self, owner: str, completion_id: str) -> StoredChat:
        return await self._run(self._get_chat, owner, completion_id)

    def _get_chat(self, owner: str, completion_id: str) -> StoredChat:
        row = self.db.execute(
            "SELECT * FROM chat_completions WHERE id = ? AND owner = ?", (completion_id, owner)
        ).fetchone()
        if row is None:
            raise StoredCompletionNotFound(completion_id)
        return _chat(row)

    async def update_chat_metadata(self, owner: str, completion_id: str, metadata: dict[str, str]) -> StoredChat:
        return await self._run(self._update_chat_metadata, owner, completion_id, metadata)

    def _update_chat_metadata(self, owner: str, completion_id: str, metadata: dict[str, str]) -> StoredChat:
        changed = self.db.execute(
            "UPDATE chat_completions SET metadata = ? WHERE id = ? AND owner = ?",
            (json.dumps(metadata), completion_id, owner),
        ).rowcount
        if not changed:
            raise StoredCompletionNotFound(completion_id)
        return self._get_chat(owner, completion_id)

    async def delete_chat(self, owner: str, completion_id: str) -> None:
        await self._run(self._delete_chat, owner, completion_id)

    def _delete_chat(self, owner: str, completion_id: str) -> None:
        deleted = self.db.execute(
            "DELETE FROM chat_completions WHERE id = ? AND owner = ?", (completion_id, owner)
        ).rowcount
        if not deleted:
            raise StoredCompletionNotFound(completion_id)

    # --- responses -------------------------------------------------------------------------------------------

    async def save_response(self, owner: str, stored: StoredResponse) -> None:
        await self._run(self._save_response, owner, stored)

    def _save_response(self, owner: str, stored: StoredResponse) -> None:
        self.db.execute(
            "INSERT INTO responses (id, owner, created, response, conversation, input_items) VALUES (?, ?, ?, ?, ?, ?)",
            (
                stored.id,
                owner,
                stored.created,
                json.dumps(stored.response),
                json.dumps(stored.conversation),
                json.dumps(stored.input_items),
            ),
        )

    async def get_response(self, owner: str, response_id: str, param: str = "response_id") -> StoredResponse:
        return await self._run(self._get_response, owner, response_id, param)

    def _get_response(self, owner: str, response_id: str, param: str) -> StoredResponse:
        row = self.db.execute("SELECT * FROM responses WHERE id = ? AND owner = ?", (response_id, owner)).fetchone()
        if row is None:
            raise StoredResponseNotFound(response_id, param)
        return StoredResponse(
            id=row["id"],
            created=row["created"],
            response=json.loads(row["response"]),
            conversation=json.loads(row["conversation"]),
            input_items=json.loads(row["input_items"]),
        )

    async def delete_response(self, owner: str, response_id: str) -> None:
        await self._run(self._delete_response, owner, response_id)

    def _delete_response(self, owner: str, response_id: str) -> None:
        deleted = self.db.execute("DELETE FROM responses WHERE id = ? AND owner = ?", (response_id, owner)).rowcount
        if not deleted:
            raise StoredResponseNotFound(response_id)
