"""The metrics of guards and of routing, one implementation each, on per-example scores.

Every metric is scikit-learn's (`evaluate` loads its metric scripts from the Hub, which fails
offline). Where a metric is undefined (one class only), scikit-learn reports 0 and warns; the
warnings are collected (`collect_warnings`) and logged rather than raised.

The router label t of SafeRoute (`router_label`) is defined here once, and read by
train-router (its training target), the oracle method and the routing F1 alike.
"""

import contextlib
import logging
import math
import warnings
import zlib

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import expit, logit
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    f1_score,
    log_loss,
    precision_recall_curve,
    precision_score,
    recall_score,
)

logger = logging.getLogger(__name__)

METRICS = ("f1", "precision", "recall", "accuracy", "auprc", "large_usage", "routing_f1")
CLASSIFICATION_METRICS = METRICS[:5]
ENTROPY_UNIT = "bits"
EPS = 1e-7


@contextlib.contextmanager
def collect_warnings(sink, where):
    """Record the warnings raised inside (e.g. scikit-learn's UndefinedMetricWarning) into `sink`
    as "where: message" strings, logging each new one once, instead of printing them."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for w in caught:
        message = f"{where}: {w.category.__name__}: {w.message}"
        if message not in sink:
            sink.append(message)
            logger.warning(message)


def f1(labels, scores, threshold=0.5):
    """F1 of `scores > threshold` (0 without a warning where undefined: for searches over thresholds)."""
    return float(f1_score(np.asarray(labels, dtype=int), (np.asarray(scores, dtype=float) > threshold).astype(int), zero_division=0))


def classification_metrics(labels, scores, threshold=0.5):
    """F1, precision, recall, accuracy of `scores > threshold`, and AUPRC (average precision) of `scores`."""
    labels = np.asarray(labels, dtype=int)
    scores = np.asarray(scores, dtype=float)
    preds = (scores > threshold).astype(int)
    return {
        "f1": float(f1_score(labels, preds, zero_division="warn")),
        "precision": float(precision_score(labels, preds, zero_division="warn")),
        "recall": float(recall_score(labels, preds, zero_division="warn")),
        "accuracy": float(accuracy_score(labels, preds)),
        "auprc": float(average_precision_score(labels, scores)),
    }


def average_precision(labels, scores):
    """AUPRC of `scores`, or NaN when `labels` hold no positive (no warning)."""
    labels = np.asarray(labels, dtype=int)
    return float(average_precision_score(labels, scores)) if labels.any() else float("nan")


def router_label(labels, student, large, threshold=0.5):
    """SafeRoute's router label t (int 0/1): the student is wrong and the large guard right, both
    deciding "unsafe" when P(unsafe) > threshold."""
    labels = np.asarray(labels, dtype=int)
    student_wrong = (np.asarray(student, dtype=float) > threshold).astype(int) != labels
    large_right = (np.asarray(large, dtype=float) > threshold).astype(int) == labels
    return (student_wrong & large_right).astype(int)


def routed_scores(student, large, routed):
    """The final P(unsafe): the large guard's where routed, the student's elsewhere."""
    return np.where(np.asarray(routed, dtype=bool), np.asarray(large, dtype=float), np.asarray(student, dtype=float))


def routing_metrics(labels, student, large, routed, threshold=0.5, final=None):
    """Classification metrics of the routed system (its final scores: `final`, else
    `routed_scores`), plus large-guard usage and routing F1 (routing decisions against t)."""
    routed = np.asarray(routed, dtype=bool)
    final = routed_scores(student, large, routed) if final is None else final
    out = classification_metrics(labels, final, threshold)
    out["large_usage"] = float(routed.mean()) if len(routed) else 0.0
    target = router_label(labels, student, large, threshold)
    out["routing_f1"] = float(f1_score(target, routed.astype(int), zero_division="warn"))
    return out


def binary_entropy(p, temperature=1.0):
    """Entropy in bits of the binary distribution [1-p, p] after dividing its logit by
    `temperature` (the official SafeRoute baseline routes when it is above 0.5 bits, that is
    P(unsafe) in about (0.110, 0.890))."""
    q = temperature_scale(p, temperature)
    return -(q * np.log2(q) + (1.0 - q) * np.log2(1.0 - q))


def temperature_scale(p, temperature=1.0):
    """P(unsafe) with its logit divided by `temperature` (clipped away from 0 and 1)."""
    p = np.clip(np.asarray(p, dtype=float), EPS, 1.0 - EPS)
    return p if temperature == 1.0 else expit(logit(p) / temperature)


def fit_temperature(labels, scores):
    """The temperature that minimises the log loss of the temperature-scaled P(unsafe) (searched on
    log T in [-5, 5] with scipy's bounded scalar minimiser)."""
    labels = np.asarray(labels, dtype=int)
    if len(set(labels.tolist())) < 2:
        raise ValueError("Temperature fitting needs both classes in the validation labels.")
    result = minimize_scalar(
        lambda log_t: log_loss(labels, temperature_scale(scores, math.exp(log_t)), labels=[0, 1]),
        bounds=(-5.0, 5.0),
        method="bounded",
    )
    return float(math.exp(result.x))


def soft_log_loss(targets, probs):
    """Mean cross-entropy of P(unsafe) `probs` against soft `targets` in [0, 1] (scikit-learn's
    log_loss takes hard labels only); probabilities clipped to [EPS, 1 - EPS]."""
    t = np.asarray(targets, dtype=float)
    p = np.clip(np.asarray(probs, dtype=float), EPS, 1.0 - EPS)
    return float(-np.mean(t * np.log(p) + (1.0 - t) * np.log(1.0 - p)))


def fit_platt(targets, margins):
    """(scale a, bias b) of Platt scaling, P(unsafe) = sigmoid(a * margin + b), fitted by
    scikit-learn's unregularized logistic regression on soft `targets` in [0, 1] (a teacher's
    probabilities or 0/1 labels: each row enters twice, as unsafe with weight t and as safe with
    weight 1 - t, which is the cross-entropy against t). `margins`: logit(unsafe) - logit(safe)."""
    targets = np.asarray(targets, dtype=float)
    margins = np.asarray(margins, dtype=float)
    if targets.shape != margins.shape or targets.ndim != 1:
        raise ValueError(f"Platt scaling needs one target per margin, got {targets.shape} and {margins.shape}.")
    if np.isnan(targets).any() or ((targets < 0) | (targets > 1)).any():
        raise ValueError("Platt scaling needs targets in [0, 1] (teacher probabilities or labels).")
    if not (targets > 0.5).any() or not (targets <= 0.5).any():
        raise ValueError("Platt scaling needs both classes among the validation targets.")
    if np.ptp(margins) == 0:
        raise ValueError("Platt scaling needs margins that differ (the student gives every row the same score).")
    x = np.concatenate([margins, margins])[:, None]
    y = np.concatenate([np.ones(len(margins)), np.zeros(len(margins))])
    model = LogisticRegression(C=np.inf).fit(x, y, sample_weight=np.concatenate([targets, 1.0 - targets]))
    return float(model.coef_[0, 0]), float(model.intercept_[0])


def budget_threshold(router_scores, budget):
    """The lowest router threshold among the observed scores whose usage (share of scores above
    it) is at most `budget` on these (validation) scores; ties never overshoot."""
    if not 0.0 <= budget <= 1.0:
        raise ValueError(f"large budget must be in [0, 1], got {budget}.")
    scores = np.sort(np.asarray(router_scores, dtype=float))[::-1]
    k = int(math.floor(budget * len(scores) + 1e-9))
    if k >= len(scores):
        return float(np.nextafter(scores[-1], -np.inf))  # everything routes
    return float(scores[k])


def random_seed(name, k):
    """The seed of the k-th random mask of the set `name` (a benchmark): derived from the name
    (its CRC32) and k, so sets of equal size get different masks and the spread over seeds is real."""
    return [zlib.crc32(str(name).encode()), int(k)]


def random_mask(n, seed, n_routed=None, p=None):
    """A seeded boolean routing mask over `n` inputs: exactly `n_routed` of them, or each with
    probability `p`. `seed`: anything `numpy.random.default_rng` takes (`random_seed(name, k)`)."""
    rng = np.random.default_rng(seed)
    if p is not None:
        return rng.random(n) < p
    mask = np.zeros(n, dtype=bool)
    mask[rng.choice(n, size=int(n_routed), replace=False)] = True
    return mask


def top_mask(values, n_routed):
    """A boolean mask of the `n_routed` largest `values` (ties broken by position, first wins)."""
    values = np.asarray(values, dtype=float)
    mask = np.zeros(len(values), dtype=bool)
    mask[np.argsort(-values, kind="stable")[: int(n_routed)]] = True
    return mask


def pr_curve(labels, scores):
    """(precision, recall) arrays of scikit-learn's precision-recall curve."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        precision, recall, _ = precision_recall_curve(np.asarray(labels, dtype=int), np.asarray(scores, dtype=float))
    return precision.tolist(), recall.tolist()
