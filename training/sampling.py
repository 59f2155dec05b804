"""Shared Trainer pieces: class-balanced, length-grouped sampling, an opt-in wall-clock cap, and
the removal of checkpoints once a run is saved."""

import logging
import shutil
import time
from pathlib import Path

import torch
from torch.utils.data import Sampler, WeightedRandomSampler
from transformers import TrainerCallback
from transformers.trainer_pt_utils import get_length_grouped_indices

logger = logging.getLogger(__name__)


def balanced_weights(labels):
    """Per-example sampling weight 1 / (count of its class). Rows labeled -1 (e.g. category rows with
    no binary target) are outside the balance: drawn as often as their share of the rows."""
    labels = torch.as_tensor(list(labels))
    classed = labels >= 0
    counts = torch.bincount(labels[classed]).double().clamp(min=1)
    weights = torch.zeros(len(labels), dtype=torch.double)
    weights[classed] = (1.0 / counts)[labels[classed]]
    others = int((~classed).sum())
    if others:  # the classed rows weigh len(counts) in all; the others get their share of the total
        weights[~classed] = len(counts) / max(int(classed.sum()), 1) if classed.any() else 1.0
    return weights


class BalancedLengthGroupedSampler(Sampler):
    """Class-balanced draws (`WeightedRandomSampler`, weight 1/class count, with replacement), then
    ordered like transformers' `LengthGroupedSampler` so that each batch holds similar lengths.

    One epoch draws `len(labels)` indices; `balanced=False` draws a plain permutation instead.
    """

    def __init__(self, labels, lengths=None, batch_size=1, seed=0, balanced=True, group_by_length=True):
        if lengths is not None and len(labels) != len(lengths):
            raise ValueError(f"{len(labels)} labels but {len(lengths)} lengths.")
        self.weights = balanced_weights(labels)
        self.lengths = list(lengths) if lengths is not None else None
        self.batch_size = batch_size
        self.balanced = balanced
        self.group_by_length = group_by_length
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self):
        return len(self.weights)

    def __iter__(self):
        n = len(self.weights)
        if self.balanced:
            drawn = list(WeightedRandomSampler(self.weights, n, replacement=True, generator=self.generator))
        else:
            drawn = torch.randperm(n, generator=self.generator).tolist()
        if not self.group_by_length or self.lengths is None:
            return iter(drawn)
        order = get_length_grouped_indices([self.lengths[i] for i in drawn], self.batch_size, generator=self.generator)
        return iter([drawn[j] for j in order])


class BalancedSamplingMixin:
    """Trainer mixin: the training sampler is `BalancedLengthGroupedSampler` over `class_labels`,
    length-grouped when `args.train_sampling_strategy` is "group_by_length"."""

    def __init__(self, *args, class_labels=None, balanced=True, **kwargs):
        super().__init__(*args, **kwargs)
        self.class_labels = class_labels
        self.balanced = balanced

    def _get_train_sampler(self, train_dataset=None):
        dataset = self.train_dataset if train_dataset is None else train_dataset
        if self.class_labels is None:
            return super()._get_train_sampler(train_dataset)
        lengths = [len(ids) for ids in dataset["input_ids"]]
        if len(lengths) != len(self.class_labels):
            raise ValueError(
                f"The prepared training set has {len(lengths)} rows but {len(self.class_labels)} class labels "
                "were given: rows were added or dropped after encoding."
            )
        return BalancedLengthGroupedSampler(
            self.class_labels,
            lengths,
            self.args.train_batch_size * self.args.gradient_accumulation_steps * self.args.world_size,
            seed=self.args.seed,
            balanced=self.balanced,
            group_by_length=self.args.train_sampling_strategy == "group_by_length",
        )


class TimeBudgetCallback(TrainerCallback):
    """Opt-in wall-clock cap (`--max-seconds`): stop training once `seconds` have passed, evaluating
    and saving the last step first when the run evaluates / saves at all. `fired` says whether it
    stopped the run; the stage records it (`stopped_early`) so the final report can say so."""

    def __init__(self, seconds):
        self.seconds = seconds
        self.start = None
        self.fired = False

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if time.perf_counter() - self.start > self.seconds:
            logger.warning("Time budget of %ss reached at step %d of %d: stopping.", self.seconds, state.global_step, state.max_steps)
            self.fired = True
            control.should_training_stop = True
            control.should_evaluate = args.eval_strategy != "no"
            control.should_save = args.save_strategy != "no"
        return control


def remove_checkpoints(output_dir):
    """Delete the Trainer's `checkpoint-*` folders of a finished run (the result is saved beside them)."""
    for folder in Path(output_dir).glob("checkpoint-*"):
        shutil.rmtree(folder, ignore_errors=True)
