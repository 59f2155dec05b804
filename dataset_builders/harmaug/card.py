"""Stage 5 helpers: the corpus rows' statistics for the dataset card, and reading the card back."""

import re
from collections import defaultdict
from pathlib import Path

from modeling_saferoute.bundled import provenance

from ..schema import SYNTHETIC_KINDS
from .filters import distinct_n

CARD_SETTINGS = (
    "generator", "backend", "seed_pool", "num_requests", "num_exemplars", "request", "prefix", "temperature", "top_p",
    "max_new_tokens", "min_words", "max_words", "ngram", "near_duplicate_threshold", "contamination_threshold",
    "compliant_prefix", "refusal_prefix", "teacher", "seed", "generation_seed", "license",
)


def label_distribution(rows):
    """Per (origin, kind): rows, teacher-unsafe rows and mean unsafe_score."""
    groups = defaultdict(list)
    for row in rows:
        groups[(row["origin"], row["kind"])].append(row)
    order = {kind: i for i, kind in enumerate(("seed", *SYNTHETIC_KINDS, "prefix"))}
    table = []
    for (origin, kind), members in sorted(groups.items(), key=lambda g: (order.get(g[0][1], 9), g[0])):
        scores = [r["unsafe_score"] for r in members]
        table.append({"origin": origin, "kind": kind, "rows": len(members), "unsafe": sum(r["label"] for r in members),
                      "mean_score": sum(scores) / len(scores)})
    return table


def category_stats(rows, taxonomy):
    """The card's category table: the mean teacher probability of each category per item kind."""
    kinds = [k for k in ("seed", *SYNTHETIC_KINDS) if any(r["kind"] == k for r in rows)]
    names = [c["name"] for c in taxonomy["categories"]]
    mean = {}
    for name in names:
        mean[name] = {}
        for kind in kinds:
            values = [r["category_scores"][name] for r in rows if r["kind"] == kind and r.get("category_scores")]
            mean[name][kind] = sum(values) / len(values) if values else float("nan")
    return {"taxonomy": taxonomy["name"], "kinds": kinds, "mean": mean}


def corpus_stats(rows, args, filter_counts, instructions, teacher_kind, generation_meta=()):
    """Everything the dataset card reports, as a JSON-serialisable dict."""
    from publishing.package import large_guard_location

    stats = {name: getattr(args, name) for name in CARD_SETTINGS}
    # a local teacher folder by its absolute path: train-router reads it from any working directory
    stats["teacher"] = large_guard_location(args.teacher)
    stats["responder"] = args.responder or args.generator
    # what a pieced bundled generator is (upstream model, packages, pinned sha256); None for a Hub id or path
    stats["generator_provenance"] = provenance(args.generator)
    stats["responder_provenance"] = provenance(stats["responder"]) if stats["responder"] != args.generator else None
    stats["max_new_tokens"] = args.max_new_tokens
    stats["teacher_kind"] = teacher_kind
    stats["num_rows"] = len(rows)
    stats["filter_counts"] = dict(filter_counts)
    stats["distinct_1"] = distinct_n(instructions, 1)
    stats["distinct_2"] = distinct_n(instructions, 2)
    stats["label_distribution"] = label_distribution(rows)
    human = [(r["label"], r["human_label"]) for r in rows if r["human_label"] is not None]
    stats["human_agreement"] = sum(a == b for a, b in human) / len(human) if human else None
    seconds = sum(m.get("seconds", 0.0) for m in generation_meta)
    tokens = sum(m.get("new_tokens", 0) for m in generation_meta)
    cpu = sum(m.get("cpu_seconds", 0.0) for m in generation_meta)
    stats["generation"] = {"seconds": seconds, "cpu_seconds": cpu, "new_tokens": tokens, "tokens_per_second": tokens / seconds,
                           "tokens_per_cpu_second": tokens / cpu if cpu else None} if seconds else None
    return stats


def corpus_teacher(corpus):
    """The teacher of a corpus folder's dataset card: `{"name_or_path", "kind"}` or None.

    Read from the card's YAML (`teacher:` as a mapping or a name, plus `teacher_kind:`), else from
    the body line the build-corpus card template writes ("The teacher `X` (guard kind `Y`)").
    """
    readme = Path(corpus) / "README.md" if corpus and Path(corpus).is_dir() else None
    if readme is None or not readme.exists():
        return None
    from huggingface_hub import DatasetCard

    card = DatasetCard.load(readme)
    data = card.data.to_dict()
    teacher = data.get("teacher")
    if isinstance(teacher, dict) and teacher.get("name_or_path"):
        return {"name_or_path": teacher["name_or_path"], "kind": teacher.get("kind")}
    if isinstance(teacher, str):
        return {"name_or_path": teacher, "kind": data.get("teacher_kind")}
    found = re.search(r"[Tt]he teacher `([^`]+)` \(guard kind `([^`]+)`\)", card.text)
    return {"name_or_path": found.group(1), "kind": found.group(2)} if found else None
