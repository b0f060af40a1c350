"""The walls between packages: only the HTTP layer (server/api, server/app.py) knows HTTP or imports server.api."""

from __future__ import annotations

import ast
from pathlib import Path

import server

ROOT = Path(server.__file__).parent
HTTP_LAYER = {ROOT / "app.py", ROOT / "__main__.py"}
FORBIDDEN = ("server.api", "starlette", "sse_starlette", "uvicorn", "fastapi")


def imported_modules(path: Path) -> set[str]:
    """Every module `path` imports, at any depth of the file (function-level imports too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def offending(modules: set[str]) -> list[str]:
    return sorted(name for name in modules if any(name == f or name.startswith(f + ".") for f in FORBIDDEN))


def test_the_check_sees_an_import_of_the_api_layer(tmp_path: Path) -> None:
    module = tmp_path / "module.py"
    module.write_text("import json\n\ndef f():\n    from server.api.protocol import InvalidParam\n")
    assert offending(imported_modules(module)) == ["server.api.protocol"]


def test_no_package_outside_the_http_layer_imports_it() -> None:
    walls = {
        str(path.relative_to(ROOT.parent)): offending(imported_modules(path))
        for path in sorted(ROOT.rglob("*.py"))
        if (ROOT / "api") not in path.parents and path not in HTTP_LAYER
    }
    assert {path: names for path, names in walls.items() if names} == {}
    assert "server/conversations/responses.py" in walls  # the check did read the packages
