"""`report.md` tables (shaped like the papers': a row per method, a column per benchmark, then the
average) and matplotlib plots (Agg backend) of `saferoute evaluate`."""

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from dataset_builders.benchmarks import BENCHMARKS  # noqa: E402

from .baselines import BASELINES  # noqa: E402
from .methods import METHODS, ROUTER_THRESHOLDS  # noqa: E402

TITLES = {
    "f1": "F1 (threshold {threshold})",
    "precision": "Precision",
    "recall": "Recall",
    "accuracy": "Accuracy",
    "auprc": "AUPRC (average precision)",
    "large_usage": "Large-model usage (share of inputs sent to the large guard)",
    "routing_f1": "Routing F1 (router decision vs t = student wrong and large right)",
}
GUARD = {"title": "guard", "color": "tab:blue"}  # the single row of guard mode


def _row(name):
    """The registered method or baseline `name` (None: the guard row, or an unknown name)."""
    return METHODS.get(name) or BASELINES.get(name)


def _title(name):
    return GUARD["title"] if name == "guard" else _row(name).title if _row(name) else name


def _color(name):
    return GUARD["color"] if name == "guard" else _row(name).color if _row(name) else None


def _short(name):
    return BENCHMARKS[name].short if name in BENCHMARKS else name


def _fmt(value, std=None):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.4f}" + (f" ± {std:.4f}" if std is not None else "")


def _table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def markdown_report(report):
    """The report as Markdown."""
    names = list(report["benchmarks"])
    header = ["method"] + [_short(n) for n in names] + ["avg"]
    settings = report["settings"]
    out = [f"# Safety benchmark evaluation ({report['mode']})", ""]
    for key, value in report["models"].items():
        out.append(f"- {key}: `{value.get('name_or_path')}` (kind `{value.get('kind')}`)")
    out.append("- examples: " + ", ".join(f"{_short(n)} {report['benchmarks'][n]['n']}" for n in names))
    out.append("- settings: " + ", ".join(f"{k}={v}" for k, v in settings.items() if k not in ("benchmarks", "baselines")))
    for name, b in (settings.get("baselines") or {}).items():
        fit = b["fitted_on"]
        rows = "?" if fit.get("rows") is None else f"{fit['rows']:,}"
        out.append(f"- baseline {b['title']}: fitted on the human labels of {rows} rows, the {' + '.join(fit['role_names'])} roles of "
                   f"the role split {fit['roles_fingerprint']} (pool {fit['seed_pool']})")
    out.append("")
    methods = list(report["average"]["methods"])
    metrics = report["metrics"]
    for metric in metrics:
        out += [f"## {TITLES[metric].format(threshold=settings.get('threshold', 0.5))}", ""]
        rows = []
        for method in methods:
            row = [_title(method)]
            for scope in [report["benchmarks"][n] for n in names] + [report["average"]]:
                m = scope["methods"][method]
                row.append(_fmt(m.get(metric), m.get("std", {}).get(metric)))
            rows.append(row)
        out += [_table(header, rows), ""]
    out += ["## Throughput (examples/s; wall seconds)", ""]
    rows = []
    for system in report["average"]["throughput"]:
        row = [system]
        for scope in [report["benchmarks"][n] for n in names] + [report["average"]]:
            t = scope["throughput"][system]
            row.append(f"{t['examples_per_second']:.1f} ({t['seconds']:.2f}s)")
        rows.append(row)
    out += [_table(["system"] + header[1:], rows), ""]
    if report["mode"] == "saferoute":
        out.append(
            "Routed time = student time + large-guard time on the routed share, from the measured "
            "per-example costs; the average column is total examples / total seconds."
        )
        out.append("")
    out += threshold_rows(report)
    if report.get("categories"):
        out += category_markdown(report["categories"])
    if report.get("warnings"):
        out += ["## Warnings", ""] + [f"- {w}" for w in report["warnings"]] + [""]
    return "\n".join(out)


def category_table(categories):
    """The per-category table (AUPRC and F1 per system, positives / annotated rows) as Markdown lines."""
    systems = list(categories["systems"])
    titles = categories.get("titles", {})
    header = ["category", "positives / annotated"] + [f"AUPRC {titles.get(s, s)}" for s in systems] + \
        [f"F1 {titles.get(s, s)}" for s in systems if not s.endswith("_binary")]
    rows = []
    for c in categories["labeled_categories"] + ["macro"]:
        first = categories["systems"][systems[0]][c]
        count = f"{first['positives']} / {first['annotated']}" if c != "macro" else ""
        row = ["**macro average**" if c == "macro" else c, count]
        row += [_fmt(categories["systems"][s][c]["auprc"]) for s in systems]
        row += [_fmt(categories["systems"][s][c]["f1"]) for s in systems if not s.endswith("_binary")]
        rows.append(row)
    return _table(header, rows)


def category_markdown(categories):
    """The report's harm-category section: the per-category table and the confusion tables."""
    out = [f"## Harm categories ({categories['benchmark']}, {categories['n']} rows, taxonomy `{categories['taxonomy']}`)", "",
           "AUPRC of each system's category score and F1 of the categories it reports (score above the category's "
           "threshold and the input unsafe), over the rows where the category is annotated (null labels masked, never "
           "read as negatives)." + (f" SafeRoute sent {categories['routed_share']:.1%} of these rows to the large guard."
                                     if categories.get("routed_share") is not None else ""), "",
           category_table(categories), ""]
    labeled = categories["labeled_categories"]
    for system, table in categories["confusion"].items():
        if system.endswith("_binary"):
            continue
        out += [f"### Confusion: {categories.get('titles', {}).get(system, system)} (share of rows of each labeled category "
                "reported as each category)", ""]
        rows = [[name, str(t["rows"])] + [_fmt(t["share"][p]) for p in labeled + ["other", "none"]] for name, t in table.items()]
        out += [_table(["labeled", "rows"] + labeled + ["other", "none"], rows), ""]
    return out


def threshold_rows(report):
    """The "SafeRoute routing thresholds" section: each threshold row's value, how it was chosen, its
    average F1, usage and routing F1, and which one the model routes with by default."""
    thresholds = report["settings"].get("router_thresholds") or {}
    average = report["average"]["methods"]
    rows = []
    for key, rule in ROUTER_THRESHOLDS.items():
        m = average.get(f"saferoute_{key}")
        if key not in thresholds or m is None:
            continue
        default = "yes" if report["settings"].get("router_threshold_choice") == key else ""
        rows.append([key, f"{thresholds[key]:.4f}", rule, _fmt(m["f1"]), _fmt(m["large_usage"]), _fmt(m["routing_f1"]), default])
    if not rows:
        return []
    used = report["settings"].get("router_threshold")
    return ["## SafeRoute routing thresholds", "",
            f"The model routes with {report['settings'].get('router_threshold_choice') or 'its own threshold'} "
            f"({_fmt(used)}); averages over the benchmarks.", "",
            _table(["threshold", "value", "chosen as", "avg F1", "avg usage", "avg routing F1", "default"], rows), ""]


def _grid(count):
    cols = min(count, 4)
    rows = math.ceil(count / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.6 * rows), squeeze=False)
    flat = axes.ravel().tolist()
    for ax in flat[count:]:
        ax.set_visible(False)
    return fig, flat[:count]


def plot_pr_curves(curves, path):
    """Precision-recall curves, one panel per benchmark, one line per scored system."""
    fig, axes = _grid(len(curves))
    for ax, (name, systems) in zip(axes, curves.items()):
        for system, (precision, recall, auprc) in systems.items():
            ax.plot(recall, precision, label=f"{_title(system)} ({auprc:.3f})", color=_color(system), drawstyle="steps-post")
        ax.set_title(_short(name))
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_category_auprc(categories, path):
    """Grouped bars: AUPRC per labeled category (and the macro average), one bar per system."""
    labeled = categories["labeled_categories"] + ["macro"]
    systems = list(categories["systems"])
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(labeled)), 3.8))
    width = 0.8 / len(systems)
    for j, system in enumerate(systems):
        values = [categories["systems"][system][c]["auprc"] for c in labeled]
        ax.bar([i + j * width for i in range(len(labeled))], values, width, label=categories.get("titles", {}).get(system, system))
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(labeled))])
    ax.set_xticklabels(labeled, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("AUPRC")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"Harm categories on {categories['benchmark']} (nulls masked)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_usage_sweeps(sweeps, points, path):
    """F1 against large-model usage per benchmark (and averaged): SafeRoute's router-threshold sweep
    against entropy and random routing, with student, large-only, SafeRoute and oracle marked."""
    fig, axes = _grid(len(sweeps))
    sweep_names = {"saferoute": "SafeRoute (router threshold 1 -> 0)", "random": "random",
                   "entropy": "entropy (threshold 1 -> 0 bits)", "temperature": "temperature-scaled entropy (1 -> 0 bits)"}
    for ax, (name, curves) in zip(axes, sweeps.items()):
        for method, curve in curves.items():
            ax.plot(curve["usage"], curve["f1"], label=sweep_names.get(method, _title(method)),
                    color=_color("random_same_usage" if method == "random" else method),
                    marker="." if method == "random" else None, linewidth=1.2)
        for method, (usage, f1) in points[name].items():
            ax.scatter([usage], [f1], color=_color(method), marker=METHODS[method].marker or "o",
                       zorder=5, s=50, label=_title(method))
        ax.set_title(_short(name))
        ax.set_xlabel("large-model usage")
        ax.set_ylabel("F1")
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(0, 1.02)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower right", fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
