"""Pure pieces of the legacy text completions API (`POST /v1/completions`)."""
