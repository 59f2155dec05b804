"""The category head in training: a multi-label head beside a classifier's binary head, trained in the
same run (`saferoute train-guard --kind sequence_classification` and `saferoute distill`).

The head (`modeling_saferoute.categories`) is attached to the stock classifier as `category_head` for
the run (so the Trainer's optimizer, checkpoints and best-model reload carry it) and reads the pooled
feature of the binary head from the same forward. Rows carry `category_targets` (labels: 1, 0 or NaN
= unknown) and/or `category_soft` (a teacher's probabilities, NaN where it has none); rows with no
binary target have `labels` = -100. The loss is the binary loss on the rows that have a binary target
plus `category_loss_weight` x the masked category loss; unknown entries count nowhere.
"""

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from dataset_builders.categories import category_sample, load_taxonomy
from dataset_builders.roles import parse_weights
from modeling_saferoute.categories import HEAD_CONFIG, HEAD_WEIGHTS, hook_classification_layer, new_category_head
from modeling_saferoute.modeling_saferoute import capturing_features, find_classification_layer

IGNORE = -100  # the binary target of a row that has none (F.cross_entropy's ignore_index)
DEFAULT_CATEGORY_WEIGHTS = "davidson=0.02"  # 24,772 tweets against 2,178 rows of the three other files


@dataclass
class CategoryArguments:
    """The category head's settings, shared by train-guard and distill."""

    taxonomy: Optional[str] = field(default=None, metadata={"help": "The harm-category taxonomy of the category head: 'openai-moderation' (the 13 OpenAI moderation categories) or a .json/.yaml taxonomy file (names, descriptions, and a mapping or labeled rows). Default: 'openai-moderation' (distill: the corpus teacher's)."})
    category_rows: int = field(default=0, metadata={"help": "Labeled category rows trained beside the binary rows (their binary loss masked); 0: none. A category head is trained when this is > 0 (or, in distill, when the corpus carries the teacher's category scores)."})
    category_data: str = field(default="auto", metadata={"help": "Where the labeled category rows come from: 'auto' (the taxonomy file's `rows`, else 'offline'), 'offline' ($SAFEROUTE_DATA_DIR/categories/train, mapped by the taxonomy's `sources`) or a .jsonl/.parquet file of rows with `categories`."})
    category_source_weights: Optional[Union[dict, str]] = field(default=DEFAULT_CATEGORY_WEIGHTS, metadata={"help": "Per-source weights of the category rows' mix ('source=weight,...'; default 1 each)."})
    category_loss_weight: float = field(default=1.0, metadata={"help": "Weight of the category loss beside the binary loss."})

    def check_category_arguments(self):
        if self.category_rows < 0:
            raise ValueError(f"--category-rows must be >= 0, got {self.category_rows}.")
        if self.category_loss_weight < 0:
            raise ValueError(f"--category-loss-weight must be >= 0, got {self.category_loss_weight}.")
        self.category_source_weights = parse_weights(self.category_source_weights)


def category_rows(args, taxonomy):
    """The labeled category rows of a run (`args.category_rows` of them), or None."""
    if not args.category_rows:
        return None
    return category_sample(taxonomy, args.category_data, args.category_rows, args.category_source_weights, args.seed,
                           taxonomy_spec=args.taxonomy)


def run_taxonomy(args, default=None):
    """The Taxonomy of a run: `--taxonomy`, else `default` (a Taxonomy or None), else the project's."""
    if args.taxonomy is None and default is not None:
        return default
    return load_taxonomy(args.taxonomy)


def nan_rows(n, k):
    return [[math.nan] * k for _ in range(n)]


def category_loss(logits, targets=None, soft=None):
    """Masked multi-label loss of category `logits` (batch, K): the mean binary cross-entropy against
    `targets` (labels) over their known entries, and against `soft` (a teacher's probabilities, KD)
    over theirs; with both, their average (HarmAug's 0.5 * (label + KD)). NaN entries are unknown and
    count nowhere; None when nothing is known."""
    terms = []
    for target in (targets, soft):
        if target is None:
            continue
        target = target.to(logits.device, torch.float32)
        known = ~torch.isnan(target)
        if known.any():
            terms.append(F.binary_cross_entropy_with_logits(logits.float()[known], target[known]))
    return sum(terms) / len(terms) if terms else None


def attach_category_head(model, taxonomy, seed=0, training_args=None):
    """Attach a new category head for `taxonomy` to a stock classifier (`model.category_head`, trained
    with it) and hook its classification layer so `capturing_features` sees the pooled feature.

    The head runs outside the model's forward (on the captured feature), so DDP's search for unused
    parameters would mark it ready after the forward and then again when the category loss reaches
    it: with `training_args` (before the Trainer is built) `ddp_find_unused_parameters` left unset
    becomes False, and `CategoryLossMixin` makes the head take part in every step's loss."""
    if training_args is not None and training_args.ddp_find_unused_parameters is None:
        training_args.ddp_find_unused_parameters = False
    name, layer = find_classification_layer(model, 2)
    model._category_layer, model._category_hook = hook_classification_layer(model)  # before the head: it may have 2 outputs too
    with torch.random.fork_rng(devices=[]):  # a seeded head that leaves the run's random stream as it was
        torch.manual_seed(seed)
        model.category_head = new_category_head(layer.in_features, taxonomy).to(layer.weight.device)
    return model.category_head


def detach_category_head(model):
    """Remove the category head from `model` (so it saves as a stock classifier); returns (head, layer name)."""
    head = model.category_head
    model._category_hook.remove()
    del model.category_head
    layer = model._category_layer
    del model._category_hook, model._category_layer
    return head, layer


def save_category_head(output, head, taxonomy, layer):
    """Write `category_head.json` and `category_head.safetensors` into the classifier folder `output`."""
    output = Path(output)
    save_file({k: v.detach().float().cpu().contiguous() for k, v in head.state_dict().items()}, str(output / HEAD_WEIGHTS),
              metadata={"format": "pt"})
    record = {"taxonomy": taxonomy.to_dict(), "layer": layer, "in_features": head.in_features}
    (output / HEAD_CONFIG).write_text(json.dumps(record, indent=2) + "\n")


def category_record(taxonomy, rows, labeled):
    """What a category head trained on: its taxonomy, the labeled rows per source, and per category the
    known positives / negatives among the training rows (and the rows a teacher scored, if any)."""
    import numpy as np

    from dataset_builders.roles import rows_per_source

    targets = np.asarray(rows["category_targets"], dtype=float)
    record = {
        "taxonomy": taxonomy.name,
        "categories": list(taxonomy.names),
        "labeled_rows": len(labeled) if labeled is not None else 0,
        "labeled_rows_per_source": rows_per_source(labeled) if labeled is not None else {},
        "targets": {c: {"positive": int((targets[:, k] == 1).sum()), "negative": int((targets[:, k] == 0).sum())}
                    for k, c in enumerate(taxonomy.names)},
    }
    if "category_soft" in rows.column_names:
        record["teacher_scored_rows"] = int((~np.isnan(np.asarray(rows["category_soft"], dtype=float))).all(axis=1).sum())
    return record


class CategoryLossMixin:
    """Trainer mixin: `binary_loss` (override it; default cross-entropy) on the rows with a binary target,
    plus `category_loss_weight` x `category_loss` when the model carries a category head."""

    def __init__(self, *args, category_loss_weight=1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.category_loss_weight = category_loss_weight

    def binary_loss(self, logits, labels, soft):
        return F.cross_entropy(logits.float(), labels)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels")
        soft = inputs.pop("soft", None)
        inputs.pop("length", None)
        targets, teacher = inputs.pop("category_targets", None), inputs.pop("category_soft", None)
        head = getattr(self.accelerator.unwrap_model(model), "category_head", None)
        with capturing_features() as captured:
            outputs = model(**inputs)
        keep = labels != IGNORE
        if keep.any():
            loss = self.binary_loss(outputs.logits[keep], labels[keep], None if soft is None else soft[keep])
        else:
            loss = outputs.logits.sum() * 0.0  # a batch of category rows only
        if head is not None:
            features = captured[-1]  # bf16 under the Trainer's autocast of the model's forward; the head runs in its own dtype
            logits = head(features.to(head.weight.dtype))
            extra = category_loss(logits, targets, teacher)
            # a batch without category targets still runs the head (zero gradient): DDP reduces every parameter each step
            loss = loss + (self.category_loss_weight * extra if extra is not None else logits.sum() * 0.0)
        return (loss, outputs) if return_outputs else loss
