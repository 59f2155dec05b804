"""Streaming moderation measured: how early a stream flags, how often it stops a safe answer, how its
final verdicts agree with the whole-response verdict, and what it costs against scoring once.

On the response-level benchmarks (HarmBench, WildGuardMix response, XSTest response), each response
is streamed in the pieces a generator writes (the bundled SmolLM2 tokenizer's tokens) through
`guard.stream(prompt)`; the checks of many streams are batched (`append` / `apply`), which changes
no verdict. Printed per benchmark: agreement of the stream's final verdict with the pipeline on the
whole response (default `long_inputs="truncate"`, and `"chunk"`, which reads all of it); for
harmful rows the share the stream stopped and the median response tokens read before the stop; for
safe rows the share falsely stopped; student tokens per 100 response tokens, streamed against reading
the finished response once (windows of the stream's size overlapping by a quarter, the pipeline's
chunk rule; a prompt that fills the budget is cut as the stream cuts it); and, one response at a
time, seconds per 100 response tokens of both (and of the default call, which reads the head only).

The inserted-sentence set: a harmful snippet (the opening sentences of a harmful benchmark response
that the model's large guard scores unsafe as an answer to its own prompt) placed at a random
sentence boundary of a safe benchmark response, judged with that response's prompt. On the rows the
whole-response student flags (chunk), the distance from the snippet's first token to the stop.

    python bench/bench_streaming.py --model outputs/saferoute-guard [--compare DIR] --max_per_benchmark 300
"""

import json
import random
import re
import statistics
import time
from dataclasses import dataclass, field
from typing import Optional

from transformers import AutoTokenizer, pipeline

from dataset_builders.benchmarks import BENCHMARKS, load_benchmarks
from modeling_saferoute.bundled import resolve
from modeling_saferoute.inputs import encode_pairs
from saferoute.config import parse_args

RESPONSE_BENCHMARKS = ("harmbench", "wildguardmix_response", "xstest_response")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


@dataclass
class BenchStreamingArguments:
    model: str = field(default="outputs/saferoute-guard", metadata={"help": "SafeRoute model folder."})
    compare: Optional[str] = field(default=None, metadata={"help": "A second SafeRoute model folder measured the same way (e.g. a student without prefix training)."})
    max_per_benchmark: Optional[int] = field(default=None, metadata={"help": "Stratified rows per benchmark (None: all)."})
    inserted: int = field(default=300, metadata={"help": "Rows of the inserted-sentence set."})
    snippet_min_score: float = field(default=0.5, metadata={"help": "A harmful snippet is kept when the large guard's P(unsafe) on it is above this."})
    timing_rows: int = field(default=40, metadata={"help": "Rows timed at batch 1 (stream against scoring once), interleaved."})
    stride: Optional[int] = field(default=None, metadata={"help": "Stream stride (default: the stream's, half its window)."})
    window: Optional[int] = field(default=None, metadata={"help": "Stream window (default: the stream's)."})
    patience: int = field(default=1, metadata={"help": "Consecutive unsafe checks that stop a stream."})
    route: str = field(default="never", metadata={"help": "Routing of checks and whole-response verdicts: never (the student), auto or always."})
    batch_size: int = field(default=64, metadata={"help": "Checks per batched pipeline call."})
    generator: str = field(default="bundled:smollm2-135m-instruct", metadata={"help": "Tokenizer whose tokens are the streamed pieces."})
    seed: int = field(default=0, metadata={"help": "Subsample and inserted-set seed."})
    output: Optional[str] = field(default=None, metadata={"help": "Write every number as JSON here."})


def pieces_of(tokenizer, text):
    """`text` as a generator writes it: one piece per token (the text between token starts)."""
    starts = [s for s, _ in tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]]
    if not starts:
        return [text]
    starts[0] = 0
    return [text[a:b] for a, b in zip(starts, starts[1:] + [len(text)])]


def student_tokens(pipe, items):
    """Student input tokens of each item (as the pipeline encodes it for the student)."""
    encoded, _ = encode_pairs(pipe.tokenizer, [it.get("student_view", it) for it in items], pipe.model.max_length)
    return [len(e["input_ids"]) for e in encoded]


def run_streams(pipe, rows, pieces, options, batch_size):
    """Stream every row's pieces; the checks of all streams batched. Per row: final verdict, stop
    point, checks and the student tokens they read."""
    streams = [pipe.stream(r["prompt"], **options) for r in rows]
    cursor, cost, done = [0] * len(rows), [0] * len(rows), [False] * len(rows)
    active = list(range(len(rows)))
    while active:
        queue = []
        for i in active:
            checks = []
            while not checks and not done[i]:
                if cursor[i] < len(pieces[i]):
                    checks = streams[i].append(pieces[i][cursor[i]])
                    cursor[i] += 1
                else:
                    checks, done[i] = streams[i].end(), True
            queue += [(i, c) for c in checks]
        for k in range(0, len(queue), batch_size):
            part = queue[k : k + batch_size]
            results = pipe([c.item for _, c in part], batch_size=batch_size, **streams[part[0][0]].call_options)
            for (i, check), result, n in zip(part, results, student_tokens(pipe, [c.item for _, c in part])):
                streams[i].apply(check, result)
                cost[i] += n
        active = [i for i in active if not done[i]]
    out = []
    for stream, c in zip(streams, cost):
        verdict = stream.verdict
        out.append({"label": verdict["label"], "stopped_at": verdict["stopped_at"], "tokens": verdict["tokens"],
                    "checks": verdict["checks"], "student_tokens": c})
    return out


def once_windows(pipe, prompt, response, window, overlap=0.25):
    """The finished response read once: windows of `window` tokens overlapping by `overlap` (the
    pipeline's chunk rule, at the stream's window, so a long prompt is cut as the stream cuts it)."""
    starts = [s for s, _ in pipe.tokenizer(response, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]]
    if len(starts) <= window:
        return [{"prompt": prompt, "response": response}]
    step = max(1, int(window * (1 - overlap)))
    firsts = list(range(0, len(starts) - window + 1, step))
    if firsts[-1] + window < len(starts):
        firsts.append(len(starts) - window)
    bounds = starts + [len(response)]
    return [{"prompt": prompt, "response": response[bounds[a] : bounds[a + window]]} for a in firsts]


def full_stream_cost(pipe, rows, pieces, options):
    """Student tokens of every check of each row's stream run to its end (as if no check ever stopped
    it): the cost of streaming a response the guard lets through. Tokenization only: each check is
    answered "safe" without running the model."""
    safe = {"label": "safe", "score": 1.0, "unsafe_score": 0.0, "decided_by": "student"}
    cost = []
    for row, parts in zip(rows, pieces):
        stream, total = pipe.stream(row["prompt"], **options), 0
        for k in range(len(parts) + 1):
            checks = stream.append(parts[k]) if k < len(parts) else stream.end()
            total += sum(student_tokens(pipe, [c.item for c in checks])) if checks else 0
            for check in checks:
                stream.apply(check, safe)
        cost.append(total)
    return cost


def whole_response(pipe, rows, route, batch_size, window_of):
    """The pipeline's verdicts on the finished responses (truncate: the default call; chunk: windows of
    all of it), and the student tokens of reading each once (`once_windows`)."""
    items = [{"prompt": r["prompt"], "response": r["response"]} for r in rows]
    truncate = pipe(items, route=route, batch_size=batch_size)
    chunk = pipe(items, route=route, batch_size=batch_size, long_inputs="chunk")
    cost = [sum(student_tokens(pipe, once_windows(pipe, r["prompt"], r["response"], window_of(r)))) for r in rows]
    return [r["label"] for r in truncate], [r["label"] for r in chunk], cost


def response_tokens(pipe, text):
    return len(pipe.tokenizer(text, add_special_tokens=False)["input_ids"])


def summarize(rows, streamed, truncate, chunk, once_cost, full_cost, pipe):
    n_tokens = sum(response_tokens(pipe, r["response"]) for r in rows)
    harmful = [s for r, s in zip(rows, streamed) if r["label"] == 1]
    safe = [s for r, s in zip(rows, streamed) if r["label"] == 0]
    stops = [s["stopped_at"] for s in harmful if s["stopped_at"] is not None]
    return {
        "rows": len(rows), "harmful": len(harmful), "safe": len(safe),
        "agree_truncate": sum(s["label"] == t for s, t in zip(streamed, truncate)) / len(rows),
        "agree_chunk": sum(s["label"] == c for s, c in zip(streamed, chunk)) / len(rows),
        "stream_unsafe_chunk_safe": sum(s["label"] == "unsafe" and c == "safe" for s, c in zip(streamed, chunk)) / len(rows),
        "harmful_stopped": len(stops) / len(harmful) if harmful else None,
        "harmful_final_unsafe": sum(s["label"] == "unsafe" for s in harmful) / len(harmful) if harmful else None,
        "median_tokens_to_stop": statistics.median(stops) if stops else None,
        "safe_stopped": sum(s["stopped_at"] is not None for s in safe) / len(safe) if safe else None,
        "whole_chunk_unsafe_on_safe": sum(c == "unsafe" for r, c in zip(rows, chunk) if r["label"] == 0) / len(safe) if safe else None,
        "stream_student_tokens_per_100": 100 * sum(s["student_tokens"] for s in streamed) / n_tokens,
        "full_stream_student_tokens_per_100": 100 * sum(full_cost) / n_tokens,
        "once_student_tokens_per_100": 100 * sum(once_cost) / n_tokens,
        "checks_per_100": 100 * sum(s["checks"] for s in streamed) / n_tokens,
    }


def harmful_snippets(pipe, rows, rng, min_score, max_words=40):
    """(prompt, snippet) of harmful responses: their opening sentences up to `max_words` words, kept
    when the large guard scores the snippet unsafe as the answer to its own prompt."""
    candidates = []
    for r in rows:
        if r["label"] != 1 or not r["response"]:
            continue
        snippet = ""
        for sentence in _SENTENCE_END.split(r["response"].strip()):
            if snippet and len((snippet + " " + sentence).split()) > max_words:
                break
            snippet = (snippet + " " + sentence).strip()
        if 6 <= len(snippet.split()) <= max_words:
            candidates.append((r["prompt"], snippet))
    scores = pipe([{"prompt": p, "response": s} for p, s in candidates], route="always")
    kept = [c for c, s in zip(candidates, scores) if s["unsafe_score"] > min_score]
    if not kept:
        raise ValueError(f"No harmful snippet of {len(candidates)} scores above snippet_min_score={min_score} by the large guard.")
    rng.shuffle(kept)
    return kept


def inserted_rows(pipe, benchmarks, n, seed, min_score):
    """Safe responses with a harmful snippet placed at a random sentence boundary; `start` = response
    tokens before the snippet."""
    rng = random.Random(seed)
    all_rows = [r for ds in benchmarks.values() for r in ds]
    snippets = harmful_snippets(pipe, all_rows, rng, min_score)
    hosts = [r for r in all_rows if r["label"] == 0 and r["response"] and len(_SENTENCE_END.split(r["response"].strip())) >= 3]
    rng.shuffle(hosts)
    out = []
    for k, host in enumerate(hosts[:n]):
        sentences = _SENTENCE_END.split(host["response"].strip())
        at = rng.randint(1, len(sentences) - 1)
        before = " ".join(sentences[:at]) + " "
        _, snippet = snippets[k % len(snippets)]
        out.append({"prompt": host["prompt"], "response": before + snippet + " " + " ".join(sentences[at:]), "label": 1,
                    "start": response_tokens(pipe, before), "snippet_tokens": response_tokens(pipe, snippet)})
    return out, len(snippets)


def inserted_summary(rows, streamed, chunk):
    flagged = [(r, s) for r, s, c in zip(rows, streamed, chunk) if c == "unsafe"]
    distances = [s["stopped_at"] - r["start"] for r, s in flagged if s["stopped_at"] is not None]
    n = len(flagged)
    return {
        "rows": len(rows), "whole_flagged": n,
        "stopped": len(distances) / n if n else None,
        "within_128_after_start": sum(0 <= d <= 128 for d in distances) / n if n else None,
        "within_128_either_side": sum(abs(d) <= 128 for d in distances) / n if n else None,
        "stopped_before_start": sum(d < 0 for d in distances) / n if n else None,
        "median_distance": statistics.median(distances) if distances else None,
        "median_distance_after_snippet_end": statistics.median(
            [s["stopped_at"] - r["start"] - r["snippet_tokens"] for r, s in flagged if s["stopped_at"] is not None]) if distances else None,
    }


def timed(pipe, rows, pieces, options, route):
    """Seconds per 100 response tokens, one response at a time: a stream fed piece by piece (+ close);
    the finished response read once (`once_windows`, one batched call); the default call (truncate).
    Interleaved per row."""
    clock = {"stream": 0.0, "once_chunk": 0.0, "once_truncate": 0.0}
    for row, parts in zip(rows, pieces):
        t0 = time.perf_counter()
        stream = pipe.stream(row["prompt"], **options)
        for p in parts:
            stream.feed(p)
        stream.close()
        t1 = time.perf_counter()
        once = once_windows(pipe, row["prompt"], row["response"], stream.window)
        pipe(once, route=route, batch_size=len(once))
        t2 = time.perf_counter()
        pipe({"prompt": row["prompt"], "response": row["response"]}, route=route)
        t3 = time.perf_counter()
        clock["stream"] += t1 - t0
        clock["once_chunk"] += t2 - t1
        clock["once_truncate"] += t3 - t2
    n = sum(response_tokens(pipe, r["response"]) for r in rows)
    return {k: 100 * v / n for k, v in clock.items()} | {"stream_over_chunk": clock["stream"] / clock["once_chunk"], "rows": len(rows)}


def measure(model, args, benchmarks, gen_tokenizer):
    pipe = pipeline("text-classification", model=model, trust_remote_code=True)
    options = {k: v for k, v in {"stride": args.stride, "window": args.window, "patience": args.patience, "route": args.route}.items() if v is not None}
    results = {"model": model, "options": options, "benchmarks": {}}

    def window_of(row):
        return pipe.stream(row["prompt"], **options).window

    start = time.perf_counter()
    for name, ds in benchmarks.items():
        rows = [r for r in ds if r["response"]]
        pieces = [pieces_of(gen_tokenizer, r["response"]) for r in rows]
        streamed = run_streams(pipe, rows, pieces, options, args.batch_size)
        truncate, chunk, once_cost = whole_response(pipe, rows, args.route, args.batch_size, window_of)
        full_cost = full_stream_cost(pipe, rows, pieces, options)
        results["benchmarks"][name] = summarize(rows, streamed, truncate, chunk, once_cost, full_cost, pipe)
    rows, n_snippets = inserted_rows(pipe, benchmarks, args.inserted, args.seed, args.snippet_min_score)
    streamed = run_streams(pipe, rows, [pieces_of(gen_tokenizer, r["response"]) for r in rows], options, args.batch_size)
    _, chunk, _ = whole_response(pipe, rows, args.route, args.batch_size, window_of)
    results["inserted"] = {**inserted_summary(rows, streamed, chunk), "snippets": n_snippets}
    sample = [r for ds in benchmarks.values() for r in ds if r["response"]]
    random.Random(args.seed).shuffle(sample)
    sample = sample[: args.timing_rows]
    results["timing"] = timed(pipe, sample, [pieces_of(gen_tokenizer, r["response"]) for r in sample], options, args.route)
    probe = pipe.stream("probe", **options)
    results["defaults"] = {"window_for_a_short_prompt": probe.window, "stride": probe.stride, "patience": probe.patience,
                           "student_budget": pipe.model.max_length}
    results["seconds"] = round(time.perf_counter() - start, 1)
    return results


def fmt(x, digits=3):
    return "-" if x is None else f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def print_tables(all_results):
    for res in all_results:
        print(f"\n### {res['model']} (options {res['options']}; defaults {res['defaults']}; {res['seconds']} s)\n")
        print("| benchmark | rows (harmful/safe) | agree, truncate | agree, chunk | harmful stopped | median tokens to stop | "
              "safe falsely stopped (whole-response student flags) | student tokens / 100: stream run to the end | once | ratio | with stops |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        totals = []
        for name, m in res["benchmarks"].items():
            ratio = m["full_stream_student_tokens_per_100"] / m["once_student_tokens_per_100"]
            totals.append((m, ratio))
            print(f"| {BENCHMARKS[name].short} | {m['rows']} ({m['harmful']}/{m['safe']}) | {fmt(m['agree_truncate'])} | {fmt(m['agree_chunk'])} | "
                  f"{fmt(m['harmful_stopped'])} | {fmt(m['median_tokens_to_stop'], 0)} | {fmt(m['safe_stopped'])} ({fmt(m['whole_chunk_unsafe_on_safe'])}) | "
                  f"{m['full_stream_student_tokens_per_100']:.0f} | {m['once_student_tokens_per_100']:.0f} | {ratio:.2f}x | "
                  f"{m['stream_student_tokens_per_100']:.0f} |")
        rows = sum(m["rows"] for m, _ in totals)
        agree_t = sum(m["agree_truncate"] * m["rows"] for m, _ in totals) / rows
        agree_c = sum(m["agree_chunk"] * m["rows"] for m, _ in totals) / rows
        print(f"| all rows | {rows} | {agree_t:.3f} | {agree_c:.3f} | | | | | | |")
        ins, t = res["inserted"], res["timing"]
        print(f"\nInserted-sentence set ({ins['rows']} rows from {ins['snippets']} snippets; the whole-response student flags "
              f"{ins['whole_flagged']}): stopped {fmt(ins['stopped'])}, within 128 tokens after the snippet's start "
              f"{fmt(ins['within_128_after_start'])} (either side {fmt(ins['within_128_either_side'])}), before it "
              f"{fmt(ins['stopped_before_start'])}; median distance {fmt(ins['median_distance'], 0)} tokens from its start, "
              f"{fmt(ins['median_distance_after_snippet_end'], 0)} from its end.")
        print(f"\nBatch 1, {t['rows']} rows: {t['stream'] * 1000:.1f} ms per 100 response tokens streamed, "
              f"{t['once_chunk'] * 1000:.1f} read once (its windows in one call), {t['once_truncate'] * 1000:.1f} the default call "
              f"(truncate): stream / once {t['stream_over_chunk']:.2f}x.")


def main(argv=None):
    args = parse_args([BenchStreamingArguments], argv)
    benchmarks = load_benchmarks(list(RESPONSE_BENCHMARKS), max_per_benchmark=args.max_per_benchmark, seed=args.seed)
    gen_tokenizer = AutoTokenizer.from_pretrained(resolve(args.generator))
    results = [measure(m, args, benchmarks, gen_tokenizer) for m in [args.model] + ([args.compare] if args.compare else [])]
    print_tables(results)
    if args.output:
        with open(args.output, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
