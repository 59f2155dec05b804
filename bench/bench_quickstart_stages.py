"""Where the quickstart's compute goes: one row per stage (wall and CPU seconds from
`{output_root}/quickstart_timings.json`, examples and tokens from each stage's own records), one row
per model in the score store (texts scored, seconds spent scoring them), and optionally the measured
float32 / bf16 speed ratio of the teacher's and the student's training step and forward on this CPU.

    python bench/bench_quickstart_stages.py [--output_root outputs] [--rates]

Tokens are each model's own token counts of the rows it read (capped at the stage's max_length),
counted on a seeded sample of at most 2,000 rows and scaled to the examples the stage processed.
`--rates` times a batch of 16 real teacher rows in float32 and bf16 autocast, interleaved, so the
ratio holds on a busy machine; it says nothing on a CPU without native bf16 except how slow the
emulation is there.
"""

import argparse
import json
import random
import time
from pathlib import Path

import pandas as pd
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from dataset_builders.roles import RoleTable
from dataset_builders.seed_pool import load_seed_pool
from modeling_saferoute.inputs import encode_pairs
from modeling_saferoute.precision import cpu_name, native_bf16


def mean_tokens(tokenizer, items, max_length, sample=2000, seed=0):
    """Mean tokens of the pair encoding of `items` (capped at `max_length`), on a seeded sample."""
    items = list(items)
    if len(items) > sample:
        items = random.Random(seed).sample(items, sample)
    encodings, _ = encode_pairs(tokenizer, items, max_length)
    return sum(len(e["input_ids"]) for e in encodings) / max(len(encodings), 1)


def pairs(rows):
    return [{"prompt": p, "response": r if isinstance(r, str) else None} for p, r in zip(rows["prompt"], rows["response"])]  # pandas: NaN


def store_table(root):
    """One row per model key of the score store: texts scored and the seconds it took to score them."""
    out = []
    for folder in sorted(Path(root).glob("*/")):
        parts = sorted(folder.glob("part-*.parquet"))
        if not parts:
            continue
        frame = pd.concat([pd.read_parquet(p, columns=["seconds"]) for p in parts])
        info = json.loads((folder / "info.json").read_text()) if (folder / "info.json").exists() else {}
        name = Path(str(info.get("name_or_path", folder.name))).name
        out.append((folder.name, name, len(frame), float(frame["seconds"].sum()), len(parts)))
    return out


def step_rates(model_dir, rows, max_length, batch=16, rounds=3):
    """Seconds of a training step and of a forward on `batch` real rows, float32 and bf16 autocast, interleaved (best of `rounds`)."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).train()
    encodings, _ = encode_pairs(tokenizer, rows[:batch], max_length)
    inputs = tokenizer.pad(encodings, return_tensors="pt")
    labels = torch.zeros(len(encodings), dtype=torch.long)
    best = {}
    for _ in range(rounds):
        for name, dtype in (("float32", None), ("bf16", torch.bfloat16)):
            for what in ("train step", "forward"):
                start = time.perf_counter()
                with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
                    if what == "forward":
                        with torch.no_grad():
                            model(**inputs)
                    else:
                        model(**inputs, labels=labels).loss.backward()
                        model.zero_grad(set_to_none=True)
                seconds = time.perf_counter() - start
                best[(what, name)] = min(best.get((what, name), float("inf")), seconds)
    return best, inputs["input_ids"].numel()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_root", default="outputs")
    parser.add_argument("--rates", action="store_true", help="Also time the teacher's and the student's step in float32 and bf16.")
    args = parser.parse_args(argv)
    root = Path(args.output_root)
    timings = json.loads((root / "quickstart_timings.json").read_text())
    teacher = json.loads((root / "teacher" / "training_info.json").read_text())
    student = json.loads((root / "student" / "training_info.json").read_text())
    router = json.loads((root / "saferoute-guard" / "router_info.json").read_text()) if (root / "saferoute-guard" / "router_info.json").exists() else {}
    report = json.loads((root / "eval" / "report.json").read_text())
    print(f"CPU: {cpu_name()}; native bf16: {native_bf16('cpu')}; the run's precision: {timings['precision']}")

    roles = RoleTable(root / "roles")
    pool = load_seed_pool("offline")
    teacher_rows = roles.rows(pool, "teacher")
    t_tok = AutoTokenizer.from_pretrained(root / "teacher")
    t_len = teacher["arguments"].get("max_length") or 512
    t_mean = mean_tokens(t_tok, pairs(teacher_rows), t_len)
    corpus = pd.read_parquet(sorted((root / "harmaug" / "data").glob("train-*.parquet"))[0]) if (root / "harmaug" / "data").exists() else None
    s_tok = AutoTokenizer.from_pretrained(root / "student")
    s_len = student.get("max_length") or 128
    s_mean = mean_tokens(s_tok, pairs(corpus), s_len) if corpus is not None else float("nan")
    s_seen = student.get("steps_done", 0) * (student.get("arguments", {}).get("per_device_train_batch_size") or 32)
    n_eval = sum(b["n"] for b in report["benchmarks"].values())
    described = {
        "roles": ("split the pool", f"{len(pool):,} rows", ""),
        "train-guard": ("teacher training", f"{teacher['train_examples_seen']:,} seen ({teacher['global_steps']} steps)",
                        f"{teacher['train_examples_seen'] * t_mean:,.0f}"),
        "build-corpus": ("generate, respond, teacher labels", f"{len(corpus):,} train rows" if corpus is not None else "", ""),
        "distill": ("student training", f"{s_seen:,} seen ({student.get('steps_done')} steps)", f"{s_seen * s_mean:,.0f}"),
        "train-router": ("router rows: student + large guard, router fit", f"{sum((router.get('examples') or {}).values()):,} rows", ""),
        "evaluate": ("six benchmarks (+ categories): student, large guard", f"{n_eval:,} benchmark rows", ""),
    }
    print("\n| stage | wall s | CPU s | what | examples | tokens |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, t in timings["stages"].items():
        what, examples, tokens = described.get(name, ("", "", ""))
        print(f"| {name} | {t['seconds']:.0f} | {t.get('cpu_seconds', float('nan')):.0f} | {what} | {examples} | {tokens} |")
    print(f"| total | {timings['total_seconds']:.0f} | | | | |")
    print(f"\nmean tokens per row: teacher rows {t_mean:.1f} (max_length {t_len}); corpus train rows for the student {s_mean:.1f} (max_length {s_len})")

    print("\n| score store key | model | texts scored | scoring seconds | texts/s | parts |")
    print("| --- | --- | --- | --- | --- | --- |")
    for key, name, n, seconds, parts in store_table(root / "scores"):
        print(f"| {key} | {name} | {n:,} | {seconds:.0f} | {n / seconds if seconds else float('nan'):.1f} | {parts} |")

    if args.rates:
        rows = pairs(teacher_rows.shuffle(seed=0).select(range(64)))
        print("\n| model | step | float32 s | bf16 s | float32 / bf16 | tokens in the batch |")
        print("| --- | --- | --- | --- | --- | --- |")
        for label, folder, length in (("teacher", root / "teacher", t_len), ("student", root / "student", s_len)):
            best, tokens = step_rates(str(folder), rows, length)
            for what in ("train step", "forward"):
                f32, b16 = best[(what, "float32")], best[(what, "bf16")]
                print(f"| {label} | {what} | {f32:.3f} | {b16:.3f} | {f32 / b16:.2f} | {tokens} |")


if __name__ == "__main__":
    main()
