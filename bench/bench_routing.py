"""Routed inference against the large guard alone, and where the routed call spends its time.

In one run (machines are noisy: read the ratios): the SafeRoute pipeline with its defaults
(route="auto": the student on everything, the large guard on the routed share), the large guard's
adapter alone on the same inputs, the student alone, and the large guard in float32 against its
default precision (the teacher's labeling speed in build-corpus; skipped where that default already
is float32, as on a CPU without native bf16). Prints wall times, their ratios,
the share routed, F1 of each system, and the routed call's time split (`timings=`).

    python bench/bench_routing.py --model outputs/saferoute-guard --max_per_benchmark 200
"""

import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
from sklearn.metrics import f1_score
from transformers import pipeline

from dataset_builders.benchmarks import load_benchmarks
from dataset_builders.schema import guard_items
from modeling_saferoute.guards import load_guard
from saferoute.config import parse_args


@dataclass
class BenchRoutingArguments:
    model: str = field(default="outputs/saferoute-guard", metadata={"help": "SafeRoute model folder."})
    max_per_benchmark: Optional[int] = field(default=200, metadata={"help": "Stratified examples per benchmark (None: the whole suite)."})
    batch_size: int = field(default=32, metadata={"help": "Batch size of both systems."})


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main(argv=None):
    args = parse_args([BenchRoutingArguments], argv)
    data = load_benchmarks("all", max_per_benchmark=args.max_per_benchmark, seed=0)
    guard = pipeline("text-classification", model=args.model, trust_remote_code=True)
    large = guard.large_guard  # loaded before timing, as a server would hold it
    ref = dict(guard.model.config.large_guard)
    # the float32 comparison only where the default differs (bf16 / int8): else it repeats "large"
    large_fp32 = None if large.compute_dtype == torch.float32 else load_guard(
        ref["name_or_path"], ref["kind"], max_length=ref.get("max_length"), autocast_dtype="none")
    guard(guard_items(data["toxicchat"])[:16])  # warm-up
    totals = {"saferoute": 0.0, "large": 0.0, "student": 0.0, "large_fp32": 0.0}
    preds = {k: [] for k in totals}
    labels, routed, timings = [], 0, {}
    f1s = {k: [] for k in ("saferoute", "large", "student")}
    for name, ds in data.items():
        items, y = guard_items(ds), list(ds["label"])
        results, t = timed(lambda: guard(items, batch_size=args.batch_size, timings=timings))
        totals["saferoute"] += t
        scores, t = timed(lambda: large.score(items, batch_size=args.batch_size))
        totals["large"] += t
        student, t = timed(lambda: guard(items, batch_size=args.batch_size, route="never"))
        totals["student"] += t
        if large_fp32 is not None:
            _, t = timed(lambda: large_fp32.score(items, batch_size=args.batch_size))
            totals["large_fp32"] += t
        systems = {"saferoute": [r["label"] == "unsafe" for r in results], "large": [s > 0.5 for s in scores],
                   "student": [r["label"] == "unsafe" for r in student]}
        for k, p in systems.items():
            f1s[k].append(f1_score(y, p, zero_division=0))
        routed += sum(r["routed"] for r in results)
        labels += y
    n = len(labels)
    print(f"{n} examples over {len(data)} benchmarks, model {args.model} (large guard {ref['name_or_path']}, kind {ref['kind']})")
    print("| system | wall time (s) | examples/s | share to the large guard | avg F1 |")
    print("| --- | --- | --- | --- | --- |")
    print(f"| SafeRoute (defaults, route='auto') | {totals['saferoute']:.1f} | {n / totals['saferoute']:.1f} | {routed / n:.1%} | {np.mean(f1s['saferoute']):.3f} |")
    print(f"| large guard alone (its adapter, default precision) | {totals['large']:.1f} | {n / totals['large']:.1f} | 100% | {np.mean(f1s['large']):.3f} |")
    print(f"| student alone (route='never') | {totals['student']:.1f} | {n / totals['student']:.1f} | 0% | {np.mean(f1s['student']):.3f} |")
    print(f"wall-time ratio SafeRoute / large guard: {totals['saferoute'] / totals['large']:.3f}")
    print(f"student cost per example / large guard's: {totals['student'] / totals['large']:.1%}")
    if large_fp32 is None:
        print(f"large guard (teacher labeling) rows/s: {n / totals['large']:.1f}, its default already float32 (no bf16 / int8 here)")
    else:
        print(f"large guard (teacher labeling) rows/s: float32 {n / totals['large_fp32']:.1f}, default "
              f"({large.compute_dtype}) {n / totals['large']:.1f}: {totals['large_fp32'] / totals['large']:.2f}x")
    parts = {k: timings[k] for k in ("tokenize", "student", "large_guard")}
    other = timings["total"] - sum(parts.values())
    print("routed call time split: " + ", ".join(f"{k} {v:.1f} s ({v / timings['total']:.0%})" for k, v in parts.items())
          + f", other Python {other:.1f} s ({other / timings['total']:.0%})")


if __name__ == "__main__":
    main()
