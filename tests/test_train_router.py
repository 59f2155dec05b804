"""`saferoute train-router`: router labels, the (Bayesian) router fit, threshold choice, packaging."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import pipeline

from dataset_builders.harmaug.generate import load_generator
from modeling_saferoute.guards import load_guard
from modeling_saferoute.modeling_saferoute import SafeRouteRouter
from dataset_builders.roles import RoleTable
from tiny_corpus import build_tiny_corpus, tiny_paths
from saferoute.config import parse_args
from training.distill import main as distill_main
from publishing.package import PackageArguments, load_student, package
from training.paraphrase import PARAPHRASE_PREFIX, paraphrase, paraphrase_pairs, parse_pair, parse_paraphrase
from evaluation.methods import RoutingInputs, best_f1_threshold, evaluate_methods, router_thresholds
from evaluation.metrics import binary_entropy, budget_threshold, router_label
from training.router import BayesianLinear, bayesian_copy, export_posterior_mean, fit_router, router_steps
from training.train_router import (
    TrainRouterArguments,
    corpus_teacher,
    large_guard_reference,
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
def corpus_dir(tmp_path_factory, tiny_llama_guard_dir):
    """A tiny corpus whose teacher is a real (tiny) guard: train-router scores the router rows with it."""
    return build_tiny_corpus(tmp_path_factory.mktemp("corpus") / "harmaug", teacher=str(tiny_llama_guard_dir), teacher_kind="llama_guard")


@pytest.fixture(scope="module")
def student_dir(corpus_dir, tiny_student_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("distilled") / "student"
    distill_main([
        "--corpus", str(corpus_dir), "--roles", tiny_paths(corpus_dir)[1], "--student", str(tiny_student_dir), "--output_dir", str(out),
        "--max_steps", "10", "--learning_rate", "1e-2", "--warmup_steps", "0", "--per_device_train_batch_size", "16",
        "--eval_steps", "10", "--save_steps", "10",
        # uncalibrated: Platt-fitted on the 16 validation rows, this 10-step student is wrong on none of the 32
        # router rows where the tiny large guard is right (t = 0 everywhere), and the router tests need such rows
        "--calibration", "none",
    ])
    return out


def roles_args(corpus_dir, *argv):
    """train-router settings reading the tiny corpus' pool and role split."""
    pool, roles = tiny_paths(corpus_dir)
    return router_args("--seed_pool", pool, "--roles", roles, *argv)


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


def test_router_thresholds_fixed_best_f1_and_budget():
    rng = np.random.default_rng(0)
    scores = rng.random(200)
    student, large, y = rng.random(200), rng.random(200), rng.integers(0, 2, 200)
    got = router_thresholds(scores, student, large, y, fixed=0.5, large_budget=0.2)
    assert set(got) == {"fixed", "best_f1", "budget"} and got["fixed"] == 0.5
    assert 0.19 <= (scores > got["budget"]).mean() <= 0.2
    assert got["best_f1"] == best_f1_threshold(scores, student, large, y)
    best_f1 = system_f1(scores, got["best_f1"], student, large, y)
    for c in (0.0, 0.25, 0.5, 0.75, 1.0):
        assert best_f1 >= system_f1(scores, c, student, large, y)
    assert set(router_thresholds(scores, student, large, y)) == {"fixed", "best_f1"}  # no budget: no budget row


def test_train_router_on_the_router_rows_and_package(corpus_dir, student_dir, tiny_llama_guard_dir, tmp_path):
    out = tmp_path / "saferoute"
    result = train_router(roles_args(corpus_dir, "--student", str(student_dir), "--output_dir", str(out), "--max_steps", "30",
                                     "--batch_size", "64", "--eval_steps", "10", "--precision", "float32",  # float32: exact comparisons
                                     "--large_budget", "0.3"))
    table = result["table"]
    pool_file, roles_dir = tiny_paths(corpus_dir)
    roles = RoleTable(roles_dir)
    # exactly the router rows of the split: rows neither model trained on
    pool = {r["id"]: r for r in map(json.loads, open(pool_file))}
    assert sorted(table["id"]) == sorted(i for i, r in roles.roles.items() if r == "router")
    assert result["roles"]["fingerprint"] == roles.fingerprint
    rows = [pool[i] for i in table["id"]]
    # labels recomputed independently: human label, the large guard (the corpus teacher) and the student
    items = [{"prompt": r["prompt"], "response": r["response"]} for r in rows]
    model, tok, _ = load_student(str(student_dir))
    _, student_p = student_features(model, tok, items, 64, autocast_dtype="none")
    large_p = np.array(load_guard(str(tiny_llama_guard_dir), "llama_guard", batch_size=8, autocast_dtype="none").score(items))
    y = np.array([r["label"] for r in rows])
    np.testing.assert_allclose(table["student_p"], student_p, atol=1e-5)
    np.testing.assert_allclose(table["large_p"], large_p, atol=1e-5)
    expected = ((student_p > 0.5) != y) & ((large_p > 0.5) == y)
    assert table["t"] == expected.astype(int).tolist()
    assert 0 < sum(table["t"]) < len(table)
    assert result["large_guard"]["name_or_path"] == str(tiny_llama_guard_dir)
    # validation metrics come from the registry of routing methods
    assert {"student", "large", "saferoute", "oracle", "saferoute_fixed", "saferoute_budget"} <= set(result["metrics"]["validation"])
    # three splits, each choosing one thing: the thresholds come from the threshold split alone
    split = np.array(table["split"])
    counts = {name: int((split == name).sum()) for name in ("train", "validation", "threshold")}
    assert sum(counts.values()) == len(table) and counts == {k: result["examples"][k] for k in counts}
    assert counts["threshold"] == round(0.2 * len(table)) and counts["validation"] >= 1
    on = split == "threshold"
    cols = {k: np.array(table[k]) for k in ("router_score", "student_p", "large_p", "y")}
    assert result["router_thresholds"] == {
        "fixed": 0.5, "budget": budget_threshold(cols["router_score"][on], 0.3),
        "best_f1": best_f1_threshold(cols["router_score"][on], cols["student_p"][on], cols["large_p"][on], cols["y"][on])}
    assert result["threshold_choice"] == "budget" and result["router_threshold"] == result["router_thresholds"]["budget"]
    # the packaged model: router weights, thresholds and large-guard reference, read back by the pipeline
    config = json.loads((out / "config.json").read_text())
    assert config["router_threshold"] == pytest.approx(result["router_threshold"])
    assert config["router_thresholds"] == result["router_thresholds"] and config["router_threshold_choice"] == "budget"
    assert config["router_features"] == "hidden"
    assert config["large_guard"]["name_or_path"] == str(tiny_llama_guard_dir) and config["large_guard"]["kind"] == "llama_guard"
    assert (config["large_guard"]["max_length"], config["large_guard"]["batch_size"]) == (None, 8)  # what its labels were scored with
    assert config["router_trained"] and config["head_trained"]
    assert any(k.startswith("router.") for k in load_file(out / "model.safetensors"))
    guard = pipeline("text-classification", model=str(out), trust_remote_code=True)
    got = guard(items[:6], route="never", autocast_dtype="none")
    np.testing.assert_allclose([g["router_score"] for g in got], table["router_score"][:6], atol=1e-4)
    assert (out / "router_info.json").exists() and (out / "distill_info.json").exists()
    # complete: a second call skips
    again = train_router(roles_args(corpus_dir, "--student", str(student_dir), "--output_dir", str(out)))
    assert again.get("skipped")


def test_router_features_with_logits_and_entropy_come_from_the_one_forward(corpus_dir, student_dir, tmp_path):
    """--router_features hidden_logits_entropy: the router reads the pooled feature, the student's two
    logits and the binary entropy (bits) of its P(unsafe); the packaged model computes the same
    features in its forward, so the pipeline's router scores equal train-router's."""
    out = tmp_path / "saferoute"
    result = train_router(roles_args(corpus_dir, "--student", str(student_dir), "--output_dir", str(out), "--max_steps", "20",
                                     "--batch_size", "64", "--eval_steps", "10", "--precision", "float32",
                                     "--router_features", "hidden_logits_entropy"))
    config = json.loads((out / "config.json").read_text())
    assert config["router_features"] == "hidden_logits_entropy" and result["router_features"] == "hidden_logits_entropy"
    model, tok, _ = load_student(str(out))
    hidden = model.student.config.hidden_size
    assert model.router.layers[0].in_features == hidden + 3
    items = [{"prompt": p, "response": None} for p in ("How do I build a bomb?", "Write a poem about spring", "Kill it")]
    features, student_p = student_features(model, tok, items, 64, autocast_dtype="none")
    assert features.shape == (3, hidden + 3)
    p = torch.softmax(features[:, hidden:hidden + 2], dim=-1)[:, 1].numpy()
    np.testing.assert_allclose(p, student_p, atol=1e-6)  # the appended logits are the student's own
    np.testing.assert_allclose(features[:, -1].numpy(), binary_entropy(student_p), atol=1e-4)  # entropy in bits
    guard = pipeline("text-classification", model=str(out), trust_remote_code=True)
    got = guard(items, route="never", autocast_dtype="none")
    with torch.no_grad():
        expected = torch.sigmoid(model.router(features)).numpy()
    np.testing.assert_allclose([g["router_score"] for g in got], expected, atol=1e-5)
    # a folder written before the option (no router_features in config.json) loads with the paper's features
    plain = tmp_path / "plain"
    train_router(roles_args(corpus_dir, "--student", str(student_dir), "--output_dir", str(plain), "--max_steps", "5",
                            "--batch_size", "64", "--eval_steps", "5"))
    cfg = json.loads((plain / "config.json").read_text())
    del cfg["router_features"], cfg["router_thresholds"], cfg["router_threshold_choice"]
    (plain / "config.json").write_text(json.dumps(cfg))
    old, _, _ = load_student(str(plain))
    assert old.config.router_features == "hidden" and old.router.layers[0].in_features == hidden
    assert guard.model.config.router_features == "hidden_logits_entropy"
    with pytest.raises(ValueError, match="--router_features"):  # router weights that read other features are refused by name
        package(PackageArguments(student=str(out), router=str(plain), output_dir=str(tmp_path / "mismatch"), model_card=False))
    with pytest.raises(ValueError, match="router_features"):
        router_args("--router_features", "logits")


def test_router_rows_mix_and_large_guard_choice(corpus_dir, student_dir, tiny_student_dir):
    info = json.loads((student_dir / "training_info.json").read_text())
    rows, _ = router_data(roles_args(corpus_dir, "--max_rows", "12", "--source_weights", "tiny_a=3,tiny_b=1"))
    assert len(rows) == 12 and rows["source"].count("tiny_a") == 9  # 16 rows each: quotas 3:1, capped by what a source has
    only_a, _ = router_data(roles_args(corpus_dir, "--source_weights", "tiny_b=0"))
    assert set(only_a["source"]) == {"tiny_a"}
    teacher = large_guard_reference(roles_args(corpus_dir, "--student", str(student_dir)), info)
    assert teacher["name_or_path"] == corpus_teacher(str(corpus_dir))["name_or_path"] and teacher["kind"] == "llama_guard"
    named = large_guard_reference(roles_args(corpus_dir, "--large_guard", str(tiny_student_dir), "--large_guard_kind",
                                             "sequence_classification"), info)
    assert named["name_or_path"] == str(tiny_student_dir) and named["kind"] == "sequence_classification"
    with pytest.raises(ValueError, match="--large-guard"):
        large_guard_reference(roles_args(corpus_dir), {})


def test_train_router_errors_are_named(student_dir, tmp_path):
    with pytest.raises(ValueError, match="paraphrases"):
        router_args("--paraphrases", "-1")
    with pytest.raises(ValueError, match="paraphrase-backend"):
        router_args("--paraphrases", "2", "--paraphrase_backend", "nope")
    with pytest.raises(FileNotFoundError, match="saferoute roles"):
        train_router(router_args("--student", str(student_dir), "--roles", str(tmp_path / "none"), "--output_dir", str(tmp_path / "o")))


def test_corpus_teacher_from_card_yaml_or_body(corpus_dir, tmp_path, tiny_llama_guard_dir):
    assert corpus_teacher(str(corpus_dir)) == {"name_or_path": str(tiny_llama_guard_dir), "kind": "llama_guard"}
    body = tmp_path / "body"
    body.mkdir()
    (body / "README.md").write_text("---\nlicense: other\n---\n4. **Label.** The teacher `outputs/teacher` (guard kind `sequence_classification`) scored\n")
    assert corpus_teacher(str(body)) == {"name_or_path": "outputs/teacher", "kind": "sequence_classification"}
    (body / "README.md").write_text("---\nlicense: other\n---\nno teacher here\n")
    assert corpus_teacher(str(body)) is None


def test_the_card_records_a_local_teacher_by_its_absolute_path(tmp_path, monkeypatch):
    """A corpus built with `--teacher outputs/teacher` names its teacher so that train-router finds it
    from any working directory; a Hub id is kept as it is. The card records it with the one helper
    that `package` uses for the large guard."""
    import dataset_builders.harmaug.card as card
    from publishing.package import large_guard_location

    (tmp_path / "outputs" / "teacher").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    args = SimpleNamespace(**{name: None for name in card.CARD_SETTINGS}, responder=None)
    for teacher, recorded in (("outputs/teacher", str(tmp_path.resolve() / "outputs" / "teacher")),
                              ("meta-llama/Llama-Guard-3-8B", "meta-llama/Llama-Guard-3-8B"),
                              ("bundled:mpnet-base", "bundled:mpnet-base")):
        args.teacher = teacher
        assert large_guard_location(teacher) == recorded
        assert card.corpus_stats([], args, {}, [], "sequence_classification")["teacher"] == recorded


def test_labeled_rows_of_another_role_are_refused(corpus_dir, tmp_path):
    """--data may name rows neither model saw (not in the split at all, or router rows); a teacher,
    student or validation row is refused unless forced."""
    pool_file, roles_dir = tiny_paths(corpus_dir)
    roles = RoleTable(roles_dir)
    new = [{"id": f"x-{i}", "prompt": "How do I pick a lock?" if i % 2 else "Write a poem about the sea.", "response": None,
            "label": i % 2, "level": "prompt", "source": "x", "category": None} for i in range(6)]
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in new))
    data, _ = router_data(roles_args(corpus_dir, "--data", str(path)))
    assert data["y"] == [r["label"] for r in new]
    taught = next(json.loads(line) for line in open(pool_file) if roles.roles[json.loads(line)["id"]] == "teacher")
    path.write_text("\n".join(json.dumps(r) for r in new + [taught]))
    with pytest.raises(ValueError, match=rf"outside its roles.*{taught['id']}.*teacher"):
        router_data(roles_args(corpus_dir, "--data", str(path)))
    data, _ = router_data(roles_args(corpus_dir, "--data", str(path), "--force_roles"))
    assert taught["id"] in data["id"]


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


def test_pair_paraphrases_keep_both_sections_whole_and_drop_what_fails(tiny_llama_guard_dir):
    """SafeRoute's pair mode: prompt and response paraphrased together, several lines kept."""
    pairs = [("How do I pick a lock?", "Use a tension wrench.\nThen rake the pins."), ("Write a poem about the sea.", None),
             ("Explain how to build a bomb at home.", "Sure, here is how."), ("Tell me a joke.", "Why did the chicken cross?"),
             ("Name a red fruit.", "An apple.")]
    script = {
        "How do I pick a lock?": "**Prompt:** What is a way to open a lock\nwithout its key?\n**Response:** Take a tension wrench.\nNext, rake the pins.",
        "Write a poem about the sea.": "Prompt: Compose a poem about the ocean.\nResponse: None",
        "Explain how to build a bomb at home.": "I'm sorry, I can't do that.",  # no sections: dropped as empty
        "Tell me a joke.": "Prompt: Tell me a joke.\nResponse: Why did the chicken cross?",  # an echo
        "Name a red fruit.": "Prompt: Which fruit is red?\nResponse:",  # the response went missing
    }
    gen = ScriptedGenerator(load_generator(str(tiny_llama_guard_dir)).tokenizer, script)
    out, stats = paraphrase_pairs(gen, pairs, 1, seed=0, show_progress=False)
    assert out[0][0] == ("What is a way to open a lock\nwithout its key?", "Take a tension wrench.\nNext, rake the pins.")
    assert out[1][0] == ("Compose a poem about the ocean.", None)
    assert [o[0] for o in out[2:]] == [None, None, None]
    assert stats["made"] == 2 and stats["dropped"] == {"empty": 2, "echo": 1, "refusal": 0}
    assert all("Prompt: " in t and "Response: " in t for t in gen.inputs) and "Response: None" in "".join(gen.inputs)
    assert parse_pair("prompt: a\nresponse: None.") == ("a", None) and parse_pair("no sections") == (None, None)


def test_router_schedule_epochs_final_weights_and_adamw():
    x, t = separable(n=300)
    args = router_args("--num_epochs", "3", "--batch_size", "64", "--keep", "final", "--optimizer", "adamw", "--weight_decay", "0.01",
                       "--eval_steps", "2", "--warmup_steps", "0")
    assert router_steps(args, 240) == 3 * 4
    torch.manual_seed(0)
    _, fit = fit_router(SafeRouteRouter(16, 32), x[:240], t[:240], x[240:], t[240:], args)
    assert fit["steps"] == 12 and fit["kept"] == "final" and fit["kept_step"] == 12
    assert fit["validation_auprc"] == fit["history"][-1]["val_auprc"]
    with pytest.raises(ValueError, match="--optimizer"):
        router_args("--optimizer", "sgd")
    with pytest.raises(ValueError, match="--keep"):
        router_args("--keep", "median")
    with pytest.raises(ValueError, match="--paraphrase-mode"):
        router_args("--paraphrase_mode", "words")
    with pytest.raises(ValueError, match="needs --large_budget"):
        router_args("--threshold_choice", "budget")
    with pytest.raises(ValueError, match="--threshold_size must be > 0"):
        router_args("--threshold_size", "0")
    with pytest.raises(ValueError, match="--validation_size"):
        router_args("--validation_size", "0.5", "--threshold_size", "0.5")
    assert router_args("--router_threshold", "0.3").threshold_choice == "fixed"
    assert router_args("--large_budget", "0.2").threshold_choice == "budget" and router_args().threshold_choice == "best_f1"


def test_train_router_with_paraphrases_augments_the_training_split_only(corpus_dir, student_dir, tiny_llama_guard_dir, tmp_path):
    corpus = corpus_dir
    common = ["--student", str(student_dir), "--max_steps", "20", "--batch_size", "64", "--eval_steps", "10"]
    plain = train_router(roles_args(corpus, *common, "--output_dir", str(tmp_path / "plain")))
    result = train_router(roles_args(corpus, 
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
    by_id = {r["id"]: r for r in map(json.loads, open(tiny_paths(corpus)[0]))}
    assert stats["requested"] == 2 * len({by_id[t["id"]]["prompt"] for t in train_rows})
    assert stats["made"] + sum(stats["dropped"].values()) == stats["requested"] and stats["rows"] == len(para)
    # labels copied; both guards re-run on the paraphrases; t recomputed independently
    assert para["y"] == [by_id[i]["label"] for i in para["id"]]
    assert para["response"] == [by_id[i]["response"] for i in para["id"]]
    assert all(p != by_id[i]["prompt"] for p, i in zip(para["prompt"], para["id"]))
    items = [{"prompt": p, "response": r} for p, r in zip(para["prompt"], para["response"])]
    model, tok, _ = load_student(str(student_dir))
    _, student_p = student_features(model, tok, items, 64)
    large_p = load_guard(str(tiny_llama_guard_dir), "llama_guard", batch_size=8).score(items)  # the same batches as train-router
    np.testing.assert_allclose(para["student_p"], student_p, atol=1e-5)
    np.testing.assert_allclose(para["large_p"], large_p, atol=1e-5)
    assert para["t"] == router_labels(student_p, large_p, np.array(para["y"])).tolist()
    # recorded in router_info.json
    info = json.loads((tmp_path / "para" / "router_info.json").read_text())
    assert info["paraphrases"]["made"] == stats["made"] and info["paraphrases"]["dropped"] == stats["dropped"]
    assert info["paraphrases"]["positive_rate"] == pytest.approx(np.mean(para["t"]))
    assert info["examples"]["train_paraphrases"] == len(para)
