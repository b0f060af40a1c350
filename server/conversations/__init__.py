"""What the OpenAI surface keeps between requests: stored chat completions and Responses, per API key.

`store.ConversationStore` is the SQLite store; `responses` is the pure translation
between OpenAI's Responses API and the chat pipeline; `chunks` folds streamed chat
chunks back into one completion. Nothing here knows about HTTP.
"""
