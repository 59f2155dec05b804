"""Platt calibration of a distilled student, folded into its classification layer.

The class-balanced sampler trains the student at a 50/50 class prior, so its P(unsafe) at 0.5
flags more than its teacher does. `platt_record` fits P(unsafe) = sigmoid(a * margin + b),
margin = logit(unsafe) - logit(safe), on the validation rows (the teacher's probabilities, or the
human labels of a `--labels human` run) by scikit-learn's logistic regression
(`evaluation.metrics.fit_platt`); `fold_platt` writes a and b into the student's last 2-way linear
layer. Every reader of the saved student (the pipeline, evaluate, train-router and the router's
logit features) then sees the calibrated probability and decides at 0.5 as before, with no new
config key. The map is monotone: rankings, hence AUPRC, are unchanged.
"""

import numpy as np
import torch
from scipy.special import expit

from evaluation.metrics import classification_metrics, collect_warnings, fit_platt, soft_log_loss
from modeling_saferoute.modeling_saferoute import find_classification_layer

METHODS = ("platt", "none")


def margins_of(logits):
    """logit(unsafe) - logit(safe) per row of 2-way `logits` (a Trainer's predictions, or a tuple whose
    first item they are)."""
    logits = np.asarray(logits[0] if isinstance(logits, tuple) else logits, dtype=float)
    if logits.ndim != 2 or logits.shape[1] != 2:
        raise ValueError(f"Calibration needs 2-way logits, got shape {logits.shape}.")
    return logits[:, 1] - logits[:, 0]


def _metrics(targets, probs):
    with collect_warnings([], "calibration"):
        out = classification_metrics((targets > 0.5).astype(int), probs)
    out["log_loss"] = soft_log_loss(targets, probs)
    out["flagged"] = float(np.mean(probs > 0.5))
    return out


def platt_record(logits, targets, target_kind):
    """The Platt fit of a student's validation `logits` against `targets` (P(unsafe) in [0, 1]):
    scale, bias, the uncalibrated P(unsafe) that now reads 0.5, and the validation metrics before
    and after (F1 at 0.5, cross-entropy against the targets, flagged share). Raises ValueError where
    no increasing map can be fitted (one class, constant margins, a non-positive scale)."""
    margins = margins_of(logits)
    targets = np.asarray(targets, dtype=float)
    scale, bias = fit_platt(targets, margins)
    if scale <= 0:
        raise ValueError(f"Platt scaling fitted a non-positive scale ({scale:.4g}): the student's scores run against "
                         "the validation targets, so no calibration is folded in.")
    return {
        "method": "platt", "scale": scale, "bias": bias, "fitted_on": "validation split", "rows": int(len(margins)),
        "targets": target_kind, "targets_unsafe": float(np.mean(targets > 0.5)), "threshold_before": float(expit(-bias / scale)),
        "validation_before": _metrics(targets, expit(margins)), "validation_after": _metrics(targets, expit(scale * margins + bias)),
    }


@torch.no_grad()
def fold_platt(model, scale, bias):
    """Fold P(unsafe) = sigmoid(scale * margin + bias) into `model`'s last 2-way linear layer: its weight
    and bias times `scale`, then -bias/2 on the safe logit and +bias/2 on the unsafe one."""
    name, layer = find_classification_layer(model, 2)
    if layer.bias is None:
        raise ValueError(f"The classification layer {name} has no bias to fold the calibration into.")
    layer.weight.mul_(scale)
    layer.bias.mul_(scale)
    layer.bias.add_(torch.tensor([-bias / 2, bias / 2], dtype=layer.bias.dtype, device=layer.bias.device))
    return name
