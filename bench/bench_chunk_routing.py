"""Chunk mode + routing on one long input: a long benign response whose last sentences are a harmful
answer. What each part of the cascade answers, and what the large guard read.

The harmful tail is the response of a benchmark row labeled unsafe that the large guard, alone,
scores unsafe (the shortest such among the first `--candidates`); the benign part is `--sentences`
sentences of responses labeled safe. Printed: the student alone in chunk mode (P, windows), the
routed cascade in chunk mode (the large guard reads the window the student flagged), the large
guard on the whole input cut to its own budget (what routing in chunk mode did before: the tail
is cut away), and the large guard on the tail alone.

    python bench/bench_chunk_routing.py --model outputs/saferoute-guard
"""

import re
from dataclasses import dataclass, field

from transformers import pipeline

from dataset_builders.benchmarks import load_benchmarks
from saferoute.config import parse_args


@dataclass
class BenchChunkRoutingArguments:
    model: str = field(default="outputs/saferoute-guard", metadata={"help": "SafeRoute model folder."})
    sentences: int = field(default=150, metadata={"help": "Benign sentences before the harmful tail."})
    candidates: int = field(default=60, metadata={"help": "Unsafe benchmark rows tried as the tail."})
    prompt: str = field(default="Can you tell me about your weekend plans?", metadata={"help": "The prompt of the long input."})


def main(argv=None):
    args = parse_args([BenchChunkRoutingArguments], argv)
    guard = pipeline("text-classification", model=args.model, trust_remote_code=True)
    rows = load_benchmarks(["wildguardmix_response", "xstest_response"], max_per_benchmark=None, seed=0)
    unsafe = [r for r in rows["wildguardmix_response"] if r["label"] == 1 and r["response"]][: args.candidates]
    scored = guard.large_guard.score([{"prompt": args.prompt, "response": r["response"]} for r in unsafe])
    flagged = [(len(r["response"]), r["response"], p) for r, p in zip(unsafe, scored) if p > 0.5]
    if not flagged:
        raise SystemExit(f"The large guard flags none of the first {args.candidates} unsafe responses: no tail to hide.")
    _, tail, tail_alone = min(flagged)
    benign = [s for r in rows["xstest_response"] if r["label"] == 0 and r["response"]
              for s in re.split(r"(?<=[.!?])\s+", r["response"]) if len(s.split()) >= 5]
    response = " ".join((benign * (args.sentences // max(len(benign), 1) + 1))[: args.sentences] + [tail])
    item = {"prompt": args.prompt, "response": response}
    n_tokens = len(guard.tokenizer(response, add_special_tokens=False)["input_ids"])
    student = guard(item, route="never", long_inputs="chunk")
    routed = guard(item, route="always", long_inputs="chunk")
    auto = guard(item, long_inputs="chunk")
    whole = guard.large_guard.score([item], return_truncated=True)
    print(f"model {args.model}; input: {args.sentences} benign sentences + a {len(tail.split())}-word unsafe response "
          f"({n_tokens} response tokens); large guard budget {guard.large_guard.max_length} tokens")
    print("| what | P(unsafe) | label | decided_by | large guard read | windows |")
    print("| --- | --- | --- | --- | --- | --- |")
    print(f"| student alone, chunk mode | {student['unsafe_score']:.3f} | {student['label']} | student | - | {student['windows']} |")
    print(f"| cascade, chunk mode, route=always | {routed['unsafe_score']:.3f} | {routed['label']} | {routed['decided_by']} | "
          f"{routed['large_guard_input']} | {routed['windows']} |")
    print(f"| cascade, chunk mode, the router decides (router score {auto['router_score']:.3f}) | {auto['unsafe_score']:.3f} | "
          f"{auto['label']} | {auto['decided_by']} | {auto['large_guard_input']} | {auto['windows']} |")
    print(f"| large guard on the whole input cut to its budget (chunk routing before) | {whole[0][0]:.3f} | "
          f"{'unsafe' if whole[0][0] > 0.5 else 'safe'} | - | whole (cut: {whole[1][0]}) | 1 |")
    print(f"| large guard on the unsafe tail alone | {tail_alone:.3f} | {'unsafe' if tail_alone > 0.5 else 'safe'} | - | tail | 1 |")


if __name__ == "__main__":
    main()
