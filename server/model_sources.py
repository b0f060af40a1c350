"""Where a small helper model (embedder, guardrail checker) comes from: a bundled package, a folder or a repo id."""

from __future__ import annotations

import importlib
from pathlib import Path

PACKAGE_PREFIX = "package:"


def resolve_packaged(source: str) -> str:
    """`package:<module>` names a Python package that bundles a model (its `get_model_path()`);
    a local directory (starting with /, ~ or .) is expanded; anything else is a Hugging Face repo id."""
    if source.startswith(PACKAGE_PREFIX):
        module = importlib.import_module(source.removeprefix(PACKAGE_PREFIX))
        return str(module.get_model_path())
    return str(Path(source).expanduser()) if source.startswith(("/", "~", ".")) else source
