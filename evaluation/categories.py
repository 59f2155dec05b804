"""Harm categories in `saferoute evaluate`: per-category AUPRC and F1 on the OpenAI moderation
benchmark's human category labels (`categories/eval/openai_moderation_categories.jsonl`, mapped to
the model's taxonomy; null labels are masked, never read as negatives), and a confusion table of
predicted against labeled category.

Systems: the student's category head, the student's binary P(unsafe) used as every category's score
(what the head must beat), the large guard's categories, and SafeRoute (the large guard's categories
where the router sends the input, the student's elsewhere). A category is predicted as the pipeline
reports it: its score above its threshold and the input unsafe (the system's P(unsafe) above the
decision threshold). AUPRC reads the scores alone.
"""

import numpy as np

from dataset_builders.categories import BENCHMARK, load_category_benchmark
from dataset_builders.score_store import category_columns

from . import metrics as M

SYSTEMS = {
    "student": "student (category head)",
    "student_binary": "student P(unsafe) as each category's score",
    "large_guard": "large guard",
    "saferoute": "SafeRoute",
    "guard": "guard",
    "guard_binary": "guard P(unsafe) as each category's score",
}
def benchmark(taxonomy, max_rows=None, seed=0):
    """(rows, labeled categories) of the category benchmark for `taxonomy`, at most `max_rows` of
    them (a label-stratified seeded sample); (None, []) when the taxonomy does not map its labels."""
    rows, labeled = load_category_benchmark(taxonomy)
    if rows is None or not labeled:
        return None, []
    if max_rows and max_rows < len(rows):
        from dataset_builders.benchmarks import subsample

        rows = subsample(rows, max_rows, seed)
    return rows, labeled


def category_metrics(targets, scores, predicted, taxonomy, labeled):
    """{category: {auprc, f1, precision, recall, positives, annotated}} over the rows where the
    category is annotated, plus "macro" (means of auprc and f1 over the labeled categories)."""
    out = {}
    for c in labeled:
        k = taxonomy.names.index(c)
        known = ~np.isnan(targets[:, k])
        y = targets[known, k].astype(int)
        decided = M.classification_metrics(y, predicted[known, k].astype(float), 0.5)  # F1 of the reported categories
        out[c] = {"auprc": M.average_precision(y, scores[known, k]), "f1": decided["f1"], "precision": decided["precision"],
                  "recall": decided["recall"], "positives": int(y.sum()), "annotated": int(known.sum())}
    out["macro"] = {m: float(np.nanmean([out[c][m] for c in labeled])) for m in ("auprc", "f1")}
    return out


def confusion(targets, predicted, binary_labels, taxonomy, labeled):
    """The share of the rows labeled with each category (and of the safe rows) that each category is
    predicted for ("other": a category the benchmark does not label; "none": no category)."""
    others = [k for k, c in enumerate(taxonomy.names) if c not in labeled]
    table = {}
    groups = [(c, targets[:, taxonomy.names.index(c)] == 1) for c in labeled] + [("safe", np.asarray(binary_labels) == 0)]
    for name, rows in groups:
        n = int(rows.sum())
        share = {p: float(predicted[rows, taxonomy.names.index(p)].mean()) if n else float("nan") for p in labeled}
        share["other"] = float(predicted[rows][:, others].any(axis=1).mean()) if n and others else 0.0
        share["none"] = float((~predicted[rows].any(axis=1)).mean()) if n else float("nan")
        table[name] = {"rows": n, "share": share}
    return table


def predictions(scores, unsafe, taxonomy, thresholds, threshold):
    """The categories a system reports: score above the category's threshold and P(unsafe) above `threshold`."""
    cut = np.array([thresholds[c] for c in taxonomy.names])
    return (scores > cut) & (np.asarray(unsafe)[:, None] > threshold)


def evaluate_systems(systems, targets, binary_labels, taxonomy, labeled, thresholds, threshold):
    """{"systems": {name: metrics}, "confusion": {name: table}} of `systems` ({name: (category scores
    (n, K), P(unsafe) (n,))}); a system whose scores are all NaN (no category read-out) is left out."""
    out = {"systems": {}, "confusion": {}}
    for name, (scores, unsafe) in systems.items():
        if np.isnan(scores).all():
            continue
        predicted = predictions(np.nan_to_num(scores), unsafe, taxonomy, thresholds, threshold)
        with np.errstate(invalid="ignore"):
            out["systems"][name] = category_metrics(targets, np.nan_to_num(scores), predicted, taxonomy, labeled)
        out["confusion"][name] = confusion(targets, predicted, binary_labels, taxonomy, labeled)
    return out


def frame_scores(frame, taxonomy):
    """(n, K) category scores from a score-store frame's category columns."""
    return np.stack([frame[col].to_numpy(dtype=float) for col in category_columns(taxonomy)], axis=1)


def report_section(rows, labeled, taxonomy, result, thresholds, threshold, routed_share=None):
    """The `categories` entry of report.json."""
    return {
        "benchmark": BENCHMARK, "n": len(rows), "taxonomy": taxonomy.name, "labeled_categories": labeled,
        "thresholds": {c: thresholds[c] for c in taxonomy.names}, "threshold": threshold,
        "titles": {k: v for k, v in SYSTEMS.items() if k in result["systems"]},
        **({"routed_share": routed_share} if routed_share is not None else {}),
        **result,
    }
