"""One pipeline shared by many threads gives exactly the results of sequential calls."""

from concurrent.futures import ThreadPoolExecutor

import pytest

from publishing.package import PackageArguments, package

PROMPTS = [
    "How do I pick a lock?",
    "Write a poem about the sea.",
    "Explain how to build a bomb at home.",
    "How do I kill a Python process on Linux?",
    "What is the capital of France?",
]
RESPONSES = [None, "Sure, here is how you do it step by step.", "Sorry, I can't help with that request.", "Paris is the capital."]


def mixed_inputs(n):
    """`n` distinct inputs of every accepted form and of varied lengths."""
    out = []
    for i in range(n):
        prompt = PROMPTS[i % len(PROMPTS)] + " more words" * (i % 7) + f" #{i}"
        response = RESPONSES[(i // 5) % len(RESPONSES)]
        form = i % 4
        if form == 0 and response is None:
            out.append(prompt)
        elif form == 1:
            out.append({"text": prompt, "text_pair": response} if response else {"text": prompt})
        else:
            out.append({"prompt": prompt, "response": response})
    return out


@pytest.fixture(scope="module")
def shared_pipe(tmp_path_factory, tiny_student_dir, tiny_llama_guard_dir):
    from transformers import pipeline

    out = package(PackageArguments(student=str(tiny_student_dir), output_dir=str(tmp_path_factory.mktemp("threads") / "m"),
                                   large_guard=str(tiny_llama_guard_dir), large_guard_kind="llama_guard", model_card=False))
    return pipeline("text-classification", model=str(out), trust_remote_code=True)


@pytest.mark.parametrize("route", ["never", "auto", "always"])
def test_eight_threads_match_sequential_calls(shared_pipe, route):
    inputs = mixed_inputs(500)
    router = sorted(r["router_score"] for r in shared_pipe(inputs, route="never"))
    options = {"route": route, "router_threshold": router[len(router) // 2]}  # auto routes about half
    calls, start = [], 0
    for k in [1, 3, 9, 2, 7, 5, 4, 8, 6] * 60:  # calls of several sizes cover the 500 inputs once
        if start < len(inputs):
            calls.append(inputs[start : start + k])
            start += k
    sequential = [shared_pipe(c, **options) for c in calls]
    fresh = type(shared_pipe)(model=shared_pipe.model, tokenizer=shared_pipe.tokenizer)  # large guard not loaded yet
    with ThreadPoolExecutor(max_workers=8) as pool:
        concurrent = list(pool.map(lambda c: fresh(c, **options), calls))
    assert concurrent == sequential  # every key of every result, exactly
    routed = sum(r["routed"] for rs in concurrent for r in rs)
    assert {"never": routed == 0, "always": routed == 500, "auto": 0 < routed < 500}[route]
