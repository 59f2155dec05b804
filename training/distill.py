"""`saferoute distill`: HarmAug knowledge distillation of the teacher into a small encoder student.

Loss = 0.5 * (CE(logits, hard) + KL(teacher || student)), teacher distribution [1 - p, p], p the
teacher's P(unsafe) (`unsafe_score` of the HarmAug corpus). Class-balanced sampling, AdamW
(lr 3e-5, weight decay 0.1 off bias/LayerNorm, grad clip 1.0, linear schedule, warm-up), best
checkpoint on the corpus' validation split kept.

The rows come from the role split (`saferoute roles`): the corpus' train split holds teacher and
student rows (plus the synthetic rows), its validation split validation rows; a row of another
role (a router row) is refused unless `--force_roles`. A corpus without a validation split (e.g.
one from the Hub) is validated on a stratified `validation_size` share of its train split.

Ablations (`--labels human`: plain fine-tune on the seed rows' human labels, CE only;
`--no-augmentation`: KD on the seed rows only; full HarmAug by default) share either the full
HarmAug run's number of optimizer steps (`--step_budget harmaug`, default) or the number of epochs
over their own rows (`--step_budget epochs`: the augmented run sees its extra rows on top, as in
the paper). `--synthetic_kinds` keeps some of each instruction's three synthetic rows (prompt-only,
compliant, refusal; the paper trains on all three); the step budget then counts the kept rows.

`--prefixes` trains on the corpus' prefix rows too (`build-corpus --prefix_rows N`: responses cut at
a random word, labeled by the teacher on the same prefix), for a student that judges partial
responses (streaming moderation); they count in the HarmAug run's step budget. Without it they are
left out; the ablations (`--labels human`, `--no-augmentation`) never use them.

Categories: when the corpus carries the teacher's category scores (`category_scores`, build-corpus with
a teacher that has a category head) and/or `--category_rows N` labeled category rows are asked for, a
multi-label category head is trained beside the binary head on the same pooled feature (one forward):
KD (binary cross-entropy against the teacher's probabilities) where the teacher scored the row, the
labels where the row has them, unknown entries masked (`training/categories.py`). The labeled rows'
binary loss is masked, and the step budget grows with them so the binary rows are seen as often.

Calibration (`--calibration platt`, the default; `none` in the paper recipe): after training,
P(unsafe) = sigmoid(a * margin + b) is fitted on the validation rows (the run's own targets) and
folded into the classification layer (`training/calibration.py`), so the saved student decides at
0.5 on the validation rows' prior instead of the balanced sampler's 50/50. `--calibrate_only`
calibrates a finished student in `output_dir` (one trained before, or with `none`) without training.

Runs as `saferoute distill`, `python -m training.distill` or `accelerate launch -m training.distill`.
The settings are a `TrainingArguments` subclass (`DistillConfig`): every Trainer flag works.
"""

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from datasets import load_dataset
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    Trainer,
    TrainingArguments,
    set_seed,
)
from transformers.trainer_utils import get_last_checkpoint

from dataset_builders.roles import STUDENT_ROLES, RoleTable, rows_per_source
from dataset_builders.schema import SYNTHETIC_KINDS
from dataset_builders.seed_pool import OFFLINE_POOLS, load_seed_pool
from dataset_builders.splits import stratified_split
from evaluation.metrics import classification_metrics, collect_warnings
from modeling_saferoute.bundled import resolve
from modeling_saferoute.configuration_saferoute import LABELS
from modeling_saferoute.inputs import encode_pairs
from modeling_saferoute.modeling_saferoute import position_limit
from modeling_saferoute.precision import precision_record
from saferoute.config import parse_args, recorded_arguments

from .calibration import METHODS as CALIBRATION_METHODS
from .calibration import fold_platt, platt_record
from .categories import (IGNORE, CategoryArguments, CategoryLossMixin, attach_category_head, category_record, category_rows,
                         detach_category_head, nan_rows, run_taxonomy, save_category_head)
from .freezing import freeze_lower_layers
from .precision import training_precision
from .sampling import BalancedSamplingMixin, TimeBudgetCallback, remove_checkpoints

logger = logging.getLogger(__name__)

CORPUS_COLUMNS = ("id", "prompt", "response", "unsafe_score", "label", "human_label", "level", "source", "origin", "kind")
INFO_FILE = "training_info.json"


@dataclass
class DistillConfig(CategoryArguments, TrainingArguments):
    """`TrainingArguments` with the paper's defaults, plus the distillation settings."""

    corpus: str = field(default="{output_root}/harmaug", metadata={"help": "HarmAug corpus folder (its train and validation splits); with --labels human also a seed pool ('offline', 'wildguardmix', a .jsonl/.parquet file), read through the role split."})
    roles: str = field(default="{output_root}/roles", metadata={"help": "The role split (`saferoute roles`) the corpus was built from."})
    force_roles: bool = field(default=False, metadata={"help": "Train on corpus rows outside the teacher/student roles (or validate outside the validation role) anyway."})
    step_budget: str = field(default="harmaug", metadata={"help": "'harmaug': every ablation trains the full HarmAug run's number of steps; 'epochs': num_train_epochs over its own rows."})
    student: str = field(default="bundled:minilm-l6", metadata={"help": "Student: any encoder with an AutoModelForSequenceClassification class (local folder, Hub id or bundled: alias)."})
    labels: str = field(default="teacher", metadata={"help": "'teacher' (KD on the teacher's soft + hard labels) or 'human' (CE on the seed rows' human labels)."})
    augmentation: bool = field(default=True, metadata={"help": "Train on the synthetic rows too (HarmAug); --no-augmentation keeps the seed rows only."})
    synthetic_kinds: str = field(default=",".join(SYNTHETIC_KINDS), metadata={"help": "Which synthetic rows of each instruction the HarmAug run trains on (comma-separated kinds; the paper: all three)."})
    prefixes: bool = field(default=False, metadata={"help": "Train on the corpus' prefix rows too (build-corpus --prefix_rows; distillation on prefixes, for streaming moderation)."})
    freeze_embeddings: bool = field(default=False, metadata={"help": "Freeze the student's embeddings (half of MiniLM-L6's 22.7M parameters): no gradient or AdamW update for them, a cheaper CPU step."})
    freeze_layers: int = field(default=0, metadata={"help": "Freeze the embeddings and this many lowest encoder layers too (0: none); the backward pass and the optimizer then cover the upper layers only."})
    max_length: int = field(default=1024, metadata={"help": "Token budget of the pair encoding (capped at the student's position embeddings)."})
    validation_size: float = field(default=0.1, metadata={"help": "Stratified validation share of the train split, for a corpus without a validation split."})
    max_train_rows: Optional[int] = field(default=None, metadata={"help": "Keep a seeded random subset of this many training rows, for quick runs."})
    balanced: bool = field(default=True, metadata={"help": "Class-balanced sampling (WeightedRandomSampler, weight 1/class count)."})
    calibration: str = field(default="platt", metadata={"help": "'platt': fit P(unsafe) = sigmoid(a * margin + b) on the validation rows after training and fold it into the classification layer; 'none': keep the trained scores (the paper)."})
    calibrate_only: bool = field(default=False, metadata={"help": "Calibrate the finished student in output_dir on the validation rows (no training); refused when it is already calibrated."})
    force: bool = field(default=False, metadata={"help": "Train even when output_dir already holds a complete student."})
    max_seconds: Optional[float] = field(default=None, metadata={"help": "Opt-in wall-clock cap: stop (evaluating and saving first) after this many seconds of training; recorded as stopped_early."})
    keep_checkpoints: bool = field(default=False, metadata={"help": "Keep the output_dir/checkpoint-* folders after training (deleted by default)."})
    # TrainingArguments fields with the paper's defaults
    output_dir: Optional[str] = field(default="{output_root}/student", metadata={"help": "The student folder (checkpoints go to its checkpoint-* subfolders)."})
    learning_rate: float = field(default=3e-5, metadata={"help": "AdamW learning rate."})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay (not on bias/LayerNorm)."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping."})
    lr_scheduler_type: str = field(default="linear", metadata={"help": "Learning-rate schedule."})
    warmup_steps: float = field(default=100, metadata={"help": "Warm-up steps (int) or ratio (< 1); above a tenth of a short run it becomes a 0.1 ratio."})
    num_train_epochs: float = field(default=3.0, metadata={"help": "Epochs of the full HarmAug run; ablations train for the same number of steps."})
    per_device_train_batch_size: int = field(default=32, metadata={"help": "Batch size per device."})
    per_device_eval_batch_size: int = field(default=64, metadata={"help": "Eval batch size per device."})
    precision: str = field(default="auto", metadata={"help": "'auto' (bf16 where the device multiplies it natively: AMX / AVX512-BF16 CPUs, bf16 GPUs; float32 elsewhere), 'bf16' or 'float32'."})
    bf16: Optional[bool] = field(default=None, metadata={"help": "Set from --precision (an explicit true / false forces bf16 / float32)."})
    train_sampling_strategy: str = field(default="group_by_length", metadata={"help": "'group_by_length' (length-grouped, with the balanced sampler too) or 'random'."})
    eval_strategy: str = field(default="steps", metadata={"help": "When to evaluate."})
    eval_steps: Optional[float] = field(default=0.1, metadata={"help": "Evaluate every N steps (or ratio < 1 of the run)."})
    save_strategy: str = field(default="steps", metadata={"help": "When to save a checkpoint."})
    save_steps: float = field(default=0.1, metadata={"help": "Save every N steps (or ratio < 1 of the run)."})
    save_total_limit: Optional[int] = field(default=2, metadata={"help": "Checkpoints kept (the best is always kept)."})
    load_best_model_at_end: bool = field(default=True, metadata={"help": "Keep the best checkpoint on the validation split."})
    metric_for_best_model: Optional[str] = field(default="loss", metadata={"help": "Validation metric of the best checkpoint (loss; or f1, auprc...)."})
    logging_steps: float = field(default=10, metadata={"help": "Log every N steps."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Kept False: the teacher score column must reach compute_loss."})

    def __post_init__(self):
        if self.labels not in ("teacher", "human"):
            raise ValueError(f"--labels must be 'teacher' or 'human', got {self.labels!r}.")
        if not 0 < self.validation_size < 1:
            raise ValueError(f"--validation-size must be in (0, 1), got {self.validation_size}.")
        if self.step_budget not in ("harmaug", "epochs"):
            raise ValueError(f"--step-budget must be 'harmaug' or 'epochs', got {self.step_budget!r}.")
        if self.calibration not in CALIBRATION_METHODS:
            raise ValueError(f"--calibration must be one of {list(CALIBRATION_METHODS)}, got {self.calibration!r}.")
        if self.train_sampling_strategy not in ("group_by_length", "random"):
            raise ValueError(f"--train-sampling-strategy must be 'group_by_length' or 'random' here, got {self.train_sampling_strategy!r}.")
        self.synthetic_kinds = ",".join(synthetic_kinds(self.synthetic_kinds))
        self.check_category_arguments()
        if not torch.cuda.is_available():
            self.use_cpu = True  # autocast on CPU, and no accelerator search
        self.precision, self.bf16 = training_precision(self.precision, self.bf16, self.use_cpu)
        super().__post_init__()


def load_corpus(corpus, split="train"):
    """One split of the HarmAug corpus folder (None when the folder has no such split), or the rows
    of a seed pool in the corpus layout (human labels only, no teacher score)."""
    if Path(corpus).is_dir():
        splits = load_dataset(str(corpus))
        if split not in splits:
            return None
        ds = splits[split]
        missing = [c for c in CORPUS_COLUMNS if c not in ds.column_names]
        if missing:
            raise ValueError(f"Corpus {corpus} lacks the columns {missing} (expected {list(CORPUS_COLUMNS)}).")
        return ds
    if corpus in OFFLINE_POOLS or corpus == "wildguardmix" or corpus.rsplit(".", 1)[-1] in ("jsonl", "json", "parquet"):
        pool = load_seed_pool(corpus)
        n = len(pool)
        return pool.remove_columns("category").add_column("human_label", pool["label"]).add_column(
            "unsafe_score", [None] * n, feature=None
        ).add_column("origin", ["seed"] * n).add_column("kind", ["seed"] * n)
    raise ValueError(f"Corpus {corpus!r} is neither a corpus folder nor a seed pool ({list(OFFLINE_POOLS)}, 'wildguardmix', a .jsonl/.parquet file).")


def corpus_splits(args, roles):
    """(train rows, validation rows or None) of the corpus, checked against the role split: seed
    rows to train on must be teacher or student rows, validation rows validation rows."""
    train = load_corpus(args.corpus, "train")
    val = load_corpus(args.corpus, "validation") if Path(args.corpus).is_dir() else None
    if not Path(args.corpus).is_dir():  # a seed pool: its rows sorted by role
        val = roles.rows(train, "validation")
        train = roles.rows(train, STUDENT_ROLES)
    seed_ids = [i for i, o in zip(train["id"], train["origin"]) if o == "seed"]
    roles.check(seed_ids, STUDENT_ROLES, "distill (train split)", args.force_roles)
    if val is not None:
        roles.check(val["id"], ("validation",), "distill (validation split)", args.force_roles)
    return train, val


def with_targets(rows, args):
    """`rows` with `target` (hard) and `soft` (P(unsafe)) columns: the teacher's (KD) or the human label."""
    if args.labels == "human":
        rows = rows.filter(lambda o, h: o == "seed" and h is not None, input_columns=["origin", "human_label"])
        return rows.map(lambda h: {"target": int(h), "soft": float(h)}, input_columns="human_label")
    if any(s is None for s in rows["unsafe_score"]):
        raise ValueError("Some corpus rows have no teacher unsafe_score: --labels teacher needs a teacher-scored HarmAug corpus.")
    return rows.map(lambda s: {"target": int(s > 0.5), "soft": float(s)}, input_columns="unsafe_score")


def with_prefixes(train, prefixes):
    """The train split with its prefix rows (origin "prefix") when `prefixes`, else without them."""
    if not prefixes:
        return train.filter(lambda o: o != "prefix", input_columns="origin")
    if "prefix" not in set(train["origin"]):
        raise ValueError("--prefixes: the corpus has no prefix rows; build it with `saferoute build-corpus --prefix_rows N`.")
    return train


def synthetic_kinds(text):
    """The synthetic kinds named in `text` (comma-separated), in the corpus' order; unknown ones refused."""
    wanted = {k.strip() for k in str(text).split(",") if k.strip()}
    unknown = wanted - set(SYNTHETIC_KINDS)
    if unknown or not wanted:
        raise ValueError(f"--synthetic_kinds: {sorted(unknown) or 'none given'}; choose among {list(SYNTHETIC_KINDS)}.")
    return [k for k in SYNTHETIC_KINDS if k in wanted]


def with_synthetic_kinds(train, kinds):
    """The train split without the synthetic rows whose kind is not in `kinds` (comma-separated)."""
    wanted = synthetic_kinds(kinds)
    if wanted == list(SYNTHETIC_KINDS):
        return train
    return train.filter(lambda o, k: o != "synthetic" or k in wanted, input_columns=["origin", "kind"])


def training_rows(train, args):
    """The rows this run trains on: all (HarmAug), the seed rows (--no-augmentation), or the seed
    rows with their human labels (--labels human)."""
    if args.labels == "teacher" and not args.augmentation:
        train = train.filter(lambda o: o == "seed", input_columns="origin")
    rows = with_targets(train, args)
    if len(rows) < 4:
        raise ValueError(f"Only {len(rows)} training rows for --labels {args.labels} (augmentation={args.augmentation}).")
    return rows


def corpus_taxonomy(corpus):
    """The Taxonomy of a corpus folder's teacher category scores (its `taxonomy.json`), or None."""
    from dataset_builders.harmaug.build import TAXONOMY_FILE
    from modeling_saferoute.taxonomy import Taxonomy

    path = Path(corpus) / TAXONOMY_FILE if Path(str(corpus)).is_dir() else None
    return Taxonomy.load(json.loads(path.read_text())) if path is not None and path.exists() else None


def with_category_soft(rows, taxonomy, where):
    """`rows` with `category_soft`: the teacher's probabilities per category (NaN without them)."""
    if taxonomy is None:
        return rows
    if "category_scores" not in rows.column_names:
        return rows.add_column("category_soft", nan_rows(len(rows), len(taxonomy)))
    names = taxonomy.names

    def soft(scores):
        if scores is None:
            return {"category_soft": [math.nan] * len(names)}
        missing = [n for n in names if n not in scores]
        if missing:
            raise ValueError(f"{where}: the teacher's category scores lack {missing} of the taxonomy {taxonomy.name!r}.")
        return {"category_soft": [math.nan if scores[n] is None else float(scores[n]) for n in names]}

    return rows.map(soft, input_columns="category_scores")


def harmaug_loss(logits, labels, soft=None):
    """0.5 * (CE(logits, labels) + KL([1 - soft, soft] || softmax(logits))); plain CE when `soft` is None."""
    logits = logits.float()
    loss = F.cross_entropy(logits, labels)
    if soft is None:
        return loss
    teacher = torch.stack([1 - soft.float(), soft.float()], dim=-1)
    return 0.5 * (loss + F.kl_div(F.log_softmax(logits, dim=-1), teacher, reduction="batchmean"))


class DistillTrainer(CategoryLossMixin, BalancedSamplingMixin, Trainer):
    """Trainer with the HarmAug loss (and the category loss of a category head, `CategoryLossMixin`)
    and a class-balanced (length-grouped) sampler."""

    loss_is_scaled_for_ga = False  # compute_loss returns a per-batch mean

    def __init__(self, *args, kd=True, **kwargs):
        super().__init__(*args, **kwargs)
        self.kd = kd

    def binary_loss(self, logits, labels, soft):
        return harmaug_loss(logits, labels, soft if self.kd else None)


def compute_metrics(eval_pred):
    """F1 / precision / recall / accuracy at 0.5 and AUPRC of P(unsafe) against the training target
    (`evaluation.metrics.classification_metrics`)."""
    logits = eval_pred.predictions[0] if isinstance(eval_pred.predictions, tuple) else eval_pred.predictions
    probs = torch.softmax(torch.as_tensor(logits).float(), dim=-1)[:, 1].numpy()
    with collect_warnings([], "distill validation"):
        return classification_metrics(eval_pred.label_ids, probs)


def tokenize(rows, tokenizer, max_length):
    """input_ids (+ masks), labels, soft, length: the pair encoding of each row."""

    def encode(batch):
        items = [{"prompt": p, "response": r} for p, r in zip(batch["prompt"], batch["response"])]
        encodings, _ = encode_pairs(tokenizer, items, max_length)
        out = {key: [e[key] for e in encodings] for key in encodings[0]}
        out["labels"] = batch["target"]
        out["soft"] = batch["soft"]
        out["length"] = [len(e["input_ids"]) for e in encodings]
        for column in ("category_targets", "category_soft"):
            if column in batch:
                out[column] = batch[column]
        return out

    return rows.map(encode, batched=True, remove_columns=rows.column_names, desc="tokenizing")


TRAIN_COLUMNS = ("prompt", "response", "target", "soft", "source", "origin", "category_targets", "category_soft")


def distill_taxonomy(args):
    """The taxonomy of the student's category head: the corpus teacher's (its category scores), which
    `--taxonomy` may only name again; else `--taxonomy` when `--category_rows` asks for labeled rows;
    None: no category head."""
    teacher = corpus_taxonomy(args.corpus)
    if teacher is None and not args.category_rows:
        return None
    taxonomy = run_taxonomy(args, teacher)
    if teacher is not None:
        taxonomy.require_same(teacher, f"The teacher category scores of the corpus {args.corpus} (--taxonomy {args.taxonomy!r})")
    return taxonomy


def with_categories(args, taxonomy, rows, validation, steps):
    """(training rows, validation rows, labeled rows or None, steps) with the category columns: the
    corpus rows' `category_soft` (the teacher's probabilities; NaN without them or with --labels human)
    and unknown `category_targets`, then the labeled category rows (binary target IGNORE, their labels
    as `category_targets`). Unless --max-steps is set, the steps grow by the labeled rows' share."""
    from datasets import concatenate_datasets

    def prepared(part, where):
        part = with_category_soft(part, taxonomy, where)
        if args.labels == "human":  # no teacher: the category head learns from the labeled rows alone
            part = part.remove_columns("category_soft").add_column("category_soft", nan_rows(len(part), len(taxonomy)))
        return part.add_column("category_targets", nan_rows(len(part), len(taxonomy)))

    rows, validation = prepared(rows, "corpus train split"), prepared(validation, "corpus validation split")
    labeled = category_rows(args, taxonomy)
    if labeled is None or not len(labeled):
        return rows, validation, None, steps
    labeled = labeled.map(lambda _: {"target": IGNORE, "soft": math.nan, "origin": "category",
                                     "category_soft": [math.nan] * len(taxonomy)})
    train_rows = concatenate_datasets([rows.select_columns(TRAIN_COLUMNS), labeled.select_columns(TRAIN_COLUMNS)])
    if not (args.max_steps and args.max_steps > 0):
        steps = math.ceil(steps * len(train_rows) / len(rows))
    return train_rows, validation, labeled, steps


def is_complete(output_dir):
    info = Path(output_dir) / INFO_FILE
    return info.exists() and json.loads(info.read_text()).get("complete", False) and (Path(output_dir) / "config.json").exists()


def budget_steps(n_full_train, args):
    """Optimizer steps of the full HarmAug run: epochs * ceil(rows / effective batch)."""
    effective = args.per_device_train_batch_size * args.gradient_accumulation_steps * max(1, args.world_size)
    return max(1, math.ceil(args.num_train_epochs * math.ceil(n_full_train / effective)))


def prepare(args):
    """(training rows, validation rows, optimizer steps, role table) of a run.

    With `--step_budget harmaug` the budget is that of the full HarmAug run on this corpus
    whatever the ablation; with `epochs`, num_train_epochs over this run's own rows; --max-steps
    overrides both.
    """
    roles = RoleTable(args.roles)
    train, val = corpus_splits(args, roles)
    train = with_synthetic_kinds(with_prefixes(train, args.prefixes), args.synthetic_kinds)
    if val is None:  # no validation split: a stratified share of the train split, as the paper does
        rest, held = stratified_split(train, ("label", "origin"), args.validation_size, args.seed)
        train, val = train.select(rest), train.select(held)
    n_full = len(train)  # rows of the full HarmAug run (seed + synthetic)
    rows = training_rows(train, args)
    if args.max_train_rows and len(rows) > args.max_train_rows:
        rows = rows.shuffle(seed=args.seed).select(range(args.max_train_rows))
        n_full = min(n_full, args.max_train_rows)
    validation = with_targets(val, args)
    if args.max_steps and args.max_steps > 0:
        steps = args.max_steps
    else:
        steps = budget_steps(n_full if args.step_budget == "harmaug" else len(rows), args)
    return rows, validation, steps, roles


def run_arguments(args, steps):
    """The Trainer's arguments of this run: `args` with the step budget (and a warm-up that fits a
    short run); `args` itself is left as parsed."""
    warmup = args.warmup_steps
    if warmup >= 1 and warmup > 0.1 * steps:
        logger.info("Short run (%d steps): warm-up %d steps -> ratio 0.1.", steps, warmup)
        warmup = 0.1
    return dataclasses.replace(args, max_steps=steps, warmup_steps=warmup)


def relative_position_overrides(config, max_length):
    """Config changes for a student with relative positions only (DeBERTa-v2/v3) trained beyond its
    `max_position_embeddings`: HarmAug's code sets it to the training length (1024), which widens
    the log-bucketed relative positions to that span. Empty for every other student."""
    if config.model_type == "deberta-v2" and not getattr(config, "position_biased_input", True) and max_length > config.max_position_embeddings:
        return {"max_position_embeddings": max_length}
    return {}


def load_student_classifier(args):
    """(tokenizer, model, token budget): the student with a seeded new 2-way head (and, for a
    DeBERTa-v2/v3 student trained past its position limit, `relative_position_overrides` saved in
    its config)."""
    path = resolve(args.student)
    set_seed(args.seed)  # the new head's initialisation
    tokenizer = AutoTokenizer.from_pretrained(path)
    config = AutoConfig.from_pretrained(path, num_labels=2, id2label=dict(LABELS), label2id={v: k for k, v in LABELS.items()})
    overrides = relative_position_overrides(config, args.max_length)
    for key, value in overrides.items():
        logger.info("Student %s: %s %s -> %s (relative positions up to the training length).", args.student, key, getattr(config, key), value)
        setattr(config, key, value)
    model = AutoModelForSequenceClassification.from_pretrained(path, config=config, ignore_mismatched_sizes=True)
    if args.freeze_embeddings or args.freeze_layers:
        freeze_lower_layers(model, args.freeze_layers)
    return tokenizer, model, min(args.max_length, position_limit(model.config) or args.max_length)


def training_record(args, run_args, trainer, result, metrics, rows, validation, roles, steps, max_length, seconds, budget):
    """The `training_info.json` of a distilled student."""
    return {
        "complete": True,
        "student": args.student,
        "corpus": str(Path(args.corpus).resolve()) if Path(args.corpus).is_dir() else args.corpus,
        "labels": args.labels,
        "augmentation": args.augmentation if args.labels == "teacher" else False,
        "loss": "0.5*(CE+KL)" if args.labels == "teacher" else "CE",
        "max_length": max_length,
        "student_config_overrides": relative_position_overrides(AutoConfig.from_pretrained(resolve(args.student)), args.max_length),
        "rows": {"train": len(rows), "validation": len(validation),
                 "synthetic_train": int(sum(o == "synthetic" for o in rows["origin"])),
                 "prefix_train": int(sum(o == "prefix" for o in rows["origin"]))},
        "train_rows_per_source": rows_per_source(rows),
        "roles": roles.record(STUDENT_ROLES),
        "step_budget": args.step_budget,
        "budget_steps": steps,
        "steps_done": trainer.state.global_step,
        "stopped_early": bool(budget and budget.fired),
        "effective_batch_size": run_args.per_device_train_batch_size * run_args.gradient_accumulation_steps * max(1, run_args.world_size),
        "kept": "best" if run_args.load_best_model_at_end else "final",
        "best_checkpoint": trainer.state.best_model_checkpoint if run_args.load_best_model_at_end else None,
        "validation": {k.removeprefix("eval_"): v for k, v in metrics.items()},
        "train_loss": result.training_loss,
        "log_history": trainer.state.log_history,
        "train_seconds": round(seconds, 1),
        "precision": precision_record(args.precision, "cpu" if args.use_cpu else "cuda"),
        "hyperparameters": {k: v for k, v in recorded_arguments(run_args).items() if k in _RECORDED},
        "arguments": recorded_arguments(args),
    }


def fit_calibration(args, logits, validation):
    """The Platt record of the student's validation `logits` against the run's validation targets, or
    {"method": "none", "skipped": why} (logged) where none can be fitted (e.g. one class only)."""
    kind = "human labels" if args.labels == "human" else "teacher P(unsafe)"
    try:
        record = platt_record(logits, validation["soft"], kind)
    except ValueError as err:
        logger.warning("Calibration skipped: %s", err)
        return {"method": "none", "skipped": str(err)}
    logger.info("Calibration (Platt, %d validation rows): P(unsafe) = sigmoid(%.3f * margin %+.3f); the old %.3f now reads 0.5; "
                "validation flagged %.3f -> %.3f (targets %.3f).", record["rows"], record["scale"], record["bias"],
                record["threshold_before"], record["validation_before"]["flagged"], record["validation_after"]["flagged"],
                record["targets_unsafe"])
    return record


def calibrate_only(args: DistillConfig):
    """Calibrate the finished student in `output_dir` on the validation rows (no training); its
    `training_info.json` records it. Returns the folder."""
    output = Path(args.output_dir)
    if not is_complete(output):
        raise ValueError(f"--calibrate_only: {output} holds no complete student (no {INFO_FILE} with complete: true).")
    info = json.loads((output / INFO_FILE).read_text())
    if info.get("calibration", {}).get("method", "none") != "none":
        raise ValueError(f"--calibrate_only: {output} is already calibrated ({info['calibration']['method']}).")
    if info.get("labels", args.labels) != args.labels:
        raise ValueError(f"--calibrate_only: {output} was trained with --labels {info['labels']}; pass the same.")
    corpus = str(Path(args.corpus).resolve()) if Path(args.corpus).is_dir() else args.corpus
    if info.get("corpus", corpus) != corpus:
        raise ValueError(f"--calibrate_only: {output} was trained on the corpus {info['corpus']}, not {corpus}; pass that one.")
    _, validation, _, _ = prepare(args)
    tokenizer = AutoTokenizer.from_pretrained(output)
    model = AutoModelForSequenceClassification.from_pretrained(output)
    val_ds = tokenize(validation, tokenizer, info.get("max_length", args.max_length))
    calibration = fit_calibration(args, ordered_logits(model, tokenizer, val_ds, args), validation)
    if calibration["method"] == "platt":
        fold_platt(model, calibration["scale"], calibration["bias"])
        model.save_pretrained(output)
    info["calibration"] = {**calibration, "applied": "calibrate_only"}
    (output / INFO_FILE).write_text(json.dumps(info, indent=2, default=str))
    return output


def ordered_logits(model, tokenizer, dataset, args):
    """`model`'s logits on the tokenized `dataset`, in its row order (`Trainer.predict` with sequential
    sampling: the length-grouped eval sampler of a run shuffles the rows)."""
    predict_args = dataclasses.replace(args, report_to=[], eval_strategy="no", save_strategy="no", load_best_model_at_end=False,
                                       train_sampling_strategy="random")
    extra = [c for c in ("soft", "length", "category_targets", "category_soft") if c in dataset.column_names]
    trainer = Trainer(model=model, args=predict_args, processing_class=tokenizer, data_collator=DataCollatorWithPadding(tokenizer))
    return trainer.predict(dataset.remove_columns(extra)).predictions


def distill(args: DistillConfig):
    """Train the student; returns the output folder (skips when it is already complete)."""
    if args.calibrate_only:
        return calibrate_only(args)
    output = Path(args.output_dir)
    if is_complete(output) and not args.force:
        logger.info("%s already holds a complete student (%s); skipping (--force to retrain).", output, INFO_FILE)
        return output
    start = time.time()
    rows, validation, steps, roles = prepare(args)
    taxonomy, train_rows, labeled = distill_taxonomy(args), rows, None
    if taxonomy is not None:
        train_rows, validation, labeled, steps = with_categories(args, taxonomy, rows, validation, steps)
    run_args = run_arguments(args, steps)
    tokenizer, model, max_length = load_student_classifier(args)
    if taxonomy is not None:
        attach_category_head(model, taxonomy, args.seed, training_args=run_args)
    with run_args.main_process_first(desc="tokenizing"):
        train_ds, val_ds = tokenize(train_rows, tokenizer, max_length), tokenize(validation, tokenizer, max_length)
    budget = TimeBudgetCallback(args.max_seconds) if args.max_seconds else None
    trainer = DistillTrainer(
        model=model,
        args=run_args,
        train_dataset=train_ds,
        eval_dataset=val_ds,
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=compute_metrics,
        kd=args.labels == "teacher",
        class_labels=[-1 if y == IGNORE else y for y in train_ds["labels"]] if args.balanced else None,
        callbacks=[budget] if budget else None,
        category_loss_weight=args.category_loss_weight,
    )
    last = get_last_checkpoint(str(output)) if output.is_dir() else None
    result = trainer.train(resume_from_checkpoint=last)
    metrics = trainer.evaluate()
    calibration = (fit_calibration(args, ordered_logits(trainer.model, tokenizer, val_ds, run_args), validation)
                   if args.calibration == "platt" else None)
    head = detach_category_head(trainer.model) if taxonomy is not None else None
    if calibration and calibration["method"] == "platt":
        fold_platt(trainer.model, calibration["scale"], calibration["bias"])
    trainer.save_model(str(output))  # every process calls it; the main one writes
    if trainer.is_world_process_zero():
        (output / "training_args.bin").unlink(missing_ok=True)  # a pickle: training_info.json records the settings
        if head is not None:
            save_category_head(output, head[0], taxonomy, head[1])
        info = training_record(args, run_args, trainer, result, metrics, rows, validation, roles, steps, max_length,
                               time.time() - start, budget)
        info["categories"] = category_record(taxonomy, train_rows, labeled) if taxonomy is not None else None
        info["calibration"] = calibration or {"method": "none"}
        (output / INFO_FILE).write_text(json.dumps(info, indent=2, default=str))
        if not args.keep_checkpoints:
            remove_checkpoints(output)
    trainer.accelerator.wait_for_everyone()
    return output


_RECORDED = (
    "learning_rate", "weight_decay", "max_grad_norm", "lr_scheduler_type", "warmup_steps", "num_train_epochs", "max_steps",
    "per_device_train_batch_size", "gradient_accumulation_steps", "precision", "bf16", "seed", "validation_size", "balanced",
    "train_sampling_strategy", "metric_for_best_model", "max_train_rows", "max_seconds", "step_budget", "prefixes",
    "freeze_embeddings", "freeze_layers", "calibration",
)


def main(argv=None):
    args = parse_args([DistillConfig], argv, section="distill")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    out = distill(args)
    info = json.loads((out / INFO_FILE).read_text()) if (out / INFO_FILE).exists() else {}
    print(f"Student in {out}: validation {info.get('validation')}")


if __name__ == "__main__":
    main()
