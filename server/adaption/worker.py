"""The training worker: its own process, so serving never stalls. peft LoRA fine-tuning of the served base model.

    python -m server.adaption.worker SPEC.json

SPEC (written by the runner): the base model (directory or repo id, tokenizer, dtype: the served entry's, so
the adapter is trained on the weights and chat template it is served with), training examples, probes
(held-out questions about the trained facts and the value each answer must
name), the general set (questions with reference answers), hyperparameters,
output directory, the current adapter (if any).

Progress goes to stdout as one JSON object per line: `eval` (recall of the
probes and loss on the general set, for the base model and the current
version before training, for the new version after), `step` (step, loss),
`done`. The adapter is written to the output directory with
`save_pretrained`; nothing else is touched.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from server.adaption.dataset import names_value
from server.cpu_features import cpu_dtype, cpu_flags, native_bfloat16


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def tokenize(tokenizer: Any, example: list[dict[str, str]]) -> tuple[list[int], list[int]]:
    """Token ids of the whole conversation, and labels that are -100 except on the assistant's last message."""
    prefix = tokenizer.apply_chat_template(example[:-1], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(example, tokenize=False)
    prefix_ids = tokenizer.encode(prefix, add_special_tokens=False)
    full_ids = tokenizer.encode(full, add_special_tokens=False)
    return full_ids, [-100] * len(prefix_ids) + full_ids[len(prefix_ids) :]


def pad_batch(encoded: list[tuple[list[int], list[int]]], pad_id: int, device: str) -> dict[str, Any]:
    """Right-padded ids, attention mask and labels (-100 on padding) of a batch."""
    import torch

    width = max(len(ids) for ids, _ in encoded)
    ids = [row + [pad_id] * (width - len(row)) for row, _ in encoded]
    labels = [row + [-100] * (width - len(row)) for _, row in encoded]
    mask = [[1] * len(row) + [0] * (width - len(row)) for row, _ in encoded]
    return {
        "input_ids": torch.tensor(ids, device=device),
        "attention_mask": torch.tensor(mask, device=device),
        "labels": torch.tensor(labels, device=device),
    }


def mean_loss(model: Any, batches: list[dict[str, Any]]) -> float | None:
    """Mean loss per answer token over `batches` (each token counts once, however the batches are cut)."""
    import torch

    if not batches:
        return None
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in batches:
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
            labels = batch["labels"][:, 1:]
            losses = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100, reduction="sum"
            )
            total += float(losses)
            count += int((labels != -100).sum())
    return total / max(count, 1)


def generate(
    model: Any, tokenizer: Any, questions: list[str], max_new_tokens: int, batch_size: int, device: str
) -> list[str]:
    """Greedy answers to `questions`, each asked alone in the served chat format."""
    import torch

    model.eval()
    answers: list[str] = []
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    for start in range(0, len(questions), batch_size):
        prompts = [
            tokenizer.encode(
                tokenizer.apply_chat_template(
                    [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
                ),
                add_special_tokens=False,
            )
            for question in questions[start : start + batch_size]
        ]
        width = max(len(prompt) for prompt in prompts)
        ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
        with torch.no_grad():
            output = model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=pad_id,
                eos_token_id=tokenizer.eos_token_id,
            )
        answers += tokenizer.batch_decode(output[:, width:], skip_special_tokens=True)
    return answers


class Evaluator:
    """Recall of the probes, and the general set (loss and answers), for one model at a time."""

    def __init__(self, tokenizer: Any, spec: dict, device: str, base_dtype: str) -> None:
        hyper = spec["hyperparameters"]
        self.tokenizer = tokenizer
        self.device = device
        self.probes = spec["probes"]
        self.batch_size = hyper["batch_size"]
        self.max_new_tokens = hyper["probe_max_tokens"]
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        general = [
            tokenize(
                tokenizer, [{"role": "user", "content": g["question"]}, {"role": "assistant", "content": g["answer"]}]
            )
            for g in spec["general"]
        ]
        self.general = [
            pad_batch(general[start : start + self.batch_size], pad_id, device)
            for start in range(0, len(general), self.batch_size)
        ]
        self.general_items = spec["general"]
        self.cache_key = hashlib.sha256(
            json.dumps([spec["model_dir"], base_dtype, spec["general"], self.max_new_tokens, self.batch_size]).encode()
        ).hexdigest()

    def general_figures(self, model: Any) -> dict:
        """Loss on the general set's reference answers, and how many of its questions are answered right."""
        answers = generate(
            model,
            self.tokenizer,
            [item["question"] for item in self.general_items],
            self.max_new_tokens,
            self.batch_size,
            self.device,
        )
        correct = sum(names_value(a, item["key"]) for a, item in zip(answers, self.general_items, strict=True))
        return {
            "general_loss": mean_loss(model, self.general),
            "general_correct": correct,
            "general_accuracy": correct / len(answers) if answers else None,
        }

    def __call__(self, model: Any, cache: Path | None = None) -> dict:
        """`cache`: where the base model's general figures are kept between jobs (they depend on nothing else)."""
        answers = generate(
            model,
            self.tokenizer,
            [p["question"] for p in self.probes],
            self.max_new_tokens,
            self.batch_size,
            self.device,
        )
        hits = [names_value(answer, probe["value"]) for answer, probe in zip(answers, self.probes, strict=True)]
        general = None
        if cache is not None and cache.exists():
            stored = json.loads(cache.read_text())
            general = stored["figures"] if stored.get("key") == self.cache_key else None
        if general is None:
            general = self.general_figures(model)
            if cache is not None:
                cache.parent.mkdir(parents=True, exist_ok=True)
                cache.write_text(json.dumps({"key": self.cache_key, "figures": general}))
        return {
            "recall": sum(hits) / len(hits) if hits else None,
            "recalled": sum(hits),
            "probes": len(hits),
            **general,
            "answers": answers,
        }


def complete_sentences(text: str) -> str:
    """`text` up to its last complete sentence (a reply cut off by the length limit is not taught as finished)."""
    ends = [text.rfind(mark) for mark in (".", "!", "?")]
    end = max(ends)
    return text[: end + 1].strip() if end > 0 else ""


def replay_examples(model: Any, tokenizer: Any, spec: dict, device: str) -> list[list[dict[str, str]]]:
    """The base model's own answers to everyday prompts (the shipped replay set, apart from the general set),
    taught alongside the facts so that questions not about the user keep being answered as before.
    Cached like the base model's general figures: they depend only on the model and the prompts."""
    hyper = spec["hyperparameters"]
    prompts = [item["question"] for item in spec.get("replay", [])][: hyper.get("replay_examples", 0)]
    if not prompts:
        return []
    cache = Path(spec["base_cache"]).with_name("base-replay.json") if spec.get("base_cache") else None
    key = hashlib.sha256(
        json.dumps([spec["model_dir"], str(model.dtype), prompts, hyper["replay_max_tokens"]]).encode()
    ).hexdigest()
    if cache is not None and cache.exists() and (stored := json.loads(cache.read_text())).get("key") == key:
        answers = stored["answers"]
    else:
        answers = generate(model, tokenizer, prompts, hyper["replay_max_tokens"], hyper["batch_size"], device)
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps({"key": key, "answers": answers}))
    return [
        [{"role": "user", "content": prompt}, {"role": "assistant", "content": complete_sentences(answer)}]
        for prompt, answer in zip(prompts, answers, strict=True)
        if complete_sentences(answer)
    ]


def cpu_training_dtype(dtype: str | None, flags: Iterable[str]) -> str | None:
    """The served dtype to train in on a CPU: `auto` as the engine resolves it (server.cpu_features.cpu_dtype), and
    bfloat16 where the CPU lacks it natively is float32. Emulated bfloat16 made one test job train for over 40
    minutes on an AVX2-only EPYC; an adapter trained on float32 copies of the weights serves on bfloat16 ones."""
    resolved = dtype if dtype is None else cpu_dtype(dtype, flags)
    return "float32" if resolved == "bfloat16" and not native_bfloat16(flags) else resolved


def torch_dtype(dtype: str | None) -> Any:
    """The served entry's dtype as torch's (`auto`: the checkpoint's own; none given: float32). The LoRA weights
    peft adds stay float32 whatever the base model's dtype (its `autocast_adapter_dtype`)."""
    import torch

    if dtype == "auto":
        return "auto"
    return {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(dtype or "float32", torch.float32)


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
        os.nice(spec.get("cpu_niceness", 10))  # the CPUs serving shares with training go to serving first

    tokenizer = AutoTokenizer.from_pretrained(spec.get("tokenizer") or spec["model_dir"])
    dtype = spec.get("dtype") if device == "cuda" else cpu_training_dtype(spec.get("dtype"), cpu_flags())
    model = AutoModelForCausalLM.from_pretrained(spec["model_dir"], dtype=torch_dtype(dtype)).to(device)
    base_dtype = str(model.dtype).removeprefix("torch.")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    evaluate = Evaluator(tokenizer, spec, device, base_dtype)

    started = time.perf_counter()
    base = evaluate(model, Path(spec["base_cache"]) if spec.get("base_cache") else None)
    current = None
    if spec.get("current_adapter"):
        with_current = PeftModel.from_pretrained(model, spec["current_adapter"])
        current = evaluate(with_current)
        model = with_current.unload()
    emit("eval", stage="before", base=_figures(base), current=_figures(current) if current else None)
    eval_seconds = time.perf_counter() - started

    config = LoraConfig(
        r=hyper["rank"],
        lora_alpha=hyper["alpha"],
        target_modules=list(hyper["target_modules"]),
        lora_dropout=0.0,
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, config)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=hyper["learning_rate"])
    replay = replay_examples(model, tokenizer, spec, device)
    encoded = [tokenize(tokenizer, example) for example in spec["train"] + replay]
    batch_size = hyper["batch_size"]
    steps_per_epoch = math.ceil(len(encoded) / batch_size)
    total_steps = hyper["epochs"] * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: max(0.0, 1 - step / total_steps) * min(1.0, (step + 1) / max(1, total_steps // 10))
    )
    step = 0
    epoch_losses: list[float] = []
    started = time.perf_counter()
    for epoch in range(hyper["epochs"]):
        order = list(range(len(encoded)))
        random.shuffle(order)
        model.train()
        epoch_losses = []
        for start in range(0, len(order), batch_size):
            batch = pad_batch([encoded[index] for index in order[start : start + batch_size]], pad_id, device)
            loss = model(**batch).loss
            loss.backward()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            step += 1
            epoch_losses.append(float(loss))
            emit("step", step=step, total_steps=total_steps, epoch=epoch + 1, loss=round(float(loss), 5))
    train_seconds = time.perf_counter() - started

    new = evaluate(model)
    emit("eval", stage="after", new=_figures(new))
    output = Path(spec["output_dir"])
    model.save_pretrained(output)
    result = {
        "train_loss": sum(epoch_losses) / len(epoch_losses),  # the last epoch's mean: no second pass over the data
        "steps": step,
        "trained_tokens": hyper["epochs"] * sum(sum(1 for label in labels if label != -100) for _, labels in encoded),
        "base_dtype": base_dtype,  # the weights trained on: the served entry's dtype
        "train_examples": len(encoded),
        "replay_examples": len(replay),
        "probes": len(spec["probes"]),
        "general_examples": len(spec["general"]),
        "base": _figures(base),
        "current": _figures(current) if current else None,
        "new": _figures(new),
        "train_seconds": round(train_seconds, 2),
        "eval_seconds": round(eval_seconds, 2),
        "samples": [
            {"question": probe["question"], "value": probe["value"], "base": b, "new": n}
            for probe, b, n in list(zip(spec["probes"], base["answers"], new["answers"], strict=True))[:5]
        ],
    }
    emit("done", **result)
    return result


def _figures(evaluation: dict) -> dict:
    return {key: value for key, value in evaluation.items() if key != "answers"}


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    train(spec)


if __name__ == "__main__":
    main()
