"""The int8 student (CPU): per-token int8 linear layers, the rule that makes it the default (VNNI and
no native bf16, both answers simulated), and the pipeline's int8 path (router feature, one copy per
pipeline, threads). Its agreement with float32 on a fine-tuned MiniLM is in test_precision.py."""

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from transformers import AutoTokenizer, pipeline

import modeling_saferoute.pipeline_saferoute as pipeline_module
import modeling_saferoute.precision as precision
from modeling_saferoute import SafeRouteForSequenceClassification, SafeRoutePipeline
from modeling_saferoute.quantization import Int8Linear
from publishing.package import PackageArguments, package
from test_concurrency import mixed_inputs


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory, tiny_student_dir):
    return package(PackageArguments(student=str(tiny_student_dir), output_dir=str(tmp_path_factory.mktemp("int8") / "m"), model_card=False))


def in_repo_pipeline(folder):
    """The pipeline built from this repo's classes (not a copy of the remote code), so that
    monkeypatching `modeling_saferoute.precision` reaches it."""
    model = SafeRouteForSequenceClassification.from_pretrained(folder)
    return pipeline("text-classification", model=model, tokenizer=AutoTokenizer.from_pretrained(folder), pipeline_class=SafeRoutePipeline)


def simulate_cpu(monkeypatch, vnni, bf16):
    monkeypatch.setattr(precision, "cpu_has_vnni", lambda: vnni)
    monkeypatch.setattr(precision, "native_bf16", lambda device="cpu": bf16)


def test_int8_linear_is_close_to_float32_and_each_token_is_on_its_own_scale():
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 48)
    x = torch.randn(5, 7, 64)
    int8 = Int8Linear(linear)
    with torch.no_grad():
        ref, out = linear(x), int8(x)
        assert out.shape == ref.shape and out.dtype == torch.float32
        error = (out - ref).abs().max() / ref.abs().max()
        assert 0 < error < 0.02  # int8 rounding, not float32 and not wrong
        loud = x.clone()
        loud[0, 0] *= 1000  # one outlier token: a per-tensor scale would coarsen every other token's
        torch.testing.assert_close(int8(loud)[1:], out[1:], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(int8(x[3:4]), out[3:4], rtol=1e-6, atol=1e-6)  # alone or in a batch
        assert (int8(loud)[0, 0] - linear(loud)[0, 0]).abs().max() / linear(loud)[0, 0].abs().max() < 0.02


@pytest.mark.parametrize("vnni, bf16, expected", [(True, False, "int8"), (True, True, "bf16"), (False, False, "float32"), (False, True, "bf16")])
def test_auto_picks_int8_only_on_a_cpu_with_vnni_and_without_native_bf16(monkeypatch, vnni, bf16, expected):
    simulate_cpu(monkeypatch, vnni, bf16)
    assert precision.resolve_inference_precision("auto", "cpu") == expected
    assert precision.resolve_inference_precision("int8", "cpu") == "int8"
    assert precision.resolve_inference_precision("none", "cpu") == "float32"
    assert precision.resolve_precision("auto", "cpu") == ("bf16" if bf16 else "float32")  # training never runs in int8
    with pytest.raises(ValueError, match="precision must be one of"):
        precision.normalize_precision("int8")
    with pytest.raises(ValueError, match="CPU only"):
        precision.resolve_inference_precision("int8", "cuda")


def test_the_default_pipeline_runs_what_auto_picks(monkeypatch, tiny_folder):
    guard = in_repo_pipeline(tiny_folder)
    inputs = mixed_inputs(40)
    explicit = {p: guard(inputs, route="never", autocast_dtype=p) for p in ("none", "int8", "bf16")}
    assert explicit["int8"] != explicit["none"]  # the int8 path really ran
    for vnni, bf16, picked in ((True, False, "int8"), (True, True, "bf16"), (False, False, "none")):
        simulate_cpu(monkeypatch, vnni, bf16)
        assert guard.student_precision == {"none": "float32"}.get(picked, picked)
        assert guard(inputs, route="never") == explicit[picked]
    simulate_cpu(monkeypatch, True, False)
    pinned = pipeline("text-classification", model=guard.model, tokenizer=guard.tokenizer, pipeline_class=SafeRoutePipeline,
                      autocast_dtype="float32")
    assert pinned.student_precision == "float32" and pinned(inputs, route="never") == explicit["none"]  # auto overridden
    with pytest.raises(ValueError, match="autocast_dtype must be"):
        guard(inputs, autocast_dtype="int4")


def test_the_int8_model_feeds_the_router_the_heads_input(tiny_folder):
    guard = in_repo_pipeline(tiny_folder)
    model = guard.int8_model
    assert model is guard.int8_model  # made once
    student = model.student
    assert isinstance(student.bert.encoder.layer[0].attention.self.query, Int8Linear)
    assert type(student.classifier) is torch.nn.Linear and type(student.bert.pooler.dense) is torch.nn.Linear  # kept float32
    assert not any(isinstance(m, Int8Linear) for m in guard.model.modules())  # the float32 model is untouched
    assert student.bert.embeddings.word_embeddings.weight is guard.model.student.bert.embeddings.word_embeddings.weight  # shared
    batch = guard.tokenizer(["How do I pick a lock?", "Write a poem about the sea."], padding=True, return_tensors="pt")
    with torch.no_grad():
        out, ref = model(**batch), guard.model(**batch)
        torch.testing.assert_close(out.router_logits, model.router(out.features))
        torch.testing.assert_close(out.logits, student.classifier(out.features))
    gap = (out.features - ref.features).abs().max()
    assert 0 < gap < 0.05 * ref.features.abs().max()  # the int8 encoder's feature, close to the float32 one


def test_threads_share_one_int8_model_and_get_sequential_results(monkeypatch, tiny_folder):
    guard = in_repo_pipeline(tiny_folder)
    inputs = mixed_inputs(120)
    calls = [inputs[k : k + 5] for k in range(0, len(inputs), 5)]
    sequential = [guard(c, route="never", autocast_dtype="int8") for c in calls]
    fresh = type(guard)(model=guard.model, tokenizer=guard.tokenizer)  # no int8 model made yet
    made, copy = [], pipeline_module.int8_copy

    def slow_copy(model):  # widens the window in which two threads could both make one
        made.append(1)
        threading.Event().wait(0.2)
        return copy(model)

    monkeypatch.setattr(pipeline_module, "int8_copy", slow_copy)
    start = threading.Barrier(8)

    def first(c):  # the first eight calls start together, none with an int8 model made
        start.wait(timeout=30)
        return fresh(c, route="never", autocast_dtype="int8")

    with ThreadPoolExecutor(max_workers=8) as pool:
        concurrent = list(pool.map(first, calls[:8])) + list(pool.map(lambda c: fresh(c, route="never", autocast_dtype="int8"), calls[8:]))
    assert concurrent == sequential
    assert len(made) == 1


def test_an_encoder_guard_scores_in_int8_where_int8_is_the_inference_precision(monkeypatch, tiny_student_dir, tmp_path):
    """A teacher labeling a corpus or a large guard (an encoder classifier) runs its encoder linears in
    int8 where the student would (asked for, or auto on a CPU with VNNI and without native bf16), on a
    copy (the loaded model is left float32), head in float32, scores close to float32's, and its
    stored scores carry their own precision; a causal-LM guard never does."""
    from dataset_builders.score_store import guard_store
    from modeling_saferoute.guards import guard_precision, load_guard

    items = mixed_inputs(24)
    ref = load_guard(str(tiny_student_dir), "sequence_classification", autocast_dtype="none")
    quantized = load_guard(str(tiny_student_dir), "sequence_classification", autocast_dtype="int8")
    assert quantized.int8 and not ref.int8 and quantized.autocast is None
    assert quantized.compute_dtype == torch.int8 and ref.compute_dtype == torch.float32
    int8_layers = [name for name, m in quantized.model.named_modules() if isinstance(m, Int8Linear)]
    assert int8_layers and not any("classifier" in name for name in int8_layers)
    assert isinstance(quantized.model.classifier, torch.nn.Linear)
    a, b = torch.tensor(ref.score(items)), torch.tensor(quantized.score(items))
    assert 0 < (a - b).abs().max() < 0.05  # a different computation, close to float32

    simulate_cpu(monkeypatch, vnni=True, bf16=False)
    auto = load_guard(str(tiny_student_dir), "sequence_classification", autocast_dtype="auto")
    assert auto.int8 and guard_precision("sequence_classification", "auto") == "int8"
    assert guard_precision("llama_guard", "auto") == "float32" and guard_precision("sequence_classification", "auto", dtype="bfloat16") == "float32"
    stores = {p: guard_store(tmp_path, str(tiny_student_dir), "sequence_classification", p) for p in ("auto", "none")}
    assert stores["auto"].info["precision"] == "int8" and stores["none"].info["precision"] == "float32"
    assert stores["auto"].key != stores["none"].key
    simulate_cpu(monkeypatch, vnni=True, bf16=True)
    assert not load_guard(str(tiny_student_dir), "sequence_classification", autocast_dtype="auto").int8
