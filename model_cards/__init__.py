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
