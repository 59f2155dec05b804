"""Teacher (encoder guard) scoring throughput in float32, bf16 autocast and int8, and how far each is
from float32: the figures behind labeling the corpus in int8 where bf16 is not native.

    python bench/bench_teacher.py --teacher outputs/teacher [--n 384] [--max_length 128]

Scores `--n` teacher + student rows of the role split (what build-corpus labels) with the guard
adapter, length-sorted batches of `--batch_size`, each precision after a warm-up batch; prints
texts/s, the ratio to float32, and the agreement of labels at 0.5 and max / mean |dP(unsafe)|
against float32. On a CPU with native bf16, run it again with `SAFEROUTE_NATIVE_BF16=0
ONEDNN_MAX_CPU_ISA=AVX512_CORE_VNNI` to measure the case without it (bf16 emulated there).
"""

import argparse
import time

import numpy as np

from dataset_builders.roles import STUDENT_ROLES, RoleTable
from dataset_builders.seed_pool import load_seed_pool
from modeling_saferoute.guards import load_guard
from modeling_saferoute.precision import cpu_name, native_bf16


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="outputs/teacher")
    parser.add_argument("--roles", default="outputs/roles")
    parser.add_argument("--n", type=int, default=384)
    parser.add_argument("--max_length", type=int, default=128)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--precisions", default="float32,bf16,int8")
    args = parser.parse_args(argv)
    rows = RoleTable(args.roles).rows(load_seed_pool("offline"), STUDENT_ROLES).shuffle(seed=0).select(range(args.n))
    items = [{"prompt": p, "response": r} if r else {"prompt": p} for p, r in zip(rows["prompt"], rows["response"])]
    print(f"CPU {cpu_name()}, native bf16 {native_bf16('cpu')}; {args.n} teacher + student rows, {args.max_length} tokens, batch {args.batch_size}")
    scores, rates = {}, {}
    for precision in args.precisions.split(","):
        guard = load_guard(args.teacher, "sequence_classification", max_length=args.max_length, batch_size=args.batch_size,
                           autocast_dtype="none" if precision == "float32" else precision)
        guard.score(items[: args.batch_size])  # warm-up
        start = time.perf_counter()
        scores[precision] = np.asarray(guard.score(items))
        rates[precision] = len(items) / (time.perf_counter() - start)
    base = scores.get("float32")
    print("| precision | texts/s | x float32 | label agreement | max abs dP | mean abs dP |\n| --- | --- | --- | --- | --- | --- |")
    for precision, s in scores.items():
        if base is None:
            print(f"| {precision} | {rates[precision]:.1f} | | | | |")
            continue
        diff = np.abs(s - base)
        print(f"| {precision} | {rates[precision]:.1f} | {rates[precision] / rates['float32']:.2f} | "
              f"{((s > .5) == (base > .5)).mean():.1%} | {diff.max():.4f} | {diff.mean():.4f} |")


if __name__ == "__main__":
    main()
