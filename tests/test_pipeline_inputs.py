"""What the pipeline accepts as a server meets it: conversations, long inputs in windows, bad
input named by index, text repaired, the large guard's failures handled as the caller chooses."""

import json

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

from modeling_saferoute.guards import load_guard
from modeling_saferoute.inputs import encode_pairs, normalize_input, windows
from publishing.package import PackageArguments, package

CONVERSATION = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris is the capital."},
    {"role": "user", "content": "How do I pick a lock?"},
    {"role": "assistant", "content": "Sure, here is how you do it step by step."},
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_student_dir, tiny_llama_guard_dir):
    return package(PackageArguments(student=str(tiny_student_dir), output_dir=str(tmp_path_factory.mktemp("inputs") / "m"),
                                    large_guard=str(tiny_llama_guard_dir), large_guard_kind="llama_guard", model_card=False))


@pytest.fixture(scope="module")
def guard(model_dir):
    return pipeline("text-classification", model=str(model_dir), trust_remote_code=True)


def test_a_conversation_is_judged_on_its_last_turn_with_the_rest_as_context(guard, tiny_llama_guard_dir):
    item = normalize_input(CONVERSATION)
    assert (item["prompt"], item["response"], item["judged_turn"]) == ("How do I pick a lock?", CONVERSATION[4]["content"], 4)
    assert item["context"] == (("user", "What is the capital of France?"), ("assistant", "Paris is the capital."))
    # the student reads the earlier turns before the prompt, within its budget
    (encoded,), _ = encode_pairs(guard.tokenizer, [item], 64)
    text = guard.tokenizer.decode(encoded["input_ids"])
    assert "Paris is the capital" in text and text.index("Paris") < text.index("pick")
    result = guard(CONVERSATION, route="never")
    assert result["judged_turn"] == 4 and result["decided_by"] == "student"
    same = guard({"messages": CONVERSATION}, route="never")
    assert same["student_unsafe_score"] == result["student_unsafe_score"]
    # the large guard reads the whole conversation through its template
    large = load_guard(str(tiny_llama_guard_dir), "llama_guard")
    rendered = large.render(item)
    for message in CONVERSATION[1:]:
        assert message["content"] in rendered
    assert guard(CONVERSATION, route="always")["unsafe_score"] == pytest.approx(large.score([CONVERSATION])[0], abs=1e-6)
    prompt_level = guard(CONVERSATION[:4], route="never")
    assert prompt_level["judged_turn"] == 3 and normalize_input(CONVERSATION[:4])["response"] is None
    # a batch of conversations and other forms
    batch = guard([CONVERSATION, "Hi", {"prompt": "Hi", "response": "Hello!"}], route="never")
    assert [r["judged_turn"] for r in batch] == [4, 0, 1]


@pytest.mark.parametrize("messages, message", [
    ([{"role": "robot", "content": "x"}], "message 0 has role 'robot'"),
    ([{"role": "user", "content": "   "}], "message 0 .*empty content"),
    ([{"role": "assistant", "content": "Hello"}], "message 0 is an assistant turn before any user turn"),
    ([{"role": "system", "content": "Be nice."}], "no user turn"),
    ([{"role": "user", "content": 5}], "message 0 content must be a str"),
    ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "message 1 is a second user turn"),
    ([{"role": "user", "content": [{"type": "image", "url": "x"}]}], "message 0 has non-text content"),
    ([{"role": "user", "content": "a"}, {"role": "assistant"}], "message 1 must be a dict with 'role' and 'content'"),
])
def test_bad_conversations_name_the_message(guard, messages, message):
    with pytest.raises(ValueError, match=message):
        guard(messages)
    with pytest.raises(ValueError, match=f"Input 1: .*{message}"):
        guard(["fine", messages])


def test_bad_inputs_as_a_server_meets_them(guard):
    repaired = guard("How do I pick a lock?\ud800", route="never")  # a lone surrogate, as valid JSON can carry
    assert repaired["repaired"] is True and guard("How do I pick a lock?", route="never")["repaired"] is False
    assert guard([{"role": "user", "content": "hi \udfff there"}], route="never")["repaired"] is True
    with pytest.raises(ValueError, match="bytes"):
        guard(b"How do I pick a lock?")
    with pytest.raises(ValueError, match="Input 1: .*bytes"):
        guard(["ok", b"raw"])
    many = ["How do I pick a lock?"] * 10_000
    many[5_000] = None
    with pytest.raises(ValueError, match="Input 5000: Guard input is None"):
        guard(many)
    for options, message in (({"threshold": 2.0}, "threshold must be a number in"), ({"router_threshold": -0.1}, "router_threshold"),
                             ({"threshold": "high"}, "threshold"), ({"batch_size": 0}, "batch_size must be an integer >= 1"),
                             ({"route": "sometimes"}, "route must be one of"), ({"long_inputs": "split"}, "long_inputs"),
                             ({"on_large_guard_error": "ignore"}, "on_large_guard_error"), ({"autocast_dtype": "int4"}, "autocast_dtype")):
        with pytest.raises(ValueError, match=message):
            guard("hi", **options)


def test_the_large_guard_failing_is_handled_as_the_caller_chooses(tmp_path, tiny_student_dir, tiny_llama_guard_dir):
    """A served large guard that is down: raise by default, or fall back to the student, or fail closed."""
    out = package(PackageArguments(student=str(tiny_student_dir), output_dir=str(tmp_path / "m"), model_card=False,
                                   large_guard=str(tiny_llama_guard_dir), large_guard_kind="llama_guard"))
    config = json.loads((out / "config.json").read_text())
    config["large_guard"].update(backend="openai_compatible",
                                 backend_options={"base_url": "http://127.0.0.1:9/v1", "max_retries": 1, "backoff": 0.01, "timeout": 2})
    (out / "config.json").write_text(json.dumps(config))
    guard = pipeline("text-classification", model=str(out), trust_remote_code=True)
    items = ["How do I pick a lock?", {"prompt": "Hi", "response": "Hello!"}]
    with pytest.raises(ConnectionError, match=r"127\.0\.0\.1:9.*after 2 tries"):
        guard(items, route="always")
    student = guard(items, route="never")
    fallback = guard(items, route="always", on_large_guard_error="student")
    closed = guard(items, route="always", on_large_guard_error="unsafe")
    for s, f, c in zip(student, fallback, closed):
        assert f["decided_by"] == "student_fallback" and f["unsafe_score"] == s["unsafe_score"] and f["routed"]
        assert c["decided_by"] == "fail_closed" and c["label"] == "unsafe" and c["unsafe_score"] == 1.0
        assert "LargeGuardUnavailable" in f["large_guard_error"] and "large_guard_error" not in s


def test_timings_say_where_a_routed_call_spends_its_time(guard):
    timings = {}
    guard(["How do I pick a lock?"] * 40, route="always", batch_size=8, timings=timings)
    assert set(timings) == {"tokenize", "student", "large_guard", "total", "calls"} and timings["calls"] == 1
    assert timings["large_guard"] > 0 and sum(timings[k] for k in ("tokenize", "student", "large_guard")) <= timings["total"]


HARMFUL = "Explain how to build a bomb at home."
FILLER = "Write a poem about the sea."


@pytest.fixture(scope="module")
def sentence_spotter(tmp_path_factory, tiny_student_dir):
    """The tiny student trained (a few hundred steps) to flag responses that contain HARMFUL."""
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(tiny_student_dir)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_student_dir)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(300):
        texts, labels = [], []
        for k in range(16):
            filler = [FILLER] * int(torch.randint(1, 8, (1,), generator=gen))
            if k % 2:  # the sentence takes a filler's place: length says nothing
                filler[int(torch.randint(0, len(filler), (1,), generator=gen))] = HARMFUL
            texts.append(" ".join(filler))
            labels.append(k % 2)
        batch = tokenizer(["Tell me something."] * 16, texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
        loss = model(**batch, labels=torch.tensor(labels)).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    folder = tmp_path_factory.mktemp("spotter")
    model.save_pretrained(folder / "student")
    tokenizer.save_pretrained(folder / "student")
    out = package(PackageArguments(student=str(folder / "student"), output_dir=str(folder / "m"), model_card=False))
    return pipeline("text-classification", model=str(out), trust_remote_code=True)


def test_a_harmful_sentence_at_the_end_of_a_long_response_is_caught_in_windows_only(sentence_spotter):
    guard = sentence_spotter
    assert guard({"prompt": "Tell me something.", "response": f"{FILLER} {HARMFUL}"}, route="never")["label"] == "unsafe"
    assert guard({"prompt": "Tell me something.", "response": f"{FILLER} {FILLER}"}, route="never")["label"] == "safe"
    response = " ".join([FILLER] * 2900 + [HARMFUL])  # about 20,000 tokens
    n_tokens = len(guard.tokenizer(response, add_special_tokens=False)["input_ids"])
    assert n_tokens > 20_000
    item = {"prompt": "Tell me something.", "response": response}
    cut = guard(item, route="never")
    chunked = guard(item, route="never", long_inputs="chunk")
    assert cut["truncated"] and cut["label"] == "safe" and cut["windows"] == 1
    assert chunked["label"] == "unsafe" and chunked["windows"] > n_tokens // 64
    parts = windows(guard.tokenizer, item, guard.model.max_length)
    assert len(parts) == chunked["windows"] and HARMFUL.split()[-1].rstrip(".") in parts[-1]["response"]
    assert all(len(encode_pairs(guard.tokenizer, [p], 10**6)[0][0]["input_ids"]) <= guard.model.max_length for p in parts)
    short = guard("How do I pick a lock?", route="never", long_inputs="chunk")  # what fits is one window
    assert short["windows"] == 1 and not short["truncated"]


def test_in_chunk_mode_the_large_guard_reads_the_window_the_student_flagged(sentence_spotter, tmp_path):
    """The spotter is its own large guard here: the whole long response cut to the large guard's
    budget hides the harmful last sentence (safe); the window the student flagged shows it (unsafe)."""
    folder = tmp_path / "spotter"
    sentence_spotter.model.student.save_pretrained(folder)
    sentence_spotter.tokenizer.save_pretrained(folder)
    out = package(PackageArguments(student=str(folder), output_dir=str(tmp_path / "m"), model_card=False, large_guard=str(folder),
                                   large_guard_kind="sequence_classification", large_guard_max_length=64))
    routed = pipeline("text-classification", model=str(out), trust_remote_code=True, autocast_dtype="none")
    item = {"prompt": "Tell me something.", "response": " ".join([FILLER] * 150 + [HARMFUL])}
    student = routed(item, route="never", long_inputs="chunk")
    chunked = routed(item, route="always", long_inputs="chunk")
    assert student["label"] == "unsafe" and student["windows"] > 10
    assert chunked["decided_by"] == "large_guard" and chunked["large_guard_input"] == "window" and chunked["label"] == "unsafe"
    large = load_guard(str(folder), "sequence_classification", max_length=64, autocast_dtype="none")
    deciding = max(windows(routed.tokenizer, item, 64), key=lambda w: routed(w, route="never")["unsafe_score"])
    assert chunked["unsafe_score"] == pytest.approx(large.score([deciding])[0], abs=1e-6)
    whole = routed(item, route="always")  # truncate mode: the whole input, cut to the large guard's budget
    assert whole["large_guard_input"] == "whole" and whole["label"] == "safe" and whole["truncated"]
    assert routed(item, route="never")["large_guard_input"] is None


def test_chunk_mode_says_when_part_of_the_text_is_left_unread(guard):
    tokenizer, budget = guard.tokenizer, guard.model.max_length
    item = {"prompt": "Tell me something.", "response": " ".join([FILLER] * 60)}
    parts, unread = windows(tokenizer, item, budget, return_truncated=True)
    assert len(parts) > 3 and not unread
    few, unread = windows(tokenizer, item, budget, max_windows=2, return_truncated=True)
    assert few == parts[:2] and unread  # windows past max_windows dropped: the tail is not read
    crowded = {"prompt": "Tell me something. " * 20, "response": " ".join([FILLER] * 60)}  # the prompt fills the budget
    (one,), unread = windows(tokenizer, crowded, budget, return_truncated=True)
    assert unread and one == normalize_input(crowded)
    result = guard(crowded, route="never", long_inputs="chunk")
    assert result["windows"] == 1 and result["truncated"]
