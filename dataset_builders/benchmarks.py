"""The six safety benchmarks of both papers, in the record schema of `schema.py`.

| name | level | offline file (`$SAFEROUTE_DATA_DIR/eval/`) | upstream (online users) |
| --- | --- | --- | --- |
| openai_moderation | prompt | openai_moderation.jsonl | openai/moderation-api-release `samples-1680.jsonl.gz` |
| toxicchat | prompt | toxicchat.jsonl | lmsys/toxic-chat `toxicchat0124`, test |
| harmbench | response | harmbench.jsonl | HarmBench classifier val set, HarmAug's `harmbench_eval.json` |
| wildguardmix_prompt | prompt | wildguardmix_prompt.jsonl | allenai/wildguardmix `wildguardtest`, test |
| wildguardmix_response | response | wildguardmix_response.jsonl | allenai/wildguardmix `wildguardtest`, test |
| xstest_response | response | xstest_response.jsonl | allenai/xstest-response, `response_harmfulness` |

`load_benchmark(name)` reads the offline file; `load_benchmark(name, source="hub")` downloads the
upstream data and maps it with the `*_to_schema` functions below (tested offline on the upstream
files of `$SAFEROUTE_DATA_DIR/raw/`). `subsample` draws a seeded, label-stratified subset.
"""

from typing import NamedTuple

from datasets import load_dataset

from .schema import FEATURES, data_dir, make_id
from .splits import stratified_sample


class Benchmark(NamedTuple):
    """A benchmark's level, its short and long display names, and the Hub dataset it comes from."""

    level: str
    short: str
    title: str
    hub: str


BENCHMARKS = {
    "openai_moderation": Benchmark("prompt", "OAI", "OpenAI Moderation", "openai/moderation-api-release"),
    "toxicchat": Benchmark("prompt", "ToxicChat", "ToxicChat", "lmsys/toxic-chat"),
    "harmbench": Benchmark("response", "HarmBench", "HarmBench (classifier val)", "harmbench"),
    "wildguardmix_prompt": Benchmark("prompt", "WGM-prompt", "WildGuardMix prompt", "allenai/wildguardmix"),
    "wildguardmix_response": Benchmark("response", "WGM-response", "WildGuardMix response", "allenai/wildguardmix"),
    "xstest_response": Benchmark("response", "XSTest", "XSTest response", "allenai/xstest-response"),
}
SOURCES = ("offline", "hub")
OPENAI_CATEGORIES = ("S", "H", "V", "HR", "SH", "S3", "H2", "V2")
OPENAI_URL = "https://raw.githubusercontent.com/openai/moderation-api-release/main/data/samples-1680.jsonl.gz"
HARMBENCH_URL = "https://raw.githubusercontent.com/imnotkind/HarmAug/main/data/harmbench_eval.json"
WILDGUARDTEST = ("allenai/wildguardmix", "wildguardtest", "test")
TOXICCHAT = ("lmsys/toxic-chat", "toxicchat0124", "test")
XSTEST_RESPONSE = ("allenai/xstest-response", None, "response_harmfulness")


def parse_benchmark_names(names="all"):
    """`"all"`, `"a,b"` or a list of names -> a list of known benchmark names (ValueError otherwise)."""
    if names is None or names == "all" or names == ["all"]:
        return list(BENCHMARKS)
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown or not names:
        raise ValueError(f"Unknown benchmark(s) {unknown or names!r}; choose 'all' or from {list(BENCHMARKS)}.")
    return list(dict.fromkeys(names))


def _records(name, rows, level):
    """Schema columns from (prompt, response, label, category) tuples."""
    out = {k: [] for k in FEATURES}
    for prompt, response, label, category in rows:
        out["id"].append(make_id(name, prompt, response))
        out["prompt"].append(prompt)
        out["response"].append(response)
        out["label"].append(int(label))
        out["level"].append(level)
        out["source"].append(name)
        out["category"].append(category)
    return out


def _map(dataset, name, level, rows_fn):
    """Map an upstream dataset batch-wise with `rows_fn(batch) -> [(prompt, response, label, category)]`."""
    return dataset.map(
        lambda batch: _records(name, rows_fn(batch), level),
        batched=True,
        remove_columns=dataset.column_names,
        features=FEATURES,
        desc=f"mapping {name}",
    )


def openai_moderation_to_schema(dataset):
    """OpenAI `samples-1680` layout (prompt + category flags S, H, V, HR, SH, S3, H2, V2; 1 = violates,
    missing = unknown): harmful iff any flag is 1 (the HarmAug / WildGuard rule, 522 / 1680)."""

    def rows(batch):
        n = len(batch["prompt"])
        flags = [batch.get(c, [None] * n) for c in OPENAI_CATEGORIES]
        return [(p, None, any(f[i] == 1 for f in flags), None) for i, p in enumerate(batch["prompt"])]

    return _map(dataset, "openai_moderation", "prompt", rows)


def toxicchat_to_schema(dataset):
    """lmsys/toxic-chat layout (`user_input`, `toxicity` 0/1)."""
    return _map(
        dataset, "toxicchat", "prompt",
        lambda b: [(p, None, t, None) for p, t in zip(b["user_input"], b["toxicity"])],
    )


def harmbench_to_schema(dataset):
    """HarmAug's `harmbench_eval.json` layout (`prompt`, `response`, `label` "safe"/"unsafe" = human
    majority; its `llama_guard` column is a model verdict and is ignored)."""
    return _map(
        dataset, "harmbench", "response",
        lambda b: [(p, r, lab == "unsafe", None) for p, r, lab in zip(b["prompt"], b["response"], b["label"])],
    )


def wildguardtest_to_schema(dataset, level):
    """allenai/wildguardmix `wildguardtest` layout -> `wildguardmix_prompt` (level "prompt",
    `prompt_harm_label`) or `wildguardmix_response` (level "response", `response_harm_label`).
    Rows without annotator agreement (label None) are dropped: 1,699 prompt and 1,709 response rows."""
    if level not in ("prompt", "response"):
        raise ValueError(f"level must be 'prompt' or 'response', got {level!r}.")
    column = f"{level}_harm_label"

    def rows(batch):
        out = []
        for i, prompt in enumerate(batch["prompt"]):
            harm = batch[column][i]
            if harm not in ("harmful", "unharmful"):
                continue
            response = batch["response"][i] if level == "response" else None
            out.append((prompt, response, harm == "harmful", batch["subcategory"][i]))
        return out

    return _map(dataset, f"wildguardmix_{level}", level, rows)


def xstest_response_to_schema(dataset):
    """allenai/xstest-response `response_harmfulness` layout (`prompt`, `response`, `label`
    "harmful"/"unharmful")."""
    return _map(
        dataset, "xstest_response", "response",
        lambda b: [(p, r, lab == "harmful", None) for p, r, lab in zip(b["prompt"], b["response"], b["label"])],
    )


def load_upstream(name, data_files=None):
    """Download (or read `data_files` in the upstream layout) and map benchmark `name` to the schema."""
    name = parse_benchmark_names([name])[0]
    if name == "openai_moderation":
        return openai_moderation_to_schema(load_dataset("json", data_files=data_files or OPENAI_URL, split="train"))
    if name == "harmbench":
        return harmbench_to_schema(load_dataset("json", data_files=data_files or HARMBENCH_URL, split="train"))
    if name.startswith("wildguardmix_"):
        level = name.split("_", 1)[1]
        if data_files:
            raw = load_dataset("parquet", data_files=data_files, split="train")
        else:
            repo, config, split = WILDGUARDTEST
            raw = load_dataset(repo, config, split=split)
        return wildguardtest_to_schema(raw, level)
    repo, config, split = TOXICCHAT if name == "toxicchat" else XSTEST_RESPONSE
    if data_files:
        fmt = "parquet" if str(data_files).endswith(".parquet") else "csv" if str(data_files).endswith(".csv") else "json"
        raw = load_dataset(fmt, data_files=data_files, split="train")
    else:
        raw = load_dataset(repo, config, split=split)
    return toxicchat_to_schema(raw) if name == "toxicchat" else xstest_response_to_schema(raw)


def load_benchmark(name, source="offline"):
    """Benchmark `name` as a `Dataset` in the schema: from `$SAFEROUTE_DATA_DIR/eval/` ("offline")
    or from the upstream Hub datasets ("hub", needs network and the gated datasets' access)."""
    name = parse_benchmark_names([name])[0]
    if source == "hub":
        return load_upstream(name)
    if source != "offline":
        raise ValueError(f"Benchmark source must be one of {SOURCES}, got {source!r}.")
    path = data_dir() / "eval" / f"{name}.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"Benchmark file {path} is missing; check SAFEROUTE_DATA_DIR.")
    return load_dataset("json", data_files=str(path), split="train", features=FEATURES)


def subsample(dataset, max_per_benchmark=None, seed=0):
    """At most `max_per_benchmark` rows, stratified on `label` and seeded; the dataset itself if smaller."""
    if max_per_benchmark is not None and max_per_benchmark < 1:
        raise ValueError(f"max_per_benchmark must be >= 1, got {max_per_benchmark}.")
    return stratified_sample(dataset, max_per_benchmark, ("label",), seed)


def load_benchmarks(names="all", source="offline", max_per_benchmark=None, seed=0):
    """`{name: Dataset}` for the selected benchmarks, each optionally subsampled (`subsample`)."""
    return {
        name: subsample(load_benchmark(name, source), max_per_benchmark, seed)
        for name in parse_benchmark_names(names)
    }
