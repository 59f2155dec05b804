"""Scores computed once: each model's per-text scores, shared by every stage that asks for them.

`{output_root}/scores/<model key>/` holds the scores of one model under one scoring setting, keyed
by `text_key` (a digest of the exact text a guard reads: its context turns, prompt and response).
The model key digests the model's identity (name, kind, and for a local folder its weight files'
names, sizes and mtimes) and the settings that change its scores (token budget, precision...).
train-guard's validation scoring, build-corpus labeling, train-router and evaluate all read and
write it, so the teacher scores a validation row once for all of them, and a rerun (another seed,
another router setting, an ablation arm) scores nothing twice.

Each call that scores something writes one parquet part, atomically: processes that share a store
(torchrun shards) never overwrite each other, and a killed run keeps what it scored.
"""

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd

from modeling_saferoute.bundled import resolve
from modeling_saferoute.inputs import normalize_input

logger = logging.getLogger(__name__)

INFO_FILE = "info.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf")


def text_key(item):
    """A digest of the exact text of a guard input (context turns, prompt, response)."""
    item = normalize_input(item)
    payload = json.dumps([list(item["context"]), item["prompt"], item["response"]], ensure_ascii=False)
    return hashlib.sha1(payload.encode("utf-8", "surrogatepass")).hexdigest()


def model_key(role, name_or_path, kind, **settings):
    """(key, info): a short stable key of a model and the settings it scores with. For a local folder
    the names, sizes and mtimes of its weight files are part of it, so a retrained model never
    reuses stale scores; settings that are None are left out."""
    info = {"name_or_path": str(name_or_path), "kind": kind, **{k: v for k, v in sorted(settings.items()) if v is not None}}
    path = Path(resolve(name_or_path))
    if path.is_dir():
        info["name_or_path"] = str(path.resolve())  # the same folder under any spelling
        weights = [f for f in sorted(path.iterdir()) if f.suffix in WEIGHT_SUFFIXES]
        info["weights"] = [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in weights]
    digest = hashlib.sha1(json.dumps(info, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return f"{role}-{digest}", info


class ScoreStore:
    """The scores of one model key: columns of per-text values plus `seconds` (the measured wall
    time per item of the call that scored it). `root` None keeps them in memory only."""

    def __init__(self, root, key, info, columns, recompute=False):
        self.columns, self.key, self.info = tuple(columns), key, info
        self.folder = Path(root) / key if root else None
        self.scored = 0  # items scored (not read from the store) through this object
        self.frame = pd.DataFrame(columns=[*self.columns, "seconds"], index=pd.Index([], name="text_key"))
        if self.folder is None:
            return
        if recompute and self.folder.exists():
            shutil.rmtree(self.folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / INFO_FILE).write_text(json.dumps({**info, "columns": list(self.columns)}, indent=2, default=str))
        parts = sorted(self.folder.glob("part-*.parquet"))
        if parts:
            frame = pd.concat([pd.read_parquet(p) for p in parts]).set_index("text_key")
            missing = [c for c in (*self.columns, "seconds") if c not in frame.columns]
            if missing:
                raise ValueError(f"Score store {self.folder} lacks the columns {missing}; delete it or pass --recompute.")
            self.frame = frame[~frame.index.duplicated(keep="first")]

    def __len__(self):
        return len(self.frame)

    def missing(self, keys):
        """The keys (distinct, in order) that have no scores yet."""
        return [k for k in dict.fromkeys(keys) if k not in self.frame.index]

    def add(self, keys, values, seconds_per_item):
        """Record `values` ({column: list}) for `keys`, in memory and as one new part on disk."""
        new = pd.DataFrame({c: list(values[c]) for c in self.columns}, index=pd.Index(list(keys), name="text_key"))
        new["seconds"] = float(seconds_per_item)
        self.frame = new if self.frame.empty else pd.concat([self.frame, new])
        self.frame = self.frame[~self.frame.index.duplicated(keep="first")]
        self.scored += len(new)
        if self.folder is not None:
            part = self.folder / f"part-{time.time_ns()}-{uuid.uuid4().hex[:8]}.parquet"
            tmp = part.with_suffix(".tmp")
            new.reset_index().to_parquet(tmp, index=False)
            os.replace(tmp, part)

    def lookup(self, keys):
        """A frame of the columns and `seconds`, one row per key, in the order given."""
        return self.frame.loc[list(keys)].reset_index(drop=True)


class LazyScorer:
    """Loads a model on first use (a fully cached run loads nothing); `get()` -> score function."""

    def __init__(self, load):
        self._load, self._fn = load, None

    def get(self):
        if self._fn is None:
            self._fn = self._load()
        return self._fn


def cached_scores(store, scorer, items, desc="items", chunk_size=None):
    """The scores of `items` (any guard inputs) from `store`, scoring (and timing) only the distinct
    texts it lacks with `scorer` (a `LazyScorer` whose function maps a list of items to {column:
    list}); with `chunk_size`, a part is written every that many items (a long run resumes). Returns
    a frame aligned with `items`: the store's columns and `seconds`."""
    keys = [text_key(it) for it in items]
    missing = store.missing(keys)
    if missing:
        first = {}
        for k, it in zip(keys, items):
            first.setdefault(k, it)
        logger.info("Scoring %d of %d texts of %s (%d cached)", len(missing), len(set(keys)), desc, len(set(keys)) - len(missing))
        score = scorer.get()
        step = chunk_size or len(missing)
        for start in range(0, len(missing), step):
            part = missing[start : start + step]
            began = time.perf_counter()
            values = score([first[k] for k in part])
            store.add(part, values, (time.perf_counter() - began) / len(part))
    return store.lookup(keys)


CATEGORY_PREFIX = "category:"


def category_columns(taxonomy):
    """The store column of each category of `taxonomy` (a `modeling_saferoute.Taxonomy`)."""
    return [CATEGORY_PREFIX + c for c in taxonomy.names]


def category_values(results, taxonomy):
    """{column: [score per item]} from {category: P} dicts of guard or pipeline results (NaN for an
    item without them)."""
    return {CATEGORY_PREFIX + c: [float("nan") if r is None else float(r[c]) for r in results] for c in taxonomy.names}


def category_dicts(frame, taxonomy):
    """The {category: P} dict of each row of a stored frame; None for a row without category scores."""
    values = frame[category_columns(taxonomy)].to_numpy(dtype=float)
    return [None if np.isnan(row).all() else dict(zip(taxonomy.names, row.tolist())) for row in values]


# load_guard arguments that do not change a score (how it is batched, where it runs, how a server is reached)
NOT_SCORE_SETTINGS = ("batch_size", "device", "show_progress", "backend_options", "trust_remote_code", "autocast_dtype")
DEFAULTS = {"dtype": "auto", "temperature": 1.0, "backend": "transformers"}


def guard_store(root, name_or_path, kind, precision="auto", device="cpu", recompute=False, taxonomy=None, **load_kwargs):
    """The `ScoreStore` of a guard's P(unsafe) (`unsafe_score`): one store per guard and per setting
    that changes its scores (the `load_guard` arguments but batch size, device and the like, default
    values left out, and the precision the guard runs in on `device`), so train-guard, build-corpus,
    train-router and evaluate share it when they score with the same settings. With a `taxonomy`, a
    store of its own that also holds the guard's category scores in it (`category_columns`)."""
    from modeling_saferoute.guards import guard_precision

    settings = {k: v for k, v in load_kwargs.items() if k not in NOT_SCORE_SETTINGS and v is not None and DEFAULTS.get(k) != v}
    settings["precision"] = guard_precision(kind, precision, device, load_kwargs.get("dtype"))
    columns = ("unsafe_score",)
    if taxonomy is not None:
        settings["taxonomy"] = {"name": taxonomy.name, "categories": list(taxonomy.names)}
        columns += tuple(category_columns(taxonomy))
    key, info = model_key("guard", name_or_path, kind, **settings)
    return ScoreStore(root, key, info, columns, recompute)


def guard_scoring(guard, batch_size=None, taxonomy=None, show_progress=True):
    """items -> the store's columns of a loaded guard: {"unsafe_score": [...]}, and with a `taxonomy`
    its category columns (the one place a guard's scores become store columns)."""
    if taxonomy is None:
        return lambda items: {"unsafe_score": guard.score(items, batch_size=batch_size, show_progress=show_progress)}

    def score(items):
        unsafe, cats = guard.score(items, batch_size=batch_size, show_progress=show_progress, return_categories=True)
        return {"unsafe_score": unsafe, **category_values(cats, taxonomy)}

    return score


def guard_frame(store, load_guard_fn, items, desc="items", batch_size=None, show_progress=True, chunk_size=None, taxonomy=None):
    """The stored frame of `items` (`unsafe_score`, with a `taxonomy` the category columns, `seconds`);
    the guard is loaded by `load_guard_fn()` (with its categories in `taxonomy`) only when some text
    is missing."""

    def load():
        return guard_scoring(load_guard_fn(), batch_size, taxonomy, show_progress)

    return cached_scores(store, LazyScorer(load), items, desc, chunk_size)


def guard_scores(store, load_guard_fn, items, desc="items", batch_size=None, show_progress=True, chunk_size=None):
    """P(unsafe) of `items` (a list of floats) through `store`; the guard is loaded by
    `load_guard_fn()` only when some text is missing."""
    return guard_frame(store, load_guard_fn, items, desc, batch_size, show_progress, chunk_size)["unsafe_score"].astype(float).tolist()
