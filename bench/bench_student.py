"""Student throughput on the benchmark suite's real length distribution.

Compares, in one run (machines are noisy, so read the ratios): the stock
`pipeline("text-classification", model=student_dir)` called one input at a time, against this
project's SafeRoute pipeline (route="never") with its defaults (batch 32, `autocast_dtype="auto"`:
bf16 where the CPU has it natively, int8 where it has VNNI and no native bf16, float32 elsewhere),
in float32, bf16 and int8 (per-token, `modeling_saferoute/quantization.py`), torch's dynamic int8
(fbgemm, per-tensor activations), plus the ONNX exports; tokens/s against this machine's bf16
matrix-multiply peak; and each variant's agreement with float32 (labels, |dP(unsafe)|).

    python bench/bench_student.py [--model SAFEROUTE_DIR] [--n 300]
    SAFEROUTE_NATIVE_BF16=0 ONEDNN_MAX_CPU_ISA=AVX512_CORE_VNNI python bench/bench_student.py ...  # a CPU without native bf16
"""

import copy
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from transformers import pipeline

from dataset_builders.benchmarks import load_benchmarks
from dataset_builders.schema import guard_items
from modeling_saferoute.precision import cpu_has_vnni, cpu_name, native_bf16
from publishing.export import OnnxSafeRoute, export_onnx
from publishing.package import PackageArguments, package
from saferoute.config import parse_args


@dataclass
class BenchStudentArguments:
    model: Optional[str] = field(default=None, metadata={"help": "SafeRoute model folder (default: package bundled:minilm-l6 into a temp folder)."})
    n: int = field(default=400, metadata={"help": "Examples, stratified over the six benchmarks."})
    stock_n: int = field(default=150, metadata={"help": "Examples for the slow one-at-a-time stock pipeline."})
    onnx: bool = field(default=True, metadata={"help": "Also export and time the ONNX fp32 / int8 copies."})


def matmul_peak(dtype=torch.bfloat16, size=2048, seconds=3.0):
    """Measured FLOP/s of a square matrix multiply in `dtype`."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        n += 1
    return 2 * size**3 * n / (time.perf_counter() - start)


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main(argv=None):
    args = parse_args([BenchStudentArguments], argv)
    torch.manual_seed(0)
    tmp = Path(tempfile.mkdtemp())
    model_dir = args.model or str(package(PackageArguments(student="bundled:minilm-l6", output_dir=str(tmp / "m"), model_card=False)))
    data = load_benchmarks("all", max_per_benchmark=max(1, args.n // 6), seed=0)
    items = [it for ds in data.values() for it in guard_items(ds)]
    items = [items[i] for i in np.random.default_rng(0).permutation(len(items))]
    ours = pipeline("text-classification", model=model_dir, trust_remote_code=True)
    student_dir = tmp / "student"
    ours.model.student.save_pretrained(student_dir)
    ours.tokenizer.save_pretrained(student_dir)
    stock = pipeline("text-classification", model=str(student_dir))
    lengths = [len(ours.tokenizer(it["prompt"], it["response"], truncation=True, max_length=ours.model.max_length)["input_ids"]) for it in items]
    tokens = sum(lengths)
    params = sum(p.numel() for n, p in ours.model.student.named_parameters() if "embeddings" not in n)
    print(f"{len(items)} examples, {tokens / len(items):.0f} tokens each on average, {params / 1e6:.1f}M non-embedding parameters")
    print(f"CPU: {cpu_name()}; native bf16: {native_bf16('cpu')}, VNNI: {cpu_has_vnni()}; torch threads: {torch.get_num_threads()}; "
          f"the default (autocast_dtype='auto') runs the student in: {ours.student_precision}")

    rows = {}  # name -> (examples/s, tokens/s)
    stock_items = items[: args.stock_n]
    _, t = timed(lambda: [stock({"text": it["prompt"], "text_pair": it["response"] or ""} if it["response"] else it["prompt"], truncation=True) for it in stock_items])
    rows["stock pipeline, one input at a time (fp32)"] = (len(stock_items) / t, sum(lengths[: args.stock_n]) / t)
    ours(items[:32], route="never")  # warm-up
    default, t = timed(lambda: ours(items, route="never"))
    rows[f"SafeRoute pipeline, defaults (batch 32, auto = {ours.student_precision}), route='never'"] = (len(items) / t, tokens / t)
    fp32, t = timed(lambda: ours(items, route="never", autocast_dtype="none"))
    rows["SafeRoute pipeline, float32 (autocast_dtype='none')"] = (len(items) / t, tokens / t)
    bf16, t = timed(lambda: ours(items, route="never", autocast_dtype="bfloat16"))
    rows["SafeRoute pipeline, bf16 autocast"] = (len(items) / t, tokens / t)
    ours(items[:32], route="never", autocast_dtype="int8")  # makes the int8 student (once per pipeline)
    int8, t = timed(lambda: ours(items, route="never", autocast_dtype="int8"))
    rows["SafeRoute pipeline, int8 (per-channel weights, per-token activations)"] = (len(items) / t, tokens / t)
    fbgemm_model = copy.deepcopy(ours.model)
    fbgemm_model.student = torch.ao.quantization.quantize_dynamic(fbgemm_model.student, {torch.nn.Linear}, dtype=torch.qint8)
    fbgemm_pipe = pipeline("text-classification", model=fbgemm_model, tokenizer=ours.tokenizer, pipeline_class=type(ours))
    fbgemm, t = timed(lambda: fbgemm_pipe(items, route="never", autocast_dtype="none"))
    rows["SafeRoute pipeline, torch dynamic int8 (fbgemm, per-tensor activations)"] = (len(items) / t, tokens / t)
    onnx_paths = export_onnx(model_dir, tmp / "onnx", int8=True) if args.onnx else []
    onnx_scores = {}
    for path, name in zip(onnx_paths, ("ONNX fp32 (onnxruntime)", "ONNX int8 (onnxruntime dynamic, per-channel)")):
        runner = OnnxSafeRoute(path)
        runner.score(items[:32])  # warm-up
        (unsafe, _), t = timed(lambda: runner.score(items))
        rows[name] = (len(items) / t, tokens / t)
        onnx_scores[name] = (unsafe, len(items) / t)

    peak = matmul_peak()
    base = rows["stock pipeline, one input at a time (fp32)"][0]
    print(f"\nbf16 matmul peak: {peak / 1e9:.1f} GFLOP/s")
    print("| configuration | examples/s | x stock | tokens/s | share of bf16 peak |")
    print("| --- | --- | --- | --- | --- |")
    for name, (eps, tps) in rows.items():
        print(f"| {name} | {eps:.1f} | {eps / base:.1f}x | {tps:.0f} | {2 * params * tps / peak:.1%} |")
    ref = np.array([r["student_unsafe_score"] for r in fp32])
    names = list(rows)
    variants = {names[1]: default, names[3]: bf16, names[4]: int8, names[5]: fbgemm}
    variants = {k: (np.array([r["student_unsafe_score"] for r in v]), rows[k][0]) for k, v in variants.items()} | onnx_scores
    print("\n| method | label agreement with float32 | max abs. dP(unsafe) | mean abs. dP(unsafe) | examples/s |")
    print("| --- | --- | --- | --- | --- |")
    for name, (got, eps) in variants.items():
        gap = np.abs(got - ref)
        print(f"| {name} | {np.mean((got > 0.5) == (ref > 0.5)):.1%} | {gap.max():.4f} | {gap.mean():.4f} | {eps:.1f} |")
    from bench_categories import category_head_cost  # the category head's share of the student's time

    cost = category_head_cost(ours, items, repeats=3)
    print(f"category head ({cost['categories']} categories): {100 * (cost['ratio'] - 1):+.1f}% student time per example "
          f"({cost['per_example_ms']['without']:.3f} -> {cost['per_example_ms']['with']:.3f} ms; target <= +5%)")


if __name__ == "__main__":
    main()
