"""Stage 4: the teacher guard scores every item: P(unsafe), through `modeling_saferoute.guards`, and
its category probabilities when it reads categories (a category head, or a Llama Guard's S1-S14)."""

import json
from pathlib import Path

from modeling_saferoute.bundled import resolve
from ..score_store import category_dicts, guard_frame, guard_store
from modeling_saferoute.guards import GUARD_KINDS, load_guard



def teacher_kind(name_or_path, kind="auto"):
    """The guard kind of the teacher: `kind`, or with "auto" read from its config.json
    (a `*ForSequenceClassification` -> sequence_classification, a causal LM -> llama_guard)."""
    if kind != "auto":
        if kind not in GUARD_KINDS:
            raise ValueError(f"Unknown teacher kind {kind!r}; choose 'auto' or one of {sorted(GUARD_KINDS)}.")
        return kind
    if "llama-guard" in str(name_or_path).lower():
        return "llama_guard"
    config_path = Path(resolve(name_or_path)) / "config.json"
    if not config_path.exists():
        raise ValueError(
            f"Teacher {name_or_path!r}: no local config.json to infer its kind from; pass --teacher_kind "
            f"(one of {sorted(GUARD_KINDS)}). Train one with `saferoute train-guard` if it does not exist yet."
        )
    architectures = json.loads(config_path.read_text()).get("architectures") or []
    if any(a.endswith("ForSequenceClassification") for a in architectures):
        return "sequence_classification"
    if any(a.endswith("ForCausalLM") for a in architectures):
        return "llama_guard"
    raise ValueError(f"Teacher {name_or_path!r} has architectures {architectures}; pass --teacher_kind.")


def teacher_settings(args):
    """(kind, load_guard arguments) of the teacher: `teacher_max_length` bounds the pair encoding of a
    classifier, and each message (prompt, response) of a causal-LM guard, whose verdict suffix must
    never be cut."""
    kind = teacher_kind(args.teacher, args.teacher_kind)
    length = {"max_length": args.teacher_max_length} if kind == "sequence_classification" else {
        "max_content_tokens": args.teacher_max_length}
    return kind, {"dtype": args.teacher_dtype, **length}


def teacher_taxonomy(args):
    """The Taxonomy the teacher's category scores are in, None for none: `--teacher_taxonomy` "auto"
    (`categories.guard_taxonomy`: a classifier's category head, a Llama Guard's S1-S14 in the
    project's taxonomy), "none", or a taxonomy name / file."""
    from dataset_builders.categories import guard_taxonomy, load_taxonomy

    if args.teacher_taxonomy == "none":
        return None
    if args.teacher_taxonomy == "auto":
        return guard_taxonomy(args.teacher, teacher_kind(args.teacher, args.teacher_kind))
    return load_taxonomy(args.teacher_taxonomy)


def load_teacher(args, device=None):
    """The teacher adapter (`teacher_settings`), scoring in `args.precision` (its categories in
    `teacher_taxonomy`)."""
    kind, settings = teacher_settings(args)
    return load_guard(args.teacher, kind, device=device or args.device, batch_size=args.teacher_batch_size,
                      autocast_dtype=args.precision, taxonomy=teacher_taxonomy(args), **settings)


def teacher_store(args, device, root, taxonomy=None):
    """The score store of the teacher's P(unsafe) (and its category scores in `taxonomy`) under the
    settings it labels with (shared with train-guard's validation scoring, train-router and evaluate
    when they score alike)."""
    kind, settings = teacher_settings(args)
    return guard_store(root, args.teacher, kind, args.precision, device or "cpu", taxonomy=taxonomy, **settings)


def label_shard(store, load_teacher_fn, items, batch_size=None, taxonomy=None):
    """(id, unsafe_score, category_scores) rows for one shard of {"id", "prompt", "response"} items,
    through the score store (the teacher is loaded only when a text is missing); `category_scores`
    follows `taxonomy.names` (None without a taxonomy)."""
    frame = guard_frame(store, load_teacher_fn, [{"prompt": it["prompt"], "response": it["response"]} for it in items],
                        "label shard", batch_size=batch_size, show_progress=False, taxonomy=taxonomy)
    cats = category_dicts(frame, taxonomy) if taxonomy is not None else [None] * len(items)
    return [{"id": it["id"], "unsafe_score": float(s), "category_scores": None if c is None else list(c.values())}
            for it, s, c in zip(items, frame["unsafe_score"].astype(float), cats)], {}


def teacher_precision(args, device):
    """What the dataset card says the teacher's scores were computed in."""
    from modeling_saferoute.guards import guard_precision

    kind, settings = teacher_settings(args)
    dtype = settings.get("dtype")
    if dtype not in (None, "auto", "float32"):
        return str(dtype).replace("torch.", "")  # weights in that dtype: no autocast
    ran = guard_precision(kind, args.precision, device or "cpu", dtype)
    return {"bf16": "bfloat16", "fp16": "float16"}.get(ran, ran)
