"""The registry of routing methods: what each routes, under which name and colour.

A method decides, per input, whether the large guard's P(unsafe) replaces the student's. Every
reader takes the methods from `METHODS`: `saferoute evaluate` (its tables and report.json), the
plots, the model card (through the titles the report carries) and train-router's threshold choice.
To add a baseline, add one `RoutingMethod` here.

| method | routes when | source |
| --- | --- | --- |
| student | never | both papers |
| large | always | both papers |
| saferoute | router score > router threshold | SafeRoute |
| random_same_usage | a seeded random subset as large as SafeRoute's (mean, std over seeds) | this project: the fair random row |
| random_p50 | each input with probability 0.5, seeded (mean, std over seeds) | SafeRoute's official random baseline |
| entropy | binary entropy of the student's P(unsafe), in bits, > entropy threshold (0.5) | SafeRoute |
| temperature | the same on the temperature-scaled P(unsafe); items not routed keep the scaled P | SafeRoute (official code) |
| oracle | the student is wrong and the large guard right (true labels) | SafeRoute |
"""

from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from . import metrics as M


@dataclass
class RoutingInputs:
    """Per-example scores of one evaluation set and the settings every method reads."""

    labels: np.ndarray
    student: np.ndarray
    large: np.ndarray
    router: Optional[np.ndarray] = None
    router_threshold: float = 0.5
    threshold: float = 0.5
    entropy_threshold: float = 0.5
    temperature: float = 1.0
    random_seeds: int = 5

    def __post_init__(self):
        self.labels = np.asarray(self.labels, dtype=int)
        self.student = np.asarray(self.student, dtype=float)
        self.large = np.asarray(self.large, dtype=float)
        self.router = None if self.router is None else np.asarray(self.router, dtype=float)


@dataclass(frozen=True)
class RoutingMethod:
    """One routing method.

    route(inputs, seed) -> boolean mask (seed is None unless `seeded`); final(inputs, mask) -> the
    system's P(unsafe) (default: large where routed, student elsewhere); sweep(inputs) -> (values,
    thresholds) whose `values > threshold` masks trace the F1-vs-usage curve.
    """

    name: str
    title: str
    color: str
    route: Callable
    rule: str
    seeded: bool = False
    needs_router: bool = False
    final: Optional[Callable] = None
    sweep: Optional[Callable] = None
    marker: Optional[str] = field(default=None)  # how the plots mark its operating point


def _temperature_final(x, mask):
    return M.routed_scores(M.temperature_scale(x.student, x.temperature), x.large, mask)


def _entropy_sweep(temperature):
    return lambda x: (M.binary_entropy(x.student, x.temperature if temperature else 1.0), np.linspace(1.0, 0.0, 101))


METHODS = {
    m.name: m
    for m in (
        RoutingMethod("student", "student only", "tab:blue", lambda x, s: np.zeros(len(x.labels), bool), "never", marker="o"),
        RoutingMethod("large", "large guard only", "tab:red", lambda x, s: np.ones(len(x.labels), bool), "always", marker="o"),
        RoutingMethod("saferoute", "SafeRoute", "tab:green", lambda x, s: x.router > x.router_threshold,
                      "router score > router threshold", needs_router=True,
                      sweep=lambda x: (x.router, np.linspace(1.0, 0.0, 101)), marker="o"),
        RoutingMethod("random_same_usage", "random, same usage as SafeRoute", "tab:gray",
                      lambda x, s: M.random_mask(len(x.labels), s, n_routed=int((x.router > x.router_threshold).sum())),
                      "a seeded random subset as large as SafeRoute's", seeded=True, needs_router=True),
        RoutingMethod("random_p50", "random, p = 0.5", "silver", lambda x, s: M.random_mask(len(x.labels), s, p=0.5),
                      "each input with probability 0.5 (SafeRoute's official baseline)", seeded=True),
        RoutingMethod("entropy", "entropy (bits > 0.5)", "tab:orange",
                      lambda x, s: M.binary_entropy(x.student) > x.entropy_threshold,
                      "binary entropy of the student's P(unsafe), in bits, > entropy threshold", sweep=_entropy_sweep(False)),
        RoutingMethod("temperature", "temperature-scaled entropy", "tab:purple",
                      lambda x, s: M.binary_entropy(x.student, x.temperature) > x.entropy_threshold,
                      "the same on the temperature-scaled P(unsafe); items not routed keep the scaled P",
                      final=_temperature_final, sweep=_entropy_sweep(True)),
        RoutingMethod("oracle", "oracle", "black", lambda x, s: M.router_label(x.labels, x.student, x.large, x.threshold) == 1,
                      "the student is wrong and the large guard right (true labels)", marker="*"),
    )
}


def method_titles(names=None):
    """{name: display title} of the registered methods (all, or those in `names`)."""
    return {name: m.title for name, m in METHODS.items() if names is None or name in names}


def applicable(inputs):
    """The methods that `inputs` can run (those reading a router need router scores)."""
    return [m for m in METHODS.values() if inputs.router is not None or not m.needs_router]


def _metrics(method, inputs, mask):
    final = method.final(inputs, mask) if method.final else None
    return M.routing_metrics(inputs.labels, inputs.student, inputs.large, mask, inputs.threshold, final)


def evaluate_methods(inputs: RoutingInputs, sink=None, where=""):
    """`{method: metrics}` for every applicable method; seeded methods hold the mean over
    `inputs.random_seeds` seeds, with "std" and "per_seed" beside it."""
    sink = [] if sink is None else sink
    results = {}
    for method in applicable(inputs):
        with M.collect_warnings(sink, f"{where}{method.name}"):
            if method.seeded:
                runs = [_metrics(method, inputs, method.route(inputs, seed)) for seed in range(inputs.random_seeds)]
                results[method.name] = {k: float(np.mean([r[k] for r in runs])) for k in M.METRICS}
                results[method.name]["std"] = {k: float(np.std([r[k] for r in runs])) for k in M.METRICS}
                results[method.name]["per_seed"] = {k: [r[k] for r in runs] for k in M.METRICS}
            else:
                results[method.name] = _metrics(method, inputs, method.route(inputs, None))
    return results


def routed_mask(name, inputs):
    """The routing mask of a deterministic method."""
    method = METHODS[name]
    if method.seeded:
        raise ValueError(f"Method {name!r} is seeded: it has one mask per seed.")
    return method.route(inputs, None)


def final_scores(name, inputs):
    """The system's P(unsafe) under a deterministic method."""
    method, mask = METHODS[name], routed_mask(name, inputs)
    return method.final(inputs, mask) if method.final else M.routed_scores(inputs.student, inputs.large, mask)


def usage_sweeps(inputs, usages=np.linspace(0.0, 1.0, 21)):
    """F1 against large-guard usage: each method with a sweep as its threshold moves, and random
    routing (same-usage rule) at evenly spaced usages (mean over seeds)."""
    import warnings

    from sklearn.metrics import f1_score

    def point(method, mask):
        final = method.final(inputs, mask) if method.final else M.routed_scores(inputs.student, inputs.large, mask)
        return float(mask.mean()), float(f1_score(inputs.labels, (final > inputs.threshold).astype(int), zero_division=0))

    curves = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for method in applicable(inputs):
            if method.sweep is None or (method.name == "temperature" and inputs.temperature == 1.0):
                continue
            values, thresholds = method.sweep(inputs)
            pts = [point(method, values > t) for t in thresholds]
            curves[method.name] = {"threshold": thresholds.tolist(), "usage": [u for u, _ in pts], "f1": [f for _, f in pts]}
        n = len(inputs.labels)
        plain = METHODS["student"]
        curves["random"] = {"usage": list(map(float, usages)), "f1": [
            float(np.mean([point(plain, M.random_mask(n, seed, n_routed=round(u * n)))[1] for seed in range(inputs.random_seeds)]))
            for u in usages]}
    return curves


def choose_router_threshold(router_scores, student, large, labels, large_budget=None, threshold=0.5):
    """The SafeRoute routing threshold chosen on validation scores: the highest usage within
    `large_budget` (`metrics.budget_threshold`), else the best F1 of the routed system (ties: the
    higher threshold, i.e. less routing) over 201 quantiles of the scores and 0.5."""
    scores = np.asarray(router_scores, dtype=float)
    if large_budget is not None:
        return M.budget_threshold(scores, large_budget)
    inputs = RoutingInputs(labels, student, large, scores, threshold=threshold)
    candidates = np.unique(np.concatenate([np.quantile(scores, np.linspace(0, 1, 201)), [0.5, 1.0]]))

    def system_f1(c):
        inputs.router_threshold = float(c)
        with M.collect_warnings([], "threshold"):
            return _metrics(METHODS["saferoute"], inputs, routed_mask("saferoute", inputs))["f1"]

    return float(max(candidates, key=lambda c: (system_f1(c), c)))
