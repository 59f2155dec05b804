"""Measurements of the generator (not part of the build): the paper's affirmative-prefix ablation,
the exemplars' sources (`--compare exemplars`), generators with and without the prefix
(`--compare generators`), and batched against one-at-a-time throughput.

    python -m dataset_builders.harmaug.measure --config saferoute/recipes/cpu-offline.yaml \\
        --measure_dir outputs/harmaug-measure --ablation_requests 64 [--score_teacher true]
    saferoute measure --config saferoute/recipes/cpu-offline.yaml --compare generators --backend llama_cpp \\
        --generators bundled:smollm2-135m-instruct,bundled:qwen2.5-coder-0.5b-instruct --score_teacher true

Each arm builds the generate and filter stages (with the prefix / without it; exemplars from every
source / from WildGuardMix train only; each of `--generators` with and without the prefix) and
reports the kept share, the share of parseable instructions, the share a keyword heuristic calls
harmful, distinct-1/2, the kept instructions' nearest-benchmark similarity (word 3-gram Jaccard),
seconds of generation per kept instruction and, with `--score_teacher`, the share the teacher
scores unsafe (P > 0.5) and the share it scores decisively (P < 0.2 or P > 0.8). Results go to
`<measure_dir>/results.json`, the table to `<measure_dir>/table.md`.
"""

import json
import re
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import pyarrow.parquet as pq

from saferoute.config import parse_args

from . import filters, generate, label
from .build import BuildCorpusArguments, build, exemplar_rows, generation_dtype, seed_rows

HARM_KEYWORDS = re.compile(
    r"\b(bomb|explosive|weapon|gun|kill|murder|poison|steal|theft|rob|hack|malware|virus|drug|meth|cocaine|"
    r"suicide|self-harm|hurt|harm|attack|abuse|racis\w*|sexis\w*|slur|insult|offensive|illegal|fraud|scam|"
    r"cheat|violence|violent|terror\w*|kidnap|torture|exploit|counterfeit|launder\w*|harass\w*|threat\w*|"
    r"destroy|revenge|stalk\w*|porn\w*|explicit|hate|hateful)\b",
    re.I,
)


@dataclass
class MeasureArguments:
    measure_dir: str = field(default="{output_root}/harmaug-measure", metadata={"help": "Where the ablation stages and results.json go."})
    compare: str = field(default="prefix", metadata={"help": "'prefix' (with / without the affirmative prefix), 'exemplars' (exemplars from every source / from --exemplar_arm_sources) or 'generators' (each of --generators with and without the prefix)."})
    generators: str = field(default="bundled:smollm2-135m-instruct,bundled:qwen2.5-coder-0.5b-instruct,bundled:qwen2.5-coder-1.5b-instruct",
                            metadata={"help": "With --compare generators: the generators compared (comma-separated), each through --backend."})
    exemplar_arm_sources: str = field(default="wildguardtrain", metadata={"help": "With --compare exemplars: the sources of the second arm's exemplars."})
    ablation_requests: int = field(default=64, metadata={"help": "Requests per arm."})
    score_teacher: bool = field(default=False, metadata={"help": "Score the ablation instructions with --teacher."})
    throughput_requests: int = field(default=16, metadata={"help": "Requests timed per setting (0 skips the throughput run)."})
    throughput_batch_size: int = field(default=16, metadata={"help": "Batch size of the batched setting."})
    throughput_tokens: int = field(default=32, metadata={"help": "New tokens per request (fixed: min = max)."})


def heuristic_harmful(text) -> bool:
    """A keyword heuristic (NOT a guard): does the text name a harm?"""
    return bool(text and HARM_KEYWORDS.search(text))


def arm_name(generator):
    """A folder-safe short name of a generator: its alias or last path part."""
    return re.sub(r"[^A-Za-z0-9.\-]+", "-", generator.removeprefix("bundled:").rstrip("/").rsplit("/", 1)[-1])


def arms(args, m):
    """(name, settings changed) of each arm of the comparison."""
    prefix = args.prefix or generate.AFFIRMATIVE_PREFIX
    if m.compare == "generators":
        generators = [g.strip() for g in m.generators.split(",") if g.strip()]
        if not generators:
            raise ValueError("--compare generators needs at least one generator in --generators.")
        return [(f"{arm_name(g)}_{side}_prefix", {"generator": g, "prefix": p}) for g in generators
                for side, p in (("with", prefix), ("without", ""))]
    if m.compare == "exemplars":
        return [("exemplars_all_sources", {"exemplar_sources": None}), (f"exemplars_{m.exemplar_arm_sources.replace(',', '+')}",
                                                                       {"exemplar_sources": m.exemplar_arm_sources})]
    if m.compare != "prefix":
        raise ValueError(f"--compare must be 'prefix', 'exemplars' or 'generators', got {m.compare!r}.")
    return [("with_prefix", {"prefix": prefix}), ("without_prefix", {"prefix": ""})]


def nearest_benchmark(instructions, benchmark_prompts, n=3):
    """Mean and share >= 0.3 of each instruction's highest word-3-gram Jaccard against the benchmark prompts."""
    index = filters.ShingleIndex(n)
    for text in benchmark_prompts:
        index.add(text)
    best = [index.max_jaccard(text)[0] for text in instructions]
    return {"mean": sum(best) / max(1, len(best)), "share_at_least_0.3": sum(b >= 0.3 for b in best) / max(1, len(best))}


def ablation(args, m):
    from ..schema import data_dir

    results = {}
    guard = label.load_teacher(args) if m.score_teacher else None
    bench = [] if args.benchmarks == "none" else filters.load_benchmark_prompts(args.benchmarks or data_dir() / "eval")
    for arm, changes in arms(args, m):
        work = Path(m.measure_dir) / arm
        arm_args = replace(args, **changes, num_requests=m.ablation_requests, work_dir=str(work),
                           output_dir=str(work / "unused"), stop_after="filter", overwrite=False)
        build(arm_args)
        rows = pq.read_table(sorted((work / "generate").glob("shard-*.parquet"))).to_pylist()
        parsed = [r["instruction"] for r in rows if r["instruction"]]
        meta = [json.loads(pq.read_schema(p).metadata[b"saferoute"]) for p in sorted((work / "generate").glob("shard-*.parquet"))]
        counts = json.loads((work / "filter" / "counts.json").read_text())
        kept = [r["instruction"] for r in pq.read_table(sorted((work / "filter").glob("shard-*.parquet"))).to_pylist()]
        seconds = sum(x["seconds"] for x in meta)
        res = {
            **changes, "backend": args.backend, "generated": len(rows), "parseable": len(parsed), "kept": len(kept),
            "kept_share": len(kept) / len(rows), "parseable_share": len(parsed) / len(rows),
            "generation_seconds": seconds, "seconds_per_kept_instruction": seconds / len(kept) if kept else None,
            "heuristic_harmful_share_of_generated": sum(map(heuristic_harmful, parsed)) / len(rows),
            "heuristic_harmful_share_of_parseable": sum(map(heuristic_harmful, parsed)) / max(1, len(parsed)),
            "heuristic_harmful_share_of_kept": sum(map(heuristic_harmful, kept)) / max(1, len(kept)),
            "filter_counts": counts, "distinct_1": filters.distinct_n(kept, 1), "distinct_2": filters.distinct_n(kept, 2),
            "nearest_benchmark_jaccard_of_kept": nearest_benchmark(kept, bench),
            "tokens_per_second": sum(x["new_tokens"] for x in meta) / sum(x["seconds"] for x in meta),
            "tokens_per_cpu_second": sum(x["new_tokens"] for x in meta) / sum(x.get("cpu_seconds", 0) or 1e-9 for x in meta),
            "examples": parsed[:8],
        }
        if guard is not None:
            scores = guard.score([{"prompt": p, "response": None} for p in parsed], show_progress=True) if parsed else []
            unsafe = sum(s > 0.5 for s in scores)
            by_text = dict(zip(parsed, scores))
            kept_scores = [by_text[p] for p in kept]
            res.update({"teacher": args.teacher, "teacher_unsafe_share_of_generated": unsafe / len(rows),
                        "teacher_unsafe_share_of_parseable": unsafe / max(1, len(parsed)),
                        "teacher_unsafe_share_of_kept": sum(s > 0.5 for s in kept_scores) / max(1, len(kept)),
                        "teacher_decisive_share_of_kept": sum(s < 0.2 or s > 0.8 for s in kept_scores) / max(1, len(kept)),
                        "teacher_mean_score_of_kept": sum(kept_scores) / max(1, len(kept))})
        results[arm] = res
    return results


def table(results):
    """The comparison as a markdown table (one row per arm)."""

    def share(value):
        return "-" if value is None else f"{100 * value:.1f}%"

    lines = ["| arm | generator | prefix | kept | teacher unsafe (kept) | teacher decisive (kept) | distinct-1 / -2 | "
             "nearest-benchmark 3-gram Jaccard (mean) | s per kept instruction |", "| --- " * 9 + "|"]
    for name, r in results.items():
        per_kept = "-" if r["seconds_per_kept_instruction"] is None else f"{r['seconds_per_kept_instruction']:.2f}"
        lines.append(
            f"| {name} | {r.get('generator', '')} | {'yes' if r.get('prefix') else 'no' if 'prefix' in r else ''} | "
            f"{r['kept']}/{r['generated']} ({share(r['kept_share'])}) | {share(r.get('teacher_unsafe_share_of_kept'))} | "
            f"{share(r.get('teacher_decisive_share_of_kept'))} | {r['distinct_1']:.3f} / {r['distinct_2']:.3f} | "
            f"{r['nearest_benchmark_jaccard_of_kept']['mean']:.3f} | {per_kept} |")
    return "\n".join(lines) + "\n"


def throughput(args, m):
    seed_pool, roles, _ = seed_rows(args)
    pool = generate.exemplar_pool(exemplar_rows(args, seed_pool, roles), args.exemplar_max_chars)
    gen = generate.load_generator(args.generator, args.backend, dtype=generation_dtype(args, args.device), device=args.device, batch_size=1)
    prompts = [
        generate.render_chat(gen.tokenizer, generate.request_messages(generate.request_exemplars(pool, i, args.num_exemplars, args.seed), args.request), args.prefix)
        for i in range(m.throughput_requests)
    ]
    gen.generate(prompts[:1], 0, max_new_tokens=4)  # warm-up
    results = {}
    for batch_size in (1, m.throughput_batch_size):
        gen.batch_size = batch_size
        start, cpu_start = time.perf_counter(), time.process_time()
        _, tokens = gen.generate(prompts, args.seed, max_new_tokens=m.throughput_tokens, min_new_tokens=m.throughput_tokens,
                                 temperature=args.temperature, top_p=args.top_p)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        results[f"batch_size_{batch_size}"] = {"requests": len(prompts), "new_tokens": tokens, "seconds": seconds,
                                               "tokens_per_second": tokens / seconds, "cpu_seconds": cpu,
                                               "tokens_per_cpu_second": tokens / cpu}
    return results


def main(argv=None):
    args, m = parse_args([BuildCorpusArguments, MeasureArguments], argv, section="build_corpus")
    Path(m.measure_dir).mkdir(parents=True, exist_ok=True)
    results = {"generator": args.generator, "backend": args.backend, "compare": m.compare, "ablation": ablation(args, m)}
    if m.throughput_requests:
        results["throughput"] = throughput(args, m)
    path = Path(m.measure_dir) / "results.json"
    path.write_text(json.dumps(results, indent=2))
    (Path(m.measure_dir) / "table.md").write_text(table(results["ablation"]))
    print(json.dumps(results, indent=2))
    print(table(results["ablation"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
