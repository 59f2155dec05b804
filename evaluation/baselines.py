"""Standing baselines of `saferoute evaluate`: classifiers fitted in about a minute that a distilled
student has to beat to be worth its training.

`tfidf_logreg`: TF-IDF of word 1-2-grams of the prompt and the response (each its own vocabulary,
sublinear term frequencies) and a class-balanced logistic regression, fitted with scikit-learn on
the human labels of the rows the student may learn from (the teacher and student roles of the role
split). Its scores go through the score store like every model's, keyed by the role split and the
settings, so a rerun fits nothing (and loads no pool); the fit writes `fit.json` (rows, positives,
roles fingerprint, seconds) into its store folder, which the report's settings carry.

    saferoute evaluate --config saferoute/recipes/cpu-offline.yaml              # the row is on by default
    saferoute evaluate --config saferoute/recipes/cpu-offline.yaml --baselines none
"""

import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np

from dataset_builders.roles import STUDENT_ROLES, mixed_sample
from dataset_builders.score_store import LazyScorer, ScoreStore, model_key
from dataset_builders.seed_pool import load_seed_pool

logger = logging.getLogger(__name__)

FIT_FILE = "fit.json"


@dataclass(frozen=True)
class TfidfSettings:
    ngram_range: tuple = (1, 2)
    min_df: int = 2
    max_features: int = 200_000
    C: float = 4.0
    max_iter: int = 2000
    seed: int = 0


def _texts(items, field):
    return [(it.get(field) or "") if isinstance(it, dict) else (it if field == "prompt" else "") for it in items]


def fit_tfidf_logreg(items, labels, settings=TfidfSettings()):
    """A fitted scikit-learn pipeline: TF-IDF of prompt and response (separate vocabularies), then
    logistic regression; `predict_proba(items)[:, 1]` is P(unsafe)."""
    from sklearn.compose import ColumnTransformer
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    def vectorizer():
        return TfidfVectorizer(ngram_range=tuple(settings.ngram_range), min_df=settings.min_df, max_features=settings.max_features,
                               sublinear_tf=True, strip_accents="unicode", lowercase=True)

    model = Pipeline([
        ("tfidf", ColumnTransformer([("prompt", vectorizer(), "prompt"), ("response", vectorizer(), "response")])),
        ("logreg", LogisticRegression(C=settings.C, max_iter=settings.max_iter, class_weight="balanced", random_state=settings.seed)),
    ])
    labels = np.asarray(labels, dtype=int)
    if len(set(labels.tolist())) < 2:
        raise ValueError("The TF-IDF baseline needs rows of both classes to fit.")
    model.fit(_frame(items), labels)
    return model


def _frame(items):
    import pandas as pd

    return pd.DataFrame({"prompt": _texts(items, "prompt"), "response": _texts(items, "response")})


def tfidf_logreg_scores(model, items):
    """P(unsafe) of `items` ({"prompt", "response"} dicts or strings) under a fitted baseline."""
    return model.predict_proba(_frame(items))[:, 1].astype(float).tolist()


def settings_record(settings=TfidfSettings()):
    record = asdict(settings)
    record["ngram_range"] = list(settings.ngram_range)
    return record


# -- the registry and its score-store plumbing ----------------------------------------------------------
@dataclass(frozen=True)
class Baseline:
    """One standing baseline: fit(items, labels, settings) -> model; score(model, items) -> P(unsafe) list."""

    name: str
    title: str
    color: str
    fit: Callable
    score: Callable
    settings: object
    record: Callable  # settings -> a JSON-able dict (part of the score-store key)


BASELINES = {
    b.name: b
    for b in (Baseline("tfidf_logreg", "TF-IDF + logistic regression", "tab:brown", fit_tfidf_logreg, tfidf_logreg_scores,
                       TfidfSettings(), settings_record),)
}


def parse_baselines(value):
    """The baseline names of a `--baselines` value: 'none' (or empty) or a comma-separated list of
    `BASELINES`; an unknown name raises a ValueError naming it."""
    text = "" if value is None else str(value).strip()
    if text.lower() in ("", "none"):
        return []
    names = list(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    unknown = [n for n in names if n not in BASELINES]
    if unknown:
        raise ValueError(f"--baselines: unknown baseline {', '.join(map(repr, unknown))}; "
                         f"use 'none' or a comma-separated list of {list(BASELINES)}.")
    return names


def baseline_store(root, name, roles, seed_pool, max_rows=None, seed=0, recompute=False):
    """The `ScoreStore` (`unsafe_score`) of baseline `name` fitted on the `STUDENT_ROLES` rows of the
    role split `roles` (a `RoleTable`) of `seed_pool` (at most `max_rows` of them, a seeded per-source
    sample): keyed by the split's fingerprint, the pool, the roles, the sample and the settings, so
    another split or other settings never reuse its scores."""
    baseline = BASELINES[name]
    key, info = model_key("baseline", name, name, roles_fingerprint=roles.fingerprint, seed_pool=str(seed_pool),
                          fitted_on_roles=list(STUDENT_ROLES), settings=baseline.record(baseline.settings),
                          max_rows=max_rows, sample_seed=None if max_rows is None else seed)
    return ScoreStore(root, key, info, ("unsafe_score",), recompute)


def baseline_scorer(store, name, roles, seed_pool, max_rows=None, seed=0):
    """A `LazyScorer` that, on first use only (a fully stored run loads no pool and fits nothing),
    fits baseline `name` on the human labels of the `STUDENT_ROLES` rows of `roles` in `seed_pool`
    (at most `max_rows`: `roles.mixed_sample`, seeded), logs the rows and seconds and writes the
    fit's record (`fit_record`) into the store folder."""
    baseline = BASELINES[name]

    def load():
        available = roles.rows(load_seed_pool(seed_pool), STUDENT_ROLES)
        if len(available) == 0:
            raise ValueError(f"The role split {roles.folder} ({roles.fingerprint}, made from {roles.seed_pool!r}) has no "
                             f"{'/'.join(STUDENT_ROLES)} row in the seed pool {seed_pool!r}: the {name} baseline has nothing to fit on.")
        rows = mixed_sample(available, max_rows, None, seed)
        items = [{"id": i, "prompt": p, "response": r} for i, p, r in zip(rows["id"], rows["prompt"], rows["response"])]
        labels = np.asarray(rows["label"], dtype=int)
        logger.info("Fitting the %s baseline (%s) on %d rows (%d unsafe) of the %s roles of %s (%s)...", name, baseline.title,
                    len(items), int(labels.sum()), "+".join(STUDENT_ROLES), roles.folder, roles.fingerprint)
        began = time.perf_counter()
        model = baseline.fit(items, labels, baseline.settings)
        seconds = time.perf_counter() - began
        logger.info("Fitted the %s baseline on %d rows in %.1f s.", name, len(items), seconds)
        record = {"rows": len(items), "of_rows": len(available), "positives": int(labels.sum()), "roles": str(roles.folder.resolve()),
                  "roles_fingerprint": roles.fingerprint, "role_names": list(STUDENT_ROLES), "seed_pool": str(seed_pool),
                  "fit_seconds": round(seconds, 3)}
        if store.folder is not None:
            tmp = store.folder / f"{FIT_FILE}.{os.getpid()}.tmp"
            tmp.write_text(json.dumps(record, indent=2))
            os.replace(tmp, store.folder / FIT_FILE)
        return lambda items: {"unsafe_score": baseline.score(model, items)}

    return LazyScorer(load)


def fit_record(store):
    """What the report's settings say about a baseline's store: the rows it was fitted on (count,
    positives, roles fingerprint, seconds: the `fit.json` of the fit that made its scores) and the
    store's key and settings."""
    path = None if store.folder is None else store.folder / FIT_FILE
    if path is not None and path.is_file():
        fit = json.loads(path.read_text())
    else:  # scores kept in memory only, or stored without a fit record: what the key says
        fit = {"rows": None, "roles_fingerprint": store.info["roles_fingerprint"], "role_names": store.info["fitted_on_roles"],
               "seed_pool": store.info["seed_pool"]}
    return {"title": BASELINES[store.info["kind"]].title, "fitted_on": fit, "settings": store.info["settings"],
            "score_store_key": store.key}
