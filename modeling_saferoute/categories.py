"""The multi-label category head of a stock sequence classifier (a distilled student, a trained
teacher), kept beside its weights so that the classifier itself stays stock.

A folder (or Hub repo) holds `category_head.json` (the taxonomy, the classification layer whose input
the head reads, its input size) and `category_head.safetensors` (a linear layer d -> K). The head reads
the pooled feature the binary head reads, captured by a forward pre-hook on that layer
(`modeling_saferoute.capture_features`), so the categories come from the same forward as P(unsafe).
In a SafeRoute model folder the head is the model's own `category_head` and its taxonomy is
`config.taxonomy`.
"""

import json

import torch
from torch import nn
from transformers.modeling_utils import load_state_dict
from transformers.utils import cached_file

from .modeling_saferoute import capture_features, find_classification_layer
from .taxonomy import Taxonomy

HEAD_CONFIG = "category_head.json"
HEAD_WEIGHTS = "category_head.safetensors"


def new_category_head(in_features, taxonomy):
    """A fresh linear category head for `taxonomy` (a Taxonomy) on `in_features`-wide features."""
    return nn.Linear(in_features, len(taxonomy))


def category_probabilities(logits):
    """P(category) per input and category: the sigmoid of the head's logits, in float32."""
    return torch.sigmoid(logits.float())


def hook_classification_layer(model, num_labels=2):
    """Register `capture_features` on the classification layer of `model` (a stock classifier);
    returns (layer name, hook handle)."""
    name, layer = find_classification_layer(model, num_labels)
    return name, layer.register_forward_pre_hook(capture_features)


def load_category_head(name_or_path, revision=None):
    """(head, taxonomy, layer name) of the classifier at `name_or_path` (a folder or Hub id), or None
    when it has no category head."""
    config_file = cached_file(name_or_path, HEAD_CONFIG, revision=revision, _raise_exceptions_for_missing_entries=False,
                              _raise_exceptions_for_connection_errors=False)
    if config_file is None:
        return None
    with open(config_file) as f:
        record = json.load(f)
    taxonomy = Taxonomy.load(record["taxonomy"])
    weights = cached_file(name_or_path, HEAD_WEIGHTS, revision=revision)
    head = new_category_head(int(record["in_features"]), taxonomy)
    head.load_state_dict(load_state_dict(weights))
    return head.eval(), taxonomy, record.get("layer")
