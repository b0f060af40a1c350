"""Pure ASGI middleware: request ids, hostile-input and browser guards, API-key authentication, fairness.

Pure ASGI (not `BaseHTTPMiddleware`) so streamed responses pass through
untouched and cost nothing per chunk.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import logging
import re
import uuid
from collections.abc import Iterable
from urllib.parse import urlsplit

import numpy as np
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.api.errors import APIError, error_response, invalid_api_key
from server.config import SecuritySettings
from server.gateway.errors import TooManyInFlight
from server.gateway.keys import KeyStore, Principal
from server.gateway.limits import InFlightCaps, LocalSlots, SharedSlots

logger = logging.getLogger(__name__)

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
        # Open (no key needed) only when the server started without any key: decided once, at start-up,
        # so revoking the last stored key never opens a server that was started closed.
        if getattr(scope["app"].state, "open_mode", False):
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


# Hostile input and browser safety ---------------------------------------------------------------

JSON_TYPES = ("application/json",)
MULTIPART_TYPES = ("multipart/form-data",)
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})
PARSE_IN_THREAD_BYTES = 64 * 1024  # bodies larger than this are parsed off the event loop
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(c for c in range(256) if c not in b"[]{}")
_BRACKET_STEP = np.zeros(256, dtype=np.int8)
_BRACKET_STEP[list(b"[{")] = 1
_BRACKET_STEP[list(b"]}")] = -1


def json_depth(body: bytes) -> int:
    """How deeply arrays and objects nest in `body` (brackets inside strings do not count). Linear time."""
    brackets = _JSON_STRING.sub(b"", body).translate(None, _NOT_BRACKETS)
    if not brackets:
        return 0
    steps = _BRACKET_STEP[np.frombuffer(brackets, dtype=np.uint8)].astype(np.int64)
    return int(np.cumsum(steps).max())


def host_name(host_header: str) -> str:
    """The name of a Host header value, without the port (IPv6 literals without their brackets), lower case."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


def is_ip_literal(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def host_allowed(host_header: str | None, allowed: Iterable[str]) -> bool:
    """Loopback names and IP literals (which DNS rebinding cannot produce) always; other names when listed."""
    allowed = tuple(name.lower() for name in allowed)
    if "*" in allowed:
        return True
    if not host_header:
        return False
    name = host_name(host_header)
    if name in LOOPBACK_NAMES or name.endswith(".localhost") or is_ip_literal(name):
        return True
    return any(name == entry or (entry.startswith("*.") and name.endswith(entry[1:])) for entry in allowed)


def origin_allowed(origin: str | None, host_header: str | None, cors_origins: Iterable[str]) -> bool:
    """A browser's `Origin`: absent (not a browser), the server's own (same origin), or a configured CORS origin."""
    if origin is None:
        return True
    cors = tuple(cors_origins)
    if "*" in cors or origin in cors:
        return True
    if origin == "null":
        return False
    parts = urlsplit(origin)
    return bool(host_header) and parts.netloc.lower() == (host_header or "").strip().lower()


def media_type(content_type: str) -> str:
    return content_type.partition(";")[0].strip().lower()


def invalid_json(message: str) -> APIError:
    return APIError(400, message, code="invalid_json")


def parse_json_body(body: bytes, max_depth: int) -> object:
    """The parsed body, or a 400: too deep (checked before parsing, so no RecursionError), or not JSON."""
    depth = json_depth(body)
    if depth > max_depth:
        raise invalid_json(f"The JSON body nests {depth} levels deep; at most {max_depth} are allowed.")
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise invalid_json(f"We could not parse the JSON body of your request: {exc}") from None
    except RecursionError:
        raise invalid_json(f"The JSON body nests too deeply; at most {max_depth} levels are allowed.") from None


class BodyTooLarge(Exception):
    pass


class RequestGuardMiddleware:
    """Before anything reads a request: Host allow-list (DNS rebinding), cross-origin refusal (no CORS unless
    configured), JSON content type (415), body size (413, before parsing), JSON depth (400).

    A JSON body is read here, bounded, and parsed once (off the event loop when large); the parsed value is
    left in the scope's state as `json_body` and the bytes are replayed to the endpoint.
    """

    def __init__(
        self,
        app: ASGIApp,
        settings: SecuritySettings,
        multipart_paths: Iterable[str] = (),
        exempt_paths: Iterable[str] = (),
    ) -> None:
        self.app = app
        self.settings = settings
        self.multipart_paths = frozenset(multipart_paths)
        self.exempt_paths = frozenset(exempt_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            receive = await self._checked(scope, receive)
        except APIError as error:
            await error_response(error)(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def _checked(self, scope: Scope, receive: Receive) -> Receive:
        headers = Headers(scope=scope)
        settings = self.settings
        if not host_allowed(headers.get("host"), settings.allowed_hosts):
            raise APIError(
                400,
                "This server does not answer to that Host name; add it to `security.allowed_hosts`.",
                code="invalid_host",
            )
        if not origin_allowed(headers.get("origin"), headers.get("host"), settings.cors_origins):
            raise APIError(
                403,
                "Cross-origin requests are refused; list the origin in `security.cors_origins` to allow it.",
                type="permission_error",
                code="origin_not_allowed",
            )
        if scope["method"] not in BODY_METHODS or scope["path"] in self.exempt_paths:
            return receive
        declared = headers.get("content-length")
        has_body = (declared is not None and declared.strip() != "0") or "transfer-encoding" in headers
        kind = media_type(headers.get("content-type", ""))
        multipart = kind in MULTIPART_TYPES and scope["path"] in self.multipart_paths
        if not has_body and kind in ("", *JSON_TYPES):
            return receive
        if kind not in JSON_TYPES and not multipart:
            accepted = "application/json" + (" or multipart/form-data" if scope["path"] in self.multipart_paths else "")
            raise APIError(
                415,
                f"Unsupported Content-Type {kind or '(none)'!r}: send {accepted}.",
                code="unsupported_media_type",
            )
        limit = settings.max_upload_bytes if multipart else settings.max_body_bytes
        if declared is not None and declared.strip().isdigit() and int(declared) > limit:
            raise too_large(limit)
        if multipart:
            return limited_receive(receive, limit)
        body = await read_body(receive, limit)
        if len(body) > PARSE_IN_THREAD_BYTES:
            parsed = await asyncio.to_thread(parse_json_body, body, settings.max_json_depth)
        else:
            parsed = parse_json_body(body, settings.max_json_depth)
        scope.setdefault("state", {})["json_body"] = parsed
        return replayed(body, receive)


def too_large(limit: int) -> APIError:
    return APIError(
        413, f"The request body is larger than this server's limit of {limit} bytes.", code="request_too_large"
    )


async def read_body(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise APIError(400, "The client disconnected while sending the body.", code="client_disconnected")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def replayed(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def limited_receive(receive: Receive, limit: int) -> Receive:
    """`receive` that fails with 413 once more than `limit` body bytes arrived (multipart bodies are streamed)."""
    size = 0

    async def counting() -> Message:
        nonlocal size
        message = await receive()
        if message["type"] == "http.request":
            size += len(message.get("body", b""))
            if size > limit:
                raise too_large(limit)
        return message

    return counting


# Fairness ----------------------------------------------------------------------------------------


class SendTimedOut(Exception):
    """The client read nothing of the response for `stream_send_timeout_s`."""


def wants_stream(body: object) -> bool:
    return isinstance(body, dict) and body.get("stream") is True


class FairnessMiddleware:
    """Per key (non-admin keys): at most so many requests and streams in flight (429 beyond). For everyone: a
    response whose client stops reading is ended after `stream_send_timeout_s`."""

    def __init__(self, app: ASGIApp, settings: SecuritySettings) -> None:
        self.app = app
        self.settings = settings
        self._caps = InFlightCaps(settings.max_concurrent_requests_per_key, settings.max_concurrent_streams_per_key)
        self._local = LocalSlots()  # where servers share no database

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.get("state", {})
        principal: Principal | None = state.get("principal")
        owner = principal.owner if principal is not None and not principal.admin else None
        stream = wants_stream(state.get("json_body"))
        # Servers that share a database count each key's requests there (app.state.in_flight), one cap across them.
        app = scope.get("app")
        shared = getattr(app.state, "in_flight", None) if app is not None else None
        slots: LocalSlots | SharedSlots = shared or self._local
        slot = None
        if owner is not None:
            try:
                slot = await slots.acquire(owner, stream, self._caps)
            except TooManyInFlight as refusal:
                await error_response(refusal)(scope, receive, send)
                return
            except Exception:  # the shared database is out of reach: serve uncounted rather than fail the request
                logger.exception("in-flight caps could not be checked for %s; request served uncounted", owner)
        try:
            await self.app(scope, receive, self._timed(send))
        except SendTimedOut:
            logger.warning("%s %s: the client stopped reading; response ended", scope["method"], scope["path"])
        finally:
            if slot is not None:
                slots.release(slot)

    def _timed(self, send: Send) -> Send:
        timeout = self.settings.stream_send_timeout_s

        async def timed_send(message: Message) -> None:
            try:
                async with asyncio.timeout(timeout):
                    await send(message)
            except TimeoutError:
                raise SendTimedOut() from None

        return timed_send
