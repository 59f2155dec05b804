"""Model, dataset and Space cards rendered from measured results with huggingface_hub."""

import json
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData

TEMPLATES = Path(__file__).parent


def render_model_card(model_dir, student=None, report=None):
    """The README.md of a SafeRoute model folder, from its config and an optional evaluation report."""
    model_dir = Path(model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    large = config.get("large_guard") or {}
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag="text-classification",
        tags=["safety", "guard", "saferoute", "harmaug", "custom_code"],
        license="apache-2.0",
        base_model=None if (student or "").startswith("bundled:") else student,
    )
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATES / "model_card.md"),
        model_dir=model_dir.name,
        student=student or config.get("_name_or_path", "unknown"),
        large_guard=large,
        router_threshold=config.get("router_threshold"),
        threshold=config.get("threshold"),
        head_trained=config.get("head_trained", False),
        router_trained=config.get("router_trained", False),
        report=report,
    )


def _size_category(n):
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return name
    return "1M<n<10M"


def render_dataset_card(stats, repo_id="harmaug-corpus"):
    """The README.md of a HarmAug corpus folder (a Hub dataset repo), from the builder's stats."""
    from huggingface_hub import DatasetCard, DatasetCardData

    card_data = DatasetCardData(
        language=["en"],
        license=stats.get("license", "other"),
        task_categories=["text-classification"],
        size_categories=[_size_category(stats.get("num_rows", 0))],
        tags=["safety", "guard", "harmaug", "synthetic", "not-for-all-audiences"],
        pretty_name="HarmAug corpus",
        configs=[{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*.parquet"}]}],
    )
    return DatasetCard.from_template(
        card_data, template_path=str(TEMPLATES / "dataset_card.md"), pretty_name="HarmAug corpus",
        repo_id=repo_id, stats=stats,
    )
