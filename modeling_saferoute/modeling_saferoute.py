"""SafeRouteForSequenceClassification: a student guard and its router in one PreTrainedModel.

The student is a stock `AutoModelForSequenceClassification` (so any checkpoint fine-tuned with
the usual tools loads as is). The router reads the exact feature the student's classification
layer reads (captured with a forward pre-hook on that layer), so one forward gives P(unsafe),
the router score and the feature; with `config.router_features = "hidden_logits_entropy"` the
student's two logits and the binary entropy (bits) of its P(unsafe) are appended to that feature
(`router_inputs`), still in the same forward.

Thread safety: the hook hands the feature to the forward call that ran it through a per-thread
buffer (`threading.local`), never through the model instance, so one model serves concurrent
forwards from many threads (a web server's pool, the Gradio queue).
"""

import contextlib
import math
import threading
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn
from transformers import AutoModelForSequenceClassification, PreTrainedModel
from transformers.utils import ModelOutput

from .configuration_saferoute import ROUTER_FEATURES, SafeRouteConfig
from .inputs import position_limit  # the one position rule (students and guards)
from .taxonomy import Taxonomy


@dataclass
class SafeRouteOutput(ModelOutput):
    """Outputs of [`SafeRouteForSequenceClassification`].

    logits: (batch, 2) student logits, label 1 = unsafe. router_logits: (batch,) router logit;
    sigmoid > router_threshold means "send to the large guard". features: (batch, d') what the
    router reads (`router_inputs`): the pooled feature of the student's classification layer,
    with its logits and entropy appended when `config.router_features` says so. category_logits:
    (batch, K) the category head's logits on the pooled feature (sigmoid: P of each category of
    `config.taxonomy`), None without a category head.
    """

    loss: Optional[torch.FloatTensor] = None
    logits: Optional[torch.FloatTensor] = None
    router_logits: Optional[torch.FloatTensor] = None
    features: Optional[torch.FloatTensor] = None
    category_logits: Optional[torch.FloatTensor] = None


# The feature buffer of the forward running in this thread inside `capturing_features` (None outside one).
_CAPTURED = threading.local()
_HOOK_LOCK = threading.Lock()


def capture_features(module, args):
    """Forward pre-hook of a classification layer: hands its input (the pooled feature) to the
    `capturing_features` buffer of this thread, if one is open."""
    buffer = getattr(_CAPTURED, "features", None)
    if buffer is not None:
        buffer.append(args[0])


@contextlib.contextmanager
def capturing_features():
    """A per-thread list that `capture_features` hooks fill during the forwards run inside it (so
    one hooked model serves concurrent forwards from many threads)."""
    outer, _CAPTURED.features = getattr(_CAPTURED, "features", None), []
    try:
        yield _CAPTURED.features
    finally:
        _CAPTURED.features = outer


def input_length_limit(config, default=512):
    """The pair-encoding token budget of a `SafeRouteConfig`: its `max_input_length`, capped by the
    encoder's `position_limit`."""
    limits = [x for x in (config.max_input_length, position_limit(config.encoder)) if x]
    return min(limits) if limits else default


class SafeRouteRouter(nn.Module):
    """The SafeRoute router: d -> h -> h -> 1 MLP with LayerNorm + ReLU."""

    def __init__(self, input_size, hidden_size):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(input_size, hidden_size),
            nn.LayerNorm(hidden_size),
            nn.ReLU(),
            nn.Linear(hidden_size, hidden_size),
            nn.LayerNorm(hidden_size),
            nn.ReLU(),
            nn.Linear(hidden_size, 1),
        )

    def forward(self, features):
        return self.layers(features).squeeze(-1)


def router_inputs(features, logits, kind="hidden"):
    """The router's input: the pooled `features` ("hidden", SafeRoute's), or them with the student's
    two `logits` and the binary entropy in bits of its softmax appended ("hidden_logits_entropy")."""
    if kind == "hidden":
        return features
    if kind not in ROUTER_FEATURES:
        raise ValueError(f"router_features must be one of {list(ROUTER_FEATURES)}, got {kind!r}.")
    logits = logits.float()
    log_p = torch.log_softmax(logits, dim=-1)
    entropy = -(log_p.exp() * log_p).sum(-1, keepdim=True) / math.log(2.0)
    return torch.cat([features.float(), logits, entropy], dim=-1)


def find_classification_layer(model, num_labels):
    """(name, layer) of the last `nn.Linear` with `num_labels` outputs: its input is the pooled feature."""
    found = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and module.out_features == num_labels:
            found = (name, module)
    if found is None:
        raise ValueError(f"{type(model).__name__} has no nn.Linear with {num_labels} outputs to read features from.")
    return found


class SafeRoutePreTrainedModel(PreTrainedModel):
    config_class = SafeRouteConfig
    base_model_prefix = "saferoute"
    supports_gradient_checkpointing = True
    _supports_sdpa = True

    def _init_weights(self, module):
        if isinstance(module, SafeRouteRouter):
            for layer in module.layers:
                if isinstance(layer, nn.Linear):
                    nn.init.xavier_uniform_(layer.weight)
                    nn.init.zeros_(layer.bias)
                elif isinstance(layer, nn.LayerNorm):
                    nn.init.ones_(layer.weight)
                    nn.init.zeros_(layer.bias)


class SafeRouteForSequenceClassification(SafeRoutePreTrainedModel):
    def __init__(self, config: SafeRouteConfig):
        super().__init__(config)
        encoder_config = config.encoder
        encoder_config.num_labels = 2
        encoder_config.id2label = dict(config.id2label)
        encoder_config.label2id = dict(config.label2id)
        self.student = AutoModelForSequenceClassification.from_config(encoder_config)
        self._head_name, head = find_classification_layer(self.student, 2)
        self.router = SafeRouteRouter(head.in_features + ROUTER_FEATURES[config.router_features], config.router_hidden_size)
        # The multi-label category head reads the pooled feature (same forward, no second pass).
        taxonomy = Taxonomy.load(config.taxonomy) if config.taxonomy else None
        self.category_head = nn.Linear(head.in_features, len(taxonomy)) if taxonomy else None
        # A plain dict, so the hooked layer is not registered twice as a submodule.
        self._hook = {"module": None, "handle": None}
        self.post_init()

    def _ensure_feature_hook(self):
        """Hook the head layer that is in the student now (quantization or PEFT may have swapped it)."""
        head = self.student.get_submodule(self._head_name)
        if self._hook["module"] is head:
            return
        with _HOOK_LOCK:  # a swap is rare; two threads must not both re-hook
            if self._hook["module"] is not head:
                if self._hook["handle"] is not None:
                    self._hook["handle"].remove()
                self._hook = {"module": head, "handle": head.register_forward_pre_hook(capture_features)}

    def set_router_features(self, kind):
        """Make the router read `kind` (a key of `ROUTER_FEATURES`): a new, freshly initialised router
        when its input size changes; the config records it."""
        if kind not in ROUTER_FEATURES:
            raise ValueError(f"router_features must be one of {list(ROUTER_FEATURES)}, got {kind!r}.")
        size = self.student.get_submodule(self._head_name).in_features + ROUTER_FEATURES[kind]
        if self.router.layers[0].in_features != size:
            self.router = SafeRouteRouter(size, self.config.router_hidden_size).to(self.router.layers[0].weight.device)
            self._init_weights(self.router)
        self.config.router_features = kind

    @property
    def max_length(self):
        """Token budget of the pair encoding: the configured one, capped by absolute position embeddings
        (encoders with relative positions only, such as DeBERTa-v3, are not capped by them)."""
        return input_length_limit(self.config)

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None, **kwargs):
        model_inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            model_inputs["token_type_ids"] = token_type_ids
        self._ensure_feature_hook()
        with capturing_features() as captured:
            student_out = self.student(**model_inputs, **kwargs)
        if not captured:
            raise RuntimeError(f"The student's classification layer {self._head_name!r} did not run: no feature for the router.")
        pooled = captured[-1]
        features = router_inputs(pooled, student_out.logits, self.config.router_features)
        router_logits = self.router(features.to(self.router.layers[0].weight.dtype))
        category_logits = None
        if self.category_head is not None:
            category_logits = self.category_head(pooled.to(self.category_head.weight.dtype))
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(student_out.logits.float(), labels)
        return SafeRouteOutput(loss=loss, logits=student_out.logits, router_logits=router_logits, features=features,
                               category_logits=category_logits)


SafeRouteConfig.register_for_auto_class()
SafeRouteForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")
