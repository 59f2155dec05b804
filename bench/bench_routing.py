"""Routed inference against the large guard alone, measured in one run.

Runs the SafeRoute pipeline (route="auto": student on everything, the large guard on the routed
share) and the large guard's adapter alone over the benchmark suite, and prints the wall
time of each, their ratio, the share routed, and the F1 of each.

    python bench/bench_routing.py --model outputs/saferoute-guard [--max-per-benchmark 200]
"""

import time
from dataclasses import dataclass, field
from typing import Optional

from sklearn.metrics import f1_score
from transformers import pipeline

from dataset_builders.benchmarks import load_benchmarks
from dataset_builders.schema import guard_items
from saferoute.config import parse_args


@dataclass
class BenchRoutingArguments:
    model: str = field(default="outputs/saferoute-guard", metadata={"help": "SafeRoute model folder."})
    max_per_benchmark: Optional[int] = field(default=None, metadata={"help": "Stratified subsample (default: the whole suite)."})
    batch_size: int = field(default=32, metadata={"help": "Batch size of both systems."})


def main(argv=None):
    args = parse_args([BenchRoutingArguments], argv)
    data = load_benchmarks("all", max_per_benchmark=args.max_per_benchmark, seed=0)
    guard = pipeline("text-classification", model=args.model, trust_remote_code=True)
    guard.large_guard  # load it before timing
    rows = []
    for mode in ("auto", "always"):
        total_time, labels, preds, routed = 0.0, [], [], 0
        per_benchmark = {}
        for name, ds in data.items():
            start = time.perf_counter()
            if mode == "auto":
                results = guard(guard_items(ds), route="auto", batch_size=args.batch_size)
            else:  # the large guard alone, without the student's forward
                scores = guard.large_guard.score(guard_items(ds), batch_size=args.batch_size)
                results = [{"label": "unsafe" if s > 0.5 else "safe", "routed": True} for s in scores]
            total_time += time.perf_counter() - start
            p = [int(r["label"] == "unsafe") for r in results]
            per_benchmark[name] = f1_score(ds["label"], p, zero_division=0)
            labels += ds["label"]
            preds += p
            routed += sum(r["routed"] for r in results)
        avg_f1 = sum(per_benchmark.values()) / len(per_benchmark)
        rows.append((mode, total_time, routed / len(labels), avg_f1, len(labels)))
    (_, t_auto, share, f1_auto, n), (_, t_large, _, f1_large, _) = rows
    print(f"{n} examples over {len(data)} benchmarks")
    print("| system | wall time (s) | examples/s | share to large guard | avg F1 |")
    print("| --- | --- | --- | --- | --- |")
    print(f"| SafeRoute (route=auto) | {t_auto:.1f} | {n / t_auto:.1f} | {share:.1%} | {f1_auto:.3f} |")
    print(f"| large guard alone | {t_large:.1f} | {n / t_large:.1f} | 100% | {f1_large:.3f} |")
    print(f"wall-time ratio SafeRoute / large: {t_auto / t_large:.2f}")


if __name__ == "__main__":
    main()
