"""The registry of routing methods: what each routes, under which name and colour.

A method decides, per input, whether the large guard's P(unsafe) replaces the student's. Every
reader takes the methods from `METHODS`: `saferoute evaluate` (its tables and report.json), the
plots, the model card (through the titles the report carries) and train-router's threshold choice.
To add a baseline, add one `RoutingMethod` here.

| method | routes when | source |
| --- | --- | --- |
| student | never | both papers |
| large | always | both papers |
| saferoute | router score > router threshold (the packaged model's, or evaluate's --router-threshold) | SafeRoute |
| saferoute_fixed | router score > the fixed threshold (0.5 by default, SafeRoute's code) | SafeRoute |
| saferoute_best_f1 | router score > the threshold of the best routed F1 on the threshold split | this project |
| saferoute_budget | router score > the threshold keeping the threshold split's usage within the budget | this project |
| random_same_usage | a seeded random subset as large as SafeRoute's (mean, std over seeds) | this project: the fair random row |
| random_p50 | each input with probability 0.5, seeded (mean, std over seeds) | SafeRoute's official random baseline |
| entropy_same_usage | the student's most uncertain inputs (binary entropy), as many as SafeRoute routes | this project: the fair entropy row |
| entropy | binary entropy of the student's P(unsafe), in bits, > entropy threshold (0.5) | SafeRoute |
| temperature | the same on the temperature-scaled P(unsafe); items not routed keep the scaled P | SafeRoute (official code) |
| oracle | the student is wrong and the large guard right (true labels) | SafeRoute |

The three threshold rows read `RoutingInputs.router_thresholds` (chosen by train-router on rows
that chose nothing else, `router_thresholds`); a row whose threshold is absent is not computed.
Random masks are seeded per set: seed k of benchmark B is `metrics.random_seed(B, k)`.
"""

import warnings
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
    router_thresholds: dict = field(default_factory=dict)  # {"fixed", "best_f1", "budget"}: the threshold rows
    name: str = ""  # the set's name (a benchmark): the random masks' seeds derive from it

    def __post_init__(self):
        self.labels = np.asarray(self.labels, dtype=int)
        self.student = np.asarray(self.student, dtype=float)
        self.large = np.asarray(self.large, dtype=float)
        self.router = None if self.router is None else np.asarray(self.router, dtype=float)


@dataclass(frozen=True)
class RoutingMethod:
    """One routing method.

    route(inputs, seed) -> boolean mask (seed is None unless `seeded`; then it is
    `metrics.random_seed(inputs.name, k)`); final(inputs, mask) -> the system's P(unsafe) (default:
    large where routed, student elsewhere); sweep(inputs) -> (values, thresholds) whose
    `values > threshold` masks trace the F1-vs-usage curve.
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
    threshold_key: Optional[str] = None  # the key of `RoutingInputs.router_thresholds` it routes with


ROUTER_THRESHOLDS = {
    "fixed": "the fixed threshold (train-router's --router_threshold: 0.5, SafeRoute's code, by default)",
    "best_f1": "the best routed F1 on the threshold split",
    "budget": "the largest usage within the large-guard budget on the threshold split",
}


def _temperature_final(x, mask):
    return M.routed_scores(M.temperature_scale(x.student, x.temperature), x.large, mask)


def _threshold_route(key):
    return lambda x, s: x.router > x.router_thresholds[key]


def _saferoute_count(x):
    """How many inputs SafeRoute routes at the model's threshold: the same-usage rows route as many."""
    return int((x.router > x.router_threshold).sum())


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
        *(RoutingMethod(f"saferoute_{key}", f"SafeRoute, {title} threshold", color, _threshold_route(key),
                        f"router score > {rule}", needs_router=True, threshold_key=key)
          for key, title, color, rule in (
              ("fixed", "fixed", "yellowgreen", ROUTER_THRESHOLDS["fixed"]),
              ("best_f1", "best-F1", "darkgreen", ROUTER_THRESHOLDS["best_f1"]),
              ("budget", "budget", "mediumseagreen", ROUTER_THRESHOLDS["budget"]))),
        RoutingMethod("random_same_usage", "random, same usage as SafeRoute", "tab:gray",
                      lambda x, s: M.random_mask(len(x.labels), s, n_routed=_saferoute_count(x)),
                      "a seeded random subset as large as SafeRoute's", seeded=True, needs_router=True),
        RoutingMethod("random_p50", "random, p = 0.5", "silver", lambda x, s: M.random_mask(len(x.labels), s, p=0.5),
                      "each input with probability 0.5 (SafeRoute's official baseline)", seeded=True),
        RoutingMethod("entropy_same_usage", "entropy, same usage as SafeRoute", "peru",
                      lambda x, s: M.top_mask(M.binary_entropy(x.student), _saferoute_count(x)),
                      "the student's most uncertain inputs (binary entropy), as many as SafeRoute routes",
                      needs_router=True),
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
    return [m for m in METHODS.values() if (inputs.router is not None or not m.needs_router)
            and (m.threshold_key is None or m.threshold_key in inputs.router_thresholds)]


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
                runs = [_metrics(method, inputs, method.route(inputs, M.random_seed(inputs.name, k))) for k in range(inputs.random_seeds)]
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
    def point(method, mask):
        final = method.final(inputs, mask) if method.final else M.routed_scores(inputs.student, inputs.large, mask)
        return float(mask.mean()), M.f1(inputs.labels, final, inputs.threshold)

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
            float(np.mean([point(plain, M.random_mask(n, M.random_seed(inputs.name, k), n_routed=round(u * n)))[1]
                           for k in range(inputs.random_seeds)]))
            for u in usages]}
    return curves


def best_f1_threshold(router_scores, student, large, labels, threshold=0.5):
    """The router threshold of the best F1 of the routed system on these scores (ties: the higher
    threshold, i.e. less routing), over 201 quantiles of the scores and 0.5."""
    scores = np.asarray(router_scores, dtype=float)
    candidates = np.unique(np.concatenate([np.quantile(scores, np.linspace(0, 1, 201)), [0.5, 1.0]]))

    def system_f1(c):
        return M.f1(labels, M.routed_scores(student, large, scores > c), threshold)

    return float(max(candidates, key=lambda c: (system_f1(c), c)))


def router_thresholds(router_scores, student, large, labels, fixed=0.5, large_budget=None, threshold=0.5):
    """{"fixed": fixed, "best_f1": ..., "budget": ... (with `large_budget`)}: the thresholds of the
    report's three SafeRoute rows, chosen on these scores. Pass scores of rows that chose nothing
    else (not the rows that chose the router's checkpoint), or the choice is optimistic."""
    out = {"fixed": float(fixed)}
    if router_scores is not None and len(router_scores):
        out["best_f1"] = best_f1_threshold(router_scores, student, large, labels, threshold)
        if large_budget is not None:
            out["budget"] = M.budget_threshold(router_scores, large_budget)
    return out
