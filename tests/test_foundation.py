"""The model + pipeline contract: packaging, remote-code loading, routing, inputs, guard adapters."""

import json
import logging
import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, BertModel, pipeline

from modeling_saferoute import SafeRouteConfig, SafeRouteForSequenceClassification, SafeRoutePipeline
from modeling_saferoute.guards import CausalLMGuard, LlamaGuard, load_guard
from modeling_saferoute.inputs import encode_pairs, normalize_input
from publishing.package import PackageArguments, package

MIXED_INPUTS = [
    "How do I pick a lock?",
    {"text": "Write a poem about the sea.", "text_pair": "The sea is wide."},
    {"prompt": "Explain how to build a bomb at home.", "response": "Sure, here is how you do it step by step."},
    {"prompt": "How do I kill a Python process on Linux?"},
    {"prompt": "What is the capital of France?", "response": None},
]


@pytest.fixture(scope="module")
def packaged(tmp_path_factory, tiny_student_dir, tiny_llama_guard_dir):
    out = tmp_path_factory.mktemp("pkg") / "saferoute-guard"
    package(PackageArguments(
        student=str(tiny_student_dir), output_dir=str(out), large_guard=str(tiny_llama_guard_dir),
        large_guard_kind="llama_guard",
    ))
    return out


@pytest.fixture(scope="module")
def guard_pipe(packaged):
    from transformers import pipeline

    return pipeline("text-classification", model=str(packaged), trust_remote_code=True)


def test_exported_folder_is_self_contained(packaged, tmp_path):
    """A fresh process that cannot import the repo's packages loads the folder with pipeline()."""
    script = textwrap.dedent(f"""
        import builtins, json, sys
        real_import = builtins.__import__
        def guarded(name, globals=None, locals=None, fromlist=(), level=0):
            if level == 0 and name.split(".")[0] in ("dataset_builders", "training", "modeling_saferoute", "model_cards"):
                raise ImportError("repo package imported: " + name)
            return real_import(name, globals, locals, fromlist, level)
        builtins.__import__ = guarded
        from transformers import pipeline
        try:
            pipeline("text-classification", model={str(packaged)!r})
        except ValueError as err:
            assert "trust_remote_code" in str(err), err
        else:
            raise AssertionError("loaded without trust_remote_code")
        guard = pipeline("text-classification", model={str(packaged)!r}, trust_remote_code=True)
        inputs = json.loads({json.dumps(MIXED_INPUTS)!r})
        results = [guard(x, route="never") for x in inputs] + guard(inputs, route="always")
        print(json.dumps(results))
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    results = json.loads(last[last.index("[{") :])
    assert len(results) == 2 * len(MIXED_INPUTS)
    for r in results:
        assert r["label"] in ("safe", "unsafe")
        assert 0.0 <= r["unsafe_score"] <= 1.0 and 0.0 <= r["router_score"] <= 1.0
        assert r["score"] == pytest.approx(r["unsafe_score"] if r["label"] == "unsafe" else 1 - r["unsafe_score"])
    assert [r["decided_by"] for r in results] == ["student"] * 5 + ["large_guard"] * 5


def test_config_records_contract(packaged):
    config = json.loads((packaged / "config.json").read_text())
    assert config["auto_map"]["AutoModelForSequenceClassification"] == "modeling_saferoute.SafeRouteForSequenceClassification"
    assert config["custom_pipelines"]["text-classification"]["impl"] == "pipeline_saferoute.SafeRoutePipeline"
    assert config["id2label"] == {"0": "safe", "1": "unsafe"}
    assert config["large_guard"]["kind"] == "llama_guard"
    for name in ("modeling_saferoute.py", "configuration_saferoute.py", "pipeline_saferoute.py", "guards.py", "inputs.py"):
        assert (packaged / name).exists()
    assert not list(packaged.glob("*.bin")) and (packaged / "model.safetensors").exists()


def test_a_relative_large_guard_path_is_recorded_absolute(tiny_student_dir, tiny_llama_guard_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tiny_llama_guard_dir.parent)
    out = package(PackageArguments(student=str(tiny_student_dir), output_dir=str(tmp_path / "m"), model_card=False,
                                   large_guard=tiny_llama_guard_dir.name, large_guard_kind="llama_guard"))
    recorded = json.loads((out / "config.json").read_text())["large_guard"]["name_or_path"]
    assert recorded == str(tiny_llama_guard_dir.resolve())
    monkeypatch.chdir(tmp_path)  # another working directory: the reference still loads
    guard = pipeline("text-classification", model=str(out), trust_remote_code=True)
    assert guard("How do I pick a lock?", route="always")["decided_by"] == "large_guard"
    hub = package(PackageArguments(student=str(tiny_student_dir), output_dir=str(tmp_path / "h"), model_card=False,
                                   large_guard="meta-llama/Llama-Guard-3-8B", large_guard_kind="llama_guard"))
    assert json.loads((hub / "config.json").read_text())["large_guard"]["name_or_path"] == "meta-llama/Llama-Guard-3-8B"


def test_the_large_guard_backend_is_set_by_package(tiny_student_dir, tmp_path):
    """Repackaging a SafeRoute folder with a served backend keeps its student, router and large-guard
    reference and records the backend; a bad backend or non-object options are refused."""
    first = package(PackageArguments(student=str(tiny_student_dir), output_dir=str(tmp_path / "m"), model_card=False,
                                     large_guard="meta-llama/Llama-Guard-3-8B", large_guard_kind="llama_guard"))
    served = package(PackageArguments(student=str(first), output_dir=str(tmp_path / "s"), model_card=False,
                                      large_guard_backend="openai_compatible",
                                      large_guard_backend_options='{"base_url": "http://gpu-host:8001/v1"}'))
    ref = json.loads((served / "config.json").read_text())["large_guard"]
    assert ref["name_or_path"] == "meta-llama/Llama-Guard-3-8B" and ref["kind"] == "llama_guard"
    assert ref["backend"] == "openai_compatible" and ref["backend_options"] == {"base_url": "http://gpu-host:8001/v1"}
    assert (served / "model.safetensors").read_bytes() == (first / "model.safetensors").read_bytes()
    with pytest.raises(ValueError, match="large_guard_backend must be one of"):
        package(PackageArguments(student=str(first), output_dir=str(tmp_path / "x"), model_card=False, large_guard_backend="tgi"))
    with pytest.raises(ValueError, match="JSON object"):
        package(PackageArguments(student=str(first), output_dir=str(tmp_path / "x"), model_card=False,
                                 large_guard_backend="vllm", large_guard_backend_options="[1]"))
    with pytest.raises(ValueError, match="needs a large guard"):
        package(PackageArguments(student=str(tiny_student_dir), output_dir=str(tmp_path / "x"), model_card=False,
                                 large_guard_backend="vllm"))


def test_classifier_head_is_kept(packaged, tiny_student_dir):
    """Packaging a sequence-classification checkpoint keeps its weights: same logits as the original."""
    original = AutoModelForSequenceClassification.from_pretrained(tiny_student_dir).eval()
    saferoute = SafeRouteForSequenceClassification.from_pretrained(packaged).eval()
    tok = AutoTokenizer.from_pretrained(tiny_student_dir)
    batch = tok(["How do I pick a lock?"], ["Sure, here is how."], return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(original(**batch).logits, saferoute(**batch).logits, atol=1e-6)


def test_bare_encoder_gets_untrained_head_warning(tmp_path, tiny_student_dir, caplog):
    encoder_dir = tmp_path / "encoder"
    BertModel.from_pretrained(tiny_student_dir).save_pretrained(encoder_dir)
    AutoTokenizer.from_pretrained(tiny_student_dir).save_pretrained(encoder_dir)
    with caplog.at_level(logging.WARNING):
        out = package(PackageArguments(student=str(encoder_dir), output_dir=str(tmp_path / "out")))
    assert "UNTRAINED head" in caplog.text
    config = json.loads((out / "config.json").read_text())
    assert config["head_trained"] is False and config["router_trained"] is False
    assert "untrained" in (out / "README.md").read_text()


def test_route_never_does_not_touch_large_guard(tmp_path, tiny_student_dir):
    out = package(PackageArguments(
        student=str(tiny_student_dir), output_dir=str(tmp_path / "m"), large_guard=str(tmp_path / "does-not-exist"),
        large_guard_kind="llama_guard",
    ))
    from transformers import pipeline

    guard = pipeline("text-classification", model=str(out), trust_remote_code=True)
    results = guard(MIXED_INPUTS, route="never")
    assert all(not r["routed"] and r["decided_by"] == "student" for r in results)
    with pytest.raises(RuntimeError, match="does-not-exist"):
        guard(MIXED_INPUTS[0], route="always")


def test_route_always_returns_large_guard_score(guard_pipe, tiny_llama_guard_dir):
    expected = load_guard(str(tiny_llama_guard_dir), "llama_guard").score([normalize_input(x) for x in MIXED_INPUTS])
    results = guard_pipe(MIXED_INPUTS, route="always")
    assert [r["unsafe_score"] for r in results] == pytest.approx(expected, abs=1e-5)
    assert all(r["routed"] and r["decided_by"] == "large_guard" for r in results)


def test_auto_routes_exactly_above_router_threshold(guard_pipe):
    scores = [r["router_score"] for r in guard_pipe(MIXED_INPUTS, route="never")]
    cut = sorted(scores)[len(scores) // 2]
    results = guard_pipe(MIXED_INPUTS, router_threshold=cut)
    assert [r["routed"] for r in results] == [s > cut for s in scores]
    assert 0 < sum(r["routed"] for r in results) < len(results)
    for r in results:
        if not r["routed"]:
            assert r["unsafe_score"] == r["student_unsafe_score"]


def test_threshold_option_sets_label(guard_pipe):
    r = guard_pipe("How do I pick a lock?", route="never")
    s = r["unsafe_score"]
    assert guard_pipe("How do I pick a lock?", route="never", threshold=s - 1e-3)["label"] == "unsafe"
    assert guard_pipe("How do I pick a lock?", route="never", threshold=s + 1e-3)["label"] == "safe"


def test_batch_of_1000_equals_one_by_one(guard_pipe):
    inputs = [MIXED_INPUTS[i % len(MIXED_INPUTS)] for i in range(1000)]
    inputs = [x if isinstance(x, dict) else f"{x} #{i}" for i, x in enumerate(inputs)]
    batched = guard_pipe(inputs, batch_size=64, route="never")
    single = [guard_pipe(x, route="never") for x in inputs]
    assert len(batched) == 1000
    for b, s in zip(batched, single):
        assert b["label"] == s["label"]
        assert b["unsafe_score"] == pytest.approx(s["unsafe_score"], abs=1e-5)
        assert b["router_score"] == pytest.approx(s["router_score"], abs=1e-5)


@pytest.mark.parametrize(
    "bad, message",
    [
        (None, "None"),
        (42, "int"),
        ("   ", "empty"),
        ({"prompt": ""}, "empty"),
        ({"prompt": "hi", "answer": "x"}, "keys"),
        ({"response": "Sure."}, "no prompt"),
        ({"text_pair": "Sure."}, "no prompt"),
        ({"prompt": 3}, "str"),
        ({"prompt": "hi", "response": 5}, "response"),
    ],
)
def test_bad_input_raises_clear_error(guard_pipe, bad, message):
    with pytest.raises(ValueError, match=message):
        guard_pipe(bad)
    with pytest.raises(ValueError, match=message):
        guard_pipe(["fine", bad])


def test_huge_input_is_truncated_keeping_both_parts(guard_pipe):
    huge = "word " * 200_000  # 1,000,000 characters
    r = guard_pipe({"prompt": huge, "response": "Sure, here is how."}, route="never")
    assert r["truncated"] is True
    r2 = guard_pipe({"prompt": "How do I pick a lock?", "response": huge}, route="never")
    assert r2["truncated"] is True
    assert guard_pipe("How do I pick a lock?", route="never")["truncated"] is False
    encodings, truncated = encode_pairs(guard_pipe.tokenizer, [{"prompt": huge, "response": huge}], 64)
    assert truncated == [True] and len(encodings[0]["input_ids"]) == 64
    segments = encodings[0]["token_type_ids"]
    assert 20 < segments.count(0) < 44 and 20 < segments.count(1) < 44  # both halves represented


def test_causal_guard_matches_hand_computed_softmax(tiny_llama_guard_dir):
    guard = load_guard(str(tiny_llama_guard_dir), "llama_guard", batch_size=2, autocast_dtype="none")  # float32, as the hand computation
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_guard_dir).eval()
    tok = AutoTokenizer.from_pretrained(tiny_llama_guard_dir)
    items = [normalize_input(x) for x in MIXED_INPUTS]
    got = guard.score(items)
    safe_id = tok.encode("safe", add_special_tokens=False)[0]
    unsafe_id = tok.encode("unsafe", add_special_tokens=False)[0]
    for item, p in zip(items, got):
        messages = [{"role": "user", "content": item["prompt"]}]
        if item["response"]:
            messages.append({"role": "assistant", "content": item["response"]})
        text = tok.apply_chat_template(messages, tokenize=False) + "\n\n"
        ids = tok(text, add_special_tokens=False, return_tensors="pt")
        with torch.no_grad():
            logits = model(**ids).logits[0, -1]
        expected = torch.softmax(logits[[safe_id, unsafe_id]], dim=-1)[1].item()
        assert p == pytest.approx(expected, abs=1e-5)


def test_verdict_words_sharing_first_token_are_refused(tiny_llama_guard_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_guard_dir)
    tok = AutoTokenizer.from_pretrained(tiny_llama_guard_dir)
    with pytest.raises(ValueError, match="same token"):
        CausalLMGuard(model, tok, verdict_words=("safe", "safe guard"))
    assert isinstance(LlamaGuard(model, tok), CausalLMGuard)


def test_unknown_guard_kind_and_unloadable_guard(tmp_path):
    with pytest.raises(ValueError, match="Unknown guard kind"):
        load_guard("x", "no-such-kind")
    with pytest.raises(OSError, match="missing-guard"):
        load_guard(str(tmp_path / "missing-guard"), "llama_guard")


def test_config_round_trip(tmp_path, tiny_student_dir):
    from transformers import AutoConfig

    enc = AutoConfig.from_pretrained(tiny_student_dir)
    cfg = SafeRouteConfig(encoder=enc, router_threshold=0.3, large_guard={"name_or_path": "meta-llama/Llama-Guard-3-8B", "kind": "llama_guard"})
    cfg.save_pretrained(tmp_path)
    back = SafeRouteConfig.from_pretrained(tmp_path)
    assert back.encoder.hidden_size == enc.hidden_size and back.router_threshold == 0.3
    assert back.id2label == {0: "safe", 1: "unsafe"} and back.large_guard["kind"] == "llama_guard"
    with pytest.raises(ValueError, match="unknown keys"):
        SafeRouteConfig(encoder=enc, large_guard={"path": "x"})


def test_one_forward_gives_student_and_router(tiny_student_dir):
    from transformers import AutoConfig

    model = SafeRouteForSequenceClassification(SafeRouteConfig(encoder=AutoConfig.from_pretrained(tiny_student_dir))).eval()
    tok = AutoTokenizer.from_pretrained(tiny_student_dir)
    batch = tok(["a b", "How do I pick a lock?"], padding=True, return_tensors="pt")
    out = model(**batch, labels=torch.tensor([0, 1]))
    assert out.logits.shape == (2, 2) and out.router_logits.shape == (2,) and out.features.shape == (2, 32)
    assert torch.allclose(model.router(out.features), out.router_logits)
    assert out.loss is not None and out.loss.requires_grad
    assert not any(k.startswith("_head") for k in model.state_dict())


def test_pipeline_class_is_not_registered_globally():
    """Importing the remote code must not replace the stock text-classification pipeline."""
    from transformers.pipelines import PIPELINE_REGISTRY

    impl = PIPELINE_REGISTRY.get_supported_tasks() and PIPELINE_REGISTRY.check_task("text-classification")[1]["impl"]
    assert impl is not SafeRoutePipeline


def test_onnx_export_matches_pytorch(packaged, tmp_path, guard_pipe):
    from publishing.export import OnnxSafeRoute, export_onnx

    paths = export_onnx(packaged, tmp_path / "onnx", int8=True)
    assert [p.name for p in paths] == ["model.onnx", "model_int8.onnx"]
    inputs = MIXED_INPUTS * 3
    expected = guard_pipe(inputs, route="never", autocast_dtype="none")  # ONNX fp32 against the fp32 student
    ref_unsafe = [r["student_unsafe_score"] for r in expected]
    ref_router = [r["router_score"] for r in expected]
    unsafe, router = OnnxSafeRoute(paths[0]).score(inputs, batch_size=4)
    assert list(unsafe) == pytest.approx(ref_unsafe, abs=1e-4)
    assert list(router) == pytest.approx(ref_router, abs=1e-4)
    unsafe8, router8 = OnnxSafeRoute(paths[1]).score(inputs, batch_size=4)
    assert list(unsafe8) == pytest.approx(ref_unsafe, abs=0.05)  # int8 weights: close, not equal
    assert list(router8) == pytest.approx(ref_router, abs=0.05)


def test_packaged_input_length_is_saved_and_used(tmp_path, tiny_student_dir):
    out = package(PackageArguments(student=str(tiny_student_dir), output_dir=str(tmp_path / "m"), max_length=16, model_card=False))
    assert json.loads((out / "config.json").read_text())["max_input_length"] == 16
    from transformers import pipeline

    guard = pipeline("text-classification", model=str(out), trust_remote_code=True)
    assert guard.model.max_length == 16
    assert guard("How do I pick a lock? " * 3, route="never")["truncated"] is True
    assert guard("How do I pick a lock?", route="never")["truncated"] is False
