"""`saferoute evaluate`: a SafeRoute model (student + router + its large guard) or a single guard on
the six-benchmark suite (`dataset_builders.benchmarks`).

Every model scores every text once: per-text scores live in the score store
(`dataset_builders.score_store`; `--score_store`, the recipes' `{output_root}/scores`, shared with
train-guard, build-corpus and train-router; default `OUTPUT/cache`), keyed by the exact text and by
a model key that hashes the model's name, kind, settings, precision and its weight files' sizes and
mtimes, so another model never reuses stale scores. Every method of `evaluation.methods.METHODS` is
then computed from the stored scores.

    saferoute evaluate --model outputs/saferoute-guard --benchmarks all --max-per-benchmark 200
    saferoute evaluate --guard outputs/teacher --guard-kind llama_guard --output_dir outputs/eval/teacher

Standing baselines (`--baselines`, default `tfidf_logreg`, `none` to leave them out): TF-IDF +
logistic regression fitted on the human labels of the teacher and student rows of the role split
`--roles` (`evaluation/baselines.py`; `--baseline-max-rows`: a seeded sample of them), scored on
every benchmark through the score store (a rerun fits nothing) and reported as its own row (F1, precision, recall, accuracy, AUPRC) beside the
models; the report's `settings.baselines` says which rows it was fitted on.

Harm categories (`--categories`, on by default for a model with a category head): per-category AUPRC
and F1 on `openai_moderation_categories` (nulls masked) of the student, the student's binary score as
each category's score, the large guard and SafeRoute, and a confusion table of predicted against
labeled category (`evaluation/categories.py`); in report.json / report.md under `categories`, the plot
`category_auprc.png` and the model card.

Outputs: `report.json` (per benchmark and averaged, per method: f1, precision, recall, accuracy,
auprc, large_usage, routing_f1; plus throughput and the display titles), `report.md`,
`scores.parquet` (this run's per-example scores), `curves.json` and the plots `pr_curves.png`,
`f1_vs_usage.png`. A local SafeRoute model folder gets its model card (README.md) rewritten with
the results (`--model_card false` to leave it).
Python: `evaluate_saferoute(model, **settings)` and `evaluate_guard(guard, guard_kind, **settings)`
return the report dict.
"""

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
from tqdm.auto import tqdm
from transformers import AutoConfig, pipeline

from dataset_builders.benchmarks import BENCHMARKS, SOURCES, load_benchmarks, parse_benchmark_names
from dataset_builders.roles import RoleTable, mixed_sample
from dataset_builders.schema import guard_items
from dataset_builders.score_store import (LazyScorer, ScoreStore, cached_scores, category_columns, category_values, guard_scoring,
                                          guard_store, model_key)
from dataset_builders.seed_pool import load_seed_pool
from modeling_saferoute.bundled import resolve
from modeling_saferoute.guards import GUARD_KINDS, effective_max_length, load_guard, load_large_guard
from modeling_saferoute.precision import precision_record, resolve_inference_precision
from modeling_saferoute.taxonomy import Taxonomy
from saferoute.config import parse_args, recorded_arguments

from . import baselines as B
from . import categories as C
from . import metrics as M
from .methods import RoutingInputs, evaluate_methods, final_scores, method_titles, routed_mask, usage_sweeps
from .report import markdown_report, plot_category_auprc, plot_pr_curves, plot_usage_sweeps

logger = logging.getLogger(__name__)

STUDENT_COLUMNS = ("student_unsafe_score", "router_score")
VALIDATION = "validation"


@dataclass
class EvaluateArguments:
    model: Optional[str] = field(default=None, metadata={"help": "SafeRoute model folder (or Hub id); its large guard comes from its config."})
    guard: Optional[str] = field(default=None, metadata={"help": "Evaluate this single guard instead (path, Hub id or bundled: alias)."})
    guard_kind: Optional[str] = field(default=None, metadata={"help": f"Adapter kind of --guard: {sorted(GUARD_KINDS)}."})
    guard_revision: Optional[str] = field(default=None, metadata={"help": "Hub revision of --guard."})
    large_guard: Optional[str] = field(default=None, metadata={"help": "Override the SafeRoute model's large guard (path, Hub id or alias)."})
    large_guard_kind: Optional[str] = field(default=None, metadata={"help": "Adapter kind of --large-guard."})
    benchmarks: str = field(default="all", metadata={"help": "'all' or a comma-separated list of benchmark names."})
    benchmark_source: str = field(default="offline", metadata={"help": f"Where the benchmarks come from: {list(SOURCES)}."})
    max_per_benchmark: Optional[int] = field(default=None, metadata={"help": "Stratified, seeded subsample of at most N examples per benchmark."})
    seed: int = field(default=0, metadata={"help": "Seed of the subsamples."})
    output_dir: str = field(default="{output_root}/eval", metadata={"help": "Output folder (report, cache, plots)."})
    threshold: float = field(default=0.5, metadata={"help": "P(unsafe) above this is 'unsafe'."})
    router_threshold: Optional[float] = field(default=None, metadata={"help": "Router threshold of the SafeRoute method (default: the model's)."})
    entropy_threshold: float = field(default=0.5, metadata={"help": "Entropy baselines route when the student's binary entropy (bits, as in SafeRoute's code) is above this."})
    random_seeds: int = field(default=5, metadata={"help": "Seeds of the random-routing baselines."})
    validation: str = field(default="roles", metadata={"help": "Rows that fit the temperature and the budget threshold: 'roles' (the validation rows of --roles, never trained on), a .jsonl/.parquet file, or 'none'."})
    roles: str = field(default="{output_root}/roles", metadata={"help": "The role split whose validation rows --validation roles reads (and whose teacher and student rows the baselines fit on)."})
    seed_pool: str = field(default="offline", metadata={"help": "The pool the role split was made from."})
    baselines: str = field(default="tfidf_logreg", metadata={"help": f"Standing baselines reported as rows of their own, fitted on the human labels of the teacher and student rows of --roles: a comma-separated list of {list(B.BASELINES)}, or 'none'."})
    baseline_max_rows: Optional[int] = field(default=None, metadata={"help": "Fit the baselines on at most this many of those rows (a seeded per-source sample; default all)."})
    max_validation: Optional[int] = field(default=None, metadata={"help": "At most this many validation rows (stratified per source)."})
    large_budget: Optional[float] = field(default=None, metadata={"help": "Choose the budget row's router threshold here, on the validation rows (usage <= this share), instead of reading the one train-router chose on its threshold split (the model's config)."})
    batch_size: int = field(default=32, metadata={"help": "Batch size of the student and of the guards (unless the model's config sets one)."})
    device: Optional[str] = field(default=None, metadata={"help": "Device (default: cuda when available, else cpu)."})
    precision: str = field(default="auto", metadata={"help": "Precision of the student, the large guard and --guard: 'auto' (bf16 where the device multiplies it natively; float32 elsewhere), 'bf16' or 'float32'."})
    dtype: Optional[str] = field(default=None, metadata={"help": "Weight dtype of the large guard / --guard (default: its config's)."})
    max_length: Optional[int] = field(default=None, metadata={"help": "Token budget of the large guard / --guard (default: the SafeRoute config's, else the guard's own)."})
    plots: bool = field(default=True, metadata={"help": "Write the PNG plots."})
    recompute: bool = field(default=False, metadata={"help": "Ignore (and overwrite) stored scores."})
    score_store: Optional[str] = field(default=None, metadata={"help": "Folder of the score store shared by the stages (recipes: {output_root}/scores); default <output_dir>/cache."})
    model_card: bool = field(default=True, metadata={"help": "Rewrite the README.md of a local SafeRoute --model folder with these results."})
    categories: bool = field(default=True, metadata={"help": "Evaluate the harm categories on openai_moderation_categories (per-category AUPRC / F1, nulls masked) when the model (or --guard) has a category head."})
    max_category_rows: Optional[int] = field(default=None, metadata={"help": "At most this many rows of openai_moderation_categories (stratified, seeded); default all 1,680."})


# -- scorers ----------------------------------------------------------------------------------------
def student_scorer(model, batch_size, device, precision="auto", taxonomy=None):
    """Student P(unsafe) and router score from the SafeRoute pipeline with route="never" (and, with
    the model's `taxonomy`, its category scores, `categories.columns`)."""

    def load():
        import torch

        pipe = pipeline("text-classification", model=model, trust_remote_code=True,
                        device=device or ("cuda" if torch.cuda.is_available() else "cpu"), autocast_dtype=precision)

        def score(items):
            out = {c: [] for c in STUDENT_COLUMNS}
            results = []
            chunk = batch_size * 4
            for start in tqdm(range(0, len(items), chunk), desc="student + router", unit="chunk"):
                for result in pipe(items[start : start + chunk], batch_size=batch_size, route="never"):
                    out["student_unsafe_score"].append(float(result["student_unsafe_score"]))
                    out["router_score"].append(float(result["router_score"]))
                    results.append(result.get("category_scores"))
            return {**out, **(category_values(results, taxonomy) if taxonomy is not None else {})}

        return score

    return LazyScorer(load)


def guard_scorer(name_or_path, kind, batch_size, taxonomy=None, **load_kwargs):
    """P(unsafe) from `modeling_saferoute.guards.load_guard` (the one guard-scoring implementation),
    and with a `taxonomy`, the guard's category scores in it (NaN for a guard without categories)."""
    extra = {"taxonomy": taxonomy} if taxonomy is not None else {}
    return LazyScorer(lambda: guard_scoring(load_guard(name_or_path, kind, **load_kwargs, **extra), batch_size, taxonomy))


def large_guard_scorer(reference, taxonomy=None, warnings=None, **overrides):
    """The same from a large-guard reference (`guards.load_large_guard`, the one reader of it). With a
    `taxonomy`, a guard that cannot read categories scores P(unsafe) alone (its category columns NaN,
    so SafeRoute keeps the student's categories), with a report warning."""

    def load():
        guard = load_large_guard(reference, **overrides, **({"taxonomy": taxonomy} if taxonomy is not None else {}))
        if taxonomy is not None and guard.taxonomy is None and warnings is not None:
            warnings.append(f"The large guard {reference.get('name_or_path')!r} reads no categories; its category scores are left out.")
        return guard_scoring(guard, None, taxonomy)

    return LazyScorer(load)


# -- evaluation -------------------------------------------------------------------------------------
def _throughput(n, seconds):
    return {"examples": int(n), "seconds": float(seconds), "examples_per_second": float(n / seconds) if seconds > 0 else None}


def _average(per_benchmark, metrics):
    """Mean over benchmarks of each metric of each method; a seeded method's std is over its per-seed averages."""
    methods = next(iter(per_benchmark.values())).keys()
    out = {}
    for method in methods:  # a baseline row has no routing metrics
        out[method] = {m: float(np.mean([b[method][m] for b in per_benchmark.values()])) for m in metrics
                       if all(m in b[method] for b in per_benchmark.values())}
        if "per_seed" in next(iter(per_benchmark.values()))[method]:
            seeds = np.array([[b[method]["per_seed"][m] for b in per_benchmark.values()] for m in metrics])
            out[method]["std"] = {m: float(np.std(seeds[i].mean(axis=0))) for i, m in enumerate(metrics)}
    return out


def _average_throughput(per_benchmark):
    systems = next(iter(per_benchmark.values())).keys()
    return {
        s: _throughput(sum(b[s]["examples"] for b in per_benchmark.values()), sum(b[s]["seconds"] for b in per_benchmark.values()))
        for s in systems
    }


def _store_root(args):
    return args.score_store or str(Path(args.output_dir) / "cache")


def _device(args):
    import torch

    return args.device or ("cuda" if torch.cuda.is_available() else "cpu")


def _check(args):
    if bool(args.model) == bool(args.guard):
        raise ValueError("Pass exactly one of --model (a SafeRoute folder) and --guard (a single guard).")
    if args.guard and args.guard_kind not in GUARD_KINDS:
        raise ValueError(f"--guard-kind must be one of {sorted(GUARD_KINDS)}, got {args.guard_kind!r}.")
    if args.large_guard and args.large_guard_kind not in GUARD_KINDS:
        raise ValueError(f"--large-guard-kind must be one of {sorted(GUARD_KINDS)}, got {args.large_guard_kind!r}.")
    if args.max_per_benchmark is not None and args.max_per_benchmark < 1:
        raise ValueError(f"--max-per-benchmark must be >= 1, got {args.max_per_benchmark}.")
    if args.large_budget is not None and not 0.0 <= args.large_budget <= 1.0:
        raise ValueError(f"--large-budget must be in [0, 1], got {args.large_budget}.")
    if args.large_budget is not None and (args.guard or args.validation == "none"):
        raise ValueError("--large-budget needs a SafeRoute --model and a validation split (--validation).")
    if args.random_seeds < 1:
        raise ValueError(f"--random-seeds must be >= 1, got {args.random_seeds}.")
    B.parse_baselines(args.baselines)
    if args.baseline_max_rows is not None and args.baseline_max_rows < 2:
        raise ValueError(f"--baseline-max-rows must be >= 2 (a row of each class), got {args.baseline_max_rows}.")


def _large_guard_reference(args, config):
    """The SafeRoute model's large-guard reference (`--large-guard` replaces the guard, `--dtype` and
    `--max-length` its settings), every setting kept (backend and its options included), with the
    token budget it will really score with: what the routed pipeline reads, and the cache key."""
    ref = dict(getattr(config, "large_guard", None) or {})
    if args.large_guard:
        ref = {"name_or_path": args.large_guard, "kind": args.large_guard_kind}
    if not ref.get("name_or_path") or not ref.get("kind"):
        raise ValueError(
            f"The SafeRoute model {args.model!r} has no large guard configured (config.large_guard); "
            "pass --large-guard and --large-guard-kind."
        )
    if args.max_length and ref.get("max_length") and args.max_length != ref["max_length"]:
        logger.warning("--max-length %d replaces the large-guard reference's %d: the large guard is scored unlike the "
                       "routed pipeline (and the router's labels).", args.max_length, ref["max_length"])
    for key, value in (("dtype", args.dtype), ("max_length", args.max_length)):
        if value:
            ref[key] = value
    max_length = ref.get("max_length") or (ref.get("options") or {}).get("max_length")
    ref["max_length"] = effective_max_length(ref["name_or_path"], max_length, ref.get("revision"), ref.get("backend", "transformers"))
    return ref


def _validation_split(args):
    if args.validation == "roles":
        rows = RoleTable(args.roles).rows(load_seed_pool(args.seed_pool), "validation")
    else:
        rows = load_seed_pool(args.validation)
    return mixed_sample(rows, args.max_validation, None, args.seed)


def _baseline_stores(args):
    """{name: (score store, lazy scorer)} of the --baselines, made before any model scores (a missing
    role split fails the run at once, not after the models)."""
    names = B.parse_baselines(args.baselines)
    if not names:
        return {}
    try:
        roles = RoleTable(args.roles)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{e} --baselines {','.join(names)} fits on the teacher and student rows of the role split "
                                "--roles; pass the split's folder as --roles, or --baselines none.") from e
    stores = {}
    for name in names:
        store = B.baseline_store(_store_root(args), name, roles, args.seed_pool, args.baseline_max_rows, args.seed, args.recompute)
        stores[name] = (store, B.baseline_scorer(store, name, roles, args.seed_pool, args.baseline_max_rows, args.seed))
    return stores


def _evaluate_baselines(args, datasets, run, stores):
    """Each baseline's row on every benchmark (`metrics.classification_metrics` of its stored
    P(unsafe)), its PR curve and its column of scores.parquet. Returns (settings, scored)."""
    for name, (store, scorer) in stores.items():
        for bench, ds in datasets.items():
            scores = cached_scores(store, scorer, guard_items(ds), f"{bench} ({name})")["unsafe_score"].to_numpy(dtype=float)
            labels = np.asarray(ds["label"])
            with M.collect_warnings(run.warnings, f"{bench}/{name}"):
                run.per_method[bench][name] = M.classification_metrics(labels, scores, args.threshold)
            run.curves["pr"][bench][name] = (*M.pr_curve(labels, scores), run.per_method[bench][name]["auprc"])
            run.frames[bench][f"{name}_unsafe_score"] = scores
    return {name: B.fit_record(store) for name, (store, _) in stores.items()}, {name: store.scored for name, (store, _) in stores.items()}


def _write_outputs(output, report, scores, curves, plots, category_scores=None):
    output.mkdir(parents=True, exist_ok=True)
    scores.to_parquet(output / "scores.parquet", index=False)
    if category_scores is not None:
        category_scores.to_parquet(output / "category_scores.parquet", index=False)
        if plots:
            plot_category_auprc(report["categories"], output / "category_auprc.png")
    (output / "curves.json").write_text(json.dumps(curves["sweeps"]))
    if plots:
        plot_pr_curves(curves["pr"], output / "pr_curves.png")
        if curves["sweeps"]:
            plot_usage_sweeps(curves["sweeps"], curves["points"], output / "f1_vs_usage.png")
    (output / "report.json").write_text(json.dumps(report, indent=2))
    (output / "report.md").write_text(markdown_report(report))


class _Run:
    """What one evaluation collects per benchmark: metrics, throughput, curves, per-example frames."""

    def __init__(self):
        self.per_method, self.throughput, self.frames, self.warnings = {}, {}, {}, []
        self.curves = {"pr": {}, "sweeps": {}, "points": {}}


def _evaluate_guard(args, datasets, run):
    """Guard mode: one guard's scores on every benchmark. Returns (models, metrics, scored)."""
    max_length = effective_max_length(args.guard, args.max_length, args.guard_revision)  # what it scores with, in the key
    cache = guard_store(_store_root(args), args.guard, args.guard_kind, args.precision, _device(args), args.recompute,
                        revision=args.guard_revision, dtype=args.dtype, max_length=max_length)
    scorer = guard_scorer(args.guard, args.guard_kind, args.batch_size, revision=args.guard_revision,
                          dtype=args.dtype, device=args.device, max_length=max_length, autocast_dtype=args.precision)
    for name, ds in datasets.items():
        scores = cached_scores(cache, scorer, guard_items(ds), name)
        labels = np.asarray(ds["label"])
        with M.collect_warnings(run.warnings, f"{name}/guard"):
            run.per_method[name] = {"guard": M.classification_metrics(labels, scores["unsafe_score"], args.threshold)}
        run.throughput[name] = {"guard": _throughput(len(ds), scores["seconds"].sum())}
        run.curves["pr"][name] = {"guard": (*M.pr_curve(labels, scores["unsafe_score"]), run.per_method[name]["guard"]["auprc"])}
        run.frames[name] = pd.DataFrame({"benchmark": name, "id": ds["id"], "label": labels, "level": ds["level"],
                                         "unsafe_score": scores["unsafe_score"], "seconds": scores["seconds"]})
    return {"guard": cache.info}, list(M.CLASSIFICATION_METRICS), {"guard": cache.scored}


def _evaluate_saferoute(args, datasets, run, settings):
    """SafeRoute mode: the student + router and the large guard on every benchmark, every method of
    the registry, the three SafeRoute threshold rows among them. Returns (models, metrics, scored)."""
    output = Path(args.output_dir)
    config = AutoConfig.from_pretrained(resolve(args.model), trust_remote_code=True)
    router_threshold = config.router_threshold if args.router_threshold is None else args.router_threshold
    thresholds = {"fixed": 0.5, **(getattr(config, "router_thresholds", None) or {})}
    choice = getattr(config, "router_threshold_choice", None) if args.router_threshold is None else "--router_threshold"
    large_ref = _large_guard_reference(args, config)
    s_key, s_info = model_key("saferoute", args.model, "saferoute", max_length=getattr(config, "max_input_length", None),
                              precision=resolve_inference_precision(args.precision, _device(args), warn=False))  # the student may run in int8
    s_cache = ScoreStore(_store_root(args), s_key, s_info, STUDENT_COLUMNS, args.recompute)
    l_cache = guard_store(_store_root(args), large_ref["name_or_path"], large_ref["kind"], args.precision, _device(args), args.recompute,
                          **_large_settings(large_ref))
    s_scorer = student_scorer(args.model, args.batch_size, args.device, args.precision)
    l_scorer = large_guard_scorer(large_ref, device=args.device, autocast_dtype=args.precision,
                                  batch_size=None if large_ref.get("batch_size") else args.batch_size)
    temperature, validation = 1.0, None
    if args.validation != "none":
        val = _validation_split(args)
        v = cached_scores(s_cache, s_scorer, guard_items(val), VALIDATION)
        with M.collect_warnings(run.warnings, "validation/temperature"):
            temperature = M.fit_temperature(val["label"], v["student_unsafe_score"])
        validation = {"labels": np.asarray(val["label"]), "router": v["router_score"].to_numpy()}
    if args.large_budget is not None:
        thresholds["budget"] = M.budget_threshold(validation["router"], args.large_budget)
    settings.update(router_threshold=router_threshold, router_threshold_choice=choice, router_thresholds=thresholds,
                    router_thresholds_from="model" if args.large_budget is None else f"model; budget {args.large_budget} on the validation rows",
                    entropy_threshold=args.entropy_threshold,
                    entropy_unit=M.ENTROPY_UNIT, temperature=temperature, random_seeds=args.random_seeds,
                    validation=args.validation if validation is not None else None,
                    validation_examples=len(validation["labels"]) if validation is not None else 0)
    for name, ds in datasets.items():
        s = cached_scores(s_cache, s_scorer, guard_items(ds), name)
        lg = cached_scores(l_cache, l_scorer, guard_items(ds), name)
        inputs = RoutingInputs(np.asarray(ds["label"]), s["student_unsafe_score"].to_numpy(), lg["unsafe_score"].to_numpy(),
                               s["router_score"].to_numpy(), router_threshold, args.threshold, args.entropy_threshold,
                               temperature, args.random_seeds, thresholds, name=name)
        results = evaluate_methods(inputs, sink=run.warnings, where=f"{name}/")
        run.per_method[name] = results
        routed = routed_mask("saferoute", inputs)
        run.throughput[name] = {
            "student": _throughput(len(ds), s["seconds"].sum()),
            "large_guard": _throughput(len(ds), lg["seconds"].sum()),
            "saferoute": _throughput(len(ds), s["seconds"].sum() + lg["seconds"][routed].sum()),
        }
        run.curves["pr"][name] = {
            method: (*M.pr_curve(inputs.labels, final_scores(method, inputs)), results[method]["auprc"])
            for method in ("student", "large", "saferoute")
        }
        run.curves["sweeps"][name] = usage_sweeps(inputs)
        run.curves["points"][name] = {m: (results[m]["large_usage"], results[m]["f1"]) for m in ("student", "large", "saferoute", "oracle")}
        run.frames[name] = pd.DataFrame({
            "benchmark": name, "id": ds["id"], "label": inputs.labels, "level": ds["level"],
            "student_unsafe_score": inputs.student, "router_score": inputs.router, "large_unsafe_score": inputs.large,
            "student_seconds": s["seconds"], "large_seconds": lg["seconds"],
        })
    if len(datasets) > 1:
        _average_curves(run.curves, list(datasets))
    models = {"saferoute": s_info, "large_guard": l_cache.info}
    return models, list(M.METRICS), {"student": s_cache.scored, "large_guard": l_cache.scored}


# -- harm categories ------------------------------------------------------------------------------------
def _category_run(args, taxonomy, thresholds, stores, router_threshold=None, warnings=None):
    """The `categories` report entry and its per-row frame, from `stores` ({system: (score store,
    scorer)} of "student" and "large_guard", or "guard"); (None, None) when the benchmark does not
    label this taxonomy."""
    rows, labeled = C.benchmark(taxonomy, args.max_category_rows, args.seed)
    if rows is None:
        logger.info("The taxonomy %r maps none of %s's labels: no category evaluation.", taxonomy.name, C.BENCHMARK)
        return None, None
    frames = {system: cached_scores(store, scorer, guard_items(rows), C.BENCHMARK) for system, (store, scorer) in stores.items()}
    targets = np.asarray(rows["category_targets"], dtype=float)
    systems, frame = {}, pd.DataFrame({"id": rows["id"], "label": rows["label"]})
    for system, scores in frames.items():
        unsafe = scores["student_unsafe_score" if system == "student" else "unsafe_score"].to_numpy(dtype=float)
        cats = C.frame_scores(scores, taxonomy)
        systems[system] = (cats, unsafe)
        if system != "large_guard":  # the baseline the category head must beat: P(unsafe) as every category's score
            systems[f"{system}_binary"] = (np.repeat(unsafe[:, None], len(taxonomy), axis=1), unsafe)
        frame[f"{system}_unsafe_score"] = unsafe
        for j, c in enumerate(taxonomy.names):
            frame[f"{system}:{c}"] = cats[:, j]
    routed_share = None
    if "large_guard" in frames:
        routed = frames["student"]["router_score"].to_numpy(dtype=float) > router_threshold
        (student, s_unsafe), (large, l_unsafe) = systems["student"], systems["large_guard"]
        read = routed & ~np.isnan(large).all(axis=1)  # a large guard without categories leaves the student's
        systems["saferoute"] = (np.where(read[:, None], large, student), np.where(routed, l_unsafe, s_unsafe))
        frame["routed"], routed_share = routed, float(routed.mean())
    with M.collect_warnings(warnings if warnings is not None else [], "categories"):
        result = C.evaluate_systems(systems, targets, rows["label"], taxonomy, labeled, thresholds, args.threshold)
    return C.report_section(rows, labeled, taxonomy, result, thresholds, args.threshold, routed_share), frame


def _large_settings(reference):
    """A large-guard reference's scoring settings (options and the rest, name and kind aside): its score-store key."""
    return {**(reference.get("options") or {}), **{k: v for k, v in reference.items() if k not in ("name_or_path", "kind", "options")}}


def _saferoute_categories(args, config, large, router_threshold, warnings):
    """Per-category evaluation of a SafeRoute model with a category head (student, large guard, SafeRoute)."""
    if not args.categories or not getattr(config, "taxonomy", None):
        return None, None
    taxonomy = Taxonomy.load(config.taxonomy)
    s_key, s_info = model_key("saferoute-categories", args.model, "saferoute", max_length=getattr(config, "max_input_length", None),
                              precision=resolve_inference_precision(args.precision, _device(args), warn=False), taxonomy=taxonomy.name)
    stores = {
        "student": (ScoreStore(_store_root(args), s_key, s_info, (*STUDENT_COLUMNS, *category_columns(taxonomy)), args.recompute),
                    student_scorer(args.model, args.batch_size, args.device, args.precision, taxonomy)),
        "large_guard": (guard_store(_store_root(args), large["name_or_path"], large["kind"], args.precision, _device(args), args.recompute,
                                    taxonomy=taxonomy, **_large_settings(large)),
                        large_guard_scorer(large, taxonomy=taxonomy, warnings=warnings, device=args.device, autocast_dtype=args.precision,
                                           batch_size=None if large.get("batch_size") else args.batch_size)),
    }
    return _category_run(args, taxonomy, config.category_thresholds, stores, router_threshold, warnings)


def _guard_categories(args, warnings):
    """Per-category evaluation of a single --guard: its category head, or a Llama Guard's S1-S14 read
    into the project's taxonomy (`categories.guard_taxonomy`)."""
    from dataset_builders.categories import guard_taxonomy

    if not args.categories:
        return None, None
    taxonomy = guard_taxonomy(args.guard, args.guard_kind, args.guard_revision)
    if taxonomy is None:
        return None, None
    store = guard_store(_store_root(args), args.guard, args.guard_kind, args.precision, _device(args), args.recompute, taxonomy=taxonomy,
                        revision=args.guard_revision, dtype=args.dtype, max_length=args.max_length)
    scorer = guard_scorer(args.guard, args.guard_kind, args.batch_size, taxonomy=taxonomy, revision=args.guard_revision,
                          dtype=args.dtype, device=args.device, max_length=args.max_length, autocast_dtype=args.precision)
    return _category_run(args, taxonomy, taxonomy.thresholds, {"guard": (store, scorer)}, warnings=warnings)


def _average_curves(curves, names):
    curves["sweeps"]["average"] = {
        method: {"usage": np.mean([curves["sweeps"][n][method]["usage"] for n in names], axis=0).tolist(),
                 "f1": np.mean([curves["sweeps"][n][method]["f1"] for n in names], axis=0).tolist()}
        for method in curves["sweeps"][names[0]]
    }
    curves["points"]["average"] = {
        m: tuple(np.mean([curves["points"][n][m] for n in names], axis=0).tolist()) for m in curves["points"][names[0]]
    }


def report_titles(benchmarks, methods):
    """The display names a report carries for its readers (markdown, plots, model card)."""
    return {"benchmarks": {n: BENCHMARKS[n]._asdict() for n in benchmarks if n in BENCHMARKS},
            "methods": {**method_titles(methods), **({"guard": "guard"} if "guard" in methods else {}),
                        **{name: b.title for name, b in B.BASELINES.items() if name in methods}}}


def run_evaluation(args: EvaluateArguments):
    """Evaluate and write the outputs; returns the report dict."""
    _check(args)
    output = Path(args.output_dir)
    names = parse_benchmark_names(args.benchmarks)
    datasets = load_benchmarks(names, args.benchmark_source, args.max_per_benchmark, args.seed)
    settings = {"benchmarks": names, "benchmark_source": args.benchmark_source, "max_per_benchmark": args.max_per_benchmark,
                "seed": args.seed, "threshold": args.threshold, "precision": precision_record(args.precision, _device(args))}
    run = _Run()
    baselines = _baseline_stores(args)
    if args.guard:
        models, metrics, scored = _evaluate_guard(args, datasets, run)
        categories, category_frame = _guard_categories(args, run.warnings)
    else:
        models, metrics, scored = _evaluate_saferoute(args, datasets, run, settings)
        config = AutoConfig.from_pretrained(resolve(args.model), trust_remote_code=True)
        categories, category_frame = _saferoute_categories(args, config, _large_guard_reference(args, config),
                                                           settings["router_threshold"], run.warnings)
    if baselines:
        settings["baselines"], baseline_scored = _evaluate_baselines(args, datasets, run, baselines)
        scored = {**scored, **baseline_scored}
    methods = list(next(iter(run.per_method.values())))
    report = {
        "mode": "guard" if args.guard else "saferoute",
        "models": models,
        "settings": settings,
        "metrics": metrics,
        "benchmarks": {
            name: {"n": len(ds), "positives": int(sum(ds["label"])), "methods": run.per_method[name], "throughput": run.throughput[name]}
            for name, ds in datasets.items()
        },
        "average": {"methods": _average(run.per_method, metrics), "throughput": _average_throughput(run.throughput)},
        "titles": report_titles(names, methods),
        "arguments": recorded_arguments(args),
        "scored_this_run": scored,
        "warnings": run.warnings,
        "categories": categories,
    }
    _write_outputs(output, report, pd.concat(run.frames.values(), ignore_index=True), run.curves, args.plots, category_frame)
    if args.model and args.model_card and (Path(args.model) / "config.json").is_file():
        from model_cards import render_model_card

        render_model_card(args.model, report=report).save(Path(args.model) / "README.md")
    return report


def evaluate_saferoute(model, **settings):
    """Evaluate a SafeRoute model folder (and its large guard); `settings` are `EvaluateArguments`
    fields. Returns the report dict (also written to `settings["output"]`)."""
    return run_evaluation(EvaluateArguments(model=str(model), **settings))


def evaluate_guard(guard, guard_kind, **settings):
    """Evaluate one guard; `settings` are `EvaluateArguments` fields. Returns the report dict."""
    return run_evaluation(EvaluateArguments(guard=str(guard), guard_kind=guard_kind, **settings))


def summary(report):
    """A short text summary: average F1 and usage per method."""
    lines = []
    for method, m in report["average"]["methods"].items():
        usage = f"  usage {m['large_usage']:.3f}" if "large_usage" in m else ""
        lines.append(f"  {method:<12} F1 {m['f1']:.4f}  AUPRC {m['auprc']:.4f}{usage}")
    for system, t in report["average"]["throughput"].items():
        eps = t["examples_per_second"]
        lines.append(f"  {system:<12} {eps:.1f} examples/s" if eps else f"  {system:<12} (no timing)")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args([EvaluateArguments], argv, section="evaluate")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    report = run_evaluation(args)
    print(f"Wrote {Path(args.output_dir) / 'report.md'} (averages over {len(report['benchmarks'])} benchmarks):")
    print(summary(report))


if __name__ == "__main__":
    main()
