# make serve  - install what is missing, build the embedded model, serve it on :8000
# make test   - install, build, run the test suite (real engine on the embedded model)
# make bench  - our server vs `vllm serve` on the same model and load
# make lint   - ruff check and ruff format --check over server, scripts and tests
# make eval-guardrails - precision/recall/F1 and check latency of the guardrail checker
# make eval-memory - memory retrieval recall@1/5/10 beside cosine and BM25 baselines (tuning and test sets),
#                    then the fact named in chat answers beside no memory and the evidence alone
VENV   ?= .venv
PY     := $(VENV)/bin/python
MODEL  ?=
HOST   ?=
PORT   ?=

SERVE_ARGS := $(if $(MODEL),--model $(MODEL)) $(if $(HOST),--host $(HOST)) $(if $(PORT),--port $(PORT))

.PHONY: install model serve test unit lint bench eval-guardrails eval-memory clean

install:
	@VENV=$(VENV) scripts/install.sh

# The embedded default model, guardrail checker and memory query encoder, built once into
# ~/.cache/llm-server (the scripts skip an up-to-date build).
model: install
	@HF_HUB_OFFLINE=1 $(PY) scripts/build_smollm2.py
	@HF_HUB_OFFLINE=1 $(PY) scripts/build_guard.py
	@HF_HUB_OFFLINE=1 $(PY) scripts/build_memory_query.py

serve: model
	$(PY) -m server serve $(SERVE_ARGS)

test: model
	HF_HUB_OFFLINE=1 $(PY) -m pytest -ra $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check server scripts tests
	$(VENV)/bin/ruff format --check server scripts tests

unit: install
	HF_HUB_OFFLINE=1 $(PY) -m pytest -ra -m "not engine" $(PYTEST_ARGS)

bench: model
	HF_HUB_OFFLINE=1 $(PY) scripts/bench.py $(BENCH_ARGS)

eval-guardrails: model
	HF_HUB_OFFLINE=1 $(PY) scripts/eval_guardrails.py $(EVAL_ARGS)

eval-memory: model
	HF_HUB_OFFLINE=1 $(PY) scripts/eval_memory.py $(EVAL_ARGS)
	HF_HUB_OFFLINE=1 $(PY) scripts/eval_memory_chat.py --set tuning
	HF_HUB_OFFLINE=1 $(PY) scripts/eval_memory_chat.py --set test

clean:
	rm -rf $(VENV) .pytest_cache bench-results
