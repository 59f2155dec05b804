"""Model, dataset and Space cards rendered with huggingface_hub from what the stages recorded.

Nothing of the repo is imported here: a card is filled from the files a model folder holds
(`config.json`, `distill_info.json` written by `saferoute package` from the student's training
record, `router_info.json` written by `saferoute train-router`, the `training_info.json` of a
local large guard made by `saferoute train-guard`) and from an evaluation report,
which carries the display names of its benchmarks and methods (`report["titles"]`).
"""

import json
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData

TEMPLATES = Path(__file__).parent
CARD_METHODS = ("student", "large", "saferoute", "saferoute_fixed", "saferoute_best_f1", "saferoute_budget", "random_same_usage",
                "random_p50", "entropy_same_usage", "entropy", "temperature", "oracle", "tfidf_logreg")  # the last: evaluate's standing baseline
CARD_METRICS = (("f1", "F1 (threshold 0.5)"), ("auprc", "AUPRC"), ("large_usage", "share sent to the large guard"))


def _titles(report):
    titles = report.get("titles") or {}
    return titles.get("benchmarks", {}), titles.get("methods", {})


def eval_results(report, method="saferoute"):
    """huggingface_hub `EvalResult`s (model-index) of one method of an evaluation report."""
    from huggingface_hub import EvalResult

    benchmarks, _ = _titles(report)
    results = []
    for name, bench in report.get("benchmarks", {}).items():
        metrics = bench["methods"].get(method)
        if metrics is None:
            continue
        info = benchmarks.get(name, {})
        for metric in ("f1", "auprc"):
            results.append(EvalResult(
                task_type="text-classification", dataset_type=info.get("hub", name), dataset_name=info.get("title", name),
                dataset_config=name, metric_type=metric, metric_name="F1 (threshold 0.5)" if metric == "f1" else "AUPRC",
                metric_value=round(float(metrics[metric]), 4),
            ))
    return results


def results_table(report):
    """Markdown tables (F1, AUPRC, large-guard usage) of every method of a report, papers' layout."""
    names = list(report.get("benchmarks", {}))
    if not names:
        return ""
    benchmarks, methods = _titles(report)
    header = "| method | " + " | ".join(benchmarks.get(n, {}).get("title", n) for n in names) + " | avg |"
    rule = "| --- " * (len(names) + 2) + "|"
    lines = []
    for metric, title in CARD_METRICS:
        lines += [f"**{title}**", "", header, rule]
        for method in [m for m in report["average"]["methods"] if m in CARD_METHODS]:
            cells = [report["benchmarks"][n]["methods"][method].get(metric) for n in names]
            cells.append(report["average"]["methods"][method].get(metric))  # a baseline row has no large-guard usage
            lines.append(f"| {methods.get(method, method)} | " + " | ".join("-" if c is None else f"{c:.3f}" for c in cells) + " |")
        lines.append("")
    return "\n".join(lines)


def categories_table(report):
    """The card's harm-category table of a report: per labeled category (and macro), AUPRC of each
    system's category score and F1 of the categories it reports."""
    categories = (report or {}).get("categories")
    if not categories:
        return ""
    systems = list(categories["systems"])
    titles = categories.get("titles", {})
    deciding = [s for s in systems if not s.endswith("_binary")]
    lines = ["| category | positives / annotated | " + " | ".join(f"AUPRC {titles.get(s, s)}" for s in systems) + " | "
             + " | ".join(f"F1 {titles.get(s, s)}" for s in deciding) + " |",
             "| --- " * (2 + len(systems) + len(deciding)) + "|"]
    for c in categories["labeled_categories"] + ["macro"]:
        first = categories["systems"][systems[0]][c]
        count = f"{first['positives']} / {first['annotated']}" if c != "macro" else ""
        cells = [f"{categories['systems'][s][c]['auprc']:.3f}" for s in systems] + [f"{categories['systems'][s][c]['f1']:.3f}" for s in deciding]
        lines.append(f"| {'macro average' if c == 'macro' else c} | {count} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _record(model_dir, name):
    path = Path(model_dir) / name
    return json.loads(path.read_text()) if path.is_file() else None


def render_model_card(model_dir, student=None, report=None):
    """The README.md of a SafeRoute model folder from its config, its stage records and an optional
    evaluation report (the `report.json` dict of `saferoute evaluate`: model-index and tables)."""
    model_dir = Path(model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    large = config.get("large_guard") or {}
    distill = _record(model_dir, "distill_info.json")
    student = student or (distill or {}).get("student") or config.get("encoder", {}).get("_name_or_path") or "unknown"
    card_data = ModelCardData(
        model_name=model_dir.name,
        library_name="transformers",
        pipeline_tag="text-classification",
        tags=["safety", "guard", "saferoute", "harmaug", "custom_code"],
        license="apache-2.0",
        eval_results=eval_results(report) if report else None,
    )
    throughput = (report or {}).get("average", {}).get("throughput", {})
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATES / "model_card.md"),
        model_dir=model_dir.name,
        student=student,
        large_guard=large,
        router_threshold=config.get("router_threshold"),
        threshold=config.get("threshold"),
        head_trained=config.get("head_trained", False),
        router_trained=config.get("router_trained", False),
        distill=distill,
        router=_record(model_dir, "router_info.json"),
        teacher=_record(large["name_or_path"], "training_info.json") if Path(str(large.get("name_or_path"))).is_dir() else None,
        report=report,
        results_table=results_table(report) if report else "",
        categories_table=categories_table(report),
        report_categories=(report or {}).get("categories"),
        taxonomy=config.get("taxonomy"),
        category_thresholds=config.get("category_thresholds"),
        throughput=throughput,
        eval_settings=(report or {}).get("settings", {}),
    )


def _size_category(n):
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return name
    return "1M<n<10M"


def render_dataset_card(stats, repo_id="harmaug-corpus", data_files="data/train-*.parquet"):
    """The README.md of a HarmAug corpus folder (a Hub dataset repo), from the builder's stats;
    `data_files` is the pattern of its parquet shards, or {split: pattern} (the `configs` entry
    `load_dataset` reads)."""
    if isinstance(data_files, str):
        data_files = {"train": data_files}
    from huggingface_hub import DatasetCard, DatasetCardData

    card_data = DatasetCardData(
        language=["en"],
        license=stats.get("license", "other"),
        task_categories=["text-classification"],
        size_categories=[_size_category(stats.get("num_rows", 0))],
        tags=["safety", "guard", "harmaug", "synthetic", "not-for-all-audiences"],
        pretty_name="HarmAug corpus",
        configs=[{"config_name": "default", "data_files": [{"split": split, "path": path} for split, path in data_files.items()]}],
    )
    return DatasetCard.from_template(
        card_data, template_path=str(TEMPLATES / "dataset_card.md"), pretty_name="HarmAug corpus",
        repo_id=repo_id, stats=stats,
    )
