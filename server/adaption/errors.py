"""Typed failures of adaption; `api/errors.py` maps them to HTTP errors."""

from __future__ import annotations


class AdaptionError(Exception):
    """Base of adaption's errors."""


class JobNotFound(AdaptionError):
    def __init__(self, job_id: str) -> None:
        super().__init__(f"Fine-tuning job {job_id!r} does not exist.")
        self.job_id = job_id


class JobFinished(AdaptionError):
    def __init__(self, job_id: str, status: str) -> None:
        super().__init__(f"Fine-tuning job {job_id!r} has already {status}; it cannot be cancelled.")
        self.job_id = job_id
