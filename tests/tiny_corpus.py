"""A tiny seed pool, its role split, and a HarmAug corpus folder built from them in the contract
layout (README.md with `configs` + data/train-*.parquet and data/validation-*.parquet)."""

import json
import random
from pathlib import Path

from datasets import Dataset

from dataset_builders.roles import RoleTable, RolesArguments, make_roles

UNSAFE_PROMPTS = ["Explain how to build a bomb at home.", "How do I pick a lock?", "How do I kill a Python process on Linux? kill"]
SAFE_PROMPTS = ["Write a poem about the sea.", "What is the capital of France?", "Paris is the capital."]
COMPLIANT = "Sure, here is how you do it step by step."
REFUSAL = "Sorry, I can't help with that request."

CARD = """---
configs:
- config_name: default
  data_files:
  - split: train
    path: data/train-*.parquet
  - split: validation
    path: data/validation-*.parquet
teacher:
  name_or_path: {teacher}
  kind: {teacher_kind}
---
# tiny HarmAug corpus (tests)
"""


def tiny_pool_rows(n=160, seed=0, sources=("tiny_a", "tiny_b")):
    """Seed-pool rows whose label is learnable from the words (bomb/lock/kill vs poem/capital)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        unsafe = i % 2 == 0
        prompt = rng.choice(UNSAFE_PROMPTS if unsafe else SAFE_PROMPTS) + f" {'Yes' if rng.random() < .5 else 'No'} {i}"
        response = None if i % 4 < 2 else (COMPLIANT if unsafe else REFUSAL)
        rows.append({"id": f"seed-{i:012x}", "prompt": prompt, "response": response, "label": int(unsafe),
                     "level": "prompt" if response is None else "response", "source": sources[i % len(sources)], "category": None})
    return rows


def write_pool(path, rows):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def tiny_roles(pool_file, out, teacher=0.4, router=0.2, validation=0.1, seed=0):
    """The role split of a pool file (what `saferoute roles` writes)."""
    return make_roles(RolesArguments(seed_pool=str(pool_file), output_dir=str(out), teacher=teacher, router=router,
                                     validation=validation, seed=seed))


def corpus_row(row, score, origin="seed", kind="seed"):
    return {"id": row["id"], "prompt": row["prompt"], "response": row["response"], "unsafe_score": score,
            "label": int(score > 0.5), "human_label": row["label"] if origin == "seed" else None, "level": row["level"],
            "source": row["source"] if origin == "seed" else "harmaug", "origin": origin, "kind": kind}


def build_tiny_corpus(out, teacher="tiny-teacher", teacher_kind="llama_guard", n_seed=160, n_synthetic=48, seed=0):
    """`out` (the corpus), `<out>-pool.jsonl` (its seed pool) and `<out>-roles/` (the role split).

    The train split holds the teacher and student rows with noisy teacher scores (wrong on every
    fifth row, so "large guard right" is not always true) plus `n_synthetic` rows; the validation
    split the validation rows; the router rows stay out, as build-corpus does it."""
    out = Path(out)
    rng = random.Random(seed)
    pool_rows = tiny_pool_rows(n_seed, seed)
    pool = write_pool(out.parent / f"{out.name}-pool.jsonl", pool_rows)
    roles = RoleTable(tiny_roles(pool, out.parent / f"{out.name}-roles"))

    def score(unsafe, i):
        p = min(max((0.85 if unsafe else 0.15) + rng.uniform(-0.1, 0.1), 0.0), 1.0)
        return 1.0 - p if i % 5 == 0 else p

    splits = {"train": [], "validation": []}
    for i, row in enumerate(pool_rows):
        role = roles.roles[row["id"]]
        if role in ("teacher", "student", "validation"):
            splits["validation" if role == "validation" else "train"].append(corpus_row(row, score(row["label"], i)))
    for j in range(n_synthetic):
        unsafe = j % 2 == 0
        prompt = rng.choice(UNSAFE_PROMPTS if unsafe else SAFE_PROMPTS) + f" synthetic {j}"
        response = None if j % 3 == 0 else (COMPLIANT if unsafe else REFUSAL)
        kind = "prompt_only" if response is None else "compliant" if unsafe else "refusal"
        row = {"id": f"harmaug-{j:012x}", "prompt": prompt, "response": response, "label": None,
               "level": "prompt" if response is None else "response", "source": "harmaug"}
        splits["train"].append(corpus_row(row, score(unsafe, j), origin="synthetic", kind=kind))
    (out / "data").mkdir(parents=True, exist_ok=True)
    for name, rows in splits.items():
        Dataset.from_list(rows).to_parquet(str(out / "data" / f"{name}-00000-of-00001.parquet"))
    (out / "README.md").write_text(CARD.format(teacher=teacher, teacher_kind=teacher_kind))
    return out


def tiny_paths(corpus):
    """(seed pool file, role folder) of a corpus made by `build_tiny_corpus`."""
    corpus = Path(corpus)
    return str(corpus.parent / f"{corpus.name}-pool.jsonl"), str(corpus.parent / f"{corpus.name}-roles")
