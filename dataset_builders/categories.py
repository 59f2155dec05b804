"""Harm-category data: taxonomies from files, labeled category rows, and the category benchmark.

- `load_taxonomy(spec)`: "openai-moderation" (the project's, `modeling_saferoute.taxonomy`) or a
  .json / .yaml file: `name`, `categories` (names, descriptions, optional thresholds and parents),
  optional `llama_guard` (code -> categories), `sources` (upstream labels -> categories) and `rows`
  (a .jsonl / .parquet file of labeled rows, relative to the taxonomy file).
- `load_category_rows(spec, taxonomy)`: labeled rows with their targets per category (1, 0 or None =
  unknown): "offline" (the four files of `$SAFEROUTE_DATA_DIR/categories/train`, mapped by the
  taxonomy's `sources`), "auto" (the taxonomy's own `rows` when it names a file, else "offline") or a
  file of rows with `prompt` (+ `response`) and either `categories` ({category: 1, 0 or null}) or a
  `source` / upstream label the taxonomy maps.
- `category_sample(...)`: a per-source mix of them for training.
- `load_category_benchmark(taxonomy)`: `categories/eval/openai_moderation_categories.jsonl` (the OpenAI
  moderation benchmark with its 8 human-labeled codes, null = not annotated).
"""

import json
import math
from pathlib import Path

from datasets import Dataset

from modeling_saferoute.taxonomy import DEFAULT_NAME, Taxonomy

from .roles import mixed_sample
from .schema import data_dir, make_id

CATEGORY_FILES = ("ailuminate", "strongreject", "toxigen", "davidson")
BENCHMARK = "openai_moderation_categories"
ROW_COLUMNS = ("id", "prompt", "response", "label", "level", "source", "category")


def _read_table(path):
    """The rows of a .jsonl / .json / .parquet file as a list of dicts."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Labeled category rows not found: {path}")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    if path.suffix in (".jsonl", ".json"):
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]
    raise ValueError(f"Labeled category rows must be a .jsonl or .parquet file, got {path}.")


def _taxonomy_file(spec):
    """The taxonomy file `spec` names, or None for a name, dict or Taxonomy."""
    if spec is None or isinstance(spec, (dict, Taxonomy)) or spec in (DEFAULT_NAME, "openai"):
        return None
    path = Path(spec)
    if not path.is_file():
        raise ValueError(f"Unknown taxonomy {spec!r}: pass {DEFAULT_NAME!r} or a .json / .yaml taxonomy file.")
    return path


def _taxonomy_data(path):
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text)
    else:
        data = json.loads(text)
    return data if isinstance(data, dict) else {"name": path.stem, "categories": data}  # a bare list: named after its file


def load_taxonomy(spec=None):
    """A `Taxonomy` from a name ("openai-moderation"), a dict, a Taxonomy or a .json / .yaml file."""
    path = _taxonomy_file(spec)
    if path is None:
        return Taxonomy.load(spec)
    try:
        return Taxonomy.from_dict(_taxonomy_data(path))
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


def taxonomy_rows_file(spec):
    """The labeled-rows file a taxonomy file names (`rows:`, relative to it), or None."""
    path = _taxonomy_file(spec)
    rows = _taxonomy_data(path).get("rows") if path else (spec.get("rows") if isinstance(spec, dict) else None)
    return str((path.parent / rows).resolve()) if rows and path else rows


def _offline_rows(sources=CATEGORY_FILES):
    rows = []
    for name in sources:
        rows += _read_table(data_dir() / "categories" / "train" / f"{name}.jsonl")
    return rows


def row_targets(taxonomy, rows, where="row"):
    """The target list (1, 0 or None per category) of each row; a bad row raises naming its index."""
    out = []
    for k, row in enumerate(rows):
        try:
            out.append(taxonomy.targets(row))
        except ValueError as err:
            raise ValueError(f"{where} {k}: {err}") from None
    return out


def _as_float(values):
    return [math.nan if v is None else float(v) for v in values]


def target_floats(taxonomy, rows, where="row"):
    """`row_targets` as floats, NaN = unknown (the `category_targets` column of a training set)."""
    return [_as_float(t) for t in row_targets(taxonomy, rows, where)]


def load_category_rows(spec, taxonomy, taxonomy_spec=None):
    """Labeled category rows as a Dataset: the schema columns plus `category_targets` (one float per
    category of `taxonomy`, NaN = unknown). Rows that say nothing about any category are dropped."""
    if spec == "auto":
        rows_file = taxonomy_rows_file(taxonomy_spec)
        spec = rows_file or "offline"
    if spec == "offline":
        raw, where = _offline_rows(), "category row"
        known = [r for r in raw if r.get("source") in taxonomy.sources]
        if not known:
            raise ValueError(f"The taxonomy {taxonomy.name!r} maps none of the offline category sources {list(CATEGORY_FILES)}; "
                             "give it `sources` or labeled `rows`.")
        raw = known
    else:
        raw, where = _read_table(spec), f"{spec}: row"
        for k, row in enumerate(raw):
            if not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
                raise ValueError(f"{where} {k} has no prompt.")
            if "categories" in row and row.get("source") not in taxonomy.sources and not isinstance(row["categories"], dict):
                raise ValueError(f"{where} {k}: 'categories' must be a mapping of category -> 1, 0 or null.")
    targets = row_targets(taxonomy, raw, where)
    columns = {c: [] for c in ROW_COLUMNS + ("category_targets",)}
    for row, target in zip(raw, targets):
        if all(t is None for t in target):
            continue
        label = row.get("label")
        if label is None:  # a labeled row without a binary label: unsafe when any category is
            label = 1 if any(t == 1 for t in target) else 0 if all(t == 0 for t in target) else None
        columns["id"].append(row.get("id") or make_id(row.get("source") or "labeled", row["prompt"], row.get("response")))
        columns["prompt"].append(row["prompt"])
        columns["response"].append(row.get("response"))
        columns["label"].append(-1 if label is None else int(label))
        columns["level"].append(row.get("level") or ("prompt" if row.get("response") is None else "response"))
        columns["source"].append(row.get("source") or "labeled")
        columns["category"].append(row.get("category") if isinstance(row.get("category"), str) else None)
        columns["category_targets"].append(_as_float(target))
    if not columns["id"]:
        raise ValueError(f"No labeled category row of {spec!r} gives a target for a category of {taxonomy.name!r}.")
    return Dataset.from_dict(columns)


def category_sample(taxonomy, spec="auto", n=None, source_weights=None, seed=0, taxonomy_spec=None):
    """At most `n` labeled category rows (all when None), a per-source mix (`mixed_sample`: shares in
    proportion to each source's rows times its weight, stratified on level and label)."""
    rows = load_category_rows(spec, taxonomy, taxonomy_spec)
    weights = {s: w for s, w in (source_weights or {}).items() if s in set(rows["source"])}
    light = rows.select_columns(["source", "level", "label"]).add_column("row", list(range(len(rows))))  # the split reads rows one by one
    return rows.select(mixed_sample(light, n, weights, seed)["row"])


def guard_taxonomy(name_or_path, kind, revision=None):
    """The taxonomy a guard's categories are read in by default: a classifier's category head's, a
    Llama-Guard-format guard's S1-S14 read into the project's taxonomy; None for other guards, and for
    a guard `saferoute train-guard --kind llama_guard` made (trained on the verdict alone, its codes
    after "unsafe" mean nothing)."""
    from modeling_saferoute.bundled import resolve
    from modeling_saferoute.categories import load_category_head

    path = resolve(name_or_path)
    if kind == "sequence_classification":
        head = load_category_head(path, revision)
        return head[1] if head else None
    if kind == "llama_guard" and not (Path(str(path)) / "training_info.json").exists():
        return Taxonomy.default()
    return None


def load_category_benchmark(taxonomy):
    """(rows with `category_targets`, the categories it labels): the OpenAI moderation benchmark with
    its human category labels mapped to `taxonomy` (None when the taxonomy does not map its codes)."""
    path = data_dir() / "categories" / "eval" / f"{BENCHMARK}.jsonl"
    if "openai_moderation" not in taxonomy.sources:
        return None, []
    raw = _read_table(path)
    targets = row_targets(taxonomy, raw, BENCHMARK)
    labeled = [c for k, c in enumerate(taxonomy.names) if any(t[k] == 1 for t in targets)]
    columns = {c: [r.get(c) for r in raw] for c in ROW_COLUMNS}
    columns["category_targets"] = [_as_float(t) for t in targets]
    return Dataset.from_dict(columns), labeled
