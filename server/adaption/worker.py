"""The training worker: its own process, so serving never stalls. peft LoRA fine-tuning of the served base model.

    python -m server.adaption.worker SPEC.json

SPEC (written by the runner): base model directory, examples (train and
held-out), hyperparameters, output directory, the current adapter (if any).
Progress goes to stdout as one JSON object per line: `step` (step, loss),
`eval` (held-out losses of base, current and new), `done`. The adapter is
written to the output directory with `save_pretrained`; nothing else is touched.
"""

from __future__ import annotations

import json
import math
import random
import sys
from pathlib import Path
from typing import Any


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def tokenize(tokenizer: Any, example: list[dict[str, str]]) -> tuple[list[int], list[int]]:
    """Token ids of the whole conversation, and labels that are -100 except on the assistant's last message."""
    prefix = tokenizer.apply_chat_template(example[:-1], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(example, tokenize=False)
    prefix_ids = tokenizer.encode(prefix, add_special_tokens=False)
    full_ids = tokenizer.encode(full, add_special_tokens=False)
    return full_ids, [-100] * len(prefix_ids) + full_ids[len(prefix_ids) :]


def mean_loss(model: Any, batches: list[tuple[Any, Any]]) -> float | None:
    import torch

    if not batches:
        return None
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for ids, labels in batches:
            tokens = int((labels != -100).sum()) - 1  # the loss skips the first label (shifted)
            total += float(model(input_ids=ids, labels=labels).loss) * max(tokens, 1)
            count += max(tokens, 1)
    return total / count


def train(spec: dict) -> dict:
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hyper = spec["hyperparameters"]
    random.seed(hyper["seed"])
    torch.manual_seed(hyper["seed"])
    if torch.cuda.is_available():
        device = "cuda"
        torch.cuda.set_per_process_memory_fraction(spec["gpu_memory_fraction"])
    else:
        device = "cpu"
        torch.set_num_threads(spec["cpu_threads"])

    tokenizer = AutoTokenizer.from_pretrained(spec["model_dir"])
    model = AutoModelForCausalLM.from_pretrained(spec["model_dir"], dtype=torch.float32).to(device)

    def batches(examples: list) -> list[tuple[Any, Any]]:
        encoded = [tokenize(tokenizer, example) for example in examples]
        return [(torch.tensor([ids], device=device), torch.tensor([labels], device=device)) for ids, labels in encoded]

    train_set, held_out = batches(spec["train"]), batches(spec["held_out"])
    base_loss = mean_loss(model, held_out)
    current_loss = None
    if spec.get("current_adapter"):
        with_current = PeftModel.from_pretrained(model, spec["current_adapter"])
        current_loss = mean_loss(with_current, held_out)
        model = with_current.unload()
    emit("eval_before", base_loss=base_loss, current_loss=current_loss)

    config = LoraConfig(
        r=hyper["rank"],
        lora_alpha=hyper["alpha"],
        target_modules=list(hyper["target_modules"]),
        lora_dropout=0.0,
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, config)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=hyper["learning_rate"])
    order = list(range(len(train_set)))
    total_steps = hyper["epochs"] * len(order)
    step = 0
    epoch_losses: list[float] = []
    for epoch in range(hyper["epochs"]):
        random.shuffle(order)
        model.train()
        epoch_losses = []
        for index in order:
            ids, labels = train_set[index]
            loss = model(input_ids=ids, labels=labels).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            step += 1
            epoch_losses.append(float(loss))
            emit("step", step=step, total_steps=total_steps, epoch=epoch + 1, loss=round(float(loss), 5))

    trained_tokens = hyper["epochs"] * sum(int((labels != -100).sum()) for _, labels in train_set)
    train_loss = sum(epoch_losses) / len(epoch_losses)  # the last epoch's mean: no second pass over the data
    new_loss = mean_loss(model, held_out)
    output = Path(spec["output_dir"])
    model.save_pretrained(output)
    result = {
        "train_loss": train_loss,
        "eval_loss": new_loss,
        "base_eval_loss": base_loss,
        "current_eval_loss": current_loss,
        "steps": step,
        "trained_tokens": trained_tokens,
        "train_examples": len(train_set),
        "held_out_examples": len(held_out),
    }
    emit(
        "done",
        **{key: (None if isinstance(value, float) and math.isnan(value) else value) for key, value in result.items()},
    )
    return result


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    train(spec)


if __name__ == "__main__":
    main()
