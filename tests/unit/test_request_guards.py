"""The request guards (api/middleware.py): pure checks, and the middleware on a minimal ASGI app."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from server.api.errors import APIError, handle_exception, read_json_object
from server.api.middleware import (
    FairnessMiddleware,
    RequestGuardMiddleware,
    SendTimedOut,
    host_allowed,
    json_depth,
    origin_allowed,
    parse_json_body,
)
from server.config import SecuritySettings
from server.gateway.keys import Principal


def test_json_depth_counts_nesting_outside_strings() -> None:
    assert json_depth(b'{"a": 1}') == 1
    assert json_depth(b'{"a": [[{"b": []}]]}') == 5
    assert json_depth(b'{"text": "[[[[[[{{{{"}') == 1
    assert json_depth(b'{"text": "a \\" [[[[ \\\\"}') == 1
    assert json_depth(b"[" * 100_000 + b"]" * 100_000) == 100_000
    assert json_depth(b"12") == 0


def test_deep_json_is_a_400_not_a_recursion_error() -> None:
    with pytest.raises(APIError) as caught:
        parse_json_body(b"[" * 200_000 + b"]" * 200_000, 64)
    assert caught.value.status == 400 and caught.value.code == "invalid_json"
    assert parse_json_body(b'{"a": [[1]]}', 64) == {"a": [[1]]}
    with pytest.raises(APIError):
        parse_json_body(b'{"a": ', 64)


@pytest.mark.parametrize(
    ("host", "allowed", "ok"),
    [
        ("127.0.0.1:8000", (), True),
        ("localhost:8000", (), True),
        ("[::1]:8000", (), True),
        ("10.1.2.3", (), True),
        ("app.localhost", (), True),
        ("evil.example.com:8000", (), False),
        ("evil.example.com", ("api.example.com",), False),
        ("api.example.com:443", ("api.example.com",), True),
        ("x.example.com", ("*.example.com",), True),
        ("anything", ("*",), True),
        (None, (), False),
    ],
)
def test_host_allow_list(host: str | None, allowed: tuple[str, ...], ok: bool) -> None:
    assert host_allowed(host, allowed) is ok


def test_origin_must_be_the_server_itself_or_configured() -> None:
    assert origin_allowed(None, "127.0.0.1:8000", ())
    assert origin_allowed("http://127.0.0.1:8000", "127.0.0.1:8000", ())
    assert not origin_allowed("http://evil.example.com", "127.0.0.1:8000", ())
    assert not origin_allowed("null", "127.0.0.1:8000", ())
    assert origin_allowed("https://app.example.com", "127.0.0.1:8000", ("https://app.example.com",))


async def echo(request: Request) -> JSONResponse:
    return JSONResponse({"got": await read_json_object(request)})


async def upload(request: Request) -> JSONResponse:
    async with request.form() as form:
        return JSONResponse({"fields": sorted(form.keys())})


def guarded_app(settings: SecuritySettings) -> Starlette:
    return Starlette(
        routes=[Route("/echo", echo, methods=["POST"]), Route("/upload", upload, methods=["POST"])],
        middleware=[Middleware(RequestGuardMiddleware, settings=settings, multipart_paths=("/upload",))],
        exception_handlers={Exception: handle_exception, APIError: handle_exception},
    )


def call(settings: SecuritySettings, method: str, path: str, **kwargs: object) -> httpx.Response:
    async def run() -> httpx.Response:
        transport = httpx.ASGITransport(app=guarded_app(settings))
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000") as client:
            return await client.request(method, path, **kwargs)

    return asyncio.run(run())


def error_of(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == code and error["message"]


def test_guard_accepts_json_and_refuses_other_types_sizes_and_depths() -> None:
    settings = SecuritySettings(max_body_bytes=4096, max_json_depth=8)
    assert call(settings, "POST", "/echo", json={"a": [1]}).json() == {"got": {"a": [1]}}
    error_of(
        call(settings, "POST", "/echo", content=b'{"a": 1}', headers={"content-type": "text/plain"}),
        415,
        "unsupported_media_type",
    )
    error_of(
        call(settings, "POST", "/echo", content=b'{"a": 1}', headers={"content-type": ""}),
        415,
        "unsupported_media_type",
    )
    error_of(
        call(
            settings,
            "POST",
            "/echo",
            content=b'{"a": "' + b"x" * 5000 + b'"}',
            headers={"content-type": "application/json"},
        ),
        413,
        "request_too_large",
    )
    error_of(call(settings, "POST", "/echo", json={"a": [[[[[[[[[[1]]]]]]]]]]}), 400, "invalid_json")
    error_of(
        call(settings, "POST", "/echo", content=b"{nope", headers={"content-type": "application/json"}),
        400,
        "invalid_json",
    )


def test_chunked_body_over_the_limit_is_refused_while_it_arrives() -> None:
    settings = SecuritySettings(max_body_bytes=4096)

    async def chunks():
        for _ in range(10):
            yield b" " * 1000

    error_of(
        call(settings, "POST", "/echo", content=chunks(), headers={"content-type": "application/json"}),
        413,
        "request_too_large",
    )


def test_multipart_only_where_uploads_are_taken_and_bounded_there() -> None:
    settings = SecuritySettings(max_body_bytes=1024, max_upload_bytes=8192)
    files = {"name": (None, "x"), "f": ("f.bin", b"0" * 2000)}
    assert call(settings, "POST", "/upload", files=files).json() == {"fields": ["f", "name"]}
    error_of(call(settings, "POST", "/echo", files=files), 415, "unsupported_media_type")
    error_of(call(settings, "POST", "/upload", files={"f": ("f.bin", b"0" * 9000)}), 413, "request_too_large")


def test_bad_host_and_foreign_origin_are_refused() -> None:
    settings = SecuritySettings()
    error_of(call(settings, "POST", "/echo", json={}, headers={"host": "rebind.attacker.example"}), 400, "invalid_host")
    error_of(
        call(settings, "POST", "/echo", json={}, headers={"origin": "https://attacker.example"}),
        403,
        "origin_not_allowed",
    )
    assert call(settings, "POST", "/echo", json={}, headers={"origin": "http://127.0.0.1:8000"}).status_code == 200


def test_fairness_limits_concurrent_requests_and_streams_of_a_key() -> None:
    settings = SecuritySettings(max_concurrent_requests_per_key=2, max_concurrent_streams_per_key=1)
    release = asyncio.Event()
    principal = Principal(owner="key_tenant", admin=False)

    async def app(scope, receive, send):
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"done"})

    fair = FairnessMiddleware(app, settings)

    async def request(stream: bool, principal: Principal = principal) -> int:
        sent: list[dict] = []

        async def send(message):
            sent.append(message)

        async def receive():
            return {"type": "http.disconnect"}

        state = {"principal": principal, "json_body": {"stream": stream}}
        scope = {"type": "http", "method": "POST", "path": "/x", "headers": [], "state": state}
        await fair(scope, receive, send)
        return sent[0]["status"]

    async def run() -> list[int]:
        first = asyncio.create_task(request(True))
        await asyncio.sleep(0)
        second_stream = await request(True)  # refused at once: one stream in flight
        second = asyncio.create_task(request(False))
        await asyncio.sleep(0)
        third = await request(False)  # two requests in flight
        admin = asyncio.create_task(request(False, Principal(owner="admin", admin=True)))
        await asyncio.sleep(0)
        release.set()
        return [second_stream, third, await first, await second, await admin]

    assert asyncio.run(run()) == [429, 429, 200, 200, 200]


def test_a_client_that_stops_reading_is_cut_off_after_the_send_timeout() -> None:
    settings = SecuritySettings(stream_send_timeout_s=0.2)
    chunks_sent = 0

    async def app(scope, receive, send):
        nonlocal chunks_sent
        await send({"type": "http.response.start", "status": 200, "headers": []})
        while True:
            await send({"type": "http.response.body", "body": b"data: x\n\n", "more_body": True})
            chunks_sent += 1

    async def stalled_send(message):
        if message["type"] == "http.response.body" and chunks_sent >= 3:
            await asyncio.sleep(3600)  # the client's window is full: it reads nothing more

    async def run() -> float:
        scope = {"type": "http", "method": "GET", "path": "/s", "headers": [], "state": {}}
        loop = asyncio.get_running_loop()
        began = loop.time()
        await FairnessMiddleware(app, settings)(scope, None, stalled_send)
        return loop.time() - began

    assert asyncio.run(run()) < 2
    assert chunks_sent == 3
    assert SendTimedOut.__doc__


def test_parse_json_body_keeps_big_bodies_exact() -> None:
    payload = {"messages": [{"role": "user", "content": "x" * 100}] * 2000}
    assert parse_json_body(json.dumps(payload).encode(), 64) == payload
