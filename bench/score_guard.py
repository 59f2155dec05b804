"""Quick six-benchmark check of a guard (not the `saferoute evaluate` command): stratified samples of
`$SAFEROUTE_DATA_DIR/eval/*.jsonl`, scored by the guard adapter, F1 at 0.5 and AUPRC.

    HF_HUB_OFFLINE=1 python bench/score_guard.py outputs/teacher sequence_classification --per-benchmark 200
"""

import argparse
import json
import time

from datasets import load_dataset
from sklearn.metrics import average_precision_score, f1_score

from dataset_builders.schema import FEATURES, data_dir, guard_items
from modeling_saferoute.guards import load_guard
from training.guard_data import stratified_subsample


def score_benchmarks(guard, per_benchmark=200, seed=0, batch_size=None):
    """{benchmark: {n, f1, auprc, examples_per_second}} plus an "average" entry."""
    results = {}
    for path in sorted((data_dir() / "eval").glob("*.jsonl")):
        ds = load_dataset("json", data_files=str(path), split="train", features=FEATURES)
        ds = stratified_subsample(ds, per_benchmark, seed)
        start = time.perf_counter()
        scores = guard.score(guard_items(ds), batch_size=batch_size, show_progress=True)
        seconds = time.perf_counter() - start
        labels = list(ds["label"])
        results[path.stem] = {
            "n": len(ds),
            "f1": f1_score(labels, [int(s > 0.5) for s in scores], zero_division=0),
            "auprc": average_precision_score(labels, scores),
            "examples_per_second": len(ds) / seconds,
        }
    results["average"] = {k: sum(r[k] for r in results.values()) / len(results) for k in ("f1", "auprc")}
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("guard", help="guard folder, Hub id or bundled: alias")
    parser.add_argument("kind", help="adapter kind, e.g. sequence_classification or llama_guard")
    parser.add_argument("--per-benchmark", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=None)
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--output", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    guard = load_guard(args.guard, args.kind, dtype=args.dtype, max_length=args.max_length, batch_size=args.batch_size)
    results = score_benchmarks(guard, args.per_benchmark, args.seed)
    for name, r in results.items():
        extra = f"  n {r['n']:4d}  {r['examples_per_second']:6.1f} ex/s" if "n" in r else ""
        print(f"{name:<28} F1 {r['f1']:.3f}  AUPRC {r['auprc']:.3f}{extra}")
    if args.output:
        with open(args.output, "w") as f:
            json.dump({"guard": args.guard, "kind": args.kind, "args": vars(args), "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
