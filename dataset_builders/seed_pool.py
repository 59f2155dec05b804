"""The labeled seed pool: `$SAFEROUTE_DATA_DIR/train/*.jsonl` offline, or allenai/wildguardmix
`wildguardtrain` from the Hub when online, in the schema of `schema.py`."""

from datasets import Dataset, concatenate_datasets, load_dataset

from .schema import FEATURES, data_dir, make_id

OFFLINE_FILES = ("toxicchat_train", "beavertails", "saferlhf", "advbench")
WILDGUARDMIX_TRAIN = ("allenai/wildguardmix", "wildguardtrain")


def load_offline_seed_pool(names=OFFLINE_FILES) -> Dataset:
    """The offline seed pool (8,179 rows in four files)."""
    root = data_dir() / "train"
    parts = []
    for name in names:
        path = root / f"{name}.jsonl"
        if not path.exists():
            raise FileNotFoundError(f"Seed pool file {path} is missing (known: {list(OFFLINE_FILES)}).")
        parts.append(load_dataset("json", data_files=str(path), split="train", features=FEATURES))
    return concatenate_datasets(parts)


def wildguardmix_to_schema(dataset: Dataset) -> Dataset:
    """Map the upstream WildGuardMix layout to the schema: one prompt-level row per prompt with a
    prompt-harm label, and one response-level row per response with a response-harm label."""

    def explode(batch):
        out = {k: [] for k in FEATURES}
        for i, prompt in enumerate(batch["prompt"]):
            response = batch["response"][i]
            category = batch.get("subcategory", [None] * len(batch["prompt"]))[i]
            rows = [(None, batch["prompt_harm_label"][i], "prompt")]
            if response:
                rows.append((response, batch["response_harm_label"][i], "response"))
            for resp, harm, level in rows:
                if harm not in ("harmful", "unharmful"):
                    continue  # unlabeled rows (None) are dropped
                out["id"].append(make_id("wildguardmix", prompt, resp, level))
                out["prompt"].append(prompt)
                out["response"].append(resp)
                out["label"].append(int(harm == "harmful"))
                out["level"].append(level)
                out["source"].append("wildguardmix")
                out["category"].append(category)
        return out

    return dataset.map(explode, batched=True, remove_columns=dataset.column_names, features=FEATURES)


def load_seed_pool(name: str = "offline") -> Dataset:
    """`offline` (the bundled pool), `wildguardmix` (Hub, online) or a local JSONL/parquet file in the schema."""
    if name == "offline":
        return load_offline_seed_pool()
    if name == "wildguardmix":
        repo, config = WILDGUARDMIX_TRAIN
        return wildguardmix_to_schema(load_dataset(repo, config, split="train"))
    suffix = name.rsplit(".", 1)[-1]
    if suffix in ("jsonl", "json", "parquet"):
        return load_dataset("parquet" if suffix == "parquet" else "json", data_files=name, split="train", features=FEATURES)
    raise ValueError(f"Unknown seed pool {name!r}: use 'offline', 'wildguardmix' or a .jsonl/.parquet file.")


def stratified_split(dataset: Dataset, test_size=0.1, seed=0):
    """A seeded split stratified on `label` (and `level`): returns (train, validation)."""
    strata = [f"{lab}-{lev}" for lab, lev in zip(dataset["label"], dataset["level"])]
    ds = dataset.add_column("_stratum", strata).class_encode_column("_stratum")
    split = ds.train_test_split(test_size=test_size, seed=seed, stratify_by_column="_stratum")
    return split["train"].remove_columns("_stratum"), split["test"].remove_columns("_stratum")
