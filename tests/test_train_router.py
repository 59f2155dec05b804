"""`saferoute train-router`: router labels, the (Bayesian) router fit, threshold choice, packaging."""

import json
import shutil

import numpy as np
import pytest
import torch
from datasets import Dataset
from safetensors.torch import load_file
from transformers import pipeline

from dataset_builders.harmaug.generate import load_generator
from modeling_saferoute.guards import load_guard
from modeling_saferoute.modeling_saferoute import SafeRouteRouter
from tiny_corpus import build_tiny_corpus
from saferoute.config import parse_args
from training.distill import load_corpus
from training.distill import main as distill_main
from training.guard_data import write_training_ids
from publishing.package import load_student
from training.paraphrase import PARAPHRASE_PREFIX, paraphrase, parse_paraphrase
from evaluation.methods import RoutingInputs, choose_router_threshold, evaluate_methods
from evaluation.metrics import router_label
from training.router import BayesianLinear, bayesian_copy, export_posterior_mean, fit_router
from training.train_router import (
    TrainRouterArguments,
    corpus_teacher,
    large_guard_scores,
    router_data,
    student_features,
    train_router,
)


def router_labels(student, large, y):
    return router_label(y, student, large)


def system_f1(scores, router_threshold, student, large, y):
    return evaluate_methods(RoutingInputs(y, student, large, scores, router_threshold))["saferoute"]["f1"]


def router_args(*argv):
    return parse_args([TrainRouterArguments], list(argv), section="train_router")


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    return build_tiny_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def student_dir(corpus_dir, tiny_student_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("distilled") / "student"
    distill_main([
        "--corpus", str(corpus_dir), "--student", str(tiny_student_dir), "--output_dir", str(out), "--router_holdout", "0.4",
        "--max_steps", "10", "--learning_rate", "1e-2", "--warmup_steps", "0", "--per_device_train_batch_size", "16",
        "--eval_steps", "10", "--save_steps", "10",
    ])
    return out


def test_router_labels_definition():
    student = np.array([0.9, 0.9, 0.1, 0.1, 0.6, 0.4])
    large = np.array([0.1, 0.9, 0.9, 0.1, 0.2, 0.7])
    y = np.array([0, 0, 1, 1, 0, 1])
    # t = 1 exactly where the student is wrong and the large guard right
    assert router_labels(student, large, y).tolist() == [1, 0, 1, 0, 1, 1]
    assert router_labels(student, large, 1 - y).tolist() == [0, 0, 0, 0, 0, 0]


def separable(n=400, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    t = ((x[:, 0] + 0.5 * x[:, 1]) > 1.0).long()  # ~20% positives
    return x, t


@pytest.mark.parametrize("bayesian", [False, True])
def test_fit_router_loss_falls_and_bayesian_exports_the_mean(bayesian):
    x, t = separable()
    args = router_args("--max_steps", "40", "--learning_rate", "1e-2", "--batch_size", "64", "--eval_steps", "10", "--warmup_steps", "4", *(["--bayesian"] if bayesian else []))
    torch.manual_seed(0)
    router = SafeRouteRouter(16, 32)
    router, fit = fit_router(router, x[:320], t[:320], x[320:], t[320:], args)
    hist = fit["history"]
    assert hist[-1]["val_bce"] < hist[0]["val_bce"] or max(h["val_auprc"] for h in hist) > 0.9
    with torch.no_grad():
        scores = torch.sigmoid(router(x[320:])).numpy()
    assert scores[t[320:].numpy() == 1].mean() > scores[t[320:].numpy() == 0].mean() + 0.3
    assert all(type(m) is not BayesianLinear for m in router.modules())  # the exported architecture is plain


def test_bayesian_layers_sample_in_training_and_export_posterior_mean():
    torch.manual_seed(0)
    router = SafeRouteRouter(8, 16)
    bayes = bayesian_copy(router, prior_sigma=0.1)
    x = torch.randn(4, 8)
    bayes.train()
    assert not torch.allclose(bayes(x), bayes(x))  # weights are sampled
    bayes.eval()
    assert torch.allclose(bayes(x), router(x))  # the mean starts at the plain weights
    with torch.no_grad():
        bayes.layers[0].weight_mu.add_(1.0)
    export_posterior_mean(bayes, router)
    assert torch.allclose(router.layers[0].weight, bayes.layers[0].weight_mu)
    assert torch.allclose(router(x), bayes(x))
    kl, n = bayes.layers[0].kl()
    assert n == 8 * 16 + 16 and kl > 0


def test_choose_threshold_budget_and_f1():
    rng = np.random.default_rng(0)
    scores = rng.random(200)
    student, large, y = rng.random(200), rng.random(200), rng.integers(0, 2, 200)
    thr = choose_router_threshold(scores, student, large, y, large_budget=0.2)
    assert (scores > thr).mean() <= 0.2 and (scores > thr).mean() >= 0.19
    best = choose_router_threshold(scores, student, large, y)
    best_f1 = system_f1(scores, best, student, large, y)
    for c in (0.0, 0.25, 0.5, 0.75, 1.0):
        assert best_f1 >= system_f1(scores, c, student, large, y)


def test_train_router_on_the_holdout_and_package(corpus_dir, student_dir, tmp_path):
    out = tmp_path / "saferoute"
    result = train_router(router_args("--student", str(student_dir), "--output_dir", str(out), "--max_steps", "30", "--batch_size", "64", "--eval_steps", "10"))
    info = json.loads((student_dir / "training_info.json").read_text())
    table = result["table"]
    # exactly the rows distill held out
    assert sorted(table["id"]) == sorted(info["router_holdout"]["ids"])
    by_id = {r["id"]: r for r in load_corpus(str(corpus_dir))}
    rows = [by_id[i] for i in table["id"]]
    # labels recomputed independently: human label, corpus teacher score (the large guard = the corpus teacher), student P
    model, tok, _ = load_student(str(student_dir))
    _, student_p = student_features(model, tok, [{"prompt": r["prompt"], "response": r["response"]} for r in rows], 64)
    large_p = np.array([r["unsafe_score"] for r in rows])
    y = np.array([r["human_label"] for r in rows])
    np.testing.assert_allclose(table["student_p"], student_p, atol=1e-5)
    expected = ((student_p > 0.5) != y) & ((large_p > 0.5) == y)
    assert table["t"] == expected.astype(int).tolist()
    assert 0 < sum(table["t"]) < len(table)
    assert result["large_guard_scores_reused"] and result["large_guard"]["name_or_path"] == "tiny-teacher"
    # the packaged model: router weights, threshold and large-guard reference, read back by the pipeline
    config = json.loads((out / "config.json").read_text())
    assert config["router_threshold"] == pytest.approx(result["router_threshold"])
    assert config["large_guard"]["name_or_path"] == "tiny-teacher" and config["large_guard"]["kind"] == "llama_guard"
    assert config["router_trained"] and config["head_trained"]
    assert any(k.startswith("router.") for k in load_file(out / "model.safetensors"))
    guard = pipeline("text-classification", model=str(out), trust_remote_code=True)
    got = guard([{"prompt": r["prompt"], "response": r["response"]} for r in rows[:6]], route="never")
    np.testing.assert_allclose([g["router_score"] for g in got], table["router_score"][:6], atol=1e-4)
    assert (out / "router_info.json").exists()
    # complete: a second call skips
    again = train_router(router_args("--student", str(student_dir), "--output_dir", str(out)))
    assert again.get("skipped")


def test_large_guard_scores_rescore_with_a_named_guard(corpus_dir, student_dir, tiny_llama_guard_dir):
    args = router_args("--student", str(student_dir), "--large_guard", str(tiny_llama_guard_dir), "--large_guard_kind", "llama_guard")
    info = json.loads((student_dir / "training_info.json").read_text())
    rows, corpus = router_data(args, info)
    large_p, ref, reused = large_guard_scores(args, rows, corpus)
    items = [{"prompt": p, "response": r} for p, r in zip(rows["prompt"], rows["response"])]
    expected = load_guard(str(tiny_llama_guard_dir), "llama_guard").score(items)
    assert not reused and ref["name_or_path"] == str(tiny_llama_guard_dir) and ref["kind"] == "llama_guard"
    np.testing.assert_allclose(large_p, expected, atol=1e-5)
    assert not np.allclose(large_p, rows["corpus_score"])  # not the corpus teacher's scores
    # the corpus teacher named explicitly: its scores are reused, no model is loaded
    same = router_args("--student", str(student_dir), "--large_guard", "tiny-teacher")
    large_p, ref, reused = large_guard_scores(same, rows, corpus)
    assert reused and ref["kind"] == "llama_guard" and large_p.tolist() == rows["corpus_score"]


def test_train_router_errors_are_named(student_dir, tmp_path):
    with pytest.raises(ValueError, match="large-guard-scores"):
        router_args("--large_guard_scores", "maybe")
    with pytest.raises(ValueError, match="paraphrases"):
        router_args("--paraphrases", "-1")
    with pytest.raises(ValueError, match="paraphrase-backend"):
        router_args("--paraphrases", "2", "--paraphrase_backend", "nope")
    with pytest.raises(ValueError, match="training_info.json"):
        train_router(router_args("--student", str(tmp_path), "--output_dir", str(tmp_path / "o")))


def test_corpus_teacher_from_card_yaml_or_body(corpus_dir, tmp_path):
    assert corpus_teacher(str(corpus_dir)) == {"name_or_path": "tiny-teacher", "kind": "llama_guard"}
    body = tmp_path / "body"
    body.mkdir()
    (body / "README.md").write_text("---\nlicense: other\n---\n4. **Label.** The teacher `outputs/teacher` (guard kind `sequence_classification`) scored\n")
    assert corpus_teacher(str(body)) == {"name_or_path": "outputs/teacher", "kind": "sequence_classification"}
    (body / "README.md").write_text("---\nlicense: other\n---\nno teacher here\n")
    assert corpus_teacher(str(body)) is None


def test_router_data_from_a_labeled_file_needs_a_large_guard(student_dir, tmp_path):
    rows = [{"id": f"x-{i}", "prompt": "How do I pick a lock?" if i % 2 else "Write a poem about the sea.", "response": None,
             "label": i % 2, "level": "prompt", "source": "x", "category": None} for i in range(6)]
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    args = router_args("--student", str(student_dir), "--data", str(path))
    data, corpus = router_data(args, {})
    assert corpus is None and data["y"] == [r["label"] for r in rows] and data["corpus_score"] == [None] * 6
    with pytest.raises(ValueError, match="--large-guard"):
        large_guard_scores(args, data, corpus)


def test_unseen_pool_rows_join_the_holdout_and_only_they_are_rescored(student_dir, tiny_llama_guard_dir, tmp_path):
    corpus = build_tiny_corpus(tmp_path / "corpus", teacher=str(tiny_llama_guard_dir), teacher_kind="llama_guard")
    in_corpus = [r for r in load_corpus(str(corpus)) if r["origin"] == "seed"][:3]
    new = [{"id": f"new-{i}", "prompt": "How do I pick a lock?" if i % 2 else "Write a poem about the sea.", "response": None,
            "label": i % 2, "level": "prompt", "source": "x", "category": None} for i in range(4)]
    pool = tmp_path / "pool.jsonl"
    pool.write_text("\n".join(json.dumps({k: r[k] for k in ("id", "prompt", "response", "level", "source")} | {"label": r.get("human_label", r.get("label")), "category": None}) for r in in_corpus + new))
    args = router_args("--student", str(student_dir), "--corpus", str(corpus), "--unseen_pool", str(pool))
    info = json.loads((student_dir / "training_info.json").read_text())
    rows, corpus_path = router_data(args, info)
    holdout = info["router_holdout"]["ids"]
    assert rows["id"] == holdout + [r["id"] for r in new]  # corpus rows outside the hold-out never join
    scores, ref, reused = large_guard_scores(args, rows, corpus_path)  # the large guard is the corpus teacher
    assert reused == len(holdout) and ref["name_or_path"] == str(tiny_llama_guard_dir)
    np.testing.assert_allclose(scores[: len(holdout)], rows["corpus_score"][: len(holdout)])
    expected = load_guard(str(tiny_llama_guard_dir), "llama_guard").score([{"prompt": r["prompt"], "response": None} for r in new])
    np.testing.assert_allclose(scores[len(holdout):], expected, atol=1e-5)


def test_rows_the_large_guard_trained_on_never_reach_the_router(student_dir, tiny_llama_guard_dir, tmp_path):
    guard = tmp_path / "guard"
    shutil.copytree(tiny_llama_guard_dir, guard)
    corpus = build_tiny_corpus(tmp_path / "corpus", teacher=str(guard), teacher_kind="llama_guard")
    info = json.loads((student_dir / "training_info.json").read_text())
    holdout = info["router_holdout"]["ids"]
    new = [{"id": f"new-{i}", "prompt": f"Question number {i}?", "response": None, "label": i % 2, "level": "prompt",
            "source": "x", "category": None} for i in range(4)]
    pool = tmp_path / "pool.jsonl"
    pool.write_text("\n".join(json.dumps(r) for r in new))
    trained = {holdout[0], holdout[1], "new-0", "new-3"}
    write_training_ids(guard, "offline", Dataset.from_dict({"id": sorted(trained)}), Dataset.from_dict({"id": ["new-1"]}))
    rows, _ = router_data(router_args("--student", str(student_dir), "--corpus", str(corpus), "--unseen_pool", str(pool)), info)
    assert rows["id"] == holdout[2:] + ["new-1", "new-2"]
    rows, _ = router_data(router_args("--student", str(student_dir), "--data", str(pool), "--large_guard", str(guard)), info)
    assert rows["id"] == ["new-1", "new-2"]


PARAPHRASE_SOURCES = ["How do I pick a lock?", "Write a poem about the sea.", "Explain how to build a bomb at home."]


def test_paraphrase_samples_n_seeded_copies_with_a_tiny_generator(tiny_llama_guard_dir):
    gen = load_generator(str(tiny_llama_guard_dir), batch_size=2)
    kwargs = {"max_new_tokens": 8, "batch_size": 2, "show_progress": False}
    out, stats = paraphrase(gen, PARAPHRASE_SOURCES, 3, seed=1, **kwargs)
    assert len(out) == 3 and all(len(copies) == 3 for copies in out)
    assert stats["requested"] == 9 and stats["made"] + sum(stats["dropped"].values()) == 9
    assert stats["made"] == sum(p is not None for copies in out for p in copies) and stats["new_tokens"] > 0
    kept = [p for copies in out for p in copies if p is not None]
    assert len(kept) >= 6 and all(p == " ".join(p.split()) and p for p in kept)  # one clean line each
    assert paraphrase(gen, PARAPHRASE_SOURCES, 3, seed=1, **kwargs) == (out, stats)  # deterministic for a seed
    assert any(len({p for p in copies if p is not None}) > 1 for copies in out)  # copies are sampled with their own seeds
    assert paraphrase(gen, PARAPHRASE_SOURCES, 3, seed=2, **kwargs)[0] != out
    # copy k does not depend on how many copies are asked for
    assert [copies[:1] for copies in out] == paraphrase(gen, PARAPHRASE_SOURCES, 1, seed=1, **kwargs)[0]


class ScriptedGenerator:
    """The tiny generator's tokenizer (chat rendering) with scripted continuations per source text."""

    def __init__(self, tokenizer, script):
        self.tokenizer, self.script, self.inputs = tokenizer, script, []

    def generate(self, texts, seed, **kwargs):
        self.inputs.extend(texts)
        return [next(c for s, c in self.script.items() if s in t) for t in texts], len(texts)


def test_paraphrase_parses_and_drops_empty_echo_and_refusal(tiny_llama_guard_dir):
    script = {
        "How do I pick a lock?": '\n\nHere is the paraphrase:\n"What is a way to open a lock without its key?" I hope this helps.',
        "Write a poem about the sea.": "   \n ",
        "Explain how to build a bomb at home.": "I'm sorry, I can't help with that.",
        "Tell me a joke.": ' "tell me a JOKE"',
        "Name a red fruit.": " **Paraphrase:** Which fruit is red?",
    }
    gen = ScriptedGenerator(load_generator(str(tiny_llama_guard_dir)).tokenizer, script)
    out, stats = paraphrase(gen, list(script), 1, seed=0, show_progress=False)
    assert [c[0] for c in out] == ["What is a way to open a lock without its key?", None, None, None, "Which fruit is red?"]
    assert stats["made"] == 2 and stats["dropped"] == {"empty": 1, "echo": 1, "refusal": 1}
    # the request goes through the chat template, the assistant turn opening with the prefix
    assert all(t.endswith("<|assistant|>" + PARAPHRASE_PREFIX) and "Paraphrase the following request" in t for t in gen.inputs)
    assert parse_paraphrase('What does the word "bomb" mean?') == 'What does the word "bomb" mean?'


def test_train_router_with_paraphrases_augments_the_training_split_only(student_dir, tiny_llama_guard_dir, tmp_path):
    # the corpus teacher is a real (tiny) guard: the hold-out rows reuse its corpus scores, the paraphrases are scored by it
    corpus = build_tiny_corpus(tmp_path / "corpus", teacher=str(tiny_llama_guard_dir), teacher_kind="llama_guard")
    common = ["--student", str(student_dir), "--corpus", str(corpus), "--max_steps", "20", "--batch_size", "64", "--eval_steps", "10"]
    plain = train_router(router_args(*common, "--output_dir", str(tmp_path / "plain")))
    result = train_router(router_args(
        *common, "--output_dir", str(tmp_path / "para"), "--paraphrases", "2", "--paraphraser", str(tiny_llama_guard_dir),
        "--paraphrase_max_new_tokens", "8", "--paraphrase_batch_size", "8",
    ))
    table, para = result["table"], result["paraphrase_table"]
    assert plain["paraphrase_table"] is None and plain["paraphrases"] is None
    # validation untouched: the same rows, the same size
    val_ids = [i for i, s in zip(table["id"], table["split"]) if s == "validation"]
    assert val_ids == [i for i, s in zip(plain["table"]["id"], plain["table"]["split"]) if s == "validation"]
    assert result["examples"]["validation"] == plain["examples"]["validation"] == len(val_ids)
    # the router trained on the training split plus the paraphrases of its rows
    train_rows = [r for r in table if r["split"] == "train"]
    assert len(para) > 0 and set(para["id"]) <= {r["id"] for r in train_rows} and not set(para["id"]) & set(val_ids)
    assert result["fit"]["train_examples"] == len(train_rows) + len(para) == result["examples"]["train"] + result["examples"]["train_paraphrases"]
    assert plain["fit"]["train_examples"] == len(train_rows)
    stats = result["paraphrases"]
    assert stats["requested"] == 2 * len({r["prompt"] for r in load_corpus(str(corpus)) if r["id"] in {t["id"] for t in train_rows}})
    assert stats["made"] + sum(stats["dropped"].values()) == stats["requested"] and stats["rows"] == len(para)
    # labels copied; both guards re-run on the paraphrases; t recomputed independently
    by_id = {r["id"]: r for r in load_corpus(str(corpus))}
    assert para["y"] == [by_id[i]["human_label"] for i in para["id"]]
    assert para["response"] == [by_id[i]["response"] for i in para["id"]]
    assert all(p != by_id[i]["prompt"] for p, i in zip(para["prompt"], para["id"]))
    items = [{"prompt": p, "response": r} for p, r in zip(para["prompt"], para["response"])]
    model, tok, _ = load_student(str(student_dir))
    _, student_p = student_features(model, tok, items, 64)
    large_p = load_guard(str(tiny_llama_guard_dir), "llama_guard").score(items)
    np.testing.assert_allclose(para["student_p"], student_p, atol=1e-5)
    np.testing.assert_allclose(para["large_p"], large_p, atol=1e-5)
    assert para["t"] == router_labels(student_p, large_p, np.array(para["y"])).tolist()
    # recorded in router_info.json
    info = json.loads((tmp_path / "para" / "router_info.json").read_text())
    assert info["paraphrases"]["made"] == stats["made"] and info["paraphrases"]["dropped"] == stats["dropped"]
    assert info["paraphrases"]["positive_rate"] == pytest.approx(np.mean(para["t"]))
    assert info["examples"]["train_paraphrases"] == len(para)
