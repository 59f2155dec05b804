"""What the category head costs the student: the same SafeRoute pipeline with and without its
multi-label category head, on the benchmark suite's real length distribution, runs alternated so
that the machine's noise hits both alike (read the ratio). `bench/bench_student.py` prints it too.

    python bench/bench_categories.py [--model SAFEROUTE_DIR] [--n 400] [--repeats 5]
"""

import copy
import statistics
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
from modeling_saferoute.taxonomy import Taxonomy
from saferoute.config import parse_args


@dataclass
class BenchCategoriesArguments:
    model: Optional[str] = field(default=None, metadata={"help": "SafeRoute model folder (default: package bundled:minilm-l6 into a temp folder)."})
    n: int = field(default=400, metadata={"help": "Examples, stratified over the six benchmarks."})
    repeats: int = field(default=5, metadata={"help": "Timed runs of each variant, alternated."})
    autocast_dtype: str = field(default="auto", metadata={"help": "The pipeline's precision ('auto': bf16 where native)."})


def variants(pipe):
    """(pipeline without a category head, pipeline with one) over the same student and router; a model
    without a head gets a seeded 13-category one (the OpenAI moderation taxonomy)."""
    def build(with_head):
        model = copy.deepcopy(pipe.model)
        if with_head and model.category_head is None:
            taxonomy = Taxonomy.default()
            torch.manual_seed(0)
            model.category_head = torch.nn.Linear(model.student.get_submodule(model._head_name).in_features, len(taxonomy))  # the pooled size
            model.config.taxonomy, model.config.category_thresholds = taxonomy.to_dict(), taxonomy.thresholds
        elif not with_head:
            model.category_head, model.config.taxonomy, model.config.category_thresholds = None, None, None
        return pipeline("text-classification", model=model, tokenizer=pipe.tokenizer, pipeline_class=type(pipe))

    return build(False), build(True)


def category_head_cost(pipe, items, repeats=5, autocast_dtype="auto"):
    """{"without": median seconds, "with": median seconds, "ratio": with / without, "categories": K}."""
    without, with_head = variants(pipe)
    for p in (without, with_head):
        p(items[:32], route="never", autocast_dtype=autocast_dtype)  # warm-up
    times = {"without": [], "with": []}
    for _ in range(repeats):
        for name, p in (("without", without), ("with", with_head)):
            start = time.perf_counter()
            p(items, route="never", autocast_dtype=autocast_dtype)
            times[name].append(time.perf_counter() - start)
    median = {k: statistics.median(v) for k, v in times.items()}
    return {**median, "ratio": median["with"] / median["without"], "categories": with_head.model.category_head.out_features,
            "per_example_ms": {k: 1000 * v / len(items) for k, v in median.items()}}


def main(argv=None):
    args = parse_args([BenchCategoriesArguments], argv)
    model_dir = args.model
    if model_dir is None:
        from publishing.package import PackageArguments, package

        model_dir = str(package(PackageArguments(student="bundled:minilm-l6", output_dir=str(Path(tempfile.mkdtemp()) / "m"), model_card=False)))
    data = load_benchmarks("all", max_per_benchmark=max(1, args.n // 6), seed=0)
    items = [it for ds in data.values() for it in guard_items(ds)]
    items = [items[i] for i in np.random.default_rng(0).permutation(len(items))]
    pipe = pipeline("text-classification", model=model_dir, trust_remote_code=True)
    cost = category_head_cost(pipe, items, args.repeats, args.autocast_dtype)
    print(f"{len(items)} examples, {args.repeats} alternated runs each, autocast {args.autocast_dtype}, {torch.get_num_threads()} threads")
    print("| student pipeline (route='never') | ms / example (median) |")
    print("| --- | --- |")
    print(f"| without the category head | {cost['per_example_ms']['without']:.3f} |")
    print(f"| with a {cost['categories']}-category head | {cost['per_example_ms']['with']:.3f} |")
    print(f"category head cost: {100 * (cost['ratio'] - 1):+.1f}% student time per example (target <= +5%)")
    return cost


if __name__ == "__main__":
    main()
