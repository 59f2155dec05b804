"""Matrix-multiply throughput of this CPU in float32, bf16 (autocast) and int8, and what
`precision="auto"` picks here: the figures behind the precision rule (`modeling_saferoute.precision`).

    python bench/bench_precision.py [--size 1024] [--seconds 2]

On a CPU without native bf16, bf16 autocast is emulated and slower than float32; to measure that case
on a CPU that has bf16, run with `ONEDNN_MAX_CPU_ISA=AVX512_CORE_VNNI SAFEROUTE_NATIVE_BF16=0`. The
three figures come from one run, interleaved, so their ratios hold on a busy machine too.
"""

import argparse
import time

import torch

from modeling_saferoute.precision import cpu_has_vnni, cpu_name, native_bf16, resolve_precision


def gflops(fn, flops, seconds):
    for _ in range(3):
        fn()
    start, n = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        fn()
        n += 1
    return flops * n / (time.perf_counter() - start) / 1e9


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3, help="Interleaved rounds; the best of each is reported.")
    args = parser.parse_args(argv)
    n = args.size
    a, b = torch.randn(n, n), torch.randn(n, n)
    qa, qb = torch.randint(-128, 127, (n, n), dtype=torch.int8), torch.randint(-128, 127, (n, n), dtype=torch.int8)

    def bf16():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return a @ b

    kernels = {"float32": lambda: a @ b, "bf16 autocast": bf16, "int8 (torch._int_mm)": lambda: torch._int_mm(qa, qb)}
    best = {k: 0.0 for k in kernels}
    with torch.inference_mode():
        for _ in range(args.rounds):
            for name, fn in kernels.items():
                best[name] = max(best[name], gflops(fn, 2 * n**3, args.seconds / args.rounds))
    print(f"CPU: {cpu_name()}; native bf16: {native_bf16('cpu')}; VNNI: {cpu_has_vnni()}; torch threads: {torch.get_num_threads()}")
    print(f"precision='auto' runs in: {resolve_precision('auto', 'cpu')}\n")
    print(f"| {n}x{n} matmul | GFLOP/s (GOP/s for int8) | x float32 |\n| --- | --- | --- |")
    for name, value in best.items():
        print(f"| {name} | {value:.0f} | {value / best['float32']:.2f} |")


if __name__ == "__main__":
    main()
