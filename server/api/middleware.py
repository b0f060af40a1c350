"""Pure ASGI middleware: request ids and API-key authentication.

Pure ASGI (not `BaseHTTPMiddleware`) so streamed responses pass through
untouched and cost nothing per chunk.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import uuid
from collections.abc import Iterable

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.api.errors import error_response, invalid_api_key
from server.gateway.keys import KeyStore, Principal

REQUEST_ID_HEADER = "x-request-id"
_CLIENT_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


LOCAL_CALLER = "local"  # who calls a server that has no API keys


def request_id_of(scope: Scope) -> str:
    return scope["state"]["request_id"]


def principal_of(scope: Scope) -> Principal:
    return scope["state"]["principal"]


def caller_of(scope: Scope) -> str:
    """Who is calling: a fingerprint of their API key (never the key), the owner of what they create."""
    return scope["state"].get("caller", LOCAL_CALLER)


def key_fingerprint(key: bytes) -> str:
    return "key_" + hashlib.sha256(key).hexdigest()[:24]


class RequestIdMiddleware:
    """Every response carries `X-Request-Id`: the client's own if it sent a sane one."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sent = Headers(scope=scope).get(REQUEST_ID_HEADER, "")
        request_id = sent if _CLIENT_REQUEST_ID.match(sent) else f"req_{uuid.uuid4().hex}"
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
            await send(message)

        await self.app(scope, receive, send_with_id)


class APIKeyMiddleware:
    """`Authorization: Bearer <key>`: a static key from the environment (an admin) or a stored key.

    Static keys are compared in constant time against each; stored keys are
    looked up by hash (`gateway.keys`). A server with neither is open, and its
    one caller is an admin. The resolved `Principal` goes into the scope's state.
    """

    def __init__(self, app: ASGIApp, keys: Iterable[str], public_paths: Iterable[str] = ()) -> None:
        self.app = app
        self.keys = tuple(key.encode() for key in keys)
        self.public_paths = frozenset(public_paths)

    def _offered_key(self, scope: Scope) -> str | None:
        scheme, _, token = Headers(scope=scope).get("authorization", "").partition(" ")
        return token.strip() if scheme.lower() == "bearer" and token.strip() else None

    def _static_match(self, offered: bytes) -> bytes | None:
        # Compare against every key so timing does not reveal which one matched.
        matches = [key for key in self.keys if hmac.compare_digest(offered, key)]
        return matches[0] if matches else None

    async def _principal(self, scope: Scope) -> Principal | None:
        store: KeyStore = scope["app"].state.keys
        offered = self._offered_key(scope)
        if offered is not None:
            static = self._static_match(offered.encode())
            if static is not None:
                return Principal(owner=key_fingerprint(static), admin=True)
            stored = await store.authenticate(offered)
            if stored is not None:
                return Principal(owner=stored.owner, admin=stored.admin, key=stored)
        if not self.keys and not await store.any_active():
            return Principal(owner=LOCAL_CALLER, admin=True)
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.public_paths:
            await self.app(scope, receive, send)
            return
        principal = await self._principal(scope)
        if principal is not None:
            state = scope.setdefault("state", {})
            state["principal"] = principal
            state["caller"] = principal.owner
            await self.app(scope, receive, send)
            return
        await error_response(invalid_api_key(), headers={"WWW-Authenticate": "Bearer"})(scope, receive, send)
