"""API keys in SQLite or PostgreSQL: stored as sha256 hashes, looked up by hash, compared in constant time.

A key is `sk-` plus 32 random bytes (urlsafe base64): high entropy, so an
unsalted sha256 is enough to make the stored hash useless to a thief. The
owner id of everything a key creates (memory groups, jobs, templates, usage)
is the same fingerprint static keys get: `key_` + the first 24 hex digits of
the hash.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from server.gateway.errors import KeyNotFound
from server.gateway.limits import Limits
from server.gateway.pending import PendingWrites, outbox_beside, read_outbox, spill
from server.storage import Database, Location, Row, query_exists

KEYS_DATABASE = "keys.sqlite3"
KEY_PREFIX = "sk-"
DISPLAY_PREFIX_CHARS = 8

MIGRATIONS = (
    """
    CREATE TABLE api_keys (
        id TEXT PRIMARY KEY,
        hash TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL,
        prefix TEXT NOT NULL,
        admin INTEGER NOT NULL DEFAULT 0,
        allowed_models TEXT,
        allowed_adapters TEXT,
        default_model TEXT,
        credits BIGINT,
        requests_per_minute INTEGER,
        tokens_per_minute BIGINT,
        created_at DOUBLE PRECISION NOT NULL,
        revoked_at DOUBLE PRECISION
    );
    """,
)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def owner_of_hash(key_hash: str) -> str:
    """The owner id for a key: what `api.middleware.key_fingerprint` gives for the same key."""
    return "key_" + key_hash[:24]


_ANY_ACTIVE = "SELECT 1 FROM api_keys WHERE revoked_at IS NULL LIMIT 1"


def has_active_keys(location: Location) -> bool:
    """Whether the key database holds an unrevoked key (read-only; False when there is none yet)."""
    return query_exists(location, "api_keys", _ANY_ACTIVE)


@dataclass(frozen=True, slots=True)
class KeySpec:
    """What an admin sets when creating a key."""

    name: str
    admin: bool = False
    allowed_models: tuple[str, ...] | None = None  # None: any
    allowed_adapters: tuple[str, ...] | None = None  # None: any
    default_model: str | None = None
    credits: int | None = None  # tokens; None: unlimited
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: str
    hash: str
    name: str
    prefix: str
    admin: bool
    allowed_models: tuple[str, ...] | None
    allowed_adapters: tuple[str, ...] | None
    default_model: str | None
    credits: int | None
    requests_per_minute: int | None
    tokens_per_minute: int | None
    created_at: float
    revoked_at: float | None

    @property
    def owner(self) -> str:
        return owner_of_hash(self.hash)

    @property
    def limits(self) -> Limits:
        return Limits(self.requests_per_minute, self.tokens_per_minute)

    def public_view(self) -> dict:
        """Everything about the key but its hash, JSON-ready."""
        return {
            "id": self.id,
            "name": self.name,
            "prefix": self.prefix,
            "owner": self.owner,
            "admin": self.admin,
            "allowed_models": list(self.allowed_models) if self.allowed_models is not None else None,
            "allowed_adapters": list(self.allowed_adapters) if self.allowed_adapters is not None else None,
            "default_model": self.default_model,
            "credits": self.credits,
            "requests_per_minute": self.requests_per_minute,
            "tokens_per_minute": self.tokens_per_minute,
            "created_at": int(self.created_at),
            "revoked_at": int(self.revoked_at) if self.revoked_at is not None else None,
        }


def _names(value: str | None) -> tuple[str, ...] | None:
    return tuple(json.loads(value)) if value is not None else None


def _key(row: Row) -> ApiKey:
    return ApiKey(
        id=row["id"],
        hash=row["hash"],
        name=row["name"],
        prefix=row["prefix"],
        admin=bool(row["admin"]),
        allowed_models=_names(row["allowed_models"]),
        allowed_adapters=_names(row["allowed_adapters"]),
        default_model=row["default_model"],
        credits=row["credits"],
        requests_per_minute=row["requests_per_minute"],
        tokens_per_minute=row["tokens_per_minute"],
        created_at=row["created_at"],
        revoked_at=row["revoked_at"],
    )


class KeyStore(Database):
    MIGRATIONS = MIGRATIONS
    SCHEMA = "keys"

    def __init__(self, location: Location, outbox: Path | None = None) -> None:
        super().__init__(location, "key-store")
        self.debits: PendingWrites[tuple[str, int]] = PendingWrites("credit debits", self._thread, self._debit)
        self._outbox = outbox or outbox_beside(location)  # where debits unwritten at close wait for the next start

    def _open(self) -> None:
        super()._open()
        if self._outbox is not None and (rows := read_outbox(self._outbox)):
            self._debit([(row["key_id"], row["tokens"]) for row in rows])
            self._outbox.unlink()

    def _close(self) -> None:
        left = self.debits.close()
        if left:
            rows = [{"key_id": key_id, "tokens": tokens} for key_id, tokens in left]
            spill(self._outbox, rows, "credit debits")
        super()._close()

    async def create(self, spec: KeySpec) -> tuple[ApiKey, str]:
        """The new key's record and the key itself (shown once, never stored)."""
        return await self._run(self._create, spec)

    def _create(self, spec: KeySpec) -> tuple[ApiKey, str]:
        secret = KEY_PREFIX + secrets.token_urlsafe(32)
        key_id = f"key-{uuid.uuid4().hex[:16]}"
        self.db.execute(
            "INSERT INTO api_keys (id, hash, name, prefix, admin, allowed_models, allowed_adapters, default_model,"
            " credits, requests_per_minute, tokens_per_minute, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                key_id,
                hash_key(secret),
                spec.name,
                secret[:DISPLAY_PREFIX_CHARS],
                int(spec.admin),
                json.dumps(list(spec.allowed_models)) if spec.allowed_models is not None else None,
                json.dumps(list(spec.allowed_adapters)) if spec.allowed_adapters is not None else None,
                spec.default_model,
                spec.credits,
                spec.requests_per_minute,
                spec.tokens_per_minute,
                time.time(),
            ),
        )
        return self._get(key_id), secret

    async def authenticate(self, offered: str) -> ApiKey | None:
        """The active key matching `offered`, or None."""
        return await self._run(self._authenticate, offered)

    def _authenticate(self, offered: str) -> ApiKey | None:
        offered_hash = hash_key(offered)
        row = self.db.execute(
            "SELECT * FROM api_keys WHERE hash = ? AND revoked_at IS NULL", (offered_hash,)
        ).fetchone()
        # The index finds the row; the constant-time compare is the one that decides.
        if row is None or not hmac.compare_digest(row["hash"], offered_hash):
            return None
        return _key(row)

    async def any_active(self) -> bool:
        return await self._run(lambda: self.db.execute(_ANY_ACTIVE).fetchone() is not None)

    async def get(self, key_id: str) -> ApiKey:
        return await self._run(self._get, key_id)

    def _get(self, key_id: str) -> ApiKey:
        row = self.db.execute("SELECT * FROM api_keys WHERE id = ?", (key_id,)).fetchone()
        if row is None:
            raise KeyNotFound(key_id)
        return _key(row)

    async def list(self) -> list[ApiKey]:
        return await self._run(
            lambda: [_key(row) for row in self.db.execute("SELECT * FROM api_keys ORDER BY created_at")]
        )

    async def revoke(self, key_id: str) -> ApiKey:
        return await self._run(self._revoke, key_id)

    def _revoke(self, key_id: str) -> ApiKey:
        self._get(key_id)
        self.db.execute("UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", (time.time(), key_id))
        return self._get(key_id)

    async def take(self, key_id: str, credits: int) -> bool:
        """Debit `credits` only if the balance covers them: one conditional UPDATE, so concurrent takes can never
        bring a balance below zero. True when taken (or the key has no balance)."""

        def taking() -> bool:
            row = self.db.execute(
                "UPDATE api_keys SET credits = credits - ? WHERE id = ? AND credits IS NOT NULL AND credits >= ?"
                " RETURNING credits",
                (credits, key_id, credits),
            ).fetchall()
            if row:
                return True
            unlimited = self.db.execute("SELECT 1 FROM api_keys WHERE id = ? AND credits IS NULL", (key_id,)).fetchone()
            return unlimited is not None

        return await self._run(taking)

    async def add_credits(self, key_id: str, credits: int) -> ApiKey:
        """Add `credits` to the key's balance (a key without a balance gets one of `credits`)."""

        def adding() -> ApiKey:
            self._get(key_id)
            self.db.execute("UPDATE api_keys SET credits = COALESCE(credits, 0) + ? WHERE id = ?", (credits, key_id))
            return self._get(key_id)

        return await self._run(adding)

    def debit(self, key_id: str, tokens: int) -> None:
        """Take `tokens` off the key's balance (never below zero; a negative amount is a refund), off the
        response path. Queued on the store's thread, so the key's next authentication already sees it;
        a failed write stays queued and is retried (`PendingWrites`)."""
        self.debits.add((key_id, tokens))

    async def written(self) -> None:
        """Wait until every debit queued so far is committed (`WriteFailed` while writes fail; they stay queued)."""
        await self.debits.written()

    def _debit(self, batch: list[tuple[str, int]]) -> None:
        with self.db.transaction():  # in order, each clamped at zero as it comes
            self.db.executemany(
                "UPDATE api_keys SET credits = CASE WHEN credits >= ? THEN credits - ? ELSE 0 END"
                " WHERE id = ? AND credits IS NOT NULL",
                [(tokens, tokens, key_id) for key_id, tokens in batch],
            )

    async def reserve(self, key_id: str, tokens: int) -> int | None:
        """Take `tokens` credits if the balance covers them, atomically (one conditional UPDATE, so
        concurrent requests, on this server or another on the same PostgreSQL, can never overdraw):
        None when taken, else the balance that could not cover them."""
        return await self._run(self._reserve, key_id, tokens)

    def _reserve(self, key_id: str, tokens: int) -> int | None:
        taken = self.db.execute(
            "UPDATE api_keys SET credits = credits - ? WHERE id = ? AND credits IS NOT NULL AND credits >= ?",
            (tokens, key_id, tokens),
        )
        if taken.rowcount == 1:
            return None
        row = self.db.execute("SELECT credits FROM api_keys WHERE id = ?", (key_id,)).fetchone()
        return row["credits"] if row is not None and row["credits"] is not None else 0

    def settle_reservation(self, key_id: str, reserved: int, used: int) -> None:
        """A request's end: the unused part of its reservation back, or what it used beyond it taken."""
        if used != reserved:
            self.debit(key_id, used - reserved)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the owner id of what they create, whether they are an admin, their stored key if any."""

    owner: str
    admin: bool
    key: ApiKey | None = None  # None: a static key from the environment, or an open server
