"""`saferoute distill`: HarmAug knowledge distillation of the teacher into a small encoder student.

Loss = 0.5 * (CE(logits, hard) + KL(teacher || student)), teacher distribution [1 - p, p], p the
teacher's P(unsafe) (`unsafe_score` of the HarmAug corpus). Class-balanced sampling, AdamW
(lr 3e-5, weight decay 0.1 off bias/LayerNorm, grad clip 1.0, linear schedule, warm-up), 10%
stratified validation, best checkpoint kept. A seeded, stratified part of the seed rows is held
out for `saferoute train-router` and never seen here (recorded in `training_info.json`); it is drawn
from the rows the teacher did not train on when the teacher records them (`training_ids.json`).

Ablations on the same budget (same number of optimizer steps as the full run):
`--labels human` (plain fine-tune on the seed rows' human labels, CE only),
`--no-augmentation` (KD on the seed rows only), and full HarmAug (default).

Runs as `saferoute distill`, `python -m training.distill` or `accelerate launch -m training.distill`.
The settings are a `TrainingArguments` subclass (`DistillConfig`): every Trainer flag works.
"""

import dataclasses
import json
import logging
import math
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from datasets import load_dataset
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    Trainer,
    TrainingArguments,
    set_seed,
)
from transformers.trainer_utils import get_last_checkpoint

from dataset_builders.harmaug.card import corpus_teacher
from dataset_builders.seed_pool import load_seed_pool
from modeling_saferoute.bundled import resolve
from modeling_saferoute.configuration_saferoute import LABELS
from modeling_saferoute.inputs import encode_pairs
from modeling_saferoute.modeling_saferoute import position_limit
from saferoute.config import parse_args

from .guard_data import guard_training_ids
from .sampling import BalancedSamplingMixin, TimeBudgetCallback, remove_checkpoints

logger = logging.getLogger(__name__)

CORPUS_COLUMNS = ("id", "prompt", "response", "unsafe_score", "label", "human_label", "level", "source", "origin", "kind")
INFO_FILE = "training_info.json"


@dataclass
class DistillConfig(TrainingArguments):
    """`TrainingArguments` with the paper's defaults, plus the distillation settings."""

    corpus: str = field(default="{output_root}/harmaug", metadata={"help": "HarmAug corpus folder (load_dataset(folder, split='train')); with --labels human also a seed pool: 'offline', 'wildguardmix' or a .jsonl/.parquet file."})
    student: str = field(default="bundled:minilm-l6", metadata={"help": "Student: any encoder with an AutoModelForSequenceClassification class (local folder, Hub id or bundled: alias)."})
    labels: str = field(default="teacher", metadata={"help": "'teacher' (KD on the teacher's soft + hard labels) or 'human' (CE on the seed rows' human labels)."})
    augmentation: bool = field(default=True, metadata={"help": "Train on the synthetic rows too (HarmAug); --no-augmentation keeps the seed rows only."})
    max_length: int = field(default=1024, metadata={"help": "Token budget of the pair encoding (capped at the student's position embeddings)."})
    validation_size: float = field(default=0.1, metadata={"help": "Stratified validation share of the training rows."})
    router_holdout: float = field(default=0.2, metadata={"help": "Share of the seed rows held out for train-router (never trained on); 0 disables."})
    holdout_seed: int = field(default=0, metadata={"help": "Seed of the router hold-out split."})
    max_train_rows: Optional[int] = field(default=None, metadata={"help": "Keep a seeded random subset of this many rows (after the hold-out), for quick runs."})
    balanced: bool = field(default=True, metadata={"help": "Class-balanced sampling (WeightedRandomSampler, weight 1/class count)."})
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
    bf16: bool = field(default=True, metadata={"help": "bf16 autocast (CPU too); --no-bf16 for float32."})
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
        if not 0 <= self.router_holdout < 1:
            raise ValueError(f"--router-holdout must be in [0, 1), got {self.router_holdout}.")
        if self.train_sampling_strategy not in ("group_by_length", "random"):
            raise ValueError(f"--train-sampling-strategy must be 'group_by_length' or 'random' here, got {self.train_sampling_strategy!r}.")
        if self.bf16 and not torch.cuda.is_available():
            self.use_cpu = True  # bf16 autocast on CPU
        super().__post_init__()


def load_corpus(corpus):
    """The HarmAug corpus (a folder), or a seed pool in the corpus layout (human labels only)."""
    if Path(corpus).is_dir():
        ds = load_dataset(str(corpus), split="train")
        missing = [c for c in CORPUS_COLUMNS if c not in ds.column_names]
        if missing:
            raise ValueError(f"Corpus {corpus} lacks the columns {missing} (expected {list(CORPUS_COLUMNS)}).")
        return ds
    if corpus in ("offline", "wildguardmix") or corpus.rsplit(".", 1)[-1] in ("jsonl", "json", "parquet"):
        pool = load_seed_pool(corpus)
        n = len(pool)
        return pool.remove_columns("category").add_column("human_label", pool["label"]).add_column(
            "unsafe_score", [None] * n, feature=None
        ).add_column("origin", ["seed"] * n).add_column("kind", ["seed"] * n)
    raise ValueError(f"Corpus {corpus!r} is neither a corpus folder nor a seed pool ('offline', 'wildguardmix', a .jsonl/.parquet file).")


def stratified_split(ds, columns, test_size, seed):
    """Seeded split stratified on the joint value of `columns`; returns (rest, test) index lists."""
    from sklearn.model_selection import train_test_split

    values = [ds[c] for c in columns]
    strata = ["|".join(str(v) for v in row) for row in zip(*values)]
    stratify = strata if min(Counter(strata).values(), default=0) >= 2 else None
    if stratify is None:
        logger.warning("Some stratum of %s has fewer than 2 rows: splitting without stratification.", columns)
    idx = np.arange(len(ds))
    rest, test = train_test_split(idx, test_size=test_size, random_state=seed, stratify=stratify)
    return sorted(rest.tolist()), sorted(test.tolist())


def router_holdout_ids(corpus, fraction, seed, exclude=None):
    """Ids of the seed rows held out for the router: seeded, stratified on (human_label, level).

    As many rows as `fraction` of the corpus seed rows, drawn only from rows whose id is not in
    `exclude` (the rows the teacher trained on: the router's label needs the large guard's errors
    on inputs new to it too); all of them when fewer remain.
    """
    if fraction <= 0:
        return []
    seed_rows = corpus.filter(lambda o: o == "seed", input_columns="origin")
    wanted = math.ceil(fraction * len(seed_rows))
    if exclude:
        seed_rows = seed_rows.filter(lambda i: i not in exclude, input_columns="id")
    if len(seed_rows) < 2:
        raise ValueError(
            f"The corpus has {len(seed_rows)} seed rows{' the teacher did not train on' if exclude else ''}: "
            "nothing to hold out for the router (use --router-holdout 0)."
        )
    if wanted >= len(seed_rows) - 1:
        logger.info("Router hold-out: all %d seed rows the teacher did not train on (%d wanted).", len(seed_rows), wanted)
        held = range(len(seed_rows))
    else:
        _, held = stratified_split(seed_rows, ("human_label", "level"), max(wanted, 2), seed)
    ids = seed_rows["id"]
    return list(dict.fromkeys(ids[i] for i in held))  # unique; every row with a held-out id stays out of training


def teacher_training_ids(corpus):
    """Seed-pool ids the corpus' teacher trained on (None when its card or folder records none)."""
    if not Path(corpus).is_dir():
        return None
    teacher = corpus_teacher(corpus)
    ids = guard_training_ids(teacher["name_or_path"]) if teacher else None
    if ids is None:
        logger.warning(
            "The teacher of %s records no training ids: the router hold-out may hold rows it trained on, "
            "where its errors are rarer than on new inputs.", corpus
        )
    return ids


def training_rows(corpus, args, holdout):
    """The rows this run trains on (hold-out removed), with `target` (hard) and `soft` (P(unsafe)) columns."""
    held = set(holdout)
    pool = corpus.filter(lambda i: i not in held, input_columns="id")
    if args.labels == "human":
        rows = pool.filter(lambda o, h: o == "seed" and h is not None, input_columns=["origin", "human_label"])
        rows = rows.map(lambda h: {"target": int(h), "soft": float(h)}, input_columns="human_label")
    else:
        if any(s is None for s in pool["unsafe_score"]):
            raise ValueError("Some corpus rows have no teacher unsafe_score: --labels teacher needs a teacher-scored HarmAug corpus.")
        rows = pool if args.augmentation else pool.filter(lambda o: o == "seed", input_columns="origin")
        rows = rows.map(lambda s: {"target": int(s > 0.5), "soft": float(s)}, input_columns="unsafe_score")
    if len(rows) < 4:
        raise ValueError(f"Only {len(rows)} training rows for --labels {args.labels} (augmentation={args.augmentation}).")
    return pool, rows


def harmaug_loss(logits, labels, soft=None):
    """0.5 * (CE(logits, labels) + KL([1 - soft, soft] || softmax(logits))); plain CE when `soft` is None."""
    logits = logits.float()
    loss = F.cross_entropy(logits, labels)
    if soft is None:
        return loss
    teacher = torch.stack([1 - soft.float(), soft.float()], dim=-1)
    return 0.5 * (loss + F.kl_div(F.log_softmax(logits, dim=-1), teacher, reduction="batchmean"))


class DistillTrainer(BalancedSamplingMixin, Trainer):
    """Trainer with the HarmAug loss and a class-balanced (length-grouped) sampler."""

    loss_is_scaled_for_ga = False  # compute_loss returns a per-batch mean

    def __init__(self, *args, kd=True, **kwargs):
        super().__init__(*args, **kwargs)
        self.kd = kd

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels")
        soft = inputs.pop("soft")
        inputs.pop("length", None)
        outputs = model(**inputs)
        loss = harmaug_loss(outputs.logits, labels, soft if self.kd else None)
        return (loss, outputs) if return_outputs else loss


def compute_metrics(eval_pred):
    """F1 / precision / recall / accuracy at 0.5 and AUPRC of P(unsafe) against the training target."""
    from sklearn.metrics import accuracy_score, average_precision_score, precision_recall_fscore_support

    logits = eval_pred.predictions[0] if isinstance(eval_pred.predictions, tuple) else eval_pred.predictions
    labels = eval_pred.label_ids
    probs = torch.softmax(torch.as_tensor(logits).float(), dim=-1)[:, 1].numpy()
    preds = (probs > 0.5).astype(int)
    p, r, f1, _ = precision_recall_fscore_support(labels, preds, average="binary", zero_division=0)
    auprc = average_precision_score(labels, probs) if labels.any() else float("nan")
    return {"f1": f1, "precision": p, "recall": r, "accuracy": accuracy_score(labels, preds), "auprc": auprc}


def tokenize(rows, tokenizer, max_length):
    """input_ids (+ masks), labels, soft, length: the pair encoding of each row."""

    def encode(batch):
        items = [{"prompt": p, "response": r} for p, r in zip(batch["prompt"], batch["response"])]
        encodings, _ = encode_pairs(tokenizer, items, max_length)
        out = {key: [e[key] for e in encodings] for key in encodings[0]}
        out["labels"] = batch["target"]
        out["soft"] = batch["soft"]
        out["length"] = [len(e["input_ids"]) for e in encodings]
        return out

    return rows.map(encode, batched=True, remove_columns=rows.column_names, desc="tokenizing")


def is_complete(output_dir):
    info = Path(output_dir) / INFO_FILE
    return info.exists() and json.loads(info.read_text()).get("complete", False) and (Path(output_dir) / "config.json").exists()


def budget_steps(n_full_train, args):
    """Optimizer steps of the full HarmAug run: epochs * ceil(rows / effective batch)."""
    effective = args.per_device_train_batch_size * args.gradient_accumulation_steps * max(1, args.world_size)
    return max(1, math.ceil(args.num_train_epochs * math.ceil(n_full_train / effective)))


def prepare(args):
    """(hold-out ids, training rows, optimizer steps, train indices, validation indices, whether the
    hold-out excludes the teacher's training rows) of a run.

    The step budget is that of the full HarmAug run on this corpus whatever the ablation, unless
    --max-steps is given.
    """
    corpus = load_corpus(args.corpus)
    teacher_ids = teacher_training_ids(args.corpus) if args.router_holdout > 0 else None
    holdout = router_holdout_ids(corpus, args.router_holdout, args.holdout_seed, teacher_ids)
    pool, rows = training_rows(corpus, args, holdout)
    n_full = len(pool)  # rows of the full HarmAug run (seed + synthetic, hold-out removed)
    if args.max_train_rows and len(rows) > args.max_train_rows:
        rows = rows.shuffle(seed=args.seed).select(range(args.max_train_rows))
        n_full = min(n_full, args.max_train_rows)
    steps = args.max_steps if args.max_steps and args.max_steps > 0 else budget_steps(round(n_full * (1 - args.validation_size)), args)
    train_idx, val_idx = stratified_split(rows, ("target", "origin"), args.validation_size, args.seed)
    return holdout, rows, steps, train_idx, val_idx, teacher_ids is not None


def run_arguments(args, steps):
    """The Trainer's arguments of this run: `args` with the step budget (and a warm-up that fits a
    short run); `args` itself is left as parsed."""
    warmup = args.warmup_steps
    if warmup >= 1 and warmup > 0.1 * steps:
        logger.info("Short run (%d steps): warm-up %d steps -> ratio 0.1.", steps, warmup)
        warmup = 0.1
    return dataclasses.replace(args, max_steps=steps, warmup_steps=warmup)


def load_student_classifier(args):
    """(tokenizer, model, token budget): the student with a seeded new 2-way head."""
    path = resolve(args.student)
    set_seed(args.seed)  # the new head's initialisation
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=2, id2label=dict(LABELS), label2id={v: k for k, v in LABELS.items()}, ignore_mismatched_sizes=True
    )
    return tokenizer, model, min(args.max_length, position_limit(model.config) or args.max_length)


def training_record(args, run_args, trainer, result, metrics, rows, train_idx, holdout, teacher_unseen, steps, max_length, seconds, budget):
    """The `training_info.json` of a distilled student."""
    return {
        "complete": True,
        "student": args.student,
        "corpus": str(Path(args.corpus).resolve()) if Path(args.corpus).is_dir() else args.corpus,
        "labels": args.labels,
        "augmentation": args.augmentation if args.labels == "teacher" else False,
        "loss": "0.5*(CE+KL)" if args.labels == "teacher" else "CE",
        "max_length": max_length,
        "rows": {"train": len(train_idx), "validation": len(rows) - len(train_idx),
                 "synthetic_train": int(sum(o == "synthetic" for o in rows.select(train_idx)["origin"]))},
        "budget_steps": steps,
        "steps_done": trainer.state.global_step,
        "stopped_early": bool(budget and budget.fired),
        "effective_batch_size": run_args.per_device_train_batch_size * run_args.gradient_accumulation_steps * max(1, run_args.world_size),
        "best_checkpoint": trainer.state.best_model_checkpoint,
        "validation": {k.removeprefix("eval_"): v for k, v in metrics.items()},
        "train_loss": result.training_loss,
        "log_history": trainer.state.log_history,
        "train_seconds": round(seconds, 1),
        "router_holdout": {"fraction": args.router_holdout, "seed": args.holdout_seed, "stratify": ["human_label", "level"],
                           "teacher_unseen": teacher_unseen, "num_rows": len(holdout), "ids": holdout},
        "hyperparameters": {k: v for k, v in asdict(run_args).items() if k in _RECORDED},
    }


def distill(args: DistillConfig):
    """Train the student; returns the output folder (skips when it is already complete)."""
    output = Path(args.output_dir)
    if is_complete(output) and not args.force:
        logger.info("%s already holds a complete student (%s); skipping (--force to retrain).", output, INFO_FILE)
        return output
    start = time.time()
    holdout, rows, steps, train_idx, val_idx, teacher_unseen = prepare(args)
    run_args = run_arguments(args, steps)
    tokenizer, model, max_length = load_student_classifier(args)
    with run_args.main_process_first(desc="tokenizing"):
        encoded = tokenize(rows, tokenizer, max_length)
    train_ds, val_ds = encoded.select(train_idx), encoded.select(val_idx)
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
        class_labels=train_ds["labels"] if args.balanced else None,
        callbacks=[budget] if budget else None,
    )
    last = get_last_checkpoint(str(output)) if output.is_dir() else None
    result = trainer.train(resume_from_checkpoint=last)
    metrics = trainer.evaluate()
    trainer.save_model(str(output))  # every process calls it; the main one writes
    if trainer.is_world_process_zero():
        (output / "training_args.bin").unlink(missing_ok=True)  # a pickle: training_info.json records the settings
        info = training_record(args, run_args, trainer, result, metrics, rows, train_idx, holdout, teacher_unseen, steps,
                               max_length, time.time() - start, budget)
        (output / INFO_FILE).write_text(json.dumps(info, indent=2, default=str))
        if not args.keep_checkpoints:
            remove_checkpoints(output)
    trainer.accelerator.wait_for_everyone()
    return output


_RECORDED = (
    "learning_rate", "weight_decay", "max_grad_norm", "lr_scheduler_type", "warmup_steps", "num_train_epochs", "max_steps",
    "per_device_train_batch_size", "gradient_accumulation_steps", "bf16", "seed", "validation_size", "balanced",
    "train_sampling_strategy", "metric_for_best_model", "max_train_rows", "max_seconds",
)


def main(argv=None):
    args = parse_args([DistillConfig], argv, section="distill")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    out = distill(args)
    info = json.loads((out / INFO_FILE).read_text()) if (out / INFO_FILE).exists() else {}
    print(f"Student in {out}: validation {info.get('validation')}")


if __name__ == "__main__":
    main()
