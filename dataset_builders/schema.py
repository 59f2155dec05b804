"""The record schema shared by the benchmarks, the seed pool and the HarmAug corpus.

| field | type | meaning |
| --- | --- | --- |
| id | str | stable id, `<source>-<12 hex>` |
| prompt | str | the user turn |
| response | str or null | the assistant turn; null for prompt-level rows |
| label | int 0/1 | 1 = harmful (prompt or response harmfulness, see `level`) |
| level | "prompt" / "response" | which of the two is judged |
| source | str | benchmark or pool name |
| category | str or null | upstream category, where given |
"""

import hashlib
import os
import re
import unicodedata
from pathlib import Path

from datasets import Features, Value

FEATURES = Features(
    {
        "id": Value("string"),
        "prompt": Value("string"),
        "response": Value("string"),
        "label": Value("int64"),
        "level": Value("string"),
        "source": Value("string"),
        "category": Value("string"),
    }
)
SYNTHETIC_KINDS = ("prompt_only", "compliant", "refusal")  # a HarmAug corpus' rows of each kept instruction
DATA_DIR_ENV = "SAFEROUTE_DATA_DIR"
WORD = re.compile(r"\w+")


def data_dir() -> Path:
    """The offline data folder: `$SAFEROUTE_DATA_DIR`, else `../shared/data` beside the project."""
    env = os.environ.get(DATA_DIR_ENV)
    candidates = [Path(env)] if env else [Path.cwd() / ".." / "shared" / "data", Path(__file__).resolve().parents[2] / "shared" / "data"]
    for path in candidates:
        if (path / "eval").is_dir():
            return path.resolve()
    raise FileNotFoundError(
        f"Offline safety data not found (looked in {[str(c) for c in candidates]}). "
        f"Set {DATA_DIR_ENV} to the folder holding eval/ and train/."
    )


def make_id(source: str, *parts) -> str:
    """A stable `<source>-<12 hex>` id from the text of a record."""
    digest = hashlib.sha1("\x1f".join("" if p is None else str(p) for p in parts).encode()).hexdigest()
    return f"{source}-{digest[:12]}"


def guard_items(dataset):
    """The `{"prompt", "response"}` items of a dataset in the schema, for guard adapters."""
    return [{"prompt": p, "response": r} for p, r in zip(dataset["prompt"], dataset["response"])]


def first_row_per_id(dataset, keep=None):
    """The first row of each id, in dataset order (exact duplicates share an id); with `keep`,
    only the ids in it."""
    first = {}
    for k, i in enumerate(dataset["id"]):
        if keep is None or i in keep:
            first.setdefault(i, k)
    return dataset.select(sorted(first.values()))


def normalize_text(text: str) -> str:
    """Lower case, NFKC, words only: the key of exact duplicates."""
    return " ".join(WORD.findall(unicodedata.normalize("NFKC", text).lower()))


def content_key(prompt, response=None):
    """The normalized text of a record: (normalized prompt, normalized response or None). A text
    without any word (punctuation, emoji) keeps its NFKC, lower-cased, whitespace-collapsed form,
    so such texts are not all one key."""

    def norm(text):
        if text is None:
            return None
        return normalize_text(text) or " ".join(unicodedata.normalize("NFKC", text).lower().split())

    return norm(prompt), norm(response)
