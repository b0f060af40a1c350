"""Output policies: a local classifier checks text against a natural-language policy. Knows nothing of HTTP."""
