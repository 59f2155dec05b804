"""`saferoute train-router`: train the SafeRoute router on the student's own features, then package.

Router label of an example with human label y: t = (student wrong) & (large guard right), both at
threshold 0.5 (`evaluation.metrics.router_label`). The examples are the router rows of the role
split (`saferoute roles`), which neither the teacher nor the student trained on, so both models'
errors look like their errors on new inputs; the large guard scores every one. One student forward per example gives both its P(unsafe) and the feature the router reads
(computed once: the encoder is frozen). The router (d -> 512 -> 512 -> 1 MLP, optionally
Bayesian: mean-field Gaussian weights, prior sigma 0.1, loss BCE + 0.01 KL, posterior mean
exported) trains with BCE, a class-balanced sampler, Adam, warm-up + linear decay, batch 512.

Three stratified (on t and y) splits of the router rows, each choosing one thing:

| split | share | chooses |
| --- | --- | --- |
| train | the rest | the router's weights |
| validation | `--validation_size` | the router's checkpoint (best AUPRC of t, `--keep best`) |
| threshold | `--threshold_size` | the routing thresholds: best routed F1, and the `--large_budget` one |

The model folder records the three thresholds (`fixed`: `--router_threshold`, default SafeRoute's
0.5; `best_f1`; `budget`) and routes with `--threshold_choice`. `--router_features` chooses what the
router reads: the student's pooled feature (SafeRoute's), or it with the student's logits and
binary entropy appended (`modeling_saferoute.router_inputs`). The result is written as a packaged
SafeRoute model folder.

`--paraphrases N` augments the router's training split (never the validation split) as the
SafeRoute paper does: an LLM (`--paraphraser`, default the bundled SmolLM2-135M-Instruct; see
`training/paraphrase.py`) writes N sampled paraphrases of each distinct training prompt; a
prompt+response row keeps its response and gets the paraphrased prompt. Each paraphrase copies the
row's human label y, both guards are re-run on it (one student forward for its feature and
P(unsafe), the large guard's P(unsafe)) and its router label t is computed as above. Dropped paraphrases (empty, an echo of the
prompt, a refusal) are counted; the counts and the t positive rate are recorded in router_info.json.
"""

import copy
import functools
import json
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
from datasets import Dataset
from safetensors.torch import save_file
from tqdm.auto import tqdm

from dataset_builders.harmaug.card import corpus_teacher
from dataset_builders.harmaug.generate import BACKENDS, load_generator
from dataset_builders.roles import RoleTable, mixed_sample, parse_weights, rows_per_source
from dataset_builders.schema import first_row_per_id
from dataset_builders.score_store import guard_scores, guard_store
from dataset_builders.seed_pool import load_seed_pool
from dataset_builders.splits import stratified_split
from evaluation.methods import ROUTER_THRESHOLDS, RoutingInputs, evaluate_methods, router_thresholds
from evaluation.metrics import router_label
from modeling_saferoute.configuration_saferoute import ROUTER_FEATURES, large_guard_reference as reference_of
from modeling_saferoute.guards import GUARD_KINDS, load_guard
from modeling_saferoute.precision import autocast_context, precision_record, resolve_autocast
from modeling_saferoute.inputs import encode_pairs, length_sorted_batches
from publishing.package import PackageArguments, load_student, package
from saferoute.config import parse_args, recorded_arguments

from .distill import INFO_FILE
from .paraphrase import paraphrase, paraphrase_pairs
from .router import KEEP, OPTIMIZERS, fit_router

logger = logging.getLogger(__name__)
ROUTER_INFO_FILE = "router_info.json"


@dataclass
class TrainRouterArguments:
    student: str = field(default="{output_root}/student", metadata={"help": "The distilled student folder (with training_info.json from saferoute distill)."})
    output_dir: str = field(default="{output_root}/saferoute-guard", metadata={"help": "The SafeRoute model folder to write."})
    roles: str = field(default="{output_root}/roles", metadata={"help": "The role split (`saferoute roles`): the router learns from its router rows, unseen by both models."})
    seed_pool: str = field(default="offline", metadata={"help": "The pool the role split was made from."})
    data: str = field(default="roles", metadata={"help": "'roles' (the router rows of --roles), or a .jsonl/.parquet file of labeled rows neither model saw (rows of another role are refused)."})
    max_rows: Optional[int] = field(default=None, metadata={"help": "At most this many router rows, mixed by --source-weights, stratified on level and label."})
    source_weights: Optional[Union[dict, str]] = field(default=None, metadata={"help": "Per-source weights of the router rows' mix ('source=weight,...'; default 1 each)."})
    force_roles: bool = field(default=False, metadata={"help": "Use --data rows of the teacher, student or validation role anyway."})
    large_guard: Optional[str] = field(default=None, metadata={"help": "Large guard (local folder, Hub id or bundled: alias); default: the teacher of the student's corpus."})
    large_guard_kind: Optional[str] = field(default=None, metadata={"help": f"Adapter kind of the large guard: {sorted(GUARD_KINDS)}."})
    large_guard_revision: Optional[str] = field(default=None, metadata={"help": "Hub revision of the large guard."})
    large_guard_dtype: Optional[str] = field(default=None, metadata={"help": "dtype the large guard loads in (e.g. bfloat16)."})
    large_guard_max_length: Optional[int] = field(default=None, metadata={"help": "Token budget of large-guard scoring (default: the adapter's)."})
    large_guard_batch_size: int = field(default=8, metadata={"help": "Batch size of large-guard scoring."})
    bayesian: bool = field(default=False, metadata={"help": "Bayesian router (mean-field Gaussian weights; the posterior mean is exported)."})
    prior_sigma: float = field(default=0.1, metadata={"help": "Prior sigma of the Bayesian router."})
    posterior_sigma_init: Optional[float] = field(default=1e-3, metadata={"help": "Initial posterior sigma of the Bayesian router; None: the prior sigma (torchbnn's and SafeRoute's: on 1.5k rows it left the router near chance here, val AUPRC .41 vs .78)."})
    kl_weight: float = field(default=0.01, metadata={"help": "Weight of the (per-parameter mean) KL term of the Bayesian router."})
    learning_rate: float = field(default=1e-3, metadata={"help": "Learning rate."})
    optimizer: str = field(default="adam", metadata={"help": "'adam' or 'adamw' (SafeRoute's code: AdamW, weight decay 0.01)."})
    weight_decay: float = field(default=0.0, metadata={"help": "Weight decay of the optimizer."})
    batch_size: int = field(default=512, metadata={"help": "Router batch size (balanced sampling with replacement)."})
    max_steps: int = field(default=500, metadata={"help": "Router optimizer steps (unless --num-epochs)."})
    num_epochs: Optional[float] = field(default=None, metadata={"help": "Train for this many epochs of len(train) balanced draws instead of --max-steps (SafeRoute's code: 1000)."})
    keep: str = field(default="best", metadata={"help": "'best' (the router with the best validation AUPRC of t) or 'final' (SafeRoute's code)."})
    warmup_steps: float = field(default=100, metadata={"help": "Warm-up steps (int) or ratio (< 1); above a fifth of the run it becomes a 0.1 ratio."})
    eval_steps: int = field(default=25, metadata={"help": "Validate every N steps (with --keep best, the best router is kept)."})
    validation_size: float = field(default=0.1, metadata={"help": "Stratified share of the rows that chooses the router's checkpoint (best AUPRC of t) and nothing else."})
    threshold_size: float = field(default=0.2, metadata={"help": "Stratified share of the rows that chooses the routing thresholds (best F1, budget) and nothing else; 0: only the fixed threshold."})
    large_budget: Optional[float] = field(default=None, metadata={"help": "The budget threshold: at most this share of the threshold split goes to the large guard."})
    router_threshold: Optional[float] = field(default=None, metadata={"help": "The fixed threshold (default 0.5, SafeRoute's code); giving it makes it the default choice."})
    too_few_positives: str = field(default="error", metadata={"help": "When fewer than 2 router rows have t=1 (the student is never wrong where the large guard is right, so the router has nothing to learn): 'error', or 'route_nothing' (warn and package a model whose thresholds route nothing; tiny smoke runs)."})
    threshold_choice: Optional[str] = field(default=None, metadata={"help": "The threshold the model routes with: 'fixed', 'best_f1' or 'budget' (default: 'fixed' when --router_threshold is given, else 'budget' when --large_budget is, else 'best_f1')."})
    router_features: str = field(default="hidden", metadata={"help": f"What the router reads: {list(ROUTER_FEATURES)} ('hidden': the student's pooled feature, SafeRoute's; 'hidden_logits_entropy': with the student's logits and binary entropy appended)."})
    threshold: float = field(default=0.5, metadata={"help": "P(unsafe) above this is 'unsafe' (student, large guard, packaged model)."})
    max_length: Optional[int] = field(default=None, metadata={"help": "Student token budget (default: the one it was distilled with)."})
    feature_batch_size: int = field(default=64, metadata={"help": "Batch size of the student forward that computes the features."})
    precision: str = field(default="auto", metadata={"help": "Precision of the student and large-guard forwards: 'auto' (bf16 where the device multiplies it natively, as the deployed pipeline runs; float32 elsewhere), 'bf16' or 'float32'."})
    paraphrases: int = field(default=0, metadata={"help": "LLM paraphrases per training-split example (labels copied, both guards re-run on them); 0: none."})
    paraphraser: str = field(default="bundled:smollm2-135m-instruct", metadata={"help": "Paraphrasing LLM with a chat template (path, Hub id or bundled: alias)."})
    paraphrase_backend: str = field(default="transformers", metadata={"help": "Generation backend of the paraphraser: 'transformers', 'llama_cpp' or 'vllm' (optional dependencies)."})
    paraphrase_mode: str = field(default="prompt", metadata={"help": "'prompt' (each distinct prompt, one line, the response kept) or 'pair' (prompt and response paraphrased together, several lines each, as SafeRoute's code does)."})
    paraphrase_max_new_tokens: int = field(default=64, metadata={"help": "Token budget of one paraphrase (longer ones are cut)."})
    paraphrase_temperature: float = field(default=0.9, metadata={"help": "Sampling temperature of the paraphraser (0: greedy, every copy the same)."})
    paraphrase_top_p: float = field(default=0.95, metadata={"help": "Nucleus sampling top-p of the paraphraser."})
    paraphrase_batch_size: int = field(default=16, metadata={"help": "Batch size of paraphrase generation."})
    seed: int = field(default=0, metadata={"help": "Seed of the split, the sampler and the initialisation."})
    score_store: Optional[str] = field(default=None, metadata={"help": "Folder of the score store shared by the stages (recipes: {output_root}/scores): the large guard scores each text once across runs; default: none (in memory)."})
    force: bool = field(default=False, metadata={"help": "Retrain even when the output folder already holds a trained router."})

    def __post_init__(self):
        if self.large_guard_kind is not None and self.large_guard_kind not in GUARD_KINDS:
            raise ValueError(f"--large-guard-kind must be one of {sorted(GUARD_KINDS)}, got {self.large_guard_kind!r}.")
        if self.large_budget is not None and not 0 < self.large_budget <= 1:
            raise ValueError(f"--large-budget must be in (0, 1], got {self.large_budget}.")
        if self.paraphrases < 0:
            raise ValueError(f"--paraphrases must be >= 0, got {self.paraphrases}.")
        if self.too_few_positives not in ("error", "route_nothing"):
            raise ValueError(f"--too_few_positives must be 'error' or 'route_nothing', got {self.too_few_positives!r}.")
        if self.paraphrase_backend not in BACKENDS:
            raise ValueError(f"--paraphrase-backend must be one of {sorted(BACKENDS)}, got {self.paraphrase_backend!r}.")
        self.source_weights = parse_weights(self.source_weights)
        if self.paraphrase_mode not in ("prompt", "pair"):
            raise ValueError(f"--paraphrase-mode must be 'prompt' or 'pair', got {self.paraphrase_mode!r}.")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"--optimizer must be one of {sorted(OPTIMIZERS)}, got {self.optimizer!r}.")
        if self.keep not in KEEP:
            raise ValueError(f"--keep must be one of {KEEP}, got {self.keep!r}.")
        if self.router_features not in ROUTER_FEATURES:
            raise ValueError(f"--router_features must be one of {list(ROUTER_FEATURES)}, got {self.router_features!r}.")
        if not (0 < self.validation_size < 1 and 0 <= self.threshold_size < 1 and self.validation_size + self.threshold_size < 1):
            raise ValueError(f"--validation_size must be in (0, 1), --threshold_size in [0, 1), their sum below 1; got {self.validation_size}, {self.threshold_size}.")
        if self.threshold_choice is None:
            self.threshold_choice = "fixed" if self.router_threshold is not None else "budget" if self.large_budget is not None else "best_f1"
        if self.threshold_choice not in ROUTER_THRESHOLDS:
            raise ValueError(f"--threshold_choice must be one of {list(ROUTER_THRESHOLDS)}, got {self.threshold_choice!r}.")
        if self.threshold_choice == "budget" and self.large_budget is None:
            raise ValueError("--threshold_choice budget needs --large_budget.")
        if self.threshold_choice != "fixed" and self.threshold_size == 0:
            raise ValueError(f"--threshold_choice {self.threshold_choice} is chosen on the threshold split: --threshold_size must be > 0.")


# -- features, rows and large-guard scores ------------------------------------------------------
def student_features(model, tokenizer, items, max_length, batch_size=64, autocast_dtype="auto"):
    """(features (N, d) float32, P(unsafe) (N,)) from one student forward per item, in the precision
    the deployed pipeline runs by default (`autocast_dtype="auto"`: bf16 where it is native)."""
    encodings, _ = encode_pairs(tokenizer, items, max_length)
    batches = length_sorted_batches([len(e["input_ids"]) for e in encodings], batch_size)
    features, probs = [None] * len(items), [None] * len(items)
    model.eval()
    with torch.inference_mode(), autocast_context(model.device, resolve_autocast(autocast_dtype, model.device)):
        for batch in tqdm(batches, desc="student features"):
            inputs = tokenizer.pad([encodings[i] for i in batch], return_tensors="pt").to(model.device)
            out = model(**inputs)
            p = torch.softmax(out.logits.float(), dim=-1)[:, 1]
            for j, i in enumerate(batch):
                features[i], probs[i] = out.features[j].float().cpu(), float(p[j])
    return torch.stack(features), np.array(probs)


ROUTER_COLUMNS = ["id", "prompt", "response", "level", "source", "y"]


def router_data(args):
    """(rows, role table): labeled rows neither model trained on, one per id: the router rows of the
    role split (a per-source mix of `max_rows`), or the rows of `--data` (refused when they hold
    rows of another role)."""
    roles = RoleTable(args.roles)
    if args.data == "roles":
        if roles.seed_pool not in (None, args.seed_pool):
            raise ValueError(f"The role split {args.roles} was made from the pool {roles.seed_pool!r}, not --seed-pool {args.seed_pool!r}.")
        rows = roles.rows(load_seed_pool(args.seed_pool), "router")
    else:
        rows = load_seed_pool(args.data)
        roles.check(rows["id"], ("router", None), "train-router (--data)", args.force_roles)
    rows = mixed_sample(first_row_per_id(rows), args.max_rows, args.source_weights, args.seed)
    return rows.map(lambda y: {"y": int(y)}, input_columns="label").select_columns(ROUTER_COLUMNS), roles


def corpus_of(info):
    """The corpus folder the student was distilled on (its training_info.json records it), or None."""
    corpus = info.get("corpus")
    return corpus if corpus and Path(corpus).is_dir() else None


def large_guard_reference(args, info):
    """The large guard (--large-guard, else the teacher of the student's corpus) with the settings its
    router labels are made with (`configuration_saferoute.large_guard_reference`), written into the packaged model."""
    name, kind = args.large_guard, args.large_guard_kind
    teacher = corpus_teacher(corpus_of(info)) if corpus_of(info) else None
    if name is None and teacher:
        name, kind = teacher.get("name_or_path"), kind or teacher.get("kind")
    ref = reference_of(name, kind, revision=args.large_guard_revision, dtype=args.large_guard_dtype,
                       max_length=args.large_guard_max_length, batch_size=args.large_guard_batch_size)
    check_large_guard(ref)
    return ref


def check_large_guard(ref):
    """Raise a ValueError naming the option to pass when `ref` cannot be loaded as a guard."""
    name, kind = ref["name_or_path"], ref["kind"]
    if name is None:
        raise ValueError("No large guard: pass --large-guard and --large-guard-kind (the corpus card records no teacher).")
    if kind not in GUARD_KINDS:
        raise ValueError(f"--large-guard-kind must be one of {sorted(GUARD_KINDS)} to score with {name!r}, got {kind!r}.")


def large_guard_scores(args, ref, items, desc):
    """The large guard's P(unsafe) of `items` (an array), through the score store: texts it already
    scored with these settings (in build-corpus, evaluate or an earlier run) are not scored again."""
    check_large_guard(ref)
    store = guard_store(args.score_store, ref["name_or_path"], ref["kind"], args.precision, "cpu" if not torch.cuda.is_available() else "cuda",
                        revision=ref["revision"], dtype=ref["dtype"], max_length=args.large_guard_max_length)
    return np.asarray(guard_scores(store, lambda: load_large_guard(args, ref), items, desc, chunk_size=2048), dtype=float)


def load_large_guard(args, ref):
    """The large guard of `ref` (`large_guard_reference`), with the scoring options of `args`.
    Within one `train_router` run it is loaded once (rows, then their paraphrases)."""
    check_large_guard(ref)
    return _load_guard_once(ref["name_or_path"], ref["kind"], ref["revision"], ref["dtype"], args.large_guard_batch_size,
                            args.large_guard_max_length, args.precision)


@functools.lru_cache(maxsize=1)
def _load_guard_once(name, kind, revision, dtype, batch_size, max_length, autocast_dtype="auto"):
    return load_guard(name, kind, revision=revision, dtype=dtype, batch_size=batch_size, max_length=max_length, autocast_dtype=autocast_dtype)


def paraphrase_rows(args, rows, large_ref, model, tokenizer, max_length):
    """`--paraphrases N` rows of the router's training split: (table, features, stats).

    Mode "prompt": N paraphrases of each distinct prompt of `rows` (every row with that prompt gets
    them; its response is kept). Mode "pair": N paraphrases of each row's prompt and response
    together. Either way the human label y is copied, both guards are re-run (student feature +
    P(unsafe), large guard P(unsafe)) and t = router_label(...). `table`: id (of the source row),
    copy, prompt, response, level, y, student_p, large_p, t; None (and features None) when every
    paraphrase was dropped.
    """
    check_large_guard(large_ref)  # before generating: the paraphrases must be scored by a model
    generator = load_generator(args.paraphraser, args.paraphrase_backend, batch_size=args.paraphrase_batch_size)
    settings = dict(max_new_tokens=args.paraphrase_max_new_tokens, temperature=args.paraphrase_temperature,
                    top_p=args.paraphrase_top_p, batch_size=args.paraphrase_batch_size)
    if args.paraphrase_mode == "pair":
        made, stats = paraphrase_pairs(generator, list(zip(rows["prompt"], rows["response"])), args.paraphrases, args.seed, **settings)
        copies = [[(k, p) for k, p in enumerate(per_row) if p is not None] for per_row in made]
        sources = len(rows)
    else:
        prompts = list(dict.fromkeys(rows["prompt"]))
        texts, stats = paraphrase(generator, prompts, args.paraphrases, args.seed, **settings)
        by_prompt = dict(zip(prompts, texts))
        copies = [[(k, (text, row["response"])) for k, text in enumerate(by_prompt[row["prompt"]]) if text is not None] for row in rows]
        sources = len(prompts)
    del generator
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    new = [{"id": row["id"], "copy": k, "prompt": prompt, "response": response, "level": row["level"], "y": int(row["y"])}
           for row, row_copies in zip(rows, copies) for k, (prompt, response) in row_copies]
    stats = {"mode": args.paraphrase_mode, "per_source": args.paraphrases, "paraphraser": args.paraphraser,
             "source_rows": len(rows), "sources": sources, **stats, "rows": len(new)}
    logger.info("Paraphrases: %d of %d made (dropped %s); %d training rows.", stats["made"], stats["requested"], stats["dropped"], len(new))
    if not new:
        return None, None, {**stats, "positive_rate": None}
    items = [{"prompt": r["prompt"], "response": r["response"]} for r in new]
    features, student_p = student_features(model, tokenizer, items, max_length, args.feature_batch_size, args.precision)
    large_p = large_guard_scores(args, large_ref, items, "paraphrases")
    y = np.array([r["y"] for r in new])
    t = router_label(y, student_p, large_p, args.threshold)
    table = Dataset.from_list(new).add_column("student_p", student_p.tolist()).add_column("large_p", large_p.tolist()).add_column("t", t.tolist())
    return table, features, {**stats, "positive_rate": float(t.mean())}


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
    rows, roles = router_data(args)
    large_ref = large_guard_reference(args, info)
    large_p = large_guard_scores(args, large_ref, guard_rows(rows), "router rows")
    model, tokenizer, head_trained = load_student(args.student)
    if not head_trained:
        raise ValueError(f"The student {args.student} has no trained classification head: distill it first.")
    max_length = args.max_length or info.get("max_length") or model.max_length
    model.set_router_features(args.router_features)
    features, student_p = student_features(model, tokenizer, guard_rows(rows), max_length, args.feature_batch_size, args.precision)
    table = router_table(rows, student_p, large_p, args)
    train_idx, val_idx = [i for i, s in enumerate(table["split"]) if s == "train"], [i for i, s in enumerate(table["split"]) if s == "validation"]
    train_x, train_t = features[train_idx], torch.as_tensor(table["t"])[train_idx]
    para_table, para_stats = None, None
    routes_nothing = int(np.sum(table["t"])) < MIN_POSITIVES  # only with --too_few_positives route_nothing (router_table refuses it otherwise)
    if args.paraphrases > 0 and not routes_nothing:  # the training split only: validation stays the real rows
        para_table, para_x, para_stats = paraphrase_rows(args, rows.select(train_idx), large_ref, model, tokenizer, max_length)
        if para_table is not None:
            train_x, train_t = torch.cat([train_x, para_x]), torch.cat([train_t, torch.as_tensor(para_table["t"])])

    torch.manual_seed(args.seed)
    router = copy.deepcopy(model.router)
    model._init_weights(router)  # a fresh, seeded initialisation
    if routes_nothing:
        logger.warning("Only %d of %d router rows have t=1: the router is NOT trained and the packaged model routes nothing "
                       "(every threshold 1.0).", int(np.sum(table["t"])), len(table))
        fit = {"skipped": "fewer than 2 rows with t=1"}
    else:
        router, fit = fit_router(router, train_x, train_t, features[val_idx], torch.as_tensor(table["t"])[val_idx], args)
    with torch.no_grad():
        scores = torch.sigmoid(router(features)).numpy()
        if para_table is not None:
            para_table = para_table.add_column("router_score", torch.sigmoid(router(para_x)).numpy().tolist())
    table = table.add_column("router_score", scores.tolist())
    if routes_nothing:
        thresholds, metrics = {key: 1.0 for key in ROUTER_THRESHOLDS}, {}  # a sigmoid is never above 1: nothing is routed
    else:
        thresholds, metrics = thresholds_and_metrics(table, args)
    router_threshold = thresholds[args.threshold_choice]
    write_model(args, output, None if routes_nothing else router, large_ref, thresholds, max_length)
    summary = {
        "router_threshold": router_threshold,
        "threshold_choice": args.threshold_choice, "router_thresholds": thresholds, "large_budget": args.large_budget,
        "router_features": args.router_features, "routes_nothing": routes_nothing,
        "data": args.data, "roles": roles.record(["router"]), "rows_per_source": rows_per_source(rows), "max_length": max_length,
        "examples": {**{name: int(np.sum(np.asarray(table["split"]) == name)) for name in SPLITS},
                     "train_paraphrases": 0 if para_table is None else len(para_table)},
        "positive_rate": float(np.mean(table["t"])), "large_guard": large_ref,
        "precision": precision_record(args.precision, model.device),
        "paraphrases": para_stats, "bayesian": args.bayesian, "metrics": metrics, "fit": fit,
        "arguments": recorded_arguments(args),
    }
    (output / ROUTER_INFO_FILE).write_text(json.dumps(summary, indent=2, default=str))
    return {"output": output, "table": table, "paraphrase_table": para_table, **summary}


def student_record(args):
    """The student's `training_info.json` (from saferoute distill; {} for a student trained elsewhere)."""
    info_path = Path(args.student) / INFO_FILE
    return json.loads(info_path.read_text()) if info_path.exists() else {}


def guard_rows(rows):
    return [{"prompt": p, "response": r} for p, r in zip(rows["prompt"], rows["response"])]


SPLITS = ("train", "validation", "threshold")
MIN_POSITIVES = 2  # rows with t=1 the router needs to learn anything


def router_table(rows, student_p, large_p, args):
    """Per row: id, y, level, both guards' P(unsafe), t = `router_label`, and its split (train,
    validation: the checkpoint, threshold: the routing thresholds), stratified on t and y."""
    y = np.array(rows["y"])
    t = router_label(y, student_p, large_p, args.threshold)
    if t.sum() < MIN_POSITIVES and args.too_few_positives != "route_nothing":
        raise ValueError(f"Only {int(t.sum())} of {len(t)} examples have t=1 (student wrong, large guard right): the router has nothing to learn "
                         "(--too_few_positives route_nothing packages a model that routes nothing instead).")
    table = rows.select_columns(["id", "y"]).add_column("student_p", student_p.tolist()).add_column("large_p", large_p.tolist())
    table = table.add_column("t", t.tolist()).add_column("level", rows["level"])
    split = np.array(["train"] * len(t), dtype=object)
    rest = np.arange(len(t))
    if args.threshold_size > 0:
        kept, thr_idx = stratified_split(table, ("t", "y"), args.threshold_size, args.seed + 1)
        split[thr_idx], rest = "threshold", np.asarray(kept)
    share = args.validation_size / (1.0 - args.threshold_size)  # of the rows left
    _, val_idx = stratified_split(table.select(rest), ("t", "y"), share, args.seed)
    split[rest[val_idx]] = "validation"
    return table.add_column("split", split.tolist())


def thresholds_and_metrics(table, args):
    """The routing thresholds (`evaluation.methods.router_thresholds` on the threshold split, which
    chose nothing else) and every routing method's metrics on each split."""
    columns = {k: np.asarray(table[k]) for k in ("y", "student_p", "large_p", "router_score", "split")}
    on = columns["split"] == "threshold"
    thresholds = router_thresholds(columns["router_score"][on], columns["student_p"][on], columns["large_p"][on], columns["y"][on],
                                   fixed=0.5 if args.router_threshold is None else args.router_threshold,
                                   large_budget=args.large_budget, threshold=args.threshold)
    metrics = {}
    for name in SPLITS:
        idx = columns["split"] == name
        if not idx.any():
            continue
        inputs = RoutingInputs(columns["y"][idx], columns["student_p"][idx], columns["large_p"][idx], columns["router_score"][idx],
                               thresholds[args.threshold_choice], args.threshold, router_thresholds=thresholds, name=f"router/{name}")
        metrics[name] = {m: {k: v for k, v in r.items() if k != "per_seed"} for m, r in evaluate_methods(inputs, where=f"{name}/").items()}
    return thresholds, metrics


def write_model(args, output, router, large_ref, thresholds, max_length):
    """The SafeRoute folder: the student, the trained router (reading `args.router_features`), its
    thresholds (routing with `args.threshold_choice`) and the large-guard reference (`saferoute package`)."""
    with tempfile.TemporaryDirectory() as tmp:
        weights = None  # no trained router: the model says router_trained false
        if router is not None:
            weights = str(Path(tmp) / "router.safetensors")
            save_file({f"router.{k}": v.contiguous() for k, v in router.state_dict().items()}, weights)
        package(
            PackageArguments(
                student=args.student, output_dir=str(output), large_guard=large_ref["name_or_path"], large_guard_kind=large_ref["kind"],
                large_guard_revision=large_ref["revision"], large_guard_dtype=large_ref["dtype"],
                large_guard_max_length=large_ref["max_length"], large_guard_batch_size=large_ref["batch_size"], router=weights,
                router_features=args.router_features, router_thresholds=thresholds, router_threshold_choice=args.threshold_choice,
                threshold=args.threshold, max_length=max_length,
            )
        )


def main(argv=None):
    args = parse_args([TrainRouterArguments], argv, section="train_router")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    result = train_router(args)
    if result.get("routes_nothing"):
        print(f"SafeRoute model in {result['output']}: the router was not trained (too few rows with t=1); it routes nothing.")
        return
    split = "threshold" if "threshold" in result["metrics"] else "validation"
    m = result["metrics"][split]
    print(f"SafeRoute model in {result['output']}: router_threshold {result['router_threshold']:.4f} ({result['threshold_choice']}); "
          f"{split}-split F1 " + ", ".join(f"{k} {m[k]['f1']:.3f}" for k in ("student", "large", "entropy", "oracle")))
    for key, value in result["router_thresholds"].items():
        row = m[f"saferoute_{key}"]
        print(f"  {key:<8} threshold {value:.4f}: F1 {row['f1']:.3f}, usage {row['large_usage']:.3f}, routing F1 {row['routing_f1']:.3f}")


if __name__ == "__main__":
    main()
