"""SafeRouteConfig: the student encoder's config, the router's sizes and the large-guard reference."""

from transformers import AutoConfig, PretrainedConfig

from .taxonomy import Taxonomy

LABELS = {0: "safe", 1: "unsafe"}
# What the router reads, and how many numbers it appends to the student's pooled feature.
ROUTER_FEATURES = {"hidden": 0, "hidden_logits_entropy": 3}
LARGE_GUARD_KEYS = ("name_or_path", "revision", "kind", "dtype", "max_length", "batch_size", "backend", "backend_options", "options")


def large_guard_reference(name_or_path, kind, revision=None, dtype=None, max_length=None, batch_size=None, backend=None,
                          backend_options=None, options=None):
    """The large-guard reference a SafeRoute model records (`SafeRouteConfig.large_guard`): the guard
    and every setting it scores with, so that train-router (which labels the router's data with it),
    the pipeline and evaluate all score a text the same way (`guards.load_large_guard` reads it)."""
    ref = {"name_or_path": name_or_path, "kind": kind, "revision": revision, "dtype": dtype, "max_length": max_length,
           "batch_size": batch_size}
    for key, value in (("backend", backend), ("backend_options", backend_options), ("options", options)):
        if value:
            ref[key] = value
    return ref


class SafeRouteConfig(PretrainedConfig):
    r"""Configuration of a [`SafeRouteForSequenceClassification`] (student guard + router).

    Args:
        encoder (`PretrainedConfig` or `dict`): config of the student; any encoder with an
            `AutoModelForSequenceClassification` class (BERT, DeBERTa-v2, ModernBERT, MPNet...).
        router_hidden_size (`int`, 512): width of the router MLP (d -> h -> h -> 1).
        router_features (`str`, "hidden"): what the router reads: "hidden" (SafeRoute's: the pooled
            feature the student's classification layer reads) or "hidden_logits_entropy" (the same
            with the student's two logits and the binary entropy, in bits, of its P(unsafe) appended).
        router_threshold (`float`, 0.5): route to the large guard when sigmoid(router logit) > this.
        router_thresholds (`dict`, optional): the routing thresholds train-router chose, by name
            ("fixed", "best_f1", "budget"), for reference; `router_threshold` is the one used.
        router_threshold_choice (`str`, optional): which of `router_thresholds` is `router_threshold`.
        threshold (`float`, 0.5): an input is "unsafe" when P(unsafe) > this.
        max_input_length (`int`, optional): token budget of the pair encoding; default the encoder's
            maximum (not named `max_length`: transformers reserves that name for generation).
        large_guard (`dict`, optional): reference to the large guard: `name_or_path`, `revision`,
            `kind` (a key of `guards.GUARD_KINDS`), `dtype`, `max_length`, `batch_size`, `backend`
            ("transformers", "vllm" or "openai_compatible") with its `backend_options` (e.g.
            `base_url`), and adapter `options`.
        taxonomy (`dict`, optional): the harm-category taxonomy of the category head (see `taxonomy.py`);
            None: the model reports no categories.
        category_thresholds (`dict`, optional): category -> threshold (a category is reported when its
            probability is above it and the input is unsafe); default the taxonomy's own (0.5).
    """

    model_type = "saferoute"
    sub_configs = {"encoder": AutoConfig}

    def __init__(
        self,
        encoder=None,
        router_hidden_size=512,
        router_features="hidden",
        router_threshold=0.5,
        router_thresholds=None,
        router_threshold_choice=None,
        threshold=0.5,
        max_input_length=None,
        large_guard=None,
        taxonomy=None,
        category_thresholds=None,
        **kwargs,
    ):
        if isinstance(encoder, dict):
            encoder = AutoConfig.for_model(**encoder)
        self.encoder = encoder
        self.router_hidden_size = router_hidden_size
        if router_features not in ROUTER_FEATURES:
            raise ValueError(f"router_features must be one of {list(ROUTER_FEATURES)}, got {router_features!r}.")
        self.router_features = router_features
        self.router_threshold = float(router_threshold)
        self.router_thresholds = {str(k): float(v) for k, v in (router_thresholds or {}).items()}
        self.router_threshold_choice = router_threshold_choice
        self.threshold = float(threshold)
        self.max_input_length = max_input_length
        large_guard = dict(large_guard or {})
        unknown = set(large_guard) - set(LARGE_GUARD_KEYS)
        if unknown:
            raise ValueError(f"large_guard has unknown keys {sorted(unknown)}; allowed: {list(LARGE_GUARD_KEYS)}")
        self.large_guard = large_guard
        checked = Taxonomy.load(taxonomy) if taxonomy else None
        if category_thresholds and checked is None:
            raise ValueError("category_thresholds need a taxonomy (this model has no category head).")
        self.taxonomy = checked.to_dict() if checked else None
        self.category_thresholds = checked.category_thresholds(category_thresholds) if checked else None
        kwargs["id2label"] = dict(LABELS)
        kwargs["label2id"] = {v: k for k, v in LABELS.items()}
        super().__init__(**kwargs)

    @property
    def hidden_size(self):
        return self.encoder.hidden_size if self.encoder is not None else None
