"""OpenAI's limits on the `metadata` a stored chat completion or Response carries (pure validation)."""

from __future__ import annotations

METADATA_MAX_KEYS = 16
METADATA_MAX_KEY_LENGTH = 64
METADATA_MAX_VALUE_LENGTH = 512


def checked_metadata(metadata: dict[str, str] | None) -> dict[str, str] | None:
    """OpenAI's limits on `metadata`: 16 pairs, keys up to 64 characters, values up to 512."""
    if metadata is None:
        return None
    if len(metadata) > METADATA_MAX_KEYS:
        raise ValueError(f"at most {METADATA_MAX_KEYS} key-value pairs are allowed")
    for key, value in metadata.items():
        if not key or len(key) > METADATA_MAX_KEY_LENGTH:
            raise ValueError(f"keys must be 1 to {METADATA_MAX_KEY_LENGTH} characters long")
        if len(value) > METADATA_MAX_VALUE_LENGTH:
            raise ValueError(f"values must be at most {METADATA_MAX_VALUE_LENGTH} characters long")
    return metadata
