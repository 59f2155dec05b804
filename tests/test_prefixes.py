"""Distillation on prefixes: `build-corpus --prefix_rows` adds response prefixes labeled by the
teacher on the same prefix (in a stage of their own), `distill --prefixes` trains on them."""

import math
import shutil
from pathlib import Path

import pytest
from datasets import Dataset

from dataset_builders.harmaug import prefixes
from dataset_builders.harmaug.build import build
from modeling_saferoute.guards import load_guard
from test_distill import config
from test_harmaug import corpus_rows, data, tiny_args  # noqa: F401 (data is a fixture)
from tiny_corpus import build_tiny_corpus, tiny_paths
from training.distill import prepare

RESPONSE = "one two three four five six seven eight nine ten eleven twelve"


def item(i, response, split="train"):
    return {"id": f"x-{i}", "prompt": f"prompt {i}", "response": response, "source": "s", "split": split}


def test_prefix_items_cut_train_responses_at_a_word_and_keep_the_last_words():
    items = [item(0, RESPONSE), item(1, None), item(2, "too short here"), item(3, RESPONSE, "validation"), item(4, "  a  b\tc d e f g h i ")]
    cuts = prefixes.prefix_items(items, 30, min_words=3, max_words=4, seed=1)
    assert cuts == prefixes.prefix_items(items, 30, min_words=3, max_words=4, seed=1)  # seeded
    assert len({c["id"] for c in cuts}) == len(cuts) and 0 < len(cuts) <= 30
    for cut in cuts:
        parent = next(it for it in items if it["prompt"] == cut["prompt"])
        assert parent["split"] == "train" and parent["id"] in ("x-0", "x-4")
        words = cut["response"].split()
        assert 3 <= len(words) <= 4 and cut["response"] in parent["response"] and words != parent["response"].split()[-len(words):]
        assert (cut["origin"], cut["kind"], cut["level"], cut["human_label"], cut["split"]) == ("prefix", "prefix", "response", None, "train")
    assert prefixes.cut(RESPONSE, 6, 2) == "five six" and prefixes.cut("  a  b\tc", 2, 5) == "  a  b"
    assert prefixes.prefix_items(items, 0, 3, 4, 1) == []


def test_build_corpus_adds_teacher_labeled_prefixes_without_relabeling_the_rest(data, tiny_llama_guard_dir, tmp_path):  # noqa: F811
    plain = tiny_args(data, tiny_llama_guard_dir, tmp_path)
    build(plain)
    label_shards = {p: p.stat().st_mtime_ns for p in (Path(plain.work_dir) / "label").glob("shard-*.parquet")}
    before = corpus_rows(plain.output_dir)
    with_prefixes = tiny_args(data, tiny_llama_guard_dir, tmp_path, prefix_rows=5, prefix_min_words=2, prefix_max_words=6)
    rows = corpus_rows(build(with_prefixes))
    assert {p: p.stat().st_mtime_ns for p in (Path(plain.work_dir) / "label").glob("shard-*.parquet")} == label_shards
    cuts = [r for r in rows if r["origin"] == "prefix"]
    assert [r for r in rows if r["origin"] != "prefix"] == before and len(cuts) == 5
    teacher = load_guard(tiny_llama_guard_dir, "llama_guard")
    scores = teacher.score([{"prompt": r["prompt"], "response": r["response"]} for r in cuts])
    parents = {(r["prompt"], r["response"]) for r in before if r["response"]}
    for cut, score in zip(cuts, scores):
        assert cut["unsafe_score"] == pytest.approx(score, abs=1e-5) and cut["label"] == int(score > 0.5)
        assert any(p == cut["prompt"] and cut["response"] in r and cut["response"] != r for p, r in parents)
    with pytest.raises(ValueError, match="prefix_rows must be >= 0"):
        tiny_args(data, tiny_llama_guard_dir, tmp_path, prefix_rows=-1)


def test_distill_trains_on_prefix_rows_only_when_asked(tmp_path):
    source = build_tiny_corpus(tmp_path / "source")
    corpus = tmp_path / "with-prefixes"  # a folder of its own: `datasets` caches a local corpus by its folder name
    shutil.copytree(source, corpus)
    train_file = next((corpus / "data").glob("train-*.parquet"))
    rows = Dataset.from_parquet(str(train_file)).to_list()
    cuts = [{**r, "id": f"prefix-{k:012x}", "response": r["response"].split(",")[0], "origin": "prefix", "kind": "prefix", "human_label": None}
            for k, r in enumerate(r for r in rows if r["response"])][:20]
    Dataset.from_list(rows + cuts).to_parquet(str(train_file))
    roles = ["--roles", tiny_paths(source)[1]]
    (plain_rows, _, plain_steps, _), (prefix_rows, _, prefix_steps, _) = (
        prepare(config("--corpus", str(corpus), *roles, *flags)) for flags in ([], ["--prefixes"]))
    assert "prefix" not in plain_rows["origin"] and plain_steps == 3 * math.ceil(len(rows) / 32)
    assert sorted(i for i, o in zip(prefix_rows["id"], prefix_rows["origin"]) if o == "prefix") == sorted(c["id"] for c in cuts)
    assert prefix_steps == 3 * math.ceil((len(rows) + 20) / 32)
    for ablation in (["--no-augmentation"], ["--labels", "human"]):
        assert "prefix" not in prepare(config("--corpus", str(corpus), *roles, "--prefixes", *ablation))[0]["origin"]
    with pytest.raises(ValueError, match="the corpus has no prefix rows"):
        prepare(config("--corpus", str(source), "--prefixes"))
