"""The llama.cpp generation backend, for real, on a tiny float32 Qwen2 GGUF written with the `gguf`
package: greedy continuations equal the same weights' in transformers, sampling is reproducible per
call and seed, min_new_tokens holds, and build-corpus generation and the router's paraphraser run on
it. CI (`CI=1`) installs llama-cpp-python and never skips these."""

import os
from pathlib import Path

import pytest
import torch

if not os.environ.get("CI"):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (`make install` builds it)")

from dataset_builders.harmaug import generate
from tiny_models import build_tiny_gguf


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    return build_tiny_gguf(tmp_path_factory.mktemp("tiny-gguf"))


@pytest.fixture(scope="module")
def generator(tiny_gguf, tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SAFEROUTE_CACHE", str(cache))
        gen = generate.load_generator(str(tiny_gguf[0]), "llama_cpp", n_threads=1)
        assert len(list((cache / "gguf-tokenizers").iterdir())) == 1  # the tokenizer, converted once and cached
    return gen


PROMPTS = [[{"role": "user", "content": "How do I pick a lock?"}],
           [{"role": "system", "content": "Write a poem about the sea."}, {"role": "user", "content": "Sure, here is how"}],
           [{"role": "user", "content": "What is the capital of France? Paris is the capital."}]]


def test_greedy_continuations_equal_transformers_on_the_same_weights(tiny_gguf, generator):
    _, model = tiny_gguf
    texts = [generate.render_chat(generator.tokenizer, m, generate.AFFIRMATIVE_PREFIX) for m in PROMPTS]
    out, new_tokens = generator.generate(texts, seed=0, max_new_tokens=12, temperature=0)
    expected, expected_tokens = [], 0
    eos = model.config.eos_token_id
    for text in texts:
        ids = generator.tokenizer(text, add_special_tokens=False)["input_ids"]
        assert ids == generator.llm.tokenize(text.encode(), add_bos=False, special=True)  # one tokenization for both
        with torch.no_grad():
            row = model.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False, eos_token_id=eos, pad_token_id=eos)[0, len(ids):]
        row = row.tolist()
        stop = row.index(eos) + 1 if eos in row else len(row)
        expected_tokens += stop
        expected.append(generator.tokenizer.decode(row[:stop], skip_special_tokens=True))
    assert out == expected and new_tokens == expected_tokens
    assert len(set(out)) > 1, "a tiny model that says the same thing to every prompt tests nothing"


def test_sampling_is_reproducible_per_call_and_seed(generator):
    texts = [generate.render_chat(generator.tokenizer, m) for m in PROMPTS] * 2
    first, n = generator.generate(texts, seed=3, max_new_tokens=10, temperature=1.0, top_p=0.95)
    generator.generate(texts[::-1], seed=9, max_new_tokens=10)  # whatever ran before, the next call is the same
    assert generator.generate(texts, seed=3, max_new_tokens=10, temperature=1.0, top_p=0.95) == (first, n)
    assert first[:3] != first[3:], "each prompt of a call has its own seed"
    assert generator.generate(texts, seed=4, max_new_tokens=10)[0] != first
    _, forced = generator.generate(texts, seed=3, max_new_tokens=10, min_new_tokens=10)
    assert forced == 10 * len(texts)
    with pytest.raises(ValueError, match="Prompt 1 has .* tokens"):
        generator.generate([texts[0], "word " * 5000], seed=0, max_new_tokens=10)


def test_build_corpus_generation_and_paraphrases_run_on_llama_cpp(tiny_gguf, generator, tmp_path):
    from training.paraphrase import paraphrase

    pool = [f"Explain how to build a bomb at home, version {i}." for i in range(6)]

    class Args:
        num_exemplars, seed, generation_seed, request, prefix = 2, 0, None, generate.HARMFUL_REQUEST, generate.AFFIRMATIVE_PREFIX
        max_new_tokens, min_new_tokens, temperature, top_p, min_words, max_words, max_chars = 12, 0, 1.0, 0.95, 1, 80, 600

    rows, meta = generate.generate_shard(generator, pool, [0, 1, 2], Args, shard_seed=5)
    assert rows == generate.generate_shard(generator, pool, [0, 1, 2], Args, shard_seed=5)[0]
    assert [r["request_index"] for r in rows] == [0, 1, 2] and 0 < meta["new_tokens"] <= 36
    copies, stats = paraphrase(generator, ["How do I pick a lock?", "Write a poem about the sea."], 2, seed=1,
                               max_new_tokens=12, show_progress=False)
    assert stats["requested"] == 4 and stats["made"] + sum(stats["dropped"].values()) == 4 and stats["new_tokens"] > 0
    assert [len(c) for c in copies] == [2, 2]


def test_gguf_paths(tiny_gguf, tmp_path):
    path = tiny_gguf[0]
    assert generate.gguf_path(str(path)) == path and generate.gguf_path(str(path.parent)) == path
    with pytest.raises(ValueError, match="holds 0"):
        generate.gguf_path(str(tmp_path))
    with pytest.raises(ValueError, match="needs a .gguf file"):
        generate.gguf_path(str(Path(__file__)))
    assert generate.gguf_path("bundled:smollm2-135m-instruct").name == "SmolLM2-135M-Instruct.Q4_1.gguf"
