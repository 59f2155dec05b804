"""`saferoute train-guard`: train the large guard (the teacher) on the labeled seed pool.

Two kinds behind one command, each saved as a folder that `load_guard(OUT, kind)` loads as is:

- `llama_guard`: a chat LLM tuned with TRL `SFTTrainer` + a PEFT LoRA adapter to answer "safe" or
  "unsafe" after the guard conversation (rendered by the `llama_guard` adapter's own `render`,
  through a Llama-Guard-style chat template shipped in the tokenizer); loss on the verdict only.
  The LoRA is merged into the base (`merge_and_unload`), so loading needs no peft.
- `sequence_classification`: an encoder fine-tuned as a 2-way classifier on the pair encoding
  (`modeling_saferoute.inputs.encode_pairs`) with the transformers `Trainer`. With `--category_rows N`
  a multi-label category head (`--taxonomy`) is trained beside the binary head in the same run, on
  the pooled feature the binary head reads: N labeled category rows (their binary loss masked) plus
  the teacher rows' category targets where their source says them (`training/categories.py`);
  saved as `category_head.json` + `category_head.safetensors` beside the stock classifier.

Both train on the `teacher` rows of the role split (`saferoute roles`; a per-source mix of at most
`max_train_examples` of them) and are scored by the guard adapter on `validation` rows (F1 at 0.5,
AUPRC). Class-balanced, length-grouped sampling, seeded; `training_info.json` records the roles
fingerprint and the rows per source; a finished folder is skipped (resume) and an interrupted run
resumes from its last checkpoint.

The settings are a TRL `SFTConfig` (a `TrainingArguments`) with the guard's own fields on top:
every Trainer flag works as in TRL's scripts.

    saferoute train-guard --config saferoute/recipes/cpu-offline.yaml [--flag value ...]
    accelerate launch --config_file saferoute/accelerate_configs/multi_gpu.yaml -m training.train_guard --config ...
"""

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import torch
from datasets import Dataset
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    Trainer,
    set_seed,
)
from transformers.trainer_utils import get_last_checkpoint
from trl import SFTConfig, SFTTrainer

from dataset_builders.roles import RoleTable, mixed_sample, parse_weights, rows_per_source
from dataset_builders.schema import guard_items
from dataset_builders.score_store import guard_scores, guard_store
from dataset_builders.seed_pool import load_seed_pool
from evaluation.metrics import classification_metrics, collect_warnings
from modeling_saferoute.bundled import resolve
from modeling_saferoute.guards import GUARD_KINDS, load_guard
from modeling_saferoute.inputs import encode_pairs
from modeling_saferoute.precision import precision_record
from saferoute.config import parse_args, recorded_arguments

from .categories import (IGNORE, CategoryArguments, CategoryLossMixin, attach_category_head, category_record, category_rows,
                         detach_category_head, run_taxonomy, save_category_head)
from .freezing import freeze_lower_layers
from .guard_template import DEFAULT_POLICY, guard_chat_template
from .precision import training_precision
from .sampling import BalancedSamplingMixin, TimeBudgetCallback, remove_checkpoints

logger = logging.getLogger(__name__)

KINDS = ("llama_guard", "sequence_classification")
VERDICTS = ("safe", "unsafe")
INFO_FILE = "training_info.json"
ADAPTER_DIR = "lora-adapter"


@dataclass
class TrainGuardConfig(CategoryArguments, SFTConfig):
    """TRL's `SFTConfig` (a `TrainingArguments`) with the settings of the guard to train.

    `max_length` is the token budget of the pair encoding (sequence_classification) or of the whole
    rendered guard prompt with its verdict (llama_guard)."""

    kind: str = field(default="sequence_classification", metadata={"help": f"Guard kind to train: {KINDS}."})
    base_model: str = field(default="bundled:mpnet-base", metadata={"help": "Base model: local folder, Hub id or bundled: alias (a causal chat LM for llama_guard, an encoder for sequence_classification)."})
    overwrite: bool = field(default=False, metadata={"help": "Retrain even if the output folder already holds a finished guard."})
    seed_pool: str = field(default="offline", metadata={"help": "The labeled pool the role split was made from: 'offline', 'wildguardmix' (Hub) or a .jsonl/.parquet file in the schema."})
    roles: str = field(default="{output_root}/roles", metadata={"help": "The role split (`saferoute roles`): training on its teacher rows, validation on its validation rows."})
    source_weights: Optional[Union[dict, str]] = field(default=None, metadata={"help": "Per-source weights of the training mix (e.g. 'x_hatecheck=0.3,x_convabuse=0'; default 1 each)."})
    max_train_examples: Optional[int] = field(default=None, metadata={"help": "At most this many teacher rows, mixed by --source-weights, stratified on level and label (budget)."})
    max_val_examples: Optional[int] = field(default=None, metadata={"help": "At most this many validation rows (stratified per source)."})
    max_content_tokens: int = field(default=512, metadata={"help": "llama_guard: each message is cut to this many tokens before rendering (adapter `max_content_tokens`)."})
    guard_policy: str = field(default=DEFAULT_POLICY, metadata={"help": "llama_guard: the unsafe-content categories written into the guard instruction (your taxonomy)."})
    chat_template: str = field(default="guard", metadata={"help": "llama_guard: 'guard' (build the guard template in the base's chat format), 'base' (keep the base tokenizer's template, e.g. for a Llama Guard base) or a .jinja file."})
    content_as_parts: bool = field(default=False, metadata={"help": "llama_guard: message content as [{'type': 'text', ...}] parts (Llama-Guard-3-1B's template)."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank (llama_guard)."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha (llama_guard)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout (llama_guard)."})
    lora_target_modules: str = field(default="all-linear", metadata={"help": "LoRA target modules: 'all-linear' or comma-separated names."})
    dtype: Optional[str] = field(default=None, metadata={"help": "dtype the base weights load in (e.g. bfloat16 on GPUs); default float32."})
    freeze_layers: int = field(default=0, metadata={"help": "sequence_classification: freeze the embeddings and this many lowest encoder layers (0: train everything); the backward pass and the optimizer then cover the upper layers only."})
    balanced_sampling: bool = field(default=True, metadata={"help": "Draw training examples with probability 1/class count (WeightedRandomSampler)."})
    max_seconds: Optional[float] = field(default=None, metadata={"help": "Opt-in wall-clock cap: stop training gracefully after this many seconds (recorded as stopped_early)."})
    per_device_eval_batch_size: int = field(default=32, metadata={"help": "Batch size of the validation scoring."})
    score_store: Optional[str] = field(default=None, metadata={"help": "Folder of the score store shared by the stages (recipes: {output_root}/scores): the validation scores are reused by build-corpus and evaluate; default: none."})
    # TrainingArguments / SFTConfig fields with this command's defaults
    output_dir: Optional[str] = field(default="{output_root}/teacher", metadata={"help": "Output guard folder (what `load_guard(OUT, kind)` loads); checkpoints go to its checkpoint-* subfolders."})
    max_length: Optional[int] = field(default=256, metadata={"help": "Token budget (see the class docstring)."})
    learning_rate: float = field(default=5e-5, metadata={"help": "Peak learning rate (AdamW, linear decay)."})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay."})
    warmup_steps: float = field(default=0.1, metadata={"help": "Warm-up steps (int) or ratio of the run (< 1)."})
    per_device_train_batch_size: int = field(default=16, metadata={"help": "Batch size per device."})
    precision: str = field(default="auto", metadata={"help": "'auto' (bf16 where the device multiplies it natively: AMX / AVX512-BF16 CPUs, bf16 GPUs; float32 elsewhere), 'bf16' or 'float32'."})
    bf16: Optional[bool] = field(default=None, metadata={"help": "Set from --precision (an explicit true / false forces bf16 / float32)."})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "Trade compute for memory (large bases on GPUs)."})
    train_sampling_strategy: str = field(default="group_by_length", metadata={"help": "'group_by_length' (batches of similar length) or 'random'."})
    save_strategy: str = field(default="no", metadata={"help": "'steps' with --save_steps N keeps checkpoints to resume long runs; 'no' saves only the result."})
    save_total_limit: Optional[int] = field(default=1, metadata={"help": "Checkpoints kept."})
    completion_only_loss: Optional[bool] = field(default=True, metadata={"help": "llama_guard: the loss is on the verdict tokens only."})
    packing: bool = field(default=False, metadata={"help": "Never pack guard prompts."})
    dataloader_num_workers: int = field(default=0, metadata={"help": "DataLoader workers."})
    seed: int = field(default=0, metadata={"help": "Seed of the split, the sampler and the new weights."})

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"--kind must be one of {KINDS}, got {self.kind!r}.")
        if self.max_length < 16:
            raise ValueError(f"--max-length must be at least 16, got {self.max_length}.")
        for name in ("max_train_examples", "max_val_examples"):
            value = getattr(self, name)
            if value is not None and value < 2:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 2, got {value}.")
        self.source_weights = parse_weights(self.source_weights)
        self.check_category_arguments()
        if self.category_rows and self.kind != "sequence_classification":
            raise ValueError("--category-rows trains a category head beside a sequence_classification guard; a llama_guard "
                             "guard reads its categories from its own answer (write them into --guard-policy).")
        if self.category_rows:
            self.remove_unused_columns = False  # the category targets must reach compute_loss
        if not torch.cuda.is_available():
            self.use_cpu = True  # bf16 autocast on CPU, and no accelerator search
        self.precision, self.bf16 = training_precision(self.precision, self.bf16, self.use_cpu)
        super().__post_init__()


class BalancedTrainer(BalancedSamplingMixin, Trainer):
    """`Trainer` with class-balanced, length-grouped sampling."""


class CategoryTrainer(CategoryLossMixin, BalancedSamplingMixin, Trainer):
    """`BalancedTrainer` with a category head beside the binary head (masked category loss)."""


class BalancedSFTTrainer(BalancedSamplingMixin, SFTTrainer):
    """TRL `SFTTrainer` with class-balanced, length-grouped sampling."""


def build_classifier(args):
    """(model, tokenizer) for `sequence_classification`: the encoder with a new 2-way head."""
    path = resolve(args.base_model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(
        path,
        num_labels=2,
        id2label={0: VERDICTS[0], 1: VERDICTS[1]},
        label2id={VERDICTS[0]: 0, VERDICTS[1]: 1},
        ignore_mismatched_sizes=True,
        dtype=args.dtype or "float32",
    )
    if args.freeze_layers:
        freeze_lower_layers(model, args.freeze_layers)
    return model, tokenizer


def encode_classifier_dataset(tokenizer, dataset, max_length):
    """Pair-encode rows (`encode_pairs`, as the `sequence_classification` adapter does) with labels."""
    encodings, _ = encode_pairs(tokenizer, guard_items(dataset), max_length)
    columns = {key: [e[key] for e in encodings] for key in encodings[0]}
    return Dataset.from_dict({**columns, "labels": list(dataset["label"])})


def adapter_options(args):
    """Options of the guard adapter that training used (pass the same to `load_guard` when scoring)."""
    if args.kind == "sequence_classification":
        return {"max_length": args.max_length}
    return {
        "max_length": args.max_length,
        "max_content_tokens": args.max_content_tokens,
        "content_as_parts": args.content_as_parts,
    }


def build_llama_guard(args):
    """(model, tokenizer, adapter) for `llama_guard`: the base causal LM and its guard chat template."""
    path = resolve(args.base_model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if args.chat_template == "guard":
        tokenizer.chat_template = guard_chat_template(tokenizer, args.guard_policy)
    elif args.chat_template != "base":
        template = Path(args.chat_template)
        if not template.is_file():
            raise ValueError(f"--chat-template must be 'guard', 'base' or a .jinja file; {template} does not exist.")
        tokenizer.chat_template = template.read_text()
    elif tokenizer.chat_template is None:
        raise ValueError(f"--chat-template base: {args.base_model!r} has no chat template.")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=args.dtype or "float32")
    adapter_cls = GUARD_KINDS["llama_guard"][0]
    adapter = adapter_cls(model, tokenizer, **adapter_options(args))
    return model, tokenizer, adapter


def merge_lora(args, adapter_dir, output):
    """Merge the trained LoRA adapter into a fresh copy of the base and save it as a plain causal LM
    (`merge_and_unload`), so the guard loads without peft; the adapter folder is then removed."""
    from peft import PeftModel

    base = AutoModelForCausalLM.from_pretrained(resolve(args.base_model), dtype=args.dtype or "float32")
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged.save_pretrained(output)
    shutil.rmtree(adapter_dir)


def encode_llama_guard_dataset(adapter, dataset, max_length):
    """Pre-tokenized prompt/completion rows: prompt = `adapter.render(item)` tokenized exactly as the
    adapter scores it, completion = the verdict word + EOS; `completion_mask` marks the loss tokens.
    Rows whose prompt does not fit `max_length` are dropped. Returns (dataset, class_labels)."""
    tokenizer = adapter.tokenizer
    verdict_ids = [tokenizer.encode(word, add_special_tokens=False) + [tokenizer.eos_token_id] for word in adapter.verdict_words]
    rows = {"input_ids": [], "completion_mask": []}
    labels, dropped = [], 0
    for item, label in zip(guard_items(dataset), dataset["label"]):
        prompt_ids = tokenizer(adapter.render(item), add_special_tokens=False)["input_ids"]
        completion = verdict_ids[int(label)]
        if len(prompt_ids) + len(completion) > max_length:
            dropped += 1
            continue
        rows["input_ids"].append(prompt_ids + completion)
        rows["completion_mask"].append([0] * len(prompt_ids) + [1] * len(completion))
        labels.append(int(label))
    if dropped:
        logger.warning("%d of %d rows do not fit --max-length %d and were left out.", dropped, len(labels) + dropped, max_length)
    if not labels:
        raise ValueError(f"No training row fits --max-length {max_length}; raise it or lower --max-content-tokens.")
    return Dataset.from_dict(rows), labels


def validation_metrics(score, dataset):
    """F1 (threshold 0.5), AUPRC, accuracy and scoring speed of a guard (`score(items) -> P(unsafe)`) on `dataset` rows."""
    items, labels = guard_items(dataset), list(dataset["label"])
    start = time.perf_counter()
    scores = score(items)
    seconds = time.perf_counter() - start
    with collect_warnings([], "train-guard validation"):
        metrics = classification_metrics(labels, scores)
    return {
        "n": len(items),
        **{k: metrics[k] for k in ("f1", "auprc", "accuracy")},
        "mean_p_unsafe_label1": float(sum(s for s, y in zip(scores, labels) if y) / max(sum(labels), 1)),
        "mean_p_unsafe_label0": float(sum(s for s, y in zip(scores, labels) if not y) / max(len(labels) - sum(labels), 1)),
        "scoring_examples_per_second": len(items) / seconds,
    }


def with_category_targets(tokenizer, train, labeled, taxonomy, max_length):
    """(encoded rows, sampler labels): the teacher rows with their category targets (from their source
    or label, `Taxonomy.targets`; NaN = unknown) followed by the labeled category rows (binary target
    `IGNORE`, sampler label -1: drawn at their share, outside the class balance)."""
    from datasets import concatenate_datasets

    from dataset_builders.categories import target_floats

    binary = encode_classifier_dataset(tokenizer, train, max_length)
    targets = target_floats(taxonomy, train.to_list(), "teacher row")
    parts, sampler = [binary.add_column("category_targets", targets)], list(train["label"])
    if labeled is not None and len(labeled):
        extra = encode_classifier_dataset(tokenizer, labeled, max_length).map(lambda _: {"labels": IGNORE})
        parts.append(extra.add_column("category_targets", list(labeled["category_targets"])))
        sampler += [-1] * len(labeled)
    return concatenate_datasets(parts), sampler


def classifier_trainer(args, train):
    """(trainer, tokenizer, training rows, class labels) of a sequence-classification guard (with a
    category head beside the binary one when `--category_rows` > 0)."""
    model, tokenizer = build_classifier(args)
    class_labels = list(train["label"])
    common = dict(args=args, data_collator=DataCollatorWithPadding(tokenizer), processing_class=tokenizer,
                  balanced=args.balanced_sampling)
    if not args.category_rows:
        train_ds = encode_classifier_dataset(tokenizer, train, args.max_length)
        return BalancedTrainer(model=model, train_dataset=train_ds, class_labels=class_labels, **common), tokenizer, train_ds, class_labels
    taxonomy = run_taxonomy(args)
    labeled = category_rows(args, taxonomy)
    attach_category_head(model, taxonomy, args.seed, training_args=args)
    train_ds, sampler = with_category_targets(tokenizer, train, labeled, taxonomy, args.max_length)
    trainer = CategoryTrainer(model=model, train_dataset=train_ds, class_labels=sampler, category_loss_weight=args.category_loss_weight,
                              **common)
    trainer.category_record = category_record(taxonomy, train_ds, labeled)
    return trainer, tokenizer, train_ds, class_labels


def llama_guard_trainer(args, train):
    """(trainer, tokenizer, training rows, class labels) of a Llama-Guard-format guard (TRL SFT + LoRA)."""
    from peft import LoraConfig

    model, tokenizer, adapter = build_llama_guard(args)
    train_ds, class_labels = encode_llama_guard_dataset(adapter, train, args.max_length)
    targets = args.lora_target_modules
    peft_config = LoraConfig(
        r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout, task_type="CAUSAL_LM",
        target_modules=targets if targets == "all-linear" else [t.strip() for t in targets.split(",")],
    )
    trainer = BalancedSFTTrainer(
        model=model, args=args, train_dataset=train_ds, processing_class=tokenizer, peft_config=peft_config,
        class_labels=class_labels, balanced=args.balanced_sampling,
    )
    return trainer, tokenizer, train_ds, class_labels


def run_training(trainer, args):
    """Train (resuming from the last checkpoint in the output folder); returns (result, seconds, CPU seconds, budget)."""
    checkpoint = get_last_checkpoint(args.output_dir) if Path(args.output_dir).is_dir() else None
    if checkpoint:
        logger.info("Resuming from %s", checkpoint)
    budget = TimeBudgetCallback(args.max_seconds) if args.max_seconds else None
    if budget:
        trainer.add_callback(budget)
    start, start_cpu = time.perf_counter(), time.process_time()
    result = trainer.train(resume_from_checkpoint=checkpoint)
    return result, time.perf_counter() - start, time.process_time() - start_cpu, budget


def guard_rows(args):
    """(training rows, validation rows, role table): the teacher and validation rows of the role split."""
    roles = RoleTable(args.roles)
    if roles.seed_pool not in (None, args.seed_pool):
        raise ValueError(f"The role split {args.roles} was made from the pool {roles.seed_pool!r}, not --seed-pool {args.seed_pool!r}.")
    pool = load_seed_pool(args.seed_pool)
    train = mixed_sample(roles.rows(pool, "teacher"), args.max_train_examples, args.source_weights, args.seed)
    val = mixed_sample(roles.rows(pool, "validation"), args.max_val_examples, None, args.seed)
    if len(set(train["label"])) < 2:
        raise ValueError(f"The teacher rows of {args.roles} hold a single class; a guard needs safe and unsafe rows.")
    return train, val, roles


def training_record(args, trainer, result, seconds, cpu_seconds, budget, train_ds, class_labels, train, val, val_metrics, roles):
    """The `training_info.json` of a trained guard."""
    seen = result.global_step * trainer.args.train_batch_size * args.gradient_accumulation_steps * trainer.args.world_size
    return {
        "kind": args.kind,
        "base_model": args.base_model,
        "seed_pool": args.seed_pool,
        "roles": roles.record(["teacher"]),
        "train_rows_per_source": rows_per_source(train),
        "source_weights": args.source_weights,
        "train_examples": len(train_ds),
        "train_unsafe": int(sum(class_labels)),
        "categories": getattr(trainer, "category_record", None),
        "val_examples": len(val),
        "train_seconds": round(seconds, 1),
        "train_cpu_seconds": round(cpu_seconds, 1),  # all threads: compare runs on a shared machine
        "torch_threads": torch.get_num_threads(),
        "precision": precision_record(args.precision, "cpu" if args.use_cpu else "cuda"),
        "train_examples_seen": seen,
        "train_examples_per_second": round(seen / seconds, 3),
        "train_loss": result.metrics.get("train_loss"),
        "global_steps": result.global_step,
        "planned_steps": trainer.state.max_steps,
        "stopped_early": bool(budget and budget.fired),
        "adapter_options": adapter_options(args),
        "val": val_metrics,
        "arguments": recorded_arguments(args),
    }


def train_guard(args: TrainGuardConfig):
    """Train and save the guard; returns the output folder. A finished folder is left as is."""
    output = Path(args.output_dir)
    if (output / INFO_FILE).exists() and not args.overwrite:
        logger.info("%s already holds a trained guard (%s); skipping (--overwrite to retrain).", output, INFO_FILE)
        return output
    if args.overwrite and (output / INFO_FILE).exists():
        shutil.rmtree(output)
    set_seed(args.seed)
    train, val, roles = guard_rows(args)
    logger.info("Training on %d rows (%d unsafe), validating on %d.", len(train), sum(train["label"]), len(val))
    build = classifier_trainer if args.kind == "sequence_classification" else llama_guard_trainer
    trainer, tokenizer, train_ds, class_labels = build(args, train)
    result, seconds, cpu_seconds, budget = run_training(trainer, args)
    if args.kind == "llama_guard":
        trainer.save_model(str(output / ADAPTER_DIR))  # every rank: FSDP gathers the LoRA weights
    else:
        tokenizer.model_max_length = args.max_length  # the adapter scores at the trained length by default
        head = detach_category_head(trainer.model) if hasattr(trainer.model, "category_head") else None
        trainer.save_model(str(output))  # model + tokenizer (processing_class)
        if head is not None and trainer.is_world_process_zero():
            save_category_head(output, head[0], run_taxonomy(args), head[1])
    if trainer.is_world_process_zero():
        if args.kind == "llama_guard":
            merge_lora(args, output / ADAPTER_DIR, output)
            tokenizer.save_pretrained(output)  # ships the guard chat template
        device = "cpu" if args.use_cpu else "cuda"
        store = guard_store(args.score_store, str(output), args.kind, args.precision, device, **adapter_options(args))
        load = lambda: load_guard(str(output), args.kind, autocast_dtype=args.precision, **adapter_options(args))  # noqa: E731
        val_metrics = validation_metrics(
            lambda items: guard_scores(store, load, items, "validation", batch_size=args.per_device_eval_batch_size), val)
        info = training_record(args, trainer, result, seconds, cpu_seconds, budget, train_ds, class_labels, train, val,
                               val_metrics, roles)
        remove_checkpoints(output)
        (output / "training_args.bin").unlink(missing_ok=True)  # Trainer pickles its args; the folder holds no pickle
        (output / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    trainer.accelerator.wait_for_everyone()
    return output


def main(argv=None):
    args = parse_args([TrainGuardConfig], argv, section="train_guard")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    out = train_guard(args)
    if int(os.environ.get("RANK", "0")) != 0:
        return
    info = json.loads((out / INFO_FILE).read_text()) if (out / INFO_FILE).exists() else {}
    print(f"Guard ({args.kind}) in {out}: val {info.get('val')}")
    print(f'  from modeling_saferoute.guards import load_guard\n  guard = load_guard("{out}", "{args.kind}")')


if __name__ == "__main__":
    main()
