"""The score store: each guard scores each text once, across stages, runs and processes."""

import os

import pytest

from dataset_builders.score_store import LazyScorer, ScoreStore, cached_scores, guard_scores, guard_store, model_key, text_key
from modeling_saferoute.guards import load_guard


def test_text_key_is_the_exact_text_in_any_input_form():
    assert text_key("How?") == text_key({"prompt": "How?"}) == text_key({"text": "How?"}) == text_key({"prompt": "How?", "response": ""})
    assert text_key({"prompt": "a", "response": "b"}) == text_key([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}])
    assert len({text_key("How?"), text_key("how?"), text_key({"prompt": "How?", "response": "x"}), text_key("How? ")}) == 4


def test_scores_persist_and_only_missing_texts_are_scored(tmp_path):
    calls = []

    def load():
        def score(items):
            calls.append([it["prompt"] if isinstance(it, dict) else it for it in items])
            return {"unsafe_score": [len(it if isinstance(it, str) else it["prompt"]) / 10 for it in items]}
        return score

    key, info = model_key("guard", "some-model", "sequence_classification", max_length=64)
    store = ScoreStore(tmp_path, key, info, ("unsafe_score",))
    first = cached_scores(store, LazyScorer(load), ["ab", "abc", "ab"])
    assert first["unsafe_score"].tolist() == [0.2, 0.3, 0.2] and calls == [["ab", "abc"]]  # a repeated text once
    # a new process (a new store object) reads the parts back and scores only the new text
    again = ScoreStore(tmp_path, key, info, ("unsafe_score",))
    second = cached_scores(again, LazyScorer(load), [{"prompt": "abc"}, "abcd"], chunk_size=1)
    assert second["unsafe_score"].tolist() == [0.3, 0.4] and calls[-1] == ["abcd"] and again.scored == 1
    assert len(list((tmp_path / key).glob("part-*.parquet"))) == 2
    # nothing missing: the scorer is never loaded
    cached_scores(ScoreStore(tmp_path, key, info, ("unsafe_score",)), LazyScorer(lambda: pytest.fail("loaded")), ["ab", "abcd"])
    # --recompute starts over
    fresh = ScoreStore(tmp_path, key, info, ("unsafe_score",), recompute=True)
    assert len(fresh) == 0 and not list((tmp_path / key).glob("part-*.parquet"))


def test_a_store_without_a_column_is_refused(tmp_path):
    store = ScoreStore(tmp_path, "k", {}, ("a",))
    store.add(["x"], {"a": [1.0]}, 0.1)
    with pytest.raises(ValueError, match="lacks the columns"):
        ScoreStore(tmp_path, "k", {}, ("a", "b"))


def test_guard_stores_are_shared_across_spellings_and_split_by_what_changes_scores(tiny_student_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tiny_student_dir.parent)
    relative = os.path.relpath(tiny_student_dir)
    kind = "sequence_classification"
    a = guard_store(tmp_path, str(tiny_student_dir), kind, "float32", max_length=64, batch_size=8, dtype="auto")
    b = guard_store(tmp_path, relative, kind, "none", max_length=64, batch_size=32, device="cpu")
    assert a.key == b.key  # path spelling, batch size, device and default dtype do not change a score
    assert guard_store(tmp_path, relative, kind, "float32", max_length=32).key != a.key
    assert guard_store(tmp_path, relative, kind, "bf16", max_length=64).key != a.key
    items = ["How do I pick a lock?", {"prompt": "Write a poem about the sea.", "response": "Sure."}]
    load = lambda: load_guard(str(tiny_student_dir), kind, max_length=64, autocast_dtype="none")  # noqa: E731
    expected = load().score(items)
    assert guard_scores(a, load, items) == pytest.approx(expected, abs=1e-6)
    assert guard_scores(guard_store(tmp_path, relative, kind, "float32", max_length=64), lambda: pytest.fail("loaded"), items[::-1]) == \
        pytest.approx(expected[::-1], abs=1e-6)
