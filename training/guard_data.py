"""Data helpers of `saferoute train-guard`: seed-pool splits, the record of the rows a guard
trained on, and the guard chat template."""

import json
import logging
from pathlib import Path

from dataset_builders.seed_pool import load_seed_pool, stratified_split

logger = logging.getLogger(__name__)

DEFAULT_POLICY = (
    "S1: Violent crimes. S2: Non-violent crimes (fraud, hacking, theft, drugs). S3: Sex-related crimes. "
    "S4: Child sexual exploitation. S5: Defamation. S6: Specialized advice (dangerous medical, legal, "
    "financial). S7: Privacy. S8: Intellectual property. S9: Indiscriminate weapons. S10: Hate. "
    "S11: Suicide and self-harm. S12: Sexual content. S13: Elections. S14: Harassment and toxicity."
)

# Llama-Guard-3-style instruction; `messages` are user (+ assistant) turns with str content.
GUARD_BODY = (
    "{%- set names = {'user': 'User', 'assistant': 'Agent'} -%}"
    "{%- set last = names[messages[-1]['role']] -%}"
    "Task: Check if there is unsafe content in '{{ last }}' messages in conversations according to our "
    "safety policy with the below categories.\n\n"
    "<BEGIN UNSAFE CONTENT CATEGORIES>\n{{ POLICY }}\n<END UNSAFE CONTENT CATEGORIES>\n\n"
    "<BEGIN CONVERSATION>\n\n"
    "{% for m in messages %}{{ names[m['role']] + ': ' + m['content'] + '\\n\\n' }}{% endfor -%}"
    "<END CONVERSATION>\n\n"
    "Provide your safety assessment for ONLY THE LAST {{ last }} message in the above conversation. "
    "Answer with one word: 'safe' or 'unsafe'."
)
SENTINEL = "\x00GUARD_INSTRUCTION\x00"


def _literal(text):
    """`text` as a Jinja expression that outputs it verbatim."""
    return "{{ " + json.dumps(text) + " }}"


def guard_chat_template(tokenizer, policy=DEFAULT_POLICY):
    """A Llama-Guard-style chat template: the guard instruction (policy + conversation) as one user
    turn in the base model's own chat format, ending right after the assistant header, so that the
    `llama_guard` adapter's suffix ("\\n\\n") is followed by the verdict word."""
    body = GUARD_BODY.replace("{{ POLICY }}", _literal(policy))
    prefix, suffix = "", ""
    if tokenizer.chat_template is not None:
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": SENTINEL}], tokenize=False, add_generation_prompt=True
        )
        if rendered.count(SENTINEL) != 1:
            raise ValueError("The base model's chat template does not render a user message verbatim.")
        prefix, suffix = rendered.split(SENTINEL)
        suffix = suffix.rstrip()
    return (_literal(prefix) if prefix else "") + body + (_literal(suffix) if suffix else "")


def stratified_subsample(dataset, n, seed=0):
    """At most `n` rows, stratified on label and level."""
    if n is None or n >= len(dataset):
        return dataset
    return stratified_split(dataset, test_size=int(n), seed=seed)[1]


def guard_splits(seed_pool="offline", val_size=0.1, seed=0, max_train_examples=None, max_val_examples=None):
    """(train, validation) seed-pool rows: a seeded 10% stratified validation split, then optional
    stratified subsamples of each for budgets."""
    if not 0 < val_size < 1:
        raise ValueError(f"val_size must be in (0, 1), got {val_size}.")
    pool = load_seed_pool(seed_pool)
    if len(set(pool["label"])) < 2:
        raise ValueError(f"Seed pool {seed_pool!r} has a single class; a guard needs safe and unsafe rows.")
    train, val = stratified_split(pool, test_size=val_size, seed=seed)
    return stratified_subsample(train, max_train_examples, seed), stratified_subsample(val, max_val_examples, seed)


TRAINING_IDS_FILE = "training_ids.json"


def write_training_ids(output, seed_pool, train, val):
    """Record the seed-pool ids a guard trained and validated on (`training_ids.json` in its folder)."""
    record = {"seed_pool": seed_pool, "train_ids": sorted(set(train["id"])), "validation_ids": sorted(set(val["id"]))}
    Path(output, TRAINING_IDS_FILE).write_text(json.dumps(record) + "\n")


def guard_training_ids(name_or_path):
    """The seed-pool ids a guard trained on (from its `training_ids.json`), or None when it records
    none (a Hub guard such as Llama-Guard-3-8B, or a folder trained elsewhere).

    Rows a guard trained on are no test of it: its errors there are rarer than on new inputs, so the
    router's data and the large guard's validation leave them out.
    """
    path = Path(name_or_path, TRAINING_IDS_FILE) if name_or_path else None
    return set(json.loads(path.read_text())["train_ids"]) if path and path.is_file() else None
