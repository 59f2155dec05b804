"""Generation engines on this CPU: the same HarmAug requests and responses through each engine, in
one run (each engine in its own child process, one after the other), with load time, new tokens/s
and seconds per kept instruction.

    python bench/bench_generators.py --generator bundled:qwen2.5-coder-0.5b-instruct \\
        --engines llama_cpp,transformers,vllm --requests 32 --responses 16

Engines: `llama_cpp` (the quantized GGUF as it is), `transformers` (the GGUF converted once to bf16
safetensors; `--precision` picks the compute dtype as build-corpus does) and `vllm` (vLLM's CPU
build in `--vllm_python`'s environment, the same converted folder; its child runs the sampling that
`generate.VLLMGenerator` runs). Conversions happen before the timed part (once, cached); "load" is
the engine's start from the cache, sha256 check of a bundled GGUF included.

Requests are build-corpus's (3 exemplars of at most 160 characters from the harmful prompts of the
seed pool, the affirmative prefix, `--max_new_tokens`); "kept" applies build-corpus's parser and
filter (duplicates, request echoes, benchmark and seed-pool copies). Responses are compliant
answers to harmful seed-pool prompts (the respond stage's prompt), the same for every engine.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

VLLM_CHILD = """
import json, sys, time
if __name__ == "__main__":
    spec = json.load(open(sys.argv[1]))
    start = time.perf_counter()
    import vllm
    llm = vllm.LLM(model=spec["model"], dtype=spec["dtype"], max_model_len=2048, seed=0)
    out = {"load_seconds": time.perf_counter() - start}
    for part in ("generate", "respond"):
        job = spec[part]
        params = [vllm.SamplingParams(temperature=job["temperature"], top_p=job["top_p"], max_tokens=job["max_new_tokens"],
                                      seed=s) for s in job["seeds"]]
        start = time.perf_counter()
        results = llm.generate(job["prompts"], params, use_tqdm=False)
        out[part] = {"seconds": time.perf_counter() - start, "texts": [r.outputs[0].text for r in results],
                     "new_tokens": sum(len(r.outputs[0].token_ids) for r in results)}
    json.dump(out, open(sys.argv[2], "w"))
"""


def child(spec_path, out_path):
    """One engine, in this process: load, then the generate and respond jobs of the spec."""
    spec = json.loads(Path(spec_path).read_text())
    import torch

    from dataset_builders.harmaug.generate import load_generator

    torch.set_num_threads(spec["threads"])
    options = {"n_threads": spec["threads"]} if spec["engine"] == "llama_cpp" else {}
    start = time.perf_counter()
    gen = load_generator(spec["generator"], spec["engine"], dtype=spec["dtype"], device="cpu", batch_size=spec["batch_size"], **options)
    out = {"load_seconds": time.perf_counter() - start}
    for part in ("generate", "respond"):
        job = spec[part]
        start = time.perf_counter()
        texts, tokens = gen.generate(job["prompts"], job["seed"], max_new_tokens=job["max_new_tokens"],
                                     temperature=job["temperature"], top_p=job["top_p"])
        out[part] = {"seconds": time.perf_counter() - start, "texts": texts, "new_tokens": tokens}
    Path(out_path).write_text(json.dumps(out))


def run_child(cmd, timeout, env=None):
    """Run an engine's child in its own process group; the whole group goes when it is done or late."""
    proc = subprocess.Popen(cmd, cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        err = f"timed out after {timeout} s"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return proc.returncode, err


def build_jobs(args):
    """The rendered generate and respond prompts (the generator's chat template) and their settings."""
    from dataset_builders.harmaug import generate, respond
    from dataset_builders.harmaug.shards import derive_seed
    from dataset_builders.seed_pool import load_seed_pool

    pool_rows = load_seed_pool(args.seed_pool)
    pool = generate.exemplar_pool(pool_rows, 160)
    tokenizer = generate.gguf_tokenizer(generate.gguf_path(args.generator))
    prompts = [generate.render_chat(tokenizer, generate.request_messages(generate.request_exemplars(pool, i, 3, args.seed)),
                                    generate.AFFIRMATIVE_PREFIX) for i in range(args.requests)]
    system, opening = respond.STYLES["compliant"]
    responses = [respond.response_prompt(tokenizer, text, system, opening) for text in pool[-args.responses:]]
    jobs = {
        "generate": {"prompts": prompts, "max_new_tokens": args.max_new_tokens},
        "respond": {"prompts": responses, "max_new_tokens": args.response_max_new_tokens},
    }
    for name, job in jobs.items():
        job.update(seed=derive_seed(args.seed, name), temperature=1.0, top_p=0.95)
        job["seeds"] = [derive_seed(job["seed"], i) for i in range(len(job["prompts"]))]
        job["prompt_tokens"] = sum(len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in job["prompts"])
    return jobs, pool_rows


def kept_instructions(texts, pool_rows, benchmarks):
    from dataset_builders.harmaug import filters, generate

    rows = [{"instruction": generate.parse_instruction(t)} for t in texts]
    kept, counts = filters.filter_instructions(rows, benchmarks, pool_rows["prompt"], request_text=generate.HARMFUL_REQUEST)
    return [r["instruction"] for r in kept], counts


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generator", default="bundled:qwen2.5-coder-0.5b-instruct")
    parser.add_argument("--engines", default="llama_cpp,transformers,vllm")
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--responses", type=int, default=16)
    parser.add_argument("--max_new_tokens", type=int, default=40)
    parser.add_argument("--response_max_new_tokens", type=int, default=40)
    parser.add_argument("--batch_size", type=int, default=32, help="transformers batch size")
    parser.add_argument("--precision", default="auto", help="transformers / vLLM compute precision (auto: bf16 where native)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="Compute threads of every engine (default: every core; vLLM: the cores it computes on)")
    parser.add_argument("--seed_pool", default="offline")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vllm_python", default=str(REPO / ".venv-vllm" / "bin" / "python"))
    parser.add_argument("--rounds", type=int, default=1, help="Run the engines in turn this many times (the machine's load drifts).")
    parser.add_argument("--timeout", type=int, default=1800, help="Seconds per engine.")
    parser.add_argument("--output", default=None, help="Also write the results here (JSON).")
    parser.add_argument("--child", nargs=2, metavar=("SPEC", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(*args.child)

    from dataset_builders.harmaug import filters
    from dataset_builders.schema import data_dir
    from modeling_saferoute.bundled import resolve
    from modeling_saferoute.precision import cpu_name, native_bf16, torch_dtype

    dtype = str(torch_dtype(args.precision, "cpu")).replace("torch.", "")
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    if "vllm" in engines and not Path(args.vllm_python).exists():
        parser.error(f"--vllm_python {args.vllm_python} does not exist (`make vllm-env` makes .venv-vllm).")
    jobs, pool_rows = build_jobs(args)
    benchmarks = filters.load_benchmark_prompts(data_dir() / "eval")
    folder = resolve(args.generator) if {"transformers", "vllm"} & set(engines) else None  # converted once, before timing
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for round_, engine in [(r, e) for r in range(1, args.rounds + 1) for e in engines]:
            name = engine if args.rounds == 1 else f"{engine} (round {round_})"
            spec, out = Path(tmp) / f"{engine}.json", Path(tmp) / f"{engine}-{round_}.out.json"
            spec.write_text(json.dumps({"generator": args.generator, "engine": engine, "dtype": dtype, "batch_size": args.batch_size,
                                        "threads": args.threads, "model": folder, **jobs}))
            if engine == "vllm":
                script = Path(tmp) / "vllm_child.py"
                script.write_text(VLLM_CHILD)
                cmd = [args.vllm_python, str(script), str(spec), str(out)]
                # vLLM computes on the cores it does not reserve for its scheduler (one by default)
                cores = sorted(os.sched_getaffinity(0))
                env = {"VLLM_CPU_KVCACHE_SPACE": "2", "VLLM_CPU_NUM_OF_RESERVED_CPU": str(max(0, len(cores) - args.threads)),
                       "VLLM_CPU_OMP_THREADS_BIND": f"{cores[0]}-{cores[args.threads - 1]}" if args.threads > 1 else str(cores[0])}
            else:
                cmd, env = [sys.executable, str(Path(__file__).resolve()), "--child", str(spec), str(out)], {}
            start = time.perf_counter()
            code, err = run_child(cmd, args.timeout, env)
            if not out.exists():
                results[name] = {"error": (err or "")[-2000:], "returncode": code}
                print(f"{name}: failed ({code}): {(err or '')[-500:]}", file=sys.stderr)
                continue
            res = json.loads(out.read_text())
            kept, counts = kept_instructions(res["generate"]["texts"], pool_rows, benchmarks)
            gen, resp = res["generate"], res["respond"]
            results[name] = {
                "wall_seconds": time.perf_counter() - start, "load_seconds": res["load_seconds"],
                "generate_seconds": gen["seconds"], "generate_new_tokens": gen["new_tokens"],
                "generate_tokens_per_second": gen["new_tokens"] / gen["seconds"],
                "respond_seconds": resp["seconds"], "respond_new_tokens": resp["new_tokens"],
                "respond_tokens_per_second": resp["new_tokens"] / resp["seconds"],
                "kept": len(kept), "filter_counts": counts,
                "seconds_per_kept_instruction": gen["seconds"] / len(kept) if kept else None,
                # what build-corpus pays per kept instruction: its generation, then a compliant and a refusal response
                "seconds_per_kept_with_responses": (gen["seconds"] / len(kept) + 2 * resp["seconds"] / len(resp["texts"])) if kept else None,
                "examples": kept[:5],
            }
            print(f"{name}: {json.dumps({k: v for k, v in results[name].items() if k != 'examples'})}", file=sys.stderr)
    print(f"CPU: {cpu_name()}, {len(os.sched_getaffinity(0))} cores (load average {os.getloadavg()[0]:.1f} at the end), {args.threads} compute thread(s) per engine; native bf16: "
          f"{native_bf16('cpu')}; transformers / vLLM dtype: {dtype}; llama.cpp: the GGUF's own quantization")
    print(f"{args.generator}: {args.requests} requests ({jobs['generate']['prompt_tokens']} prompt tokens, <= {args.max_new_tokens} new each), "
          f"{args.responses} responses ({jobs['respond']['prompt_tokens']} prompt tokens, <= {args.response_max_new_tokens} new each)\n")
    print("| engine | load s | generate tok/s | respond tok/s | kept | s per kept instruction | s per kept, with its 2 responses |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for engine, r in results.items():
        if "error" in r:
            print(f"| {engine} | failed | | | | | |")
            continue
        per_kept = f"{r['seconds_per_kept_instruction']:.2f}" if r["kept"] else "-"
        with_resp = f"{r['seconds_per_kept_with_responses']:.2f}" if r["kept"] else "-"
        print(f"| {engine} | {r['load_seconds']:.1f} | {r['generate_tokens_per_second']:.1f} | {r['respond_tokens_per_second']:.1f} | "
              f"{r['kept']}/{args.requests} | {per_kept} | {with_resp} |")
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
