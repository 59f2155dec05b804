"""Per-example score caches of `saferoute evaluate`: every model scores every example once.

`OUTPUT/cache/<model key>.parquet` is keyed by example id; the model key hashes the model's name,
kind, settings and its weight files' sizes and mtimes, so another model never reuses stale scores.
"""

import hashlib
import json
import logging
import os
import time
from pathlib import Path

import pandas as pd

from dataset_builders.schema import first_row_per_id, guard_items
from modeling_saferoute.bundled import resolve

logger = logging.getLogger(__name__)


def model_key(role, name_or_path, kind, **settings):
    """(key, info): a short stable key of a model's identity: name, kind, settings, and for a local
    folder the names, sizes and mtimes of its weight files."""
    info = {"name_or_path": name_or_path, "kind": kind, **{k: v for k, v in settings.items() if v is not None}}
    path = Path(resolve(name_or_path))
    if path.is_dir():
        weights = [f for f in sorted(path.iterdir()) if f.suffix in (".safetensors", ".bin", ".gguf")]
        info["weights"] = [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in weights]
    digest = hashlib.sha1(json.dumps(info, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return f"{role}-{digest}", info


class ScoreCache:
    """Per-example scores of one model in a parquet file: `id`, the score columns, and `seconds`
    (the measured wall time per example of the call that scored it)."""

    def __init__(self, path, columns, info=None, recompute=False):
        self.path, self.columns = Path(path), tuple(columns)
        if self.path.exists() and not recompute:
            self.frame = pd.read_parquet(self.path).set_index("id")
        else:
            self.frame = pd.DataFrame(columns=[*self.columns, "seconds"], index=pd.Index([], name="id"))
        self.scored = 0  # examples scored (not read from the cache) by this process
        if info is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.with_suffix(".json").write_text(json.dumps(info, indent=2, default=str))

    def missing(self, ids):
        return [i for i in dict.fromkeys(ids) if i not in self.frame.index]

    def add(self, ids, values, seconds_per_example):
        new = pd.DataFrame({c: values[c] for c in self.columns}, index=pd.Index(ids, name="id"))
        new["seconds"] = seconds_per_example
        self.frame = new if self.frame.empty else pd.concat([self.frame, new])
        self.scored += len(ids)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        self.frame.reset_index().to_parquet(tmp, index=False)
        os.replace(tmp, self.path)

    def lookup(self, ids):
        return self.frame.loc[list(ids)].reset_index()


class LazyScorer:
    """Loads a model on first use (so a fully cached run loads nothing); `get()` -> score function."""

    def __init__(self, load):
        self._load, self._fn = load, None

    def get(self):
        if self._fn is None:
            self._fn = self._load()
        return self._fn


def cached_scores(cache, scorer, dataset, desc):
    """Scores of every row of `dataset` from `cache`, scoring (and timing) only the ids it lacks."""
    ids = dataset["id"]
    missing = set(cache.missing(ids))
    if missing:
        todo = first_row_per_id(dataset, keep=missing)
        score = scorer.get()
        logger.info("Scoring %d examples of %s (%s)", len(todo), desc, cache.path.name)
        start = time.perf_counter()
        values = score(guard_items(todo))
        cache.add(todo["id"], values, (time.perf_counter() - start) / len(todo))
    return cache.lookup(ids)
