"""SafeRoutePipeline: the `text-classification` pipeline of a SafeRoute model folder.

`pipeline("text-classification", model=DIR, trust_remote_code=True)` picks this class through
`custom_pipelines` in the folder's config.json. Inputs: a str, `{"text", "text_pair"}`,
`{"prompt", "response"}`, or a list of these. Each result has the stock `label` / `score` plus
`unsafe_score`, `student_unsafe_score`, `router_score`, `routed`, `decided_by` and `truncated`.
"""

import contextlib
import threading

import torch
from transformers import Pipeline

from .guards import load_guard
from .inputs import encode_pairs, length_sorted_batches, normalize_input

ROUTE_MODES = ("auto", "never", "always")
DEFAULT_BATCH_SIZE = 32


class SafeRoutePipeline(Pipeline):
    """Student guard + router; inputs the router flags go to the large guard, loaded on first use.

    Call options: `threshold` (P(unsafe) above it is "unsafe"), `router_threshold` (route when the
    router score is above it), `route` ("auto" | "never" | "always"), `batch_size`, and
    `autocast_dtype` (e.g. `torch.bfloat16` for bf16 autocast of the student).
    """

    def __init__(self, *args, large_guard=None, **kwargs):
        super().__init__(*args, **kwargs)
        self._large_guard = large_guard
        self._large_guard_lock = threading.Lock()

    # -- the large guard ---------------------------------------------------------------------
    @property
    def large_guard(self):
        """The large-guard adapter, loaded from `config.large_guard` the first time it is needed
        (once, also when several threads route their first inputs at the same time)."""
        if self._large_guard is not None:
            return self._large_guard
        with self._large_guard_lock:
            if self._large_guard is None:
                self._large_guard = self._load_large_guard()
        return self._large_guard

    def _load_large_guard(self):
        ref = dict(self.model.config.large_guard)
        if not ref.get("name_or_path") or not ref.get("kind"):
            raise ValueError("This SafeRoute model has no large guard configured (config.large_guard).")
        name, kind = ref.pop("name_or_path"), ref.pop("kind")
        options = ref.pop("options", None) or {}
        try:
            return load_guard(name, kind, device=self.device, **ref, **options)
        except Exception as err:
            raise RuntimeError(
                f"Inputs were routed to the large guard {name!r} (kind {kind!r}) but it could not be "
                f"loaded: {err}. Pass route='never' to use the student alone."
            ) from err

    # -- Pipeline API (each stage works on one batch) -------------------------------------------
    def _sanitize_parameters(self, threshold=None, router_threshold=None, route=None, autocast_dtype=None, **kwargs):
        forward, post = {}, {}
        if autocast_dtype is not None:
            forward["autocast_dtype"] = autocast_dtype
        if threshold is not None:
            post["threshold"] = float(threshold)
        if router_threshold is not None:
            post["router_threshold"] = float(router_threshold)
        if route is not None:
            if route not in ROUTE_MODES:
                raise ValueError(f"route must be one of {ROUTE_MODES}, got {route!r}.")
            post["route"] = route
        return {}, forward, post

    def preprocess(self, items):
        encodings, truncated = encode_pairs(self.tokenizer, items, self.model.max_length)
        return {"batch": self.tokenizer.pad(encodings, return_tensors="pt"), "truncated": truncated}

    def _forward(self, model_inputs, autocast_dtype=None):
        autocast = (
            torch.autocast(self.device.type, dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext()
        )
        with autocast:
            out = self.model(**model_inputs["batch"])
        return {
            "student_unsafe_score": torch.softmax(out.logits.float(), dim=-1)[:, 1],
            "router_score": torch.sigmoid(out.router_logits.float()),
            "truncated": model_inputs["truncated"],
        }

    def postprocess(self, model_outputs, threshold=None, router_threshold=None, route="auto"):
        """Turn per-input student scores (lists) into results, sending the routed inputs to the large guard."""
        config = self.model.config
        threshold = config.threshold if threshold is None else threshold
        router_threshold = config.router_threshold if router_threshold is None else router_threshold
        student, router = model_outputs["student_unsafe_score"], model_outputs["router_score"]
        if route == "auto":
            routed = [r > router_threshold for r in router]
        else:
            routed = [route == "always"] * len(student)
        large, large_cut = {}, {}
        routed_idx = [i for i, r in enumerate(routed) if r]
        if routed_idx:
            items = model_outputs["items"]
            scores, cut = self.large_guard.score([items[i] for i in routed_idx], return_truncated=True)
            large, large_cut = dict(zip(routed_idx, scores)), dict(zip(routed_idx, cut))
        results = []
        for i, (s, r) in enumerate(zip(student, router)):
            unsafe = large.get(i, s)
            label = "unsafe" if unsafe > threshold else "safe"
            results.append(
                {
                    "label": label,
                    "score": unsafe if label == "unsafe" else 1.0 - unsafe,
                    "unsafe_score": unsafe,
                    "student_unsafe_score": s,
                    "router_score": r,
                    "routed": routed[i],
                    "decided_by": "large_guard" if routed[i] else "student",
                    "truncated": model_outputs["truncated"][i] or large_cut.get(i, False),
                }
            )
        return results

    def __call__(self, inputs, batch_size=None, **kwargs):
        """Classify one input or a list; batches are sorted by length so padding stays small."""
        single = isinstance(inputs, (str, dict)) or not hasattr(inputs, "__iter__")
        raw = [inputs] if single else list(inputs)  # lists, tuples, datasets, generators
        items = [normalize_input(x) for x in raw]
        _, forward_params, post_params = self._sanitize_parameters(**kwargs)
        forward_params = {**self._forward_params, **forward_params}
        post_params = {**self._postprocess_params, **post_params}
        batch_size = batch_size or self._batch_size or DEFAULT_BATCH_SIZE
        lengths = [len(it["prompt"]) + len(it["response"] or "") for it in items]
        # Per-input lists in input order; each batch's forward fills its own positions.
        model_outputs = {key: [None] * len(items) for key in ("student_unsafe_score", "router_score", "truncated")}
        for batch in length_sorted_batches(lengths, batch_size):
            out = self.forward(self.preprocess([items[i] for i in batch]), **forward_params)
            for key, column in model_outputs.items():
                values = out[key].tolist() if torch.is_tensor(out[key]) else out[key]
                for i, v in zip(batch, values):
                    column[i] = v
        model_outputs["items"] = items
        results = self.postprocess(model_outputs, **post_params)
        return results[0] if single else results
