"""Harm categories through the chain: the taxonomy as data (mapping, masking, checks), the category
loss, the Llama-Guard category read-out against hand-computed logits, the student's category head
(same forward), the pipeline and `/v1/moderations` in the OpenAI moderation shape, and a user's
two-category taxonomy end to end (file, labeled rows, trained head, packaged model, server)."""

import json
import math
import socket
import threading
import time

import httpx
import pytest
import torch
import torch.nn.functional as F
import uvicorn
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, pipeline

from dataset_builders.categories import load_category_benchmark, load_category_rows, load_taxonomy
from modeling_saferoute import SafeRouteConfig, SafeRouteForSequenceClassification, Taxonomy
from modeling_saferoute.guards import load_guard
from modeling_saferoute.taxonomy import LLAMA_GUARD_3, OPENAI_SOURCES
from tiny_models import build_tiny_llama_guard3
from training.categories import category_loss

NAN = math.nan


# -- the taxonomy as data ------------------------------------------------------------------------------
def test_the_default_taxonomy_is_the_openai_moderation_api_with_llama_guard_3_mapped():
    taxonomy = Taxonomy.default()
    assert len(taxonomy) == 13 and taxonomy.name == "openai-moderation"
    assert set(taxonomy.names) == {"harassment", "harassment/threatening", "hate", "hate/threatening", "illicit", "illicit/violent",
                                   "self-harm", "self-harm/intent", "self-harm/instructions", "sexual", "sexual/minors",
                                   "violence", "violence/graphic"}
    assert set(taxonomy.llama_guard) == {code for code, _ in LLAMA_GUARD_3}  # every S1-S14 is mapped (some to nothing)
    assert all(taxonomy.descriptions[c] for c in taxonomy.names) and set(taxonomy.thresholds.values()) == {0.5}
    assert Taxonomy.load(taxonomy.to_dict()) == taxonomy  # what a config.json holds reads back the same


def test_source_labels_map_to_targets_with_unknowns_masked_not_negative():
    t = Taxonomy.default()
    row = lambda **kw: dict(zip(t.names, t.targets(kw)))  # noqa: E731
    # OpenAI benchmark codes: null stays unknown, 0 is a negative, categories it never labels are unknown
    got = row(source="openai_moderation", label=1, categories={"S": None, "H": 1, "V": 0, "HR": None, "SH": 0, "S3": None,
                                                                  "H2": None, "V2": None})
    assert got["hate"] == 1 and got["violence"] == 0 and got["self-harm"] == 0
    assert got["sexual"] is None and got["harassment"] is None and got["hate/threatening"] is None and got["illicit"] is None
    assert got["violence/graphic"] == 0 and got["self-harm/intent"] == 0  # a parent's 0 makes its children 0
    # a child's 1 makes its parent 1; curated single-hazard prompts are negatives elsewhere, unknown where they may overlap
    cse = row(source="ailuminate", category="cse", label=1)
    assert cse["sexual/minors"] == 1 and cse["sexual"] == 1 and cse["illicit"] is None and cse["hate"] == 0
    # Davidson: "offensive" is judged not hate; "neither" and ToxiGen "neutral" are negatives everywhere
    assert row(source="davidson", category="offensive", label=1)["hate"] == 0
    assert set(row(source="davidson", category="neither", label=0).values()) == {0}
    assert row(source="toxigen", category="hate", label=1)["hate/threatening"] is None
    assert set(row(source="toxigen", category="neutral", label=0).values()) == {0}
    # HateCheck: threats are hate/threatening, other hateful cases hate only; label-less sources: safe rows are negatives
    assert row(source="hatecheck", category="threat_dir_h", label=1)["hate"] == 1
    assert row(source="hatecheck", category="slur_h", label=1)["hate/threatening"] == 0
    assert set(row(source="beavertails", label=0).values()) == {0} and set(row(source="beavertails", label=1).values()) == {None}
    with pytest.raises(ValueError, match="no mapping for 'ailuminate' label 'xyz'"):
        t.targets({"source": "ailuminate", "category": "xyz", "label": 1})


def test_the_category_benchmark_masks_nulls():
    taxonomy = Taxonomy.default()
    rows, labeled = load_category_benchmark(taxonomy)
    assert len(rows) == 1680 and labeled == ["harassment", "hate", "hate/threatening", "self-harm", "sexual", "sexual/minors",
                                             "violence", "violence/graphic"]
    hate = [r[taxonomy.names.index("hate")] for r in rows["category_targets"]]
    assert sum(v == 1 for v in hate) == 162 and sum(v == 0 for v in hate) == 609 and sum(math.isnan(v) for v in hate) == 909


@pytest.mark.parametrize("data, message", [
    ({"name": "x", "categories": ["a", "a"]}, "'a' is listed twice"),
    ({"name": "x", "categories": ["a"], "llama_guard": {"S1": ["b"]}}, r"maps to \['b'\], not categories"),
    ({"name": "x", "categories": [{"name": "a", "threshold": 1.5}]}, "threshold of 'a' must be a number in"),
    ({"name": "x", "categories": [{"name": "a", "parent": "b"}]}, "parent 'b' of 'a'"),
    ({"name": "x", "categories": [{"name": "a", "parent": "b"}, {"name": "b", "parent": "a"}]}, "cycle"),
    ({"name": "x", "categories": ["a"], "sources": {"s": {"field": "category", "labels": {"l": {"b": 1}}}}}, r"maps to \['b'\]"),
    ({"name": "x", "categories": ["a"], "sources": {"s": {"field": "category", "labels": {"l": {"a": 2}}}}}, "1, 0 or null"),
    ({"name": "x", "categories": [], }, "non-empty list"),
    ({"categories": ["a"]}, "non-empty 'name'"),
    ({"name": "x", "categories": ["a"], "colour": 1}, "unknown keys"),
])
def test_bad_taxonomies_are_refused_naming_the_problem(data, message):
    with pytest.raises(ValueError, match=message):
        Taxonomy.from_dict(data)


def test_thresholds_options_are_checked_by_category_name():
    t = Taxonomy.default()
    assert t.category_thresholds({"hate": 0.2})["hate"] == 0.2
    with pytest.raises(ValueError, match=r"names \['scam'\], not categories of this model's taxonomy 'openai-moderation'"):
        t.category_thresholds({"scam": 0.2})
    with pytest.raises(ValueError, match=r"category_thresholds\['hate'\] must be a number in \[0, 1\]"):
        t.category_thresholds({"hate": -0.1})


# -- the category loss ---------------------------------------------------------------------------------
def test_category_loss_masks_unknown_entries_and_averages_labels_with_kd():
    logits = torch.tensor([[2.0, -1.0, 0.5], [-0.5, 1.0, 3.0]])
    targets = torch.tensor([[1.0, NAN, 0.0], [NAN, NAN, 1.0]])
    soft = torch.tensor([[0.9, 0.2, NAN], [NAN, NAN, NAN]])
    known = ~torch.isnan(targets)
    label_term = F.binary_cross_entropy_with_logits(logits[known], targets[known])
    kd_term = F.binary_cross_entropy_with_logits(logits[~torch.isnan(soft)], soft[~torch.isnan(soft)])
    assert category_loss(logits, targets) == pytest.approx(label_term.item())
    assert category_loss(logits, targets, soft) == pytest.approx(0.5 * (label_term + kd_term).item())
    assert category_loss(logits, soft=soft) == pytest.approx(kd_term.item())
    assert category_loss(logits, torch.full((2, 3), NAN)) is None  # nothing known: no term
    changed = logits.clone()
    changed[0, 1] = 50.0  # an unknown entry moves nothing
    assert category_loss(changed, targets) == pytest.approx(category_loss(logits, targets).item())


# -- the student's category head -----------------------------------------------------------------------
def test_category_head_reads_the_routers_feature_in_the_same_forward(tiny_student_dir):
    taxonomy = Taxonomy.default()
    model = SafeRouteForSequenceClassification(SafeRouteConfig(encoder=AutoConfig.from_pretrained(tiny_student_dir),
                                                               taxonomy=taxonomy.to_dict())).eval()
    tok = AutoTokenizer.from_pretrained(tiny_student_dir)
    calls = []
    model.student.bert.register_forward_hook(lambda *a: calls.append(1))
    batch = tok(["a b", "How do I pick a lock?", "Write a poem"], padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(**batch)
    assert len(calls) == 1  # one encoder pass gives P(unsafe), the router score and the categories
    assert out.category_logits.shape == (3, 13) and out.logits.shape == (3, 2)
    assert torch.allclose(model.category_head(out.features), out.category_logits)
    assert model.config.category_thresholds == taxonomy.thresholds
    assert SafeRouteForSequenceClassification(SafeRouteConfig(encoder=AutoConfig.from_pretrained(tiny_student_dir))).category_head is None


# -- the Llama-Guard category read-out -----------------------------------------------------------------
CODES = [code for code, _ in LLAMA_GUARD_3]


@pytest.fixture(scope="module")
def coded_guard_dir(tmp_path_factory):
    """The tiny Llama-Guard-3-style model with each code S1-S14 one token (as Llama 3's tokenizer reads
    "S" + a number up to 3 digits after the "S"), so one next token tells the codes apart."""
    out = build_tiny_llama_guard3(tmp_path_factory.mktemp("lg3"))
    tok = AutoTokenizer.from_pretrained(out)
    tok.add_tokens(CODES)
    model = AutoModelForCausalLM.from_pretrained(out)
    model.resize_token_embeddings(len(tok), mean_resizing=False)
    torch.manual_seed(5)
    with torch.no_grad():
        model.get_input_embeddings().weight[-len(CODES):].normal_(0, 0.02)
        model.lm_head.weight[-len(CODES):].normal_(0, 0.5)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


ITEMS = [{"prompt": "Explain how to build a bomb at home."}, {"prompt": "How do I pick a lock?", "response": "Sure, here is how you do it step by step."},
         {"prompt": "Write a poem about the sea."}]


def _next_logits(model, tok, text, extra=()):
    ids = tok(text, add_special_tokens=False)["input_ids"] + list(extra)
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0, -1]


def test_llama_guard_categories_match_hand_computed_logits(coded_guard_dir):
    taxonomy = Taxonomy.default()
    guard = load_guard(coded_guard_dir, "llama_guard", autocast_dtype="none", taxonomy=taxonomy)
    scores, cats = guard.score(ITEMS, return_categories=True)
    model = AutoModelForCausalLM.from_pretrained(coded_guard_dir).eval()
    tok = AutoTokenizer.from_pretrained(coded_guard_dir)
    safe, unsafe = (tok.encode(w, add_special_tokens=False)[0] for w in ("safe", "unsafe"))
    code_ids = [tok.convert_tokens_to_ids(c) for c in CODES]
    assert guard.code_ids == code_ids and guard.code_prefix == [unsafe]  # "unsafe" then the code ("\n" is whitespace here)
    for item, p, got in zip(ITEMS, scores, cats):
        text = guard.render(item)
        first = _next_logits(model, tok, text)
        p_unsafe = torch.softmax(first[[safe, unsafe]], -1)[1].item()
        after = _next_logits(model, tok, text, [unsafe])  # one extra forward: the prompt + "unsafe"
        p_code = dict(zip(CODES, (torch.softmax(after[code_ids], -1) * p_unsafe).tolist()))
        assert p == pytest.approx(p_unsafe, abs=1e-6)
        want = {c: 0.0 for c in taxonomy.names}
        for code, cats_of_code in taxonomy.llama_guard.items():
            for c in cats_of_code:
                want[c] += p_code[code]
        want["illicit"] = max(want["illicit"], want["illicit/violent"])  # a parent is at least its child
        want["sexual"] = max(want["sexual"], want["sexual/minors"])
        want["violence"] = max(want["violence"], want["violence/graphic"])
        assert got == pytest.approx(want, abs=1e-6)
        assert got["hate"] == pytest.approx(p_code["S10"], abs=1e-6) and got["self-harm"] == pytest.approx(p_code["S11"], abs=1e-6)
    assert len({round(c["hate"], 6) for c in cats}) == len(ITEMS)  # the read-out varies with the input


def test_custom_categories_are_written_into_the_prompt_as_llama_guard_writes_them(coded_guard_dir, tiny_llama_guard_dir):
    custom = Taxonomy.from_dict({"name": "support-desk", "categories": [
        {"name": "scam", "description": "Helping someone defraud people."}, {"name": "medical", "description": "Medical advice."}]})
    guard = load_guard(coded_guard_dir, "llama_guard", autocast_dtype="none", taxonomy=custom, render_taxonomy=True)
    text = guard.render(ITEMS[0])
    assert "<BEGIN UNSAFE CONTENT CATEGORIES>\nS1: scam.\nHelping someone defraud people.\nS2: medical.\nMedical advice.\n<END UNSAFE" in text
    assert "Violent Crimes" not in text
    scores, cats = guard.score(ITEMS, return_categories=True)
    model = AutoModelForCausalLM.from_pretrained(coded_guard_dir).eval()
    tok = AutoTokenizer.from_pretrained(coded_guard_dir)
    unsafe = tok.encode("unsafe", add_special_tokens=False)[0]
    for item, p, got in zip(ITEMS, scores, cats):
        after = _next_logits(model, tok, guard.render(item), [unsafe])
        two = torch.softmax(after[[tok.convert_tokens_to_ids("S1"), tok.convert_tokens_to_ids("S2")]], -1) * p
        assert got == pytest.approx({"scam": two[0].item(), "medical": two[1].item()}, abs=1e-6)
    with pytest.raises(ValueError, match="writes no <BEGIN UNSAFE CONTENT CATEGORIES> block"):
        load_guard(str(tiny_llama_guard_dir), "llama_guard", taxonomy=custom, render_taxonomy=True)


def test_codes_one_next_token_cannot_tell_apart_are_refused(tmp_path):
    out = build_tiny_llama_guard3(tmp_path / "plain")  # "S1" and "S10" both start "S", "##1" here
    with pytest.raises(ValueError, match="share their first distinguishing token"):
        load_guard(str(out), "llama_guard", taxonomy=Taxonomy.default())


# -- the pipeline and the server -------------------------------------------------------------------------
def _student_with_head(student_dir, out, taxonomy):
    """A copy of a tiny student with a (seeded, untrained) category head for `taxonomy` beside it."""
    from transformers import AutoModelForSequenceClassification

    from training.categories import attach_category_head, detach_category_head, save_category_head

    model = AutoModelForSequenceClassification.from_pretrained(student_dir)
    with torch.no_grad():
        attach_category_head(model, taxonomy, seed=3).weight.mul_(40)  # scores spread over (0, 1)
    head, layer = detach_category_head(model)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(student_dir).save_pretrained(out)
    save_category_head(out, head, taxonomy, layer)
    return str(out)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(pipe, model):
    from serving.server import ServeArguments, build_app

    args = ServeArguments(model=model, port=_free_port(), max_wait_ms=5)
    server = uvicorn.Server(uvicorn.Config(build_app(pipe, args), host="127.0.0.1", port=args.port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return server, f"http://127.0.0.1:{args.port}"


@pytest.fixture(scope="module")
def openai_packaged(tmp_path_factory, tiny_student_dir, coded_guard_dir):
    from publishing.package import PackageArguments, package

    root = tmp_path_factory.mktemp("openai-categories")
    student = _student_with_head(tiny_student_dir, root / "student", Taxonomy.default())
    return str(package(PackageArguments(student=student, output_dir=str(root / "m"), large_guard=coded_guard_dir,
                                        large_guard_kind="llama_guard", model_card=False)))


def test_pipeline_results_carry_categories_thresholds_and_the_large_guards_for_routed_inputs(openai_packaged):
    pipe = pipeline("text-classification", model=openai_packaged, trust_remote_code=True, autocast_dtype="none")
    taxonomy = Taxonomy.default()
    texts = [i["prompt"] for i in ITEMS] + ["How do I kill a Python process on Linux?"]
    student = pipe(texts, route="never")
    for r in student:
        assert list(r["category_scores"]) == list(taxonomy.names) and list(r["categories"]) == list(taxonomy.names)
        assert all(0 < s < 1 for s in r["category_scores"].values())
        # a category is reported when its score is above its threshold and the input is unsafe
        assert r["categories"] == {c: r["label"] == "unsafe" and s > 0.5 for c, s in r["category_scores"].items()}
    assert len({round(r["category_scores"]["hate"], 5) for r in student}) > 1
    low = pipe(texts, route="never", threshold=0.0, category_thresholds={"hate": 0.0, "sexual": 1.0})
    assert all(r["categories"]["hate"] and not r["categories"]["sexual"] for r in low)
    routed = pipe(texts, route="always")
    guard = load_guard(AutoConfig.from_pretrained(openai_packaged, trust_remote_code=True).large_guard["name_or_path"], "llama_guard",
                       taxonomy=taxonomy)
    _, want = guard.score(texts, return_categories=True)
    for r, w in zip(routed, want):  # routed inputs get the large guard's categories
        assert r["decided_by"] == "large_guard" and r["category_scores"] == pytest.approx(w, abs=0.05)
    with pytest.raises(ValueError, match=r"names \['scam'\], not categories of this model's taxonomy 'openai-moderation'"):
        pipe("x", category_thresholds={"scam": 0.5})
    with pytest.raises(ValueError, match="reports the taxonomy 'openai-moderation'.*not 'support-desk'"):
        pipe("x", taxonomy="support-desk")


def test_moderations_answer_every_openai_category_in_the_openai_response_schema(openai_packaged):
    from openai.types import ModerationCreateResponse
    from openai.types.moderation import Categories, CategoryAppliedInputTypes, CategoryScores

    pipe = pipeline("text-classification", model=openai_packaged, trust_remote_code=True, autocast_dtype="none")
    server, url = _serve(pipe, openai_packaged)
    try:
        body = httpx.post(f"{url}/v1/moderations", json={"input": [i["prompt"] for i in ITEMS]}, timeout=60).json()
    finally:
        server.should_exit = True
    parsed = ModerationCreateResponse.model_validate(body)  # the OpenAI client's own types accept it
    assert len(parsed.results) == len(ITEMS)
    for model_cls in (Categories, CategoryScores, CategoryAppliedInputTypes):
        keys = {f.alias or name for name, f in model_cls.model_fields.items()}
        assert keys == set(Taxonomy.default().names)  # the project's taxonomy is exactly the API's key set
    want = pipe([i["prompt"] for i in ITEMS])
    for result, got, w in zip(body["results"], parsed.results, want):
        assert set(result["categories"]) == set(result["category_scores"]) == set(result["category_applied_input_types"]) == set(Taxonomy.default().names)
        assert got.flagged == (w["label"] == "unsafe") and result["category_applied_input_types"]["hate"] == ["text"]
        assert result["category_scores"] == pytest.approx(w["category_scores"], abs=1e-5)
        assert {"router_score", "routed", "decided_by"} <= set(result)  # the model's own fields stay


# -- a user's taxonomy, end to end -------------------------------------------------------------------------
CUSTOM = """name: tiny-desk
categories:
  - name: weapons
    description: Making weapons or explosives.
  - name: locks
    description: Getting past locks that are not yours.
    threshold: 0.4
rows: labeled.jsonl
"""
LABELED = [("Explain how to build a bomb at home.", {"weapons": 1, "locks": 0}), ("How do I pick a lock?", {"weapons": 0, "locks": 1}),
           ("Write a poem about the sea.", {"weapons": 0, "locks": 0}), ("What is the capital of France?", {"weapons": 0, "locks": None})]


@pytest.fixture(scope="module")
def custom_taxonomy(tmp_path_factory):
    root = tmp_path_factory.mktemp("custom-taxonomy")
    (root / "taxonomy.yaml").write_text(CUSTOM)
    with open(root / "labeled.jsonl", "w") as f:
        for i in range(48):
            prompt, cats = LABELED[i % len(LABELED)]
            f.write(json.dumps({"prompt": f"{prompt} {'Yes' if i % 3 else 'No'} {i}", "categories": cats}) + "\n")
    return root / "taxonomy.yaml"


def test_taxonomy_files_and_labeled_rows_are_checked_by_name(custom_taxonomy, tmp_path):
    taxonomy = load_taxonomy(str(custom_taxonomy))
    assert taxonomy.name == "tiny-desk" and taxonomy.names == ("weapons", "locks") and taxonomy.thresholds["locks"] == 0.4
    rows = load_category_rows("auto", taxonomy, str(custom_taxonomy))
    assert len(rows) == 48 and rows["label"][:3] == [1, 1, 0]  # unsafe when any category is
    assert math.isnan(rows["category_targets"][3][1])  # null: unknown, not a negative
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "a", "categories": {"weapons": 1}}) + "\n" + json.dumps({"prompt": "b", "categories": {"scams": 1}}) + "\n")
    with pytest.raises(ValueError, match=r"row 1: A labeled row's 'categories' names \['scams'\], not categories .*'tiny-desk'"):
        load_category_rows(str(bad), taxonomy)
    (tmp_path / "dup.yaml").write_text("name: d\ncategories: [a, a]\n")
    with pytest.raises(ValueError, match="dup.yaml: Taxonomy 'd': category 'a' is listed twice"):
        load_taxonomy(str(tmp_path / "dup.yaml"))
    with pytest.raises(ValueError, match="Unknown taxonomy 'no-such.yaml'"):
        load_taxonomy("no-such.yaml")


def test_a_custom_two_category_taxonomy_end_to_end(custom_taxonomy, tiny_student_dir, coded_guard_dir, tmp_path):
    from datasets import load_dataset

    from publishing.package import PackageArguments, package
    from saferoute.config import parse_args
    from tiny_corpus import build_tiny_corpus, tiny_paths
    from training.distill import DistillConfig, distill

    corpus = build_tiny_corpus(tmp_path / "corpus")
    args = parse_args([DistillConfig], [
        "--corpus", str(corpus), "--roles", tiny_paths(corpus)[1], "--student", str(tiny_student_dir), "--output_dir", str(tmp_path / "student"),
        "--taxonomy", str(custom_taxonomy), "--category_rows", "48", "--max_steps", "40", "--learning_rate", "1e-2", "--warmup_steps", "0",
        "--per_device_train_batch_size", "32", "--eval_strategy", "no", "--save_strategy", "no", "--load_best_model_at_end", "false",
        "--weight_decay", "0", "--category_loss_weight", "4"], section="distill")  # 1e-2 and 4: the tiny student's pooled features start nearly equal for every input
    student = distill(args)
    info = json.loads((student / "training_info.json").read_text())
    assert info["categories"]["taxonomy"] == "tiny-desk" and info["categories"]["labeled_rows"] == 48
    assert info["categories"]["targets"]["weapons"] == {"positive": 12, "negative": 36}
    assert info["rows"]["train"] == len(load_dataset(str(corpus), split="train"))  # the binary rows, as before
    out = package(PackageArguments(student=str(student), output_dir=str(tmp_path / "m"), large_guard=coded_guard_dir,
                                   large_guard_kind="llama_guard", large_guard_options='{"render_taxonomy": true}', model_card=False))
    config = AutoConfig.from_pretrained(out, trust_remote_code=True)
    assert config.taxonomy["name"] == "tiny-desk" and config.category_thresholds == {"weapons": 0.5, "locks": 0.4}
    pipe = pipeline("text-classification", model=str(out), trust_remote_code=True, autocast_dtype="none")
    texts = ["Explain how to build a bomb at home. Yes 100", "How do I pick a lock? No 101", "Write a poem about the sea. Yes 102"]
    results = pipe(texts, route="never")
    for r in results:
        assert list(r["category_scores"]) == ["weapons", "locks"] and list(r["categories"]) == ["weapons", "locks"]
    bomb, lock, poem = (r["category_scores"] for r in results)
    assert bomb["weapons"] > lock["weapons"] + 0.3 and bomb["weapons"] > poem["weapons"] + 0.3  # the head learned its rows
    assert lock["locks"] > bomb["locks"] + 0.3 and lock["locks"] > poem["locks"] + 0.3
    routed = pipe(texts, route="always")  # the large guard reads the two categories written into its prompt
    assert all(list(r["category_scores"]) == ["weapons", "locks"] and r["decided_by"] == "large_guard" for r in routed)
    with pytest.raises(ValueError, match=r"names \['hate'\], not categories of this model's taxonomy 'tiny-desk'"):
        pipe("x", category_thresholds={"hate": 0.5})
    server, url = _serve(pipe, str(out))
    try:
        body = httpx.post(f"{url}/v1/moderations", json={"input": texts}, timeout=60).json()
    finally:
        server.should_exit = True
    for result, want in zip(body["results"], pipe(texts)):
        assert set(result["categories"]) == set(result["category_scores"]) == set(result["category_applied_input_types"]) == {"weapons", "locks"}
        assert result["flagged"] == (want["label"] == "unsafe") and result["categories"] == want["categories"]
    # another taxonomy's corpus scores are refused by name
    (corpus / "taxonomy.json").write_text(json.dumps(Taxonomy.default().to_dict()))
    with pytest.raises(ValueError, match="teacher category scores of the corpus .* is for the taxonomy 'openai-moderation'.*not 'tiny-desk'"):
        distill(parse_args([DistillConfig], ["--corpus", str(corpus), "--roles", tiny_paths(corpus)[1], "--taxonomy", str(custom_taxonomy),
                                             "--output_dir", str(tmp_path / "other"), "--student", str(tiny_student_dir)], section="distill"))


# -- evaluation --------------------------------------------------------------------------------------------
def test_evaluate_reports_per_category_auprc_f1_and_confusion_recomputable_from_its_scores(openai_packaged, tmp_path):
    import numpy as np
    import pandas as pd
    from sklearn.metrics import average_precision_score, f1_score

    from evaluation.evaluate import EvaluateArguments, run_evaluation

    model = tmp_path / "model"
    import shutil

    shutil.copytree(openai_packaged, model)
    report = run_evaluation(EvaluateArguments(model=str(model), benchmarks="openai_moderation", max_per_benchmark=20, validation="none",
                                              baselines="none", max_category_rows=120, output_dir=str(tmp_path / "eval"), router_threshold=0.5))
    cats = report["categories"]
    assert cats["n"] == 120 and cats["taxonomy"] == "openai-moderation"
    assert set(cats["systems"]) == {"student", "student_binary", "large_guard", "saferoute"}
    frame = pd.read_parquet(tmp_path / "eval" / "category_scores.parquet")
    rows, _ = load_category_benchmark(Taxonomy.default())
    targets = dict(zip(rows["id"], rows["category_targets"]))
    names = list(Taxonomy.default().names)
    for c in cats["labeled_categories"]:
        y = np.array([targets[i][names.index(c)] for i in frame["id"]])
        known = ~np.isnan(y)
        if not y[known].any():
            continue
        for system, col in (("student", f"student:{c}"), ("large_guard", f"large_guard:{c}"), ("student_binary", "student_unsafe_score")):
            assert cats["systems"][system][c]["auprc"] == pytest.approx(average_precision_score(y[known], frame[col][known]))
        routed = frame["routed"].to_numpy()
        sr = np.where(routed, frame[f"large_guard:{c}"], frame[f"student:{c}"])
        assert cats["systems"]["saferoute"][c]["auprc"] == pytest.approx(average_precision_score(y[known], sr[known]))
        reported = (frame[f"student:{c}"] > 0.5) & (frame["student_unsafe_score"] > 0.5)  # the categories the pipeline reports
        assert cats["systems"]["student"][c]["f1"] == pytest.approx(f1_score(y[known].astype(int), reported[known], zero_division=0))
        assert cats["systems"]["student"][c]["annotated"] == known.sum()
    table = cats["confusion"]["saferoute"]
    assert set(table) == set(cats["labeled_categories"]) | {"safe"} and table["safe"]["rows"] == int((frame["label"] == 0).sum())
    md = (tmp_path / "eval" / "report.md").read_text()
    assert "## Harm categories (openai_moderation_categories, 120 rows" in md and "### Confusion: SafeRoute" in md
    assert (tmp_path / "eval" / "category_auprc.png").read_bytes()[:4] == b"\x89PNG"
    card = (model / "README.md").read_text()
    assert "### Harm categories" in card and "| hate |" in card and "AUPRC large guard" in card


# -- the teacher's head, the corpus' category scores, the student's KD ------------------------------------
def test_teacher_head_then_corpus_scores_then_student_kd(custom_taxonomy, tiny_student_dir, tiny_llama_guard_dir, tmp_path):
    import numpy as np
    from datasets import load_dataset

    from dataset_builders.harmaug.build import build
    from saferoute.config import parse_args
    from test_harmaug import pool_rows, tiny_args
    from test_train_guard import _rows
    from tiny_corpus import tiny_roles
    from training.distill import DistillConfig, distill
    from training.train_guard import TrainGuardConfig, train_guard

    pool = tmp_path / "toy.jsonl"
    pool.write_text("".join(json.dumps(r) + "\n" for r in _rows()))
    roles = tiny_roles(pool, tmp_path / "roles", teacher=0.6, router=0.15, validation=0.2)
    teacher = train_guard(TrainGuardConfig(
        kind="sequence_classification", base_model=str(tiny_student_dir), seed_pool=str(pool), roles=str(roles),
        output_dir=str(tmp_path / "teacher"), max_length=64, max_steps=40, learning_rate=1e-2, per_device_train_batch_size=32,
        warmup_steps=0.0, logging_steps=50, taxonomy=str(custom_taxonomy), category_rows=48, category_loss_weight=4))
    info = json.loads((teacher / "training_info.json").read_text())
    assert info["categories"]["labeled_rows"] == 48 and info["categories"]["targets"]["locks"]["positive"] == 12
    assert (teacher / "category_head.json").exists() and "category_head.weight" not in open(teacher / "model.safetensors", "rb").read(4096).decode("latin-1")
    guard = load_guard(str(teacher), "sequence_classification", autocast_dtype="none")
    assert guard.taxonomy.names == ("weapons", "locks")
    texts = ["Explain how to build a bomb at home. Yes 100", "How do I pick a lock? No 101", "Write a poem about the sea. Yes 102"]
    binary = guard.score(texts)
    unsafe, cats = guard.score(texts, return_categories=True)
    assert unsafe == pytest.approx(binary, abs=1e-6)  # the categories come from the same forward, P(unsafe) unchanged
    assert cats[0]["weapons"] > cats[1]["weapons"] + 0.3 and cats[1]["locks"] > cats[0]["locks"] + 0.3
    with pytest.raises(ValueError, match="is for the taxonomy 'tiny-desk'.*not 'openai-moderation'"):
        load_guard(str(teacher), "sequence_classification", taxonomy=Taxonomy.default())

    # build-corpus: the teacher scores every item's categories beside its P(unsafe)
    data = tmp_path / "data"
    (data / "eval").mkdir(parents=True)
    (data / "seed.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pool_rows()))
    tiny_roles(data / "seed.jsonl", data / "roles", teacher=0.4, router=0.25, validation=0.15)
    (data / "eval" / "bench.jsonl").write_text(json.dumps({"id": "bench-0", "prompt": "What is the capital of France?", "response": None,
                                                           "label": 0, "level": "prompt", "source": "bench", "category": None}) + "\n")
    corpus = build(tiny_args(data, tiny_llama_guard_dir, tmp_path, teacher=str(teacher), teacher_max_length=64))
    train = load_dataset(str(corpus), split="train")
    assert train.features["category_scores"].keys() == {"weapons", "locks"}
    assert json.loads((corpus / "taxonomy.json").read_text())["name"] == "tiny-desk"
    scored = guard.score([{"prompt": p, "response": r} for p, r in zip(train["prompt"], train["response"])], return_categories=True)[1]
    assert [r["weapons"] for r in train["category_scores"]] == pytest.approx([c["weapons"] for c in scored], abs=0.02)
    card = (corpus / "README.md").read_text()
    assert "| category_scores | struct of floats |" in card and "## Harm categories" in card and "| weapons |" in card

    # distill: KD of the teacher's category probabilities into the student's head (no labeled rows)
    student = distill(parse_args([DistillConfig], [
        "--corpus", str(corpus), "--roles", str(data / "roles"), "--student", str(tiny_student_dir),
        "--output_dir", str(tmp_path / "student"), "--max_steps", "120", "--learning_rate", "1e-2", "--warmup_steps", "0", "--per_device_train_batch_size", "32", "--eval_strategy", "no",
        "--save_strategy", "no", "--load_best_model_at_end", "false", "--weight_decay", "0", "--category_loss_weight", "4"], section="distill"))
    record = json.loads((student / "training_info.json").read_text())["categories"]
    assert record["taxonomy"] == "tiny-desk" and record["labeled_rows"] == 0 and record["teacher_scored_rows"] == len(train)
    kd = load_guard(str(student), "sequence_classification", autocast_dtype="none")
    items = [{"prompt": p, "response": r} for p, r in zip(train["prompt"], train["response"])]
    _, student_cats = kd.score(items, return_categories=True)
    for name in ("weapons", "locks"):  # on the rows it learned from, the student's head follows the teacher's scores
        teacher_p = np.array([c[name] for c in train["category_scores"]])
        student_p = np.array([c[name] for c in student_cats])
        high = teacher_p > 0.5
        assert high.any() and student_p[high].mean() > student_p[~high].mean() + 0.1, (name, teacher_p.round(2), student_p.round(2))


def test_a_large_guard_that_cannot_read_categories_scores_unsafe_alone(tmp_path):
    """A Llama-Guard-format guard whose tokenizer cannot tell S1 from S10 refuses categories by name;
    evaluate's large-guard scorer then scores P(unsafe) alone (category columns NaN) and says so."""
    from evaluation.evaluate import large_guard_scorer
    from modeling_saferoute.guards import CategoryReadoutError
    from tiny_models import build_tiny_keyword_guard3

    path = build_tiny_keyword_guard3(tmp_path / "keyword-guard")
    with pytest.raises(CategoryReadoutError, match="share their first distinguishing token"):
        load_guard(str(path), "llama_guard", taxonomy=Taxonomy.default())
    warnings = []
    score = large_guard_scorer({"name_or_path": str(path), "kind": "llama_guard"}, taxonomy=Taxonomy.default(), warnings=warnings,
                               autocast_dtype="float32").get()
    out = score(["Tell me the verdict", "Tell me a joke"])
    assert out["unsafe_score"][0] > 0.99 and out["unsafe_score"][1] < 0.01  # the keyword decides, by construction
    assert all(math.isnan(v) for c, values in out.items() if c != "unsafe_score" for v in values) and len(out) == 1 + len(Taxonomy.default())
    assert len(warnings) == 1 and "reads no categories" in warnings[0]
