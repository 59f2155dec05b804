"""Metrics and routing methods of `saferoute evaluate`, computed from cached per-example scores.

All metrics are scikit-learn's (`evaluate` loads its metric scripts from the Hub, which fails
offline). Where a metric is undefined (one class only), scikit-learn reports 0 and warns; the
warnings are collected (`collect_warnings`) and logged rather than raised.

Routing methods decide, per example, whether the large guard's score replaces the student's:

| method | routes when |
| --- | --- |
| student | never |
| large | always |
| saferoute | router score > router threshold |
| random | a seeded random subset of the size SafeRoute routes (mean and std over seeds) |
| entropy | binary entropy of the student's P(unsafe), in nats (natural log), > entropy threshold |
| temperature | the same on the temperature-scaled P(unsafe), temperature fitted on a validation split |
| oracle | the student is wrong and the large guard right (uses the true labels) |
"""

import contextlib
import logging
import math
import warnings

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import expit, logit
from scipy.stats import entropy
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

METHODS = ("student", "large", "saferoute", "random", "entropy", "temperature", "oracle")
METRICS = ("f1", "precision", "recall", "accuracy", "auprc", "large_usage", "routing_f1")
ENTROPY_UNIT = "nats"
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


def router_target(labels, student, large, threshold=0.5):
    """SafeRoute's router label t: the student is wrong and the large guard right."""
    labels = np.asarray(labels, dtype=int)
    return ((np.asarray(student) > threshold) != labels) & ((np.asarray(large) > threshold) == labels)


def binary_entropy(p, temperature=1.0):
    """Entropy in nats of the binary distribution [1-p, p], after scaling its logit by 1/temperature."""
    p = temperature_scale(p, temperature)
    return entropy(np.stack([1.0 - p, p]), axis=0)


def temperature_scale(p, temperature=1.0):
    """P(unsafe) with its logit divided by `temperature`."""
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


def random_routes(n, n_routed, seed):
    """A boolean mask routing exactly `n_routed` of `n` examples, chosen with `numpy` seed `seed`."""
    mask = np.zeros(n, dtype=bool)
    mask[np.random.default_rng(seed).choice(n, size=int(n_routed), replace=False)] = True
    return mask


def routed_scores(student, large, routed):
    """The final P(unsafe): the large guard's where routed, the student's elsewhere."""
    return np.where(np.asarray(routed, dtype=bool), np.asarray(large, dtype=float), np.asarray(student, dtype=float))


def routing_metrics(labels, student, large, routed, threshold=0.5):
    """Classification metrics of the routed scores, plus large-model usage and routing F1 (router
    decisions scored against t = student wrong and large right)."""
    routed = np.asarray(routed, dtype=bool)
    out = classification_metrics(labels, routed_scores(student, large, routed), threshold)
    out["large_usage"] = float(routed.mean()) if len(routed) else 0.0
    target = router_target(labels, student, large, threshold)
    out["routing_f1"] = float(f1_score(target.astype(int), routed.astype(int), zero_division="warn"))
    return out


def method_routes(labels, student, router, large, router_threshold=0.5, threshold=0.5, entropy_threshold=0.5,
                  temperature=1.0):
    """Routing masks of every deterministic method (random is drawn separately)."""
    n = len(labels)
    routes = {
        "student": np.zeros(n, dtype=bool),
        "large": np.ones(n, dtype=bool),
        "saferoute": np.asarray(router) > router_threshold,
        "entropy": binary_entropy(student) > entropy_threshold,
        "temperature": binary_entropy(student, temperature) > entropy_threshold,
        "oracle": router_target(labels, student, large, threshold),
    }
    if router is None:
        del routes["saferoute"]
    return routes


def evaluate_methods(labels, student, router, large, router_threshold=0.5, threshold=0.5, entropy_threshold=0.5,
                     temperature=1.0, random_seeds=5, sink=None, where=""):
    """`{method: metrics}` for every method of `METHODS`; "random" holds the mean over `random_seeds`
    seeds and its standard deviations under "std"."""
    sink = [] if sink is None else sink
    routes = method_routes(labels, student, router, large, router_threshold, threshold, entropy_threshold, temperature)
    results = {}
    for method in METHODS:
        with collect_warnings(sink, f"{where}{method}"):
            if method == "random":
                n_routed = int(routes["saferoute"].sum())
                runs = [
                    routing_metrics(labels, student, large, random_routes(len(labels), n_routed, seed), threshold)
                    for seed in range(random_seeds)
                ]
                results[method] = {k: float(np.mean([r[k] for r in runs])) for k in METRICS}
                results[method]["std"] = {k: float(np.std([r[k] for r in runs])) for k in METRICS}
                results[method]["per_seed"] = {k: [r[k] for r in runs] for k in METRICS}
            else:
                results[method] = routing_metrics(labels, student, large, routes[method], threshold)
    return results


def budget_threshold(router_scores, budget):
    """The lowest router threshold among the observed scores whose usage (share of scores above
    it) is at most `budget` on these (validation) scores."""
    if not 0.0 <= budget <= 1.0:
        raise ValueError(f"large budget must be in [0, 1], got {budget}.")
    scores = np.sort(np.asarray(router_scores, dtype=float))[::-1]
    k = int(math.floor(budget * len(scores) + 1e-9))
    if k >= len(scores):
        return float(np.nextafter(scores[-1], -np.inf))  # everything routes
    return float(scores[k])


def usage_sweeps(labels, student, router, large, threshold=0.5, temperature=1.0, random_seeds=5, points=101):
    """F1 against large-model usage: SafeRoute as the router threshold sweeps 0..1, entropy routing
    as its threshold sweeps 0..ln 2, random routing at evenly spaced usages (mean over seeds)."""
    labels = np.asarray(labels, dtype=int)
    n = len(labels)
    curves = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")

        def point(routed):
            routed = np.asarray(routed, dtype=bool)
            f1 = f1_score(labels, (routed_scores(student, large, routed) > threshold).astype(int), zero_division=0)
            return float(routed.mean()), float(f1)

        grids = {"entropy": (binary_entropy(student), np.linspace(math.log(2), 0.0, points))}
        if temperature != 1.0:
            grids["temperature"] = (binary_entropy(student, temperature), np.linspace(math.log(2), 0.0, points))
        if router is not None:
            grids["saferoute"] = (np.asarray(router, dtype=float), np.linspace(1.0, 0.0, points))
        for name, (values, thresholds) in grids.items():
            pts = [point(values > t) for t in thresholds]
            curves[name] = {"threshold": thresholds.tolist(), "usage": [u for u, _ in pts], "f1": [f for _, f in pts]}
        usages = np.linspace(0.0, 1.0, 21)
        f1s = [
            float(np.mean([point(random_routes(n, round(u * n), seed))[1] for seed in range(random_seeds)]))
            for u in usages
        ]
        curves["random"] = {"usage": usages.tolist(), "f1": f1s}
    return curves


def pr_curve(labels, scores):
    """(precision, recall) arrays of scikit-learn's precision-recall curve."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        precision, recall, _ = precision_recall_curve(np.asarray(labels, dtype=int), np.asarray(scores, dtype=float))
    return precision.tolist(), recall.tolist()
