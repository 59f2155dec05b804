"""The standing TF-IDF + logistic-regression baseline of `saferoute evaluate`: what it fits on, that
it learns, and its score store (the evaluate report's row: tests/test_evaluate.py)."""

import dataclasses
import json
import logging

import numpy as np
import pytest

import evaluation.baselines as B
from dataset_builders.roles import STUDENT_ROLES, RoleTable
from dataset_builders.schema import guard_items
from dataset_builders.score_store import cached_scores
from dataset_builders.seed_pool import load_seed_pool
from evaluation import metrics as M
from tiny_corpus import tiny_pool_rows, tiny_roles, write_pool

NAME = "tfidf_logreg"


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    """(pool file, role table) of a tiny pool whose four roles all hold rows."""
    folder = tmp_path_factory.mktemp("split")
    pool = write_pool(folder / "pool.jsonl", tiny_pool_rows(160, seed=0))
    return pool, RoleTable(tiny_roles(pool, folder / "roles"))


def _spy(monkeypatch):
    """Record the items and labels each fit receives (the real fit still runs)."""
    calls = []
    real = B.BASELINES[NAME]

    def fit(items, labels, settings):
        calls.append(([it["id"] for it in items], list(labels)))
        return real.fit(items, labels, settings)

    monkeypatch.setitem(B.BASELINES, NAME, dataclasses.replace(real, fit=fit))
    return calls


def _boom(*args, **kwargs):
    raise AssertionError("the pool was loaded although every score is stored")


def _score(root, pool, roles, items, **kwargs):
    store = B.baseline_store(root, NAME, roles, pool, **kwargs)
    return store, cached_scores(store, B.baseline_scorer(store, NAME, roles, pool, **kwargs), items)


def test_fits_on_the_teacher_and_student_rows_only_and_a_rerun_fits_nothing(split, tmp_path, monkeypatch, caplog):
    pool, roles = split
    calls = _spy(monkeypatch)
    items = guard_items(load_seed_pool(pool))
    with caplog.at_level(logging.INFO, logger="evaluation.baselines"):
        store, frame = _score(tmp_path, pool, roles, items)
    assert len(calls) == 1
    ids, labels = calls[0]
    by_role = {role: {i for i, r in roles.roles.items() if r == role} for role in ("teacher", "student", "router", "validation")}
    assert all(by_role.values())  # the tiny split has rows in every role
    assert set(ids) == by_role["teacher"] | by_role["student"] and len(ids) == len(set(ids))
    assert not set(ids) & (by_role["router"] | by_role["validation"])
    pool_labels = dict(zip(load_seed_pool(pool)["id"], load_seed_pool(pool)["label"]))
    assert labels == [pool_labels[i] for i in ids]  # the human labels
    fit = json.loads((store.folder / B.FIT_FILE).read_text())
    assert fit["rows"] == len(ids) and fit["roles_fingerprint"] == roles.fingerprint and fit["role_names"] == list(STUDENT_ROLES)
    assert B.fit_record(store)["fitted_on"] == fit
    assert any(f"on {len(ids)} rows" in r.getMessage() and r.getMessage().endswith(" s.") for r in caplog.records)
    assert store.scored == len(frame) == len(items)
    # a second run reads the store: no pool, no fit, the same scores
    monkeypatch.setattr(B, "load_seed_pool", _boom)
    again, frame2 = _score(tmp_path, pool, roles, items)
    assert again.scored == 0 and len(calls) == 1
    assert frame2["unsafe_score"].tolist() == frame["unsafe_score"].tolist()


def test_another_split_sample_or_setting_is_another_store(split, tmp_path, monkeypatch):
    pool, roles = split
    other = RoleTable(tiny_roles(pool, tmp_path / "roles-seed-1", seed=1))
    assert other.fingerprint != roles.fingerprint
    items = guard_items(load_seed_pool(pool))[:20]
    calls = _spy(monkeypatch)
    first, _ = _score(tmp_path, pool, roles, items)
    keys = {first.key}
    for store, _ in (_score(tmp_path, pool, other, items), _score(tmp_path, pool, roles, items, max_rows=40, seed=0)):
        assert store.key not in keys and store.scored == len(items)  # nothing stale reused
        keys.add(store.key)
    assert len(calls[-1][0]) == 40  # the sample
    changed = dataclasses.replace(B.BASELINES[NAME], settings=B.TfidfSettings(C=0.5))
    monkeypatch.setitem(B.BASELINES, NAME, changed)
    store, _ = _score(tmp_path, pool, roles, items)
    assert store.key not in keys and store.scored == len(items) and len(calls) == 4  # one fit per store


def test_separates_an_obviously_separable_toy_set():
    train, held_out = tiny_pool_rows(160, seed=0), tiny_pool_rows(80, seed=5)
    model = B.fit_tfidf_logreg(train, [r["label"] for r in train])
    y = np.array([r["label"] for r in held_out])
    scores = np.array(B.tfidf_logreg_scores(model, held_out))
    got = M.classification_metrics(y, scores)
    assert got["auprc"] == pytest.approx(1.0) and got["f1"] == 1.0
    assert scores[y == 1].min() - scores[y == 0].max() > 0.3  # a decisive margin
    shuffled = np.random.default_rng(0).permutation([r["label"] for r in train])  # the same texts, labels unlearnable
    control = B.tfidf_logreg_scores(B.fit_tfidf_logreg(train, shuffled), held_out)
    assert M.classification_metrics(y, control)["auprc"] < 0.8
    with pytest.raises(ValueError, match="both classes"):
        B.fit_tfidf_logreg(train[:1], [1])


def test_parse_baselines():
    assert B.parse_baselines("tfidf_logreg") == B.parse_baselines(" tfidf_logreg, tfidf_logreg ") == ["tfidf_logreg"]
    assert B.parse_baselines("none") == B.parse_baselines("None") == B.parse_baselines("") == []
    with pytest.raises(ValueError, match="unknown baseline 'bm25'.*'tfidf_logreg'"):
        B.parse_baselines("bm25")
