"""`/console`: the web console's static files (server/console/), served as they are.

The files are public (the page asks for an API key, keeps it in sessionStorage and sends it as a Bearer token to
the JSON API); everything the console shows comes from the API, scoped to that key.
"""

from __future__ import annotations

from pathlib import Path

from starlette.staticfiles import StaticFiles

CONSOLE_PATH = "/console"
CONSOLE_DIR = Path(__file__).resolve().parent.parent / "console"


def console_app() -> StaticFiles:
    return StaticFiles(directory=CONSOLE_DIR, html=True)


def console_paths() -> tuple[str, ...]:
    """Every path the console's files answer on (the API key check lets exactly these through)."""
    files = sorted(path.relative_to(CONSOLE_DIR).as_posix() for path in CONSOLE_DIR.rglob("*") if path.is_file())
    return (CONSOLE_PATH, f"{CONSOLE_PATH}/", *(f"{CONSOLE_PATH}/{name}" for name in files))
