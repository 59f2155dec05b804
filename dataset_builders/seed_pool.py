"""The labeled seed pool: `$SAFEROUTE_DATA_DIR/train/*.jsonl` offline, or allenai/wildguardmix
`wildguardtrain` from the Hub when online, in the schema of `schema.py`.

| pool | files | rows |
| --- | --- | --- |
| offline | the base and the extended files | 35,412 |
| offline-base | toxicchat_train, beavertails, saferlhf, advbench (the pool of earlier runs) | 8,179 |
| offline-extended | the eight `x_*` files (see `$SAFEROUTE_DATA_DIR/raw/x_*/SOURCE.txt`) | 27,233 |
| wildguardmix | allenai/wildguardmix `wildguardtrain` (Hub, online) | 86,759 |

The sources mean different things by "harmful" (HateCheck: hateful statements; ConvAbuse: abuse of
the chatbot; HarmfulQA: often mild questions): the recipes choose their mix per role
(`roles.mixed_sample`), and the cards report the rows per source.
"""

from datasets import Dataset, concatenate_datasets, load_dataset

from .schema import FEATURES, data_dir, make_id

BASE_FILES = ("toxicchat_train", "beavertails", "saferlhf", "advbench")
EXTENDED_FILES = ("x_wildguardtrain_subset", "x_gptfuzz", "x_safety_tuned_llamas", "x_hatecheck", "x_coconot", "x_convabuse",
                  "x_harmfulqa", "x_oktest")
OFFLINE_POOLS = {"offline": BASE_FILES + EXTENDED_FILES, "offline-base": BASE_FILES, "offline-extended": EXTENDED_FILES}
WILDGUARDMIX_TRAIN = ("allenai/wildguardmix", "wildguardtrain")


def load_offline_seed_pool(names=BASE_FILES + EXTENDED_FILES) -> Dataset:
    """The rows of the offline seed-pool files `names` (`$SAFEROUTE_DATA_DIR/train/<name>.jsonl`)."""
    root = data_dir() / "train"
    parts = []
    for name in names:
        path = root / f"{name}.jsonl"
        if not path.exists():
            raise FileNotFoundError(f"Seed pool file {path} is missing (known: {list(BASE_FILES + EXTENDED_FILES)}).")
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
    """A pool of `OFFLINE_POOLS` ("offline", "offline-base", "offline-extended"), `wildguardmix`
    (Hub, online) or a local JSONL/parquet file in the schema."""
    if name in OFFLINE_POOLS:
        return load_offline_seed_pool(OFFLINE_POOLS[name])
    if name == "wildguardmix":
        repo, config = WILDGUARDMIX_TRAIN
        return wildguardmix_to_schema(load_dataset(repo, config, split="train"))
    suffix = name.rsplit(".", 1)[-1]
    if suffix in ("jsonl", "json", "parquet"):
        return load_dataset("parquet" if suffix == "parquet" else "json", data_files=name, split="train", features=FEATURES)
    raise ValueError(f"Unknown seed pool {name!r}: use one of {list(OFFLINE_POOLS)}, 'wildguardmix' or a .jsonl/.parquet file.")
