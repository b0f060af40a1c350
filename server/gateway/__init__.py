"""The gateway: API keys, credits and rate limits, usage, prompt templates, routing and transforms.

Knows nothing of HTTP: it raises the typed errors of `errors.py`, which
`api/errors.py` maps to status codes.
"""
