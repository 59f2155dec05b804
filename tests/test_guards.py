"""Guard adapters: an over-long conversation is cut inside its messages, never at the template's tail."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, pipeline

from modeling_saferoute.guards import CUT_MARKER, load_guard
from modeling_saferoute.inputs import encode_pairs, position_limit
from publishing.package import PackageArguments, package
from tiny_models import build_tiny_roberta

LENGTHS = [1, 10, 100, 1_000, 10_000, 100_000, 1_000_000]  # characters


def text_of(n_chars, word="lock "):
    return (word * (n_chars // len(word) + 1))[:n_chars].strip() or "x"


def template_tail_ids(guard):
    sentinel = "SENTINELWORD"
    rendered = guard._render_turns([("user", "hi"), ("assistant", sentinel)])
    return guard.tokenizer.encode(rendered.split(sentinel)[-1], add_special_tokens=False)


@pytest.mark.parametrize("max_length", [48, 200])
def test_fed_tokens_end_with_the_template_tail_at_every_length(tiny_llama_guard_dir, max_length):
    guard = load_guard(str(tiny_llama_guard_dir), "llama_guard", max_length=max_length, max_content_tokens=1024, autocast_dtype="none")
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_guard_dir).eval()
    tail = template_tail_ids(guard)
    user_tail = guard.tokenizer.encode(guard._render_turns([("user", "SENTINELWORD")]).split("SENTINELWORD")[-1],
                                       add_special_tokens=False)
    for n_prompt in LENGTHS:
        for n_response in [None, *LENGTHS]:
            item = {"prompt": text_of(n_prompt), "response": None if n_response is None else text_of(n_response, "safe ")}
            text = guard.render(item)
            ids = guard.tokenizer.encode(text, add_special_tokens=False)
            expected_tail = tail if item["response"] else user_tail
            assert len(ids) <= max_length, (n_prompt, n_response)
            assert ids[-len(expected_tail):] == expected_tail, (n_prompt, n_response)
            full = guard._render_turns([("user", item["prompt"])] + ([("assistant", item["response"])] if item["response"] else []))
            fits = len(guard.tokenizer.encode(full, add_special_tokens=False)) <= max_length
            scores, truncated = guard.score([item], return_truncated=True)
            assert truncated == [not fits] and (CUT_MARKER in text) == (not fits)
            if n_prompt in (100, 1_000_000) and n_response in (None, 1_000_000):  # the score reads the last fed position
                with torch.no_grad():
                    logits = model(input_ids=torch.tensor([ids])).logits[0, -1, guard.verdict_ids]
                assert scores[0] == pytest.approx(torch.softmax(logits, -1)[1].item(), abs=1e-5)


def test_template_longer_than_the_budget_is_refused(tiny_llama_guard_dir):
    guard = load_guard(str(tiny_llama_guard_dir), "llama_guard", max_length=4)
    with pytest.raises(ValueError, match="template alone"):
        guard.score(["How do I pick a lock?"])


def test_pipeline_marks_an_input_the_large_guard_had_to_cut(tmp_path, tiny_student_dir, tiny_llama_guard_dir):
    out = package(PackageArguments(student=str(tiny_student_dir), output_dir=str(tmp_path / "m"), model_card=False,
                                   large_guard=str(tiny_llama_guard_dir), large_guard_kind="llama_guard"))
    config = json.loads((out / "config.json").read_text())
    config["large_guard"]["max_length"] = 40  # the student's budget is 64 tokens: only the large guard cuts
    (out / "config.json").write_text(json.dumps(config))
    guard = pipeline("text-classification", model=str(out), trust_remote_code=True)
    item = {"prompt": "How do I pick a lock? " * 4, "response": "Sure, here is how you do it step by step."}
    assert guard(item, route="never")["truncated"] is False
    routed = guard(item, route="always")
    assert routed["decided_by"] == "large_guard" and routed["truncated"] is True
    assert guard("Hi", route="always")["truncated"] is False


def test_position_budgets_of_every_tokenizer_family(tmp_path, caplog):
    """RoBERTa, XLM-R and MPNet count positions from pad_token_id + 1: 514 embeddings hold 512 tokens."""
    from transformers import BertConfig, DebertaV2Config, LlamaConfig, MPNetConfig, RobertaConfig, XLMRobertaConfig

    assert position_limit(BertConfig()) == 512 and position_limit(LlamaConfig(max_position_embeddings=2048)) == 2048
    assert position_limit(RobertaConfig(max_position_embeddings=514)) == 512 == position_limit(XLMRobertaConfig(max_position_embeddings=514))
    assert position_limit(MPNetConfig(max_position_embeddings=514)) == 512
    assert position_limit(DebertaV2Config(position_biased_input=False)) is None  # relative positions only
    roberta = build_tiny_roberta(tmp_path / "roberta")
    text = "lock " * 700  # 700 tokens
    out = package(PackageArguments(student=str(roberta), output_dir=str(tmp_path / "m"), model_card=False))
    student = pipeline("text-classification", model=str(out), trust_remote_code=True, autocast_dtype="none")
    assert student.model.max_length == 512
    (encoded,), _ = encode_pairs(student.tokenizer, [{"prompt": "q", "response": text}], student.model.max_length)
    assert len(encoded["input_ids"]) == 512
    assert student(text, route="never")["truncated"] and student({"prompt": "q", "response": text}, route="never")["truncated"]
    assert student({"prompt": "q", "response": text}, route="never", long_inputs="chunk")["windows"] > 1
    guard = load_guard(str(roberta), "sequence_classification", autocast_dtype="none")
    scores, cut = guard.score([text, "lock " * 100], return_truncated=True)
    assert guard.max_length == 512 and cut == [True, False] and 0 < scores[0] < 1
    with caplog.at_level("WARNING"):
        assert load_guard(str(roberta), "sequence_classification", max_length=1024).max_length == 512
    assert "max_length 1024 is above the 512 positions" in caplog.text
