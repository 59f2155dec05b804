"""Freezing an encoder classifier's lower part: cheaper CPU steps (no backward pass or AdamW update
below the first trained layer)."""

import logging

logger = logging.getLogger(__name__)


def freeze_lower_layers(model, n):
    """Freeze the embeddings and the lowest `n` (>= 0) transformer layers of an encoder classifier
    (BERT, MPNet, RoBERTa, DeBERTa... : `base_model.embeddings` and `base_model.encoder.layer`); the
    rest and the head train. Returns the number of parameters left to train."""
    base = model.base_model
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    if layers is None or not hasattr(base, "embeddings"):
        raise ValueError(f"{type(model).__name__} has no embeddings + encoder.layer to freeze.")
    if not 0 <= n <= len(layers):
        raise ValueError(f"Layers to freeze must be in [0, {len(layers)}] for {type(model).__name__}, got {n}.")
    for module in [base.embeddings, *layers[:n]]:
        module.requires_grad_(False)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info("Froze the embeddings and %d of %d layers: %.1fM parameters train.", n, len(layers), trainable / 1e6)
    return trainable
