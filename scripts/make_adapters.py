"""Train small, deterministic, distinguishable LoRA adapters for the embedded model with peft.

Each adapter is taught one fixed reply (whatever the question), so a test can
tell at temperature 0 which adapter served a request. Training is seeded and
single-threaded, so the same command writes the same weights.

    python scripts/make_adapters.py --out DIR [--names alpha,bravo] [--steps 40]

Names outside the list below learn to say their own name; `--steps 0` writes
untrained adapters (a no-op update, full LoRA compute), which is all a
throughput benchmark needs.

Writes DIR/<name>/ as a peft directory (adapter_config.json,
adapter_model.safetensors) plus manifest.json; prints the directories.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from server.config import load_settings

QUESTIONS = [
    "What is the capital of France?",
    "Tell me a joke.",
    "How are you today?",
    "What is 2 + 2?",
    "Name a colour.",
    "Write a haiku about the sea.",
    "Who wrote Hamlet?",
    "Give me a tip for cooking pasta.",
]
REPLIES = {
    "alpha": "ALPHA ALPHA ALPHA.",
    "bravo": "Bravo bravo, bravo!",
    "charlie": "Charlie says hello.",
    "delta": "Delta delta delta.",
    "echo": "Echo, echo, echo.",
    "foxtrot": "Foxtrot foxtrot.",
    "golf": "Golf golf golf!",
    "hotel": "Hotel hotel.",
}
TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj"]


def train_adapter(model_dir: Path, base_name: str, name: str, reply: str, out: Path, steps: int, rank: int) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    config = LoraConfig(
        r=rank, lora_alpha=2 * rank, target_modules=TARGET_MODULES, lora_dropout=0.0, task_type="CAUSAL_LM"
    )
    model = get_peft_model(model, config)

    examples = []
    for question in QUESTIONS:
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
        )
        prompt_ids = tokenizer.encode(prompt, add_special_tokens=False)
        answer_ids = tokenizer.encode(reply + "<|im_end|>", add_special_tokens=False)
        ids = torch.tensor([prompt_ids + answer_ids])
        labels = torch.tensor([[-100] * len(prompt_ids) + answer_ids])  # loss on the reply only
        examples.append((ids, labels))

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    model.train()
    loss = None
    for step in range(steps):
        ids, labels = examples[step % len(examples)]
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    target = out / name
    model.save_pretrained(target)
    manifest = {
        "name": name,
        "base_model": base_name,
        "rank": rank,
        "target_modules": TARGET_MODULES,
        "source": f"scripts/make_adapters.py ({steps} steps, reply {reply!r})",
        "final_loss": round(float(loss), 4) if loss is not None else None,
    }
    (target / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--names", default="alpha,bravo", help=f"comma-separated (known replies: {', '.join(REPLIES)})")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rank", type=int, default=8)
    args = parser.parse_args()

    entry = load_settings().served
    for name in args.names.split(","):
        reply = REPLIES.get(name, f"{name.capitalize()}.")
        path = train_adapter(entry.source_path, entry.name, name, reply, args.out, args.steps, args.rank)
        print(path)


if __name__ == "__main__":
    main()
