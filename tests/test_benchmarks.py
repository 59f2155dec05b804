"""The six benchmarks: offline files, upstream-layout mappings (checked on the raw upstream files),
and the stratified subsample."""

import json
import re
from collections import Counter

import pytest
from datasets import Dataset

from dataset_builders import benchmarks as B
from dataset_builders.schema import FEATURES, data_dir

# rows, harmful, level (from shared/data/README.md)
EXPECTED = {
    "openai_moderation": (1680, 522, "prompt"),
    "toxicchat": (5083, 362, "prompt"),
    "harmbench": (602, 273, "response"),
    "wildguardmix_prompt": (1699, 754, "prompt"),
    "wildguardmix_response": (1709, 284, "response"),
    "xstest_response": (446, 78, "response"),
}
GUARDREASONER_INPUT = re.compile(r"^Human user:\n(.*)\n\nAI assistant:\n(.*)\n\n$", re.S)


def rows(ds):
    return Counter(zip(ds["prompt"], ds["response"], ds["label"], ds["category"]))


@pytest.fixture(scope="module")
def raw():
    return data_dir() / "raw"


@pytest.mark.parametrize("name", B.BENCHMARKS)
def test_offline_benchmark(name):
    ds = B.load_benchmark(name)
    n, harmful, level = EXPECTED[name]
    assert ds.features == FEATURES
    assert (len(ds), sum(ds["label"])) == (n, harmful)
    assert set(ds["level"]) == {level} and set(ds["source"]) == {name}
    assert all((r is None) == (level == "prompt") for r in ds["response"])


def test_missing_data_dir_names_the_setting(monkeypatch, tmp_path):
    monkeypatch.setenv("SAFEROUTE_DATA_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="SAFEROUTE_DATA_DIR"):
        B.load_benchmark("toxicchat")


def test_names_and_sources():
    assert B.parse_benchmark_names("all") == list(B.BENCHMARKS)
    assert B.parse_benchmark_names("harmbench, toxicchat") == ["harmbench", "toxicchat"]
    with pytest.raises(ValueError, match="nope"):
        B.parse_benchmark_names("toxicchat,nope")
    with pytest.raises(ValueError, match="source"):
        B.load_benchmark("toxicchat", source="ftp")


def test_openai_upstream_layout(raw):
    up = B.load_upstream("openai_moderation", str(raw / "openai_moderation" / "samples-1680.jsonl.gz"))
    off = B.load_benchmark("openai_moderation")
    assert list(up["prompt"]) == list(off["prompt"]) and list(up["label"]) == list(off["label"])
    assert sum(up["label"]) == 522
    # a missing category key means "unknown", not "violates"
    mapped = B.openai_moderation_to_schema(Dataset.from_list(
        [{"prompt": "x", "S": 0, "H": None}, {"prompt": "y", "S": None, "H": 1}, {"prompt": "z", "S": None, "H": None}]
    ))["label"]
    assert list(mapped) == [0, 1, 0]


@pytest.mark.parametrize("name", ["wildguardmix_prompt", "wildguardmix_response"])
def test_wildguardtest_upstream_layout(raw, name):
    up = B.load_upstream(name, str(raw / "wildguardmix_test" / "wildguardtest.parquet"))
    off = B.load_benchmark(name)
    assert (len(up), sum(up["label"])) == EXPECTED[name][:2]
    assert rows(up) == rows(off)
    assert up.features == FEATURES and set(up["source"]) == {name}


def test_harmbench_upstream_layout(raw):
    up = B.load_upstream("harmbench", str(raw / "harmbench" / "harmbench_eval.json"))
    assert rows(up) == rows(B.load_benchmark("harmbench"))


def test_toxicchat_upstream_layout(raw, tmp_path):
    """JUDGE-BENCH's copy of toxicchat0124 test (human-annotated rows) rewritten in the lmsys column
    layout maps to rows of the offline file with the same labels (all 362 toxic rows)."""
    instances = json.loads((raw / "toxicchat" / "toxic_chat_test.json").read_text())["instances"]
    lmsys = [
        {"conv_id": x["id"], "user_input": x["instance"], "model_output": "", "human_annotation": True,
         "toxicity": int(x["annotations"]["toxicity"]["majority_human"]), "jailbreaking": 0, "openai_moderation": "[]"}
        for x in instances
    ]
    path = tmp_path / "toxic-chat_annotation_test.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in lmsys))
    up = B.load_upstream("toxicchat", str(path))
    off = B.load_benchmark("toxicchat")
    assert (len(up), sum(up["label"])) == (2853, 362)
    assert not rows(up) - rows(off)


def test_xstest_upstream_layout(raw, tmp_path):
    """GuardReasoner's XSTest response-harm file rewritten in the allenai/xstest-response layout."""
    records = []
    for x in json.loads((raw / "xstest" / "0_6_xstest_response_harmful.json").read_text()):
        prompt, response = GUARDREASONER_INPUT.match(x["input"]).groups()
        records.append({"prompt": prompt, "response": response, "label": x["output"].strip(), "prompt_type": "?"})
    path = tmp_path / "response_harmfulness.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records))
    up = B.load_upstream("xstest_response", str(path))
    assert (len(up), sum(up["label"])) == (446, 78)
    assert rows(up) == rows(B.load_benchmark("xstest_response"))


def test_subsample_is_stratified_and_seeded():
    ds = B.load_benchmark("toxicchat")  # 7% harmful
    a = B.subsample(ds, 200, seed=0)
    assert len(a) == 200 and a.features == FEATURES
    assert abs(sum(a["label"]) - 200 * 362 / 5083) <= 1
    assert list(a["id"]) == list(B.subsample(ds, 200, seed=0)["id"])
    assert list(a["id"]) != list(B.subsample(ds, 200, seed=1)["id"])
    assert B.subsample(ds, None) is ds and B.subsample(ds, 10_000) is ds
    sets = B.load_benchmarks("harmbench,xstest_response", max_per_benchmark=50, seed=3)
    assert list(sets) == ["harmbench", "xstest_response"] and all(len(d) == 50 for d in sets.values())
    assert abs(sum(sets["xstest_response"]["label"]) - 50 * 78 / 446) <= 1
