"""`saferoute train-router`: train the SafeRoute router on the student's own features, then package.

Router label of an example with human label y: t = (student wrong) & (large guard right), both at
threshold 0.5. The examples are the seed rows `saferoute distill` held out (recorded in the
student's `training_info.json`), so the student's errors look like its errors on new inputs.
One student forward per example gives both its P(unsafe) and the feature the router reads
(computed once: the encoder is frozen). The router (d -> 512 -> 512 -> 1 MLP, optionally
Bayesian: mean-field Gaussian weights, prior sigma 0.1, loss BCE + 0.01 KL, posterior mean
exported) trains with BCE, a class-balanced sampler, Adam, warm-up + linear decay, batch 512.
The routing threshold is chosen on a stratified validation split (best F1 of the routed system,
or a large-guard budget), and the result is written as a packaged SafeRoute model folder.

`--paraphrases N` augments the router's training split (never the validation split) as the
SafeRoute paper does: an LLM (`--paraphraser`, default the bundled SmolLM2-135M-Instruct; see
`training/paraphrase.py`) writes N sampled paraphrases of each distinct training prompt; a
prompt+response row keeps its response and gets the paraphrased prompt. Each paraphrase copies the
row's human label y, both guards are re-run on it (one student forward for its feature and
P(unsafe); the large guard always scores it, even where the originals reuse corpus teacher
scores) and its router label t is computed as above. Dropped paraphrases (empty, an echo of the
prompt, a refusal) are counted; the counts and the t positive rate are recorded in router_info.json.
"""

import copy
import functools
import json
import logging
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from datasets import Dataset, Value, concatenate_datasets
from safetensors.torch import save_file
from tqdm.auto import tqdm

from dataset_builders.harmaug.card import corpus_teacher
from dataset_builders.harmaug.generate import BACKENDS, load_generator
from dataset_builders.schema import first_row_per_id
from dataset_builders.seed_pool import load_seed_pool
from evaluation.methods import RoutingInputs, choose_router_threshold, evaluate_methods
from evaluation.metrics import router_label
from modeling_saferoute.guards import GUARD_KINDS, load_guard
from modeling_saferoute.inputs import encode_pairs, length_sorted_batches
from publishing.package import PackageArguments, load_student, package
from saferoute.config import parse_args

from .distill import INFO_FILE, load_corpus, stratified_split, teacher_training_ids
from .guard_data import guard_training_ids
from .paraphrase import paraphrase
from .router import fit_router

logger = logging.getLogger(__name__)
ROUTER_INFO_FILE = "router_info.json"


@dataclass
class TrainRouterArguments:
    student: str = field(default="{output_root}/student", metadata={"help": "The distilled student folder (with training_info.json from saferoute distill)."})
    output_dir: str = field(default="{output_root}/saferoute-guard", metadata={"help": "The SafeRoute model folder to write."})
    data: str = field(default="holdout", metadata={"help": "'holdout' (the seed rows distill held out), or labeled rows the student never saw: 'offline', 'wildguardmix', a .jsonl/.parquet file."})
    corpus: Optional[str] = field(default=None, metadata={"help": "Corpus holding the hold-out rows (default: the one in the student's training_info.json)."})
    large_guard: Optional[str] = field(default=None, metadata={"help": "Large guard (local folder, Hub id or bundled: alias); default: the corpus' teacher."})
    large_guard_kind: Optional[str] = field(default=None, metadata={"help": f"Adapter kind of the large guard: {sorted(GUARD_KINDS)}."})
    large_guard_revision: Optional[str] = field(default=None, metadata={"help": "Hub revision of the large guard."})
    large_guard_dtype: Optional[str] = field(default=None, metadata={"help": "dtype the large guard loads in (e.g. bfloat16)."})
    large_guard_max_length: Optional[int] = field(default=None, metadata={"help": "Token budget of large-guard scoring (default: the adapter's)."})
    large_guard_batch_size: int = field(default=8, metadata={"help": "Batch size of large-guard scoring."})
    large_guard_scores: str = field(default="auto", metadata={"help": "'auto' (reuse the corpus' teacher unsafe_score when the large guard is that teacher), 'corpus' (always reuse) or 'rescore'."})
    bayesian: bool = field(default=False, metadata={"help": "Bayesian router (mean-field Gaussian weights; the posterior mean is exported)."})
    prior_sigma: float = field(default=0.1, metadata={"help": "Prior sigma of the Bayesian router."})
    posterior_sigma_init: Optional[float] = field(default=1e-3, metadata={"help": "Initial posterior sigma of the Bayesian router (torchbnn starts at the prior sigma: on 1.5k rows that left the router near chance, val AUPRC .41 vs .78)."})
    kl_weight: float = field(default=0.01, metadata={"help": "Weight of the (per-parameter mean) KL term of the Bayesian router."})
    learning_rate: float = field(default=1e-3, metadata={"help": "Adam learning rate."})
    batch_size: int = field(default=512, metadata={"help": "Router batch size (balanced sampling with replacement)."})
    max_steps: int = field(default=500, metadata={"help": "Router optimizer steps."})
    warmup_steps: float = field(default=100, metadata={"help": "Warm-up steps (int) or ratio (< 1); above a fifth of the run it becomes a 0.1 ratio."})
    eval_steps: int = field(default=25, metadata={"help": "Validate every N steps; the best router (validation AUPRC of t) is kept."})
    validation_size: float = field(default=0.1, metadata={"help": "Stratified validation share (threshold choice, best router)."})
    large_budget: Optional[float] = field(default=None, metadata={"help": "Choose the threshold so that at most this share of validation inputs goes to the large guard (else: best routed-system F1)."})
    router_threshold: Optional[float] = field(default=None, metadata={"help": "Fixed routing threshold (skips the choice on validation)."})
    threshold: float = field(default=0.5, metadata={"help": "P(unsafe) above this is 'unsafe' (student, large guard, packaged model)."})
    max_length: Optional[int] = field(default=None, metadata={"help": "Student token budget (default: the one it was distilled with)."})
    feature_batch_size: int = field(default=64, metadata={"help": "Batch size of the student forward that computes the features."})
    unseen_pool: Optional[str] = field(default=None, metadata={"help": "With --data holdout, also use the rows of this seed pool ('offline', 'wildguardmix', a file) that are not in the corpus: the student never trained on them (the large guard scores them)."})
    max_unseen_rows: Optional[int] = field(default=None, metadata={"help": "Stratified, seeded sample of at most this many --unseen-pool (or --data pool) rows."})
    paraphrases: int = field(default=0, metadata={"help": "LLM paraphrases per training-split example (labels copied, both guards re-run on them); 0: none."})
    paraphraser: str = field(default="bundled:smollm2-135m-instruct", metadata={"help": "Paraphrasing LLM with a chat template (path, Hub id or bundled: alias)."})
    paraphrase_backend: str = field(default="transformers", metadata={"help": "Generation backend of the paraphraser: 'transformers' or 'vllm' (optional dependency)."})
    paraphrase_max_new_tokens: int = field(default=64, metadata={"help": "Token budget of one paraphrase (longer ones are cut)."})
    paraphrase_temperature: float = field(default=0.9, metadata={"help": "Sampling temperature of the paraphraser (0: greedy, every copy the same)."})
    paraphrase_top_p: float = field(default=0.95, metadata={"help": "Nucleus sampling top-p of the paraphraser."})
    paraphrase_batch_size: int = field(default=16, metadata={"help": "Batch size of paraphrase generation."})
    seed: int = field(default=0, metadata={"help": "Seed of the split, the sampler and the initialisation."})
    force: bool = field(default=False, metadata={"help": "Retrain even when the output folder already holds a trained router."})

    def __post_init__(self):
        if self.large_guard_scores not in ("auto", "corpus", "rescore"):
            raise ValueError(f"--large-guard-scores must be 'auto', 'corpus' or 'rescore', got {self.large_guard_scores!r}.")
        if self.large_guard_kind is not None and self.large_guard_kind not in GUARD_KINDS:
            raise ValueError(f"--large-guard-kind must be one of {sorted(GUARD_KINDS)}, got {self.large_guard_kind!r}.")
        if self.large_budget is not None and not 0 < self.large_budget <= 1:
            raise ValueError(f"--large-budget must be in (0, 1], got {self.large_budget}.")
        if self.paraphrases < 0:
            raise ValueError(f"--paraphrases must be >= 0, got {self.paraphrases}.")
        if self.paraphrase_backend not in BACKENDS:
            raise ValueError(f"--paraphrase-backend must be one of {sorted(BACKENDS)}, got {self.paraphrase_backend!r}.")


# -- features, rows and large-guard scores ------------------------------------------------------
def student_features(model, tokenizer, items, max_length, batch_size=64):
    """(features (N, d) float32, P(unsafe) (N,)) from one student forward per item."""
    encodings, _ = encode_pairs(tokenizer, items, max_length)
    batches = length_sorted_batches([len(e["input_ids"]) for e in encodings], batch_size)
    features, probs = [None] * len(items), [None] * len(items)
    model.eval()
    with torch.inference_mode():
        for batch in tqdm(batches, desc="student features"):
            inputs = tokenizer.pad([encodings[i] for i in batch], return_tensors="pt").to(model.device)
            out = model(**inputs)
            p = torch.softmax(out.logits.float(), dim=-1)[:, 1]
            for j, i in enumerate(batch):
                features[i], probs[i] = out.features[j].float().cpu(), float(p[j])
    return torch.stack(features), np.array(probs)


def same_model(a, b):
    """Same name, or two local paths to the same folder."""
    if a is None or b is None:
        return False
    return a == b or (Path(a).exists() and Path(b).exists() and Path(a).resolve() == Path(b).resolve())


ROUTER_COLUMNS = ["id", "prompt", "response", "level", "y", "corpus_score"]


def pool_rows(name, exclude=(), max_rows=None, seed=0):
    """Seed-pool rows (ids not in `exclude`) in the router layout, optionally a stratified sample."""
    exclude = set(exclude)
    pool = first_row_per_id(load_seed_pool(name).filter(lambda i: i not in exclude, input_columns="id"))
    if max_rows and len(pool) > max_rows:
        pool = pool.select(stratified_split(pool, ("label", "level"), max_rows, seed)[1])
    pool = pool.map(lambda y: {"y": int(y), "corpus_score": None}, input_columns="label")
    return pool.cast_column("corpus_score", Value("float64")).select_columns(ROUTER_COLUMNS)


def router_data(args, info):
    """Labeled rows the student never trained on, with the corpus' teacher scores where known.

    `holdout`: the corpus seed rows distill held out, plus (with --unseen-pool) seed-pool rows that
    are not in the corpus at all. Otherwise: the rows of the `--data` seed pool / file. Rows the
    large guard trained on (its `training_ids.json`) are left out: there its errors are rarer than
    on new inputs, so t would be too rare and the router would route too much.
    """
    if args.data != "holdout":
        logger.warning("Router data %s: make sure the student never trained on it (its errors there would look too rare).", args.data)
        return pool_rows(args.data, exclude=large_guard_training_ids(args, None), max_rows=args.max_unseen_rows, seed=args.seed), None
    ids = (info.get("router_holdout") or {}).get("ids")
    if not ids:
        raise ValueError(
            f"{args.student}/{INFO_FILE} records no router hold-out: distill with --router-holdout > 0, "
            "or pass --data with labeled rows the student never saw."
        )
    corpus = args.corpus or info.get("corpus")
    full = load_corpus(corpus)
    wanted = set(ids)
    rows = first_row_per_id(full.filter(lambda i: i in wanted, input_columns="id"))
    if len(rows) != len(wanted):
        raise ValueError(f"The corpus {corpus} holds {len(rows)} of the {len(wanted)} hold-out ids recorded by distill: is it the same corpus?")
    seen_by_guard = large_guard_training_ids(args, corpus)
    if seen_by_guard:
        before = len(rows)
        rows = rows.filter(lambda i: i not in seen_by_guard, input_columns="id")
        if len(rows) < before:
            logger.info("Router data: %d of %d held-out rows left out: the large guard trained on them.", before - len(rows), before)
    rows = rows.rename_column("unsafe_score", "corpus_score").map(lambda h: {"y": int(h)}, input_columns="human_label")
    rows = rows.cast_column("corpus_score", Value("float64")).select_columns(ROUTER_COLUMNS)
    if args.unseen_pool:
        exclude = set(full["id"]) | seen_by_guard
        unseen = pool_rows(args.unseen_pool, exclude=exclude, max_rows=args.max_unseen_rows, seed=args.seed)
        logger.info("Router data: %d held-out corpus rows + %d %s rows absent from the corpus and new to the large guard.", len(rows), len(unseen), args.unseen_pool)
        rows = concatenate_datasets([rows, unseen])
    return rows, corpus


def large_guard_training_ids(args, corpus):
    """Seed-pool ids the large guard (--large-guard, else the corpus' teacher) trained on; empty when unknown."""
    if args.large_guard:
        return guard_training_ids(args.large_guard) or set()
    return (teacher_training_ids(corpus) if corpus else None) or set()


def check_large_guard(ref):
    """Raise a ValueError naming the option to pass when `ref` cannot be loaded as a guard."""
    name, kind = ref["name_or_path"], ref["kind"]
    if name is None:
        raise ValueError("No large guard: pass --large-guard and --large-guard-kind (the corpus card records no teacher).")
    if kind not in GUARD_KINDS:
        raise ValueError(f"--large-guard-kind must be one of {sorted(GUARD_KINDS)} to score with {name!r}, got {kind!r}.")


def load_large_guard(args, ref):
    """The large guard of `ref` (as `large_guard_scores` returns it), with the scoring options of `args`.
    Within one `train_router` run it is loaded once (rows, then their paraphrases)."""
    check_large_guard(ref)
    return _load_guard_once(ref["name_or_path"], ref["kind"], ref["revision"], ref["dtype"], args.large_guard_batch_size, args.large_guard_max_length)


@functools.lru_cache(maxsize=1)
def _load_guard_once(name, kind, revision, dtype, batch_size, max_length):
    return load_guard(name, kind, revision=revision, dtype=dtype, batch_size=batch_size, max_length=max_length)


def paraphrase_rows(args, rows, large_ref, model, tokenizer, max_length):
    """`--paraphrases N` rows of the router's training split: (table, features, stats).

    N paraphrases of each distinct prompt of `rows` (every row with that prompt gets them; its
    response is kept), the human label y copied, both guards re-run (student feature + P(unsafe),
    large guard P(unsafe)) and t = router_label(...). `table`: id (of the source row), copy,
    prompt, response, level, y, student_p, large_p, t; None (and features None) when every
    paraphrase was dropped.
    """
    check_large_guard(large_ref)  # before generating: the paraphrases must be scored by a model
    generator = load_generator(args.paraphraser, args.paraphrase_backend, batch_size=args.paraphrase_batch_size)
    prompts = list(dict.fromkeys(rows["prompt"]))
    texts, stats = paraphrase(
        generator, prompts, args.paraphrases, args.seed, max_new_tokens=args.paraphrase_max_new_tokens,
        temperature=args.paraphrase_temperature, top_p=args.paraphrase_top_p, batch_size=args.paraphrase_batch_size,
    )
    del generator
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    by_prompt = dict(zip(prompts, texts))
    new = [
        {"id": row["id"], "copy": k, "prompt": text, "response": row["response"], "level": row["level"], "y": int(row["y"])}
        for row in rows for k, text in enumerate(by_prompt[row["prompt"]]) if text is not None
    ]
    stats = {"per_prompt": args.paraphrases, "paraphraser": args.paraphraser, "source_rows": len(rows), "source_prompts": len(prompts), **stats,
             "rows": len(new)}
    logger.info("Paraphrases: %d of %d made (dropped %s); %d training rows.", stats["made"], stats["requested"], stats["dropped"], len(new))
    if not new:
        return None, None, {**stats, "positive_rate": None}
    items = [{"prompt": r["prompt"], "response": r["response"]} for r in new]
    features, student_p = student_features(model, tokenizer, items, max_length, args.feature_batch_size)
    large_p = np.asarray(load_large_guard(args, large_ref).score(items, show_progress=True), dtype=float)
    y = np.array([r["y"] for r in new])
    t = router_label(y, student_p, large_p, args.threshold)
    table = Dataset.from_list(new).add_column("student_p", student_p.tolist()).add_column("large_p", large_p.tolist()).add_column("t", t.tolist())
    return table, features, {**stats, "positive_rate": float(t.mean())}


def large_guard_scores(args, rows, corpus):
    """(P(unsafe) of the large guard per row, large-guard reference, number of corpus scores reused).

    Rows with a corpus teacher score reuse it when the large guard is that teacher (or with
    `--large-guard-scores corpus`); the others are scored with the large guard.
    """
    teacher = corpus_teacher(corpus) if corpus else None
    name, kind = args.large_guard, args.large_guard_kind
    if name is None and teacher:
        name, kind = teacher.get("name_or_path"), kind or teacher.get("kind")
    is_teacher = teacher is not None and same_model(name, teacher.get("name_or_path"))
    if kind is None and is_teacher:
        kind = teacher.get("kind")
    corpus_scores = rows["corpus_score"]
    reuse = args.large_guard_scores == "corpus" or (args.large_guard_scores == "auto" and is_teacher)
    missing = [i for i, s in enumerate(corpus_scores) if s is None or not reuse]
    if args.large_guard_scores == "corpus" and missing:
        raise ValueError(f"--large-guard-scores corpus: {len(missing)} rows have no corpus unsafe_score.")
    if name is None and missing:
        raise ValueError("No large guard: pass --large-guard and --large-guard-kind (the corpus card records no teacher).")
    ref = {"name_or_path": name, "kind": kind, "revision": args.large_guard_revision, "dtype": args.large_guard_dtype}
    scores = np.array([np.nan if s is None else s for s in corpus_scores], dtype=float)
    if len(missing) < len(scores):
        logger.info("Reusing %d corpus teacher scores (unsafe_score) as the large guard's P(unsafe).", len(scores) - len(missing))
    if missing:
        guard = load_large_guard(args, ref)
        items = [{"prompt": rows[i]["prompt"], "response": rows[i]["response"]} for i in missing]
        scores[missing] = guard.score(items, show_progress=True)
    return scores, ref, len(scores) - len(missing)


# -- the command --------------------------------------------------------------------------------
def train_router(args: TrainRouterArguments):
    """Train the router and write the SafeRoute folder; returns a dict with the per-example table and metrics."""
    try:
        return _train_router(args)
    finally:
        _load_guard_once.cache_clear()  # the large guard is kept for one run only (frees it; no stale weights later)


def _train_router(args):
    output = Path(args.output_dir)
    if (output / ROUTER_INFO_FILE).exists() and not args.force:
        logger.info("%s already holds a trained router; skipping (--force to retrain).", output)
        return {"output": output, "skipped": True, **json.loads((output / ROUTER_INFO_FILE).read_text())}
    info = student_record(args)
    rows, corpus = router_data(args, info)
    large_p, large_ref, reused = large_guard_scores(args, rows, corpus)
    model, tokenizer, head_trained = load_student(args.student)
    if not head_trained:
        raise ValueError(f"The student {args.student} has no trained classification head: distill it first.")
    max_length = args.max_length or info.get("max_length") or model.max_length
    features, student_p = student_features(model, tokenizer, guard_rows(rows), max_length, args.feature_batch_size)
    table = router_table(rows, student_p, large_p, args)
    train_idx, val_idx = [i for i, s in enumerate(table["split"]) if s == "train"], [i for i, s in enumerate(table["split"]) if s == "validation"]
    train_x, train_t = features[train_idx], torch.as_tensor(table["t"])[train_idx]
    para_table, para_stats = None, None
    if args.paraphrases > 0:  # the training split only: validation stays the real rows
        para_table, para_x, para_stats = paraphrase_rows(args, rows.select(train_idx), large_ref, model, tokenizer, max_length)
        if para_table is not None:
            train_x, train_t = torch.cat([train_x, para_x]), torch.cat([train_t, torch.as_tensor(para_table["t"])])

    torch.manual_seed(args.seed)
    router = copy.deepcopy(model.router)
    model._init_weights(router)  # a fresh, seeded initialisation
    router, fit = fit_router(router, train_x, train_t, features[val_idx], torch.as_tensor(table["t"])[val_idx], args)
    with torch.no_grad():
        scores = torch.sigmoid(router(features)).numpy()
        if para_table is not None:
            para_table = para_table.add_column("router_score", torch.sigmoid(router(para_x)).numpy().tolist())
    table = table.add_column("router_score", scores.tolist())
    router_threshold, metrics = threshold_and_metrics(table, args)
    write_model(args, output, router, large_ref, router_threshold, max_length)
    summary = {
        "router_threshold": router_threshold,
        "threshold_choice": "fixed" if args.router_threshold is not None else (f"large_budget={args.large_budget}" if args.large_budget else "best_system_f1"),
        "data": args.data, "corpus": corpus, "max_length": max_length,
        "examples": {"train": len(train_idx), "validation": len(val_idx), "train_paraphrases": 0 if para_table is None else len(para_table)},
        "positive_rate": float(np.mean(table["t"])), "large_guard": large_ref, "large_guard_scores_reused": reused,
        "paraphrases": para_stats, "bayesian": args.bayesian, "metrics": metrics, "fit": fit,
        "arguments": asdict(args),
    }
    (output / ROUTER_INFO_FILE).write_text(json.dumps(summary, indent=2, default=str))
    return {"output": output, "table": table, "paraphrase_table": para_table, **summary}


def student_record(args):
    """The student's `training_info.json` (from saferoute distill; {} when it has none and --data names the rows)."""
    info_path = Path(args.student) / INFO_FILE
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    if args.data == "holdout" and not info:
        raise ValueError(f"{info_path} not found: train-router needs a student from saferoute distill (or --data with rows it never saw).")
    return info


def guard_rows(rows):
    return [{"prompt": p, "response": r} for p, r in zip(rows["prompt"], rows["response"])]


def router_table(rows, student_p, large_p, args):
    """Per row: id, y, level, both guards' P(unsafe), t = `router_label`, and its split (stratified on t and y)."""
    y = np.array(rows["y"])
    t = router_label(y, student_p, large_p, args.threshold)
    if t.sum() < 2:
        raise ValueError(f"Only {int(t.sum())} of {len(t)} examples have t=1 (student wrong, large guard right): the router has nothing to learn.")
    table = rows.select_columns(["id", "y"]).add_column("student_p", student_p.tolist()).add_column("large_p", large_p.tolist())
    table = table.add_column("t", t.tolist()).add_column("level", rows["level"])
    _, val_idx = stratified_split(table, ("t", "y"), args.validation_size, args.seed)
    split = np.array(["train"] * len(t), dtype=object)
    split[val_idx] = "validation"
    return table.add_column("split", split.tolist())


def threshold_and_metrics(table, args):
    """The routing threshold (fixed, or chosen on the validation split by `choose_router_threshold`)
    and every routing method's metrics on each split (`evaluation.methods`)."""
    columns = {k: np.asarray(table[k]) for k in ("y", "student_p", "large_p", "router_score", "split")}
    v = columns["split"] == "validation"
    router_threshold = args.router_threshold if args.router_threshold is not None else choose_router_threshold(
        columns["router_score"][v], columns["student_p"][v], columns["large_p"][v], columns["y"][v], args.large_budget, args.threshold
    )
    metrics = {}
    for name in ("train", "validation"):
        idx = columns["split"] == name
        inputs = RoutingInputs(columns["y"][idx], columns["student_p"][idx], columns["large_p"][idx], columns["router_score"][idx],
                               router_threshold, args.threshold)
        metrics[name] = {m: {k: v for k, v in r.items() if k != "per_seed"} for m, r in evaluate_methods(inputs, where=f"{name}/").items()}
    return router_threshold, metrics


def write_model(args, output, router, large_ref, router_threshold, max_length):
    """The SafeRoute folder: the student, the trained router and the large-guard reference (`saferoute package`)."""
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "router.safetensors"
        save_file({f"router.{k}": v.contiguous() for k, v in router.state_dict().items()}, str(weights))
        package(
            PackageArguments(
                student=args.student, output_dir=str(output), large_guard=large_ref["name_or_path"], large_guard_kind=large_ref["kind"],
                large_guard_revision=large_ref["revision"], large_guard_dtype=large_ref["dtype"], router=str(weights),
                router_threshold=router_threshold, threshold=args.threshold, max_length=max_length,
            )
        )


def main(argv=None):
    args = parse_args([TrainRouterArguments], argv, section="train_router")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    result = train_router(args)
    val = result["metrics"]["validation"]
    print(f"SafeRoute model in {result['output']}: router_threshold {result['router_threshold']:.4f}; validation F1 "
          + ", ".join(f"{m} {val[m]['f1']:.3f}" for m in ("student", "large", "saferoute", "oracle"))
          + f"; usage {val['saferoute']['large_usage']:.3f}")


if __name__ == "__main__":
    main()
