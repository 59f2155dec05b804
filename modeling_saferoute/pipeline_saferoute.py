"""SafeRoutePipeline: the `text-classification` pipeline of a SafeRoute model folder.

`pipeline("text-classification", model=DIR, trust_remote_code=True)` picks this class through
`custom_pipelines` in the folder's config.json. Inputs: a str, `{"text", "text_pair"}`,
`{"prompt", "response"}`, a conversation (a list of `{"role", "content"}` messages, or
`{"messages": [...]}`), or a list of these (see `inputs.normalize_input`). Each result has the
stock `label` / `score` plus `unsafe_score`, `student_unsafe_score`, `router_score`, `routed`,
`decided_by`, `truncated`, `judged_turn`, `windows`, `repaired` and `large_guard_input` (what
the large guard read: "whole" input, the deciding "window" in chunk mode, or None when not asked);
a model with a category head (`config.taxonomy`) adds `category_scores` ({category: probability}:
the student head's, the large guard's for a routed input when it reads categories) and
`categories` ({category: bool}: the score is above the category's threshold and the input is
unsafe). `pipe.stream(prompt)` judges a response while it is written (`streaming.py`).

One pipeline object may be called from many threads at once: a call keeps its state in its own
locals, the model's forward passes the router feature per thread, tokenizer calls hold the
tokenizer's lock, and the large guard and the int8 student are made once, under a lock.
"""

import threading
import time

import torch
from transformers import Pipeline

from .guard_backends import LargeGuardError, LargeGuardUnavailable, is_large_guard_error
from .guards import load_large_guard
from .inputs import encode_pairs, is_conversation, length_sorted_batches, normalize_batch, windows
from .precision import autocast_context, normalize_inference_precision, resolve_autocast, resolve_inference_precision
from .quantization import int8_copy
from .taxonomy import Taxonomy

ROUTE_MODES = ("auto", "never", "always")
LONG_INPUTS = ("truncate", "chunk")
ON_LARGE_GUARD_ERROR = ("raise", "student", "unsafe")
DEFAULT_BATCH_SIZE = 32


class SafeRoutePipeline(Pipeline):
    """Student guard + router; inputs the router flags go to the large guard, loaded on first use.

    Call options:
        threshold: P(unsafe) above it is "unsafe" (default: the model's, 0.5).
        router_threshold: route when the router score is above it (default: the model's).
        route: "auto" (the router decides), "never" (student only) or "always" (large guard only).
        batch_size: inputs per student forward (default 32).
        autocast_dtype: the student's precision: "auto" (bf16 where the device multiplies bf16
            natively: AMX / AVX512-BF16 CPUs, bf16 GPUs; int8 on a CPU with VNNI and no native bf16;
            float32 elsewhere), "int8" (CPU), "none" / "float32", or a dtype. `student_precision`
            says what the pipeline's default resolves to here.
        long_inputs: "truncate" (cut to the student's budget, keeping prompt and response) or
            "chunk" (overlapping windows of the response, or of a prompt-only input, each scored with
            the rest; P(unsafe) is the highest window's, the router reads that window).
        on_large_guard_error: what a routed input gets when the large guard fails (a `LargeGuardError`:
            a served one down, too slow for its budget, refusing or answering garbage; an engine
            that could not load or crashed): "raise" (default: the `LargeGuardError`), "student"
            (the student's verdict, `decided_by` "student_fallback") or "unsafe" (fail closed,
            `decided_by` "fail_closed"); the error message is in `large_guard_error`. A
            `ValueError` (the caller's bad input or setting) always raises.
        large_guard_batch_size: routed inputs per large-guard call (default: its own batch size).
        timings: a dict that the call fills with seconds spent per part (tokenize, student,
            large_guard, total): where a routed call spends its time.
        category_thresholds: {category: threshold} over the model's (`config.category_thresholds`);
            a category the model's taxonomy does not have is refused, by name.
        taxonomy: the name of the taxonomy the caller expects; refused unless it is the model's.
    """

    def __init__(self, *args, large_guard=None, **kwargs):
        super().__init__(*args, **kwargs)
        self._large_guard = large_guard
        self._large_guard_lock = threading.Lock()
        taxonomy = getattr(self.model.config, "taxonomy", None)
        self.taxonomy = Taxonomy.load(taxonomy) if taxonomy else None
        self._int8_model = None
        self._int8_lock = threading.Lock()

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
        ref = dict(self.model.config.large_guard or {})
        if not ref.get("name_or_path") or not ref.get("kind"):
            raise ValueError("This SafeRoute model has no large guard configured (config.large_guard).")
        precision = self._forward_params.get("autocast_dtype", "auto")  # the pipeline's precision (int8 is the student's only)
        default = "auto" if normalize_inference_precision(precision) == "int8" else precision
        autocast = (ref.get("options") or {}).get("autocast_dtype", default)
        if self.taxonomy is not None and "taxonomy" not in (ref.get("options") or {}):
            ref["options"] = {**(ref.get("options") or {}), "taxonomy": self.model.config.taxonomy}  # its categories in this model's taxonomy
        try:  # a guard that cannot read categories scores P(unsafe) alone; routed inputs keep the student's categories
            return load_large_guard(ref, device=self.device, autocast_dtype=autocast)  # the pipeline's precision by default
        except Exception as err:
            raise LargeGuardUnavailable(
                f"Inputs were routed to the large guard {ref['name_or_path']!r} (kind {ref['kind']!r}) but it could not be "
                f"loaded: {err}. Pass route='never' to use the student alone."
            ) from err

    # -- the student's precision ---------------------------------------------------------------
    @property
    def student_precision(self):
        """What the student runs in under this pipeline's default options: "int8", "bf16", "fp16"
        or "float32" ("auto" resolved on this device)."""
        return resolve_inference_precision(self._forward_params.get("autocast_dtype", "auto"), self.device, warn=False)

    @property
    def int8_model(self):
        """The model with its student in int8 (`quantization.int8_copy`), made the first time it is
        needed (once, also when several threads ask at the same time)."""
        if self._int8_model is None:
            with self._int8_lock:
                if self._int8_model is None:
                    self._int8_model = int8_copy(self.model)
        return self._int8_model

    def close(self):
        """Release the large guard's engine or connection, if one was loaded (a later routed input loads it again)."""
        with self._large_guard_lock:
            guard, self._large_guard = self._large_guard, None
        if guard is not None and callable(getattr(guard, "close", None)):
            guard.close()

    # -- options ------------------------------------------------------------------------------
    def _sanitize_parameters(self, threshold=None, router_threshold=None, route=None, autocast_dtype=None, long_inputs=None,
                             on_large_guard_error=None, large_guard_batch_size=None, timings=None, category_thresholds=None,
                             taxonomy=None, **kwargs):
        pre, forward, post = {}, {}, {}
        for name, value in (("threshold", threshold), ("router_threshold", router_threshold)):
            if value is not None:
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
                    raise ValueError(f"{name} must be a number in [0, 1], got {value!r}.")
                post[name] = float(value)
        for name, value, allowed, target in (("route", route, ROUTE_MODES, post), ("long_inputs", long_inputs, LONG_INPUTS, pre),
                                             ("on_large_guard_error", on_large_guard_error, ON_LARGE_GUARD_ERROR, post)):
            if value is not None:
                if value not in allowed:
                    raise ValueError(f"{name} must be one of {allowed}, got {value!r}.")
                target[name] = value
        if autocast_dtype is not None:
            try:
                normalize_inference_precision(autocast_dtype)
            except ValueError:
                raise ValueError(f"autocast_dtype must be 'auto', 'int8', 'bf16', 'fp16' or 'float32', got {autocast_dtype!r}.") from None
            forward["autocast_dtype"] = autocast_dtype
        if large_guard_batch_size is not None:
            post["large_guard_batch_size"] = _positive_int("large_guard_batch_size", large_guard_batch_size)
        if timings is not None:
            if not isinstance(timings, dict):
                raise ValueError(f"timings must be a dict to fill, got {type(timings).__name__}.")
            post["timings"] = timings
        if taxonomy is not None or category_thresholds is not None:
            if self.taxonomy is None:
                raise ValueError("This model has no category head (no taxonomy): it takes no taxonomy or category_thresholds.")
            if taxonomy is not None and taxonomy != self.taxonomy.name:
                raise ValueError(f"This model reports the taxonomy {self.taxonomy.name!r} ({list(self.taxonomy.names)}), "
                                 f"not {taxonomy!r}.")
            if category_thresholds is not None:
                post["category_thresholds"] = self.taxonomy.category_thresholds(category_thresholds)
        return pre, forward, post

    # -- the stages of one student batch ------------------------------------------------------------
    def preprocess(self, items):
        encodings, truncated = encode_pairs(self.tokenizer, items, self.model.max_length)
        return {"batch": self.tokenizer.pad(encodings, return_tensors="pt"), "truncated": truncated}

    def _forward(self, model_inputs, autocast_dtype="auto"):
        precision = resolve_inference_precision(autocast_dtype, self.device, warn=False)
        model = self.int8_model if precision == "int8" else self.model
        with autocast_context(self.device, None if precision == "int8" else resolve_autocast(precision, self.device)):
            out = model(**model_inputs["batch"])
        return {
            "student_unsafe_score": torch.softmax(out.logits.float(), dim=-1)[:, 1].tolist(),
            "router_score": torch.sigmoid(out.router_logits.float()).tolist(),
            "category_scores": torch.sigmoid(out.category_logits.float()).tolist() if out.category_logits is not None else None,
        }

    def postprocess(self, model_outputs, **kwargs):
        return model_outputs

    # -- one call ------------------------------------------------------------------------------------
    def __call__(self, inputs, batch_size=None, **kwargs):
        """Classify one input or a list of inputs (see the class docstring for the options)."""
        if isinstance(inputs, (bytes, bytearray)):
            raise ValueError("Guard input is bytes; decode it to str first.")
        single = isinstance(inputs, (str, dict)) or is_conversation(inputs) or not hasattr(inputs, "__iter__")
        raw = [inputs] if single else list(inputs)  # lists, tuples, datasets, generators
        results = self._call(raw, batch_size, kwargs).run()
        return results[0] if single else results

    def _call(self, inputs, batch_size, options):
        """A `_Call` of a list of inputs with the call's options over the pipeline's own."""
        pre, forward, post = self._sanitize_parameters(**options)
        pre, forward, post = {**self._preprocess_params, **pre}, {**self._forward_params, **forward}, {**self._postprocess_params, **post}
        batch_size = _positive_int("batch_size", batch_size if batch_size is not None else self._batch_size or DEFAULT_BATCH_SIZE)
        return _Call(self, normalize_batch(inputs), batch_size, pre, forward, post)

    def stream(self, inputs, **options):
        """A `streaming.ResponseStream` that judges a response to `inputs` (the prompt, or a conversation
        ending with a user turn) while it is written: `feed(piece)` -> the current verdict with `stop`,
        `close()` -> the final verdict. Options: `stride`, `window`, `patience` and the call options."""
        from .streaming import ResponseStream

        return ResponseStream(self, inputs, **options)

    def student_pass(self, inputs, batch_size=None, **kwargs):
        """The student's part of a call on a list of inputs, for a server that answers what the
        student decided at once and lets routed inputs wait elsewhere: returns the call, whose
        `results[i]` is final for inputs the student decided and None for those `waiting` on the
        large guard; `call.finish()` asks the large guard (with the call's `on_large_guard_error`)
        and returns every result; `call.fail(error)` applies that policy without asking it."""
        return self._call(list(inputs), batch_size, kwargs).run(defer_large_guard=True)


def _positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}.")
    return value


class _Call:
    """The state of one pipeline call (never shared between calls): student batches in length
    order; an input's routed verdict is asked of the large guard as soon as its last window is
    scored, a large-guard batch at a time (or, deferred, all at `finish()`). In chunk mode the large
    guard reads the window that decided the student's verdict and the router's (what the student
    flagged), never the whole input cut to its own budget; `large_guard_input` says which it read."""

    def __init__(self, pipe, items, batch_size, pre, forward, post):
        self.pipe, self.items, self.batch_size, self.forward, self.post = pipe, items, batch_size, forward, post
        config = pipe.model.config
        self.threshold = post.get("threshold", config.threshold)
        self.router_threshold = post.get("router_threshold", config.router_threshold)
        self.route = post.get("route", "auto")
        self.on_error = post.get("on_large_guard_error", "raise")
        self.timings = post.get("timings")
        self.clock = {"tokenize": 0.0, "student": 0.0, "large_guard": 0.0}
        chunk = pre.get("long_inputs", "truncate") == "chunk"
        tokenizer = pipe.tokenizer
        start = time.perf_counter()
        views = [item.get("student_view", item) for item in items]  # a stream's window (streaming.py); else the item
        self.units, self.unread = [], [False] * len(items)  # unread: chunking left part of the text out
        for i, view in enumerate(views):
            parts, self.unread[i] = windows(tokenizer, view, pipe.model.max_length, return_truncated=True) if chunk else ([view], False)
            self.units.extend((i, part) for part in parts)
        self.clock["tokenize"] += time.perf_counter() - start
        self.left = [0] * len(items)
        for i, _ in self.units:
            self.left[i] += 1
        self.windows = list(self.left)
        self.best = [None] * len(items)  # (student P, router score, truncated, window) of the deciding window
        self.partial = [None] * len(items)  # the fields of a routed input's result while it waits
        self.taxonomy = pipe.taxonomy
        if self.taxonomy is not None:
            self.category_thresholds = post.get("category_thresholds") or config.category_thresholds
        self.categories = [None] * len(items)  # the student's category scores: the max over windows
        self.results = [None] * len(items)
        self.queue = []
        self.large_batch = post.get("large_guard_batch_size")
        self.start, self.defer = None, False

    @property
    def waiting(self):
        """Indices of the inputs whose verdict waits on the large guard."""
        return [i for i, r in enumerate(self.results) if r is None]

    def run(self, defer_large_guard=False):
        self.start, self.defer = time.perf_counter(), defer_large_guard
        lengths = [len(u["prompt"]) + len(u["response"] or "") for _, u in self.units]
        for batch in length_sorted_batches(lengths, self.batch_size):
            units = [self.units[k] for k in batch]
            t0 = time.perf_counter()
            model_inputs = self.pipe.preprocess([u for _, u in units])
            t1 = time.perf_counter()
            out = self.pipe.forward(model_inputs, **self.forward)
            t2 = time.perf_counter()
            self.clock["tokenize"] += t1 - t0
            self.clock["student"] += t2 - t1
            cats = out["category_scores"] or [None] * len(units)
            for (i, unit), p, r, cut, cat in zip(units, out["student_unsafe_score"], out["router_score"], model_inputs["truncated"], cats):
                if self.best[i] is None or p > self.best[i][0]:
                    self.best[i] = (p, r, cut, unit)
                if cat is not None:
                    self.categories[i] = cat if self.categories[i] is None else list(map(max, self.categories[i], cat))
                self.left[i] -= 1
                if self.left[i] == 0:
                    self._decide(i)
            if not self.defer and self.large_batch and len(self.queue) >= self.large_batch:
                self._ask_large_guard()
        if defer_large_guard:
            return self
        return self.finish()

    def finish(self):
        """Ask the large guard for every waiting input; every result."""
        self._ask_large_guard()
        if self.timings is not None:
            total = time.perf_counter() - self.start
            self.timings.update({k: self.timings.get(k, 0.0) + v for k, v in self.clock.items()})
            self.timings["total"] = self.timings.get("total", 0.0) + total
            self.timings["calls"] = self.timings.get("calls", 0) + 1
        return self.results

    def _decide(self, i):
        p, r, cut, unit = self.best[i]
        routed = r > self.router_threshold if self.route == "auto" else self.route == "always"
        self.partial[i] = {"student_unsafe_score": p, "router_score": r, "routed": routed, "truncated": cut or self.unread[i],
                           "judged_turn": self.items[i]["judged_turn"], "windows": self.windows[i], "repaired": self.items[i]["repaired"],
                           "large_guard_input": None}
        if routed:
            self.queue.append(i)
            if not self.defer and self.large_batch is None and len(self.queue) >= self._large_guard_batch_size():
                self._ask_large_guard()
        else:
            self._finish(i, p, "student")

    def _large_guard_batch_size(self):
        """The large guard's own batch size once it is loaded (never loaded here: loading happens in
        `_ask_large_guard`, under the call's `on_large_guard_error` policy); 16 before."""
        return self.large_batch or getattr(self.pipe._large_guard, "batch_size", None) or 16

    def _ask_large_guard(self):
        if not self.queue:
            return
        queue, self.queue = self.queue, []
        # chunk mode: the window the student flagged; otherwise the whole input (the large guard fits it to its budget)
        inputs = [self.best[i][3] if self.windows[i] > 1 else self.items[i] for i in queue]
        start = time.perf_counter()
        cats = [None] * len(queue)
        try:
            if self.taxonomy is None:
                scores, cut = self.pipe.large_guard.score(inputs, return_truncated=True)
            else:
                scores, cut, cats = self.pipe.large_guard.score(inputs, return_truncated=True, return_categories=True)
        except ValueError:  # a bad input or setting is the caller's error, never a fallback (LargeGuardError is none)
            raise
        except Exception as err:
            error = err if is_large_guard_error(err) else LargeGuardError(f"{type(err).__name__}: {err}")
            if error is not err:
                error.__cause__ = err
            self._fail(queue, error)
            return
        finally:
            self.clock["large_guard"] += time.perf_counter() - start
        for i, p, c, cat in zip(queue, scores, cut, cats):
            self.partial[i]["truncated"] = self.partial[i]["truncated"] or c
            self.partial[i]["large_guard_input"] = "window" if self.windows[i] > 1 else "whole"
            self._finish(i, p, "large_guard", cat)

    def fail(self, error):
        """Apply the call's `on_large_guard_error` policy to every waiting input, without asking the
        large guard (e.g. a server whose large-guard queue is full); returns every result."""
        queue, self.queue = self.queue, []
        self._fail(queue, error)
        return self.results

    def _fail(self, queue, error):
        if self.on_error == "raise":
            raise error
        message = f"{type(error).__name__}: {error}"
        for i in queue:
            self.partial[i]["large_guard_error"] = message
            if self.on_error == "student":
                self._finish(i, self.partial[i]["student_unsafe_score"], "student_fallback")
            else:
                self._finish(i, 1.0, "fail_closed")

    def _finish(self, i, unsafe, decided_by, large_categories=None):
        label = "unsafe" if unsafe > self.threshold else "safe"
        ordered = {"label": label, "score": unsafe if label == "unsafe" else 1.0 - unsafe, "unsafe_score": unsafe}
        self.results[i] = {**ordered, **{k: v for k, v in self.partial[i].items() if k not in ordered}, "decided_by": decided_by}
        if self.taxonomy is not None:
            scores = large_categories or dict(zip(self.taxonomy.names, self.categories[i]))
            self.results[i]["category_scores"] = scores
            self.results[i]["categories"] = {c: label == "unsafe" and s > self.category_thresholds[c] for c, s in scores.items()}
