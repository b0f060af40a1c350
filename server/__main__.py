"""Command line: `python -m server serve --model NAME --host HOST --port PORT`.

Import-safe on purpose: vLLM starts its engine core in a spawned process that
re-imports this module, so nothing runs outside `main()`.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import sys
from pathlib import Path

from server.config import ConfigError, Settings, load_settings
from server.gateway.keys import KEYS_DATABASE, has_active_keys

logger = logging.getLogger("server")

LOOPBACK = "127.0.0.1"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind_host(settings: Settings, stored_keys: bool = False) -> str:
    """Without API keys (in settings or stored) the server is open to anyone who can reach it: keep it on loopback."""
    if settings.api_keys or stored_keys:
        return settings.host
    banner = "!" * 78
    logger.warning(
        "\n%s\n!! NO API KEY CONFIGURED: anyone who can connect may use this server.\n"
        "!! Set LLM_SERVER_API_KEYS=key1,key2 (or api_keys in models.yaml) to require keys.\n"
        "!! Binding to loopback (%s) only%s.\n%s",
        banner,
        LOOPBACK if not is_loopback(settings.host) else settings.host,
        f", not {settings.host}" if not is_loopback(settings.host) else "",
        banner,
    )
    return settings.host if is_loopback(settings.host) else LOOPBACK


def serve(args: argparse.Namespace) -> None:
    import uvicorn
    from sse_starlette.sse import AppStatus

    from server.app import build_app

    try:
        settings = load_settings(args.config, model=args.model, host=args.host, port=args.port)
    except ConfigError as exc:
        sys.exit(f"error: {exc}")
    host = bind_host(settings, has_active_keys(settings.gateway_database(KEYS_DATABASE)))
    app = build_app(settings)
    served = ", ".join(entry.name for entry in settings.served_models)
    logger.info("serving %s on http://%s:%d/v1", served, host, settings.port)
    # SIGTERM: uvicorn stops accepting, lets in-flight requests and streams finish for up to the grace period
    # (sse-starlette would end every stream at once: not here), then the lifespan flushes and stops the rest.
    AppStatus.disable_automatic_graceful_drain()
    uvicorn.run(
        app,
        host=host,
        port=settings.port,
        log_level=args.log_level,
        log_config=None,  # uvicorn's lines (the access log too) in our format, with times: when a request was answered
        timeout_graceful_shutdown=settings.resilience.shutdown_grace_s,
    )


def check_config(args: argparse.Namespace) -> None:
    try:
        settings = load_settings(args.config, model=args.model)
    except ConfigError as exc:
        sys.exit(f"error: {exc}")
    for entry in settings.models:
        marker = "*" if entry in settings.served_models else " "
        print(f"{marker} {entry.name:<28} {entry.source}  aliases={list(entry.aliases)}")


def manage_keys(args: argparse.Namespace) -> None:
    """`keys create|list|revoke` on the key database (data_dir, or gateway.database_url): running servers see changes at once."""
    import asyncio
    import json

    from server.gateway.errors import KeyNotFound
    from server.gateway.keys import KeySpec, KeyStore

    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        sys.exit(f"error: {exc}")

    async def run() -> None:
        store = KeyStore(settings.gateway_database(KEYS_DATABASE))
        await store.open()
        try:
            if args.keys_command == "create":
                spec = KeySpec(
                    name=args.name,
                    admin=args.admin,
                    allowed_models=tuple(args.allow_model) if args.allow_model else None,
                    allowed_adapters=tuple(args.allow_adapter) if args.allow_adapter is not None else None,
                    default_model=args.default_model,
                    credits=args.credits,
                    requests_per_minute=args.rpm,
                    tokens_per_minute=args.tpm,
                )
                key, secret = await store.create(spec)
                print(json.dumps({**key.public_view(), "key": secret}))
                print("store the key now: it is not shown again", file=sys.stderr)
            elif args.keys_command == "list":
                for key in await store.list():
                    print(json.dumps(key.public_view()))
            elif args.keys_command == "credit":
                if args.amount < 1:
                    sys.exit("error: the amount of credits to add must be at least 1")
                print(json.dumps((await store.add_credits(args.key_id, args.amount)).public_view()))
            else:
                print(json.dumps((await store.revoke(args.key_id)).public_view()))
        except KeyNotFound as exc:
            sys.exit(f"error: {exc}")
        finally:
            await store.close()

    asyncio.run(run())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m server", description="Self-hosted OpenAI-compatible LLM server.")
    commands = parser.add_subparsers(dest="command", required=True)

    serve_parser = commands.add_parser("serve", help="serve a model from models.yaml over the OpenAI API")
    serve_parser.add_argument(
        "--model",
        help="registry name or alias to serve; several behind one endpoint as a,b (the first is the server's own)"
        " (default: models.yaml default_model, or LLM_SERVER_MODEL)",
    )
    serve_parser.add_argument("--host", help="bind address (default 127.0.0.1, or LLM_SERVER_HOST)")
    serve_parser.add_argument("--port", type=int, help="port (default 8000, or LLM_SERVER_PORT)")
    serve_parser.add_argument(
        "--config", type=Path, help="model registry (default ./models.yaml, or LLM_SERVER_CONFIG)"
    )
    serve_parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve_parser.set_defaults(run=serve)

    models_parser = commands.add_parser("models", help="validate models.yaml and list its models")
    models_parser.add_argument("--model", help="mark these models (a,b) as the served ones")
    models_parser.add_argument("--config", type=Path, help="model registry (default ./models.yaml)")
    models_parser.set_defaults(run=check_config)

    keys_parser = commands.add_parser("keys", help="create, list or revoke API keys (stored hashed)")
    keys_parser.add_argument("--config", type=Path, help="model registry (default ./models.yaml)")
    keys_commands = keys_parser.add_subparsers(dest="keys_command", required=True)
    create_parser = keys_commands.add_parser("create", help="create a key and print it (once)")
    create_parser.add_argument("--name", required=True)
    create_parser.add_argument("--admin", action="store_true", help="may manage keys and see all usage")
    create_parser.add_argument("--allow-model", action="append", help="a model the key may use (repeat; default: any)")
    create_parser.add_argument(
        "--allow-adapter", action="append", help="an adapter the key may use (repeat; default: any)"
    )
    create_parser.add_argument("--default-model", help="used when a request names no model")
    create_parser.add_argument("--credits", type=int, help="tokens the key may use (default: unlimited)")
    create_parser.add_argument("--rpm", type=int, help="requests per minute")
    create_parser.add_argument("--tpm", type=int, help="tokens per minute")
    keys_commands.add_parser("list", help="list keys (never the keys themselves)")
    revoke_parser = keys_commands.add_parser("revoke", help="revoke a key by id")
    revoke_parser.add_argument("key_id")
    credit_parser = keys_commands.add_parser("credit", help="add credits (tokens) to a key's balance")
    credit_parser.add_argument("key_id")
    credit_parser.add_argument("amount", type=int)
    keys_parser.set_defaults(run=manage_keys)
    return parser


PRIVATE_UMASK = 0o077  # databases, adapters, uploads and work files: readable by the server's user only


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    os.umask(PRIVATE_UMASK)
    logging.basicConfig(
        level=getattr(args, "log_level", "info").upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    args.run(args)


if __name__ == "__main__":
    main()
