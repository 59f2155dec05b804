"""Stage 2: drop unparseable generations, exact and near duplicates, and anything that (nearly)
matches a benchmark prompt (decontamination) or copies a seed-pool prompt.

Near matches use the Jaccard similarity of word n-gram sets (exact, through an inverted index:
no sketches, no false negatives), which is fast enough for a few hundred thousand short texts.
"""

import json
from collections import Counter, defaultdict
from pathlib import Path

from ..schema import normalize_text

FILTER_VERSION = 2  # part of the filter stage's settings: a change of the rules redoes the stage


def shingles(text: str, n=3) -> frozenset:
    """The set of word n-grams of a text (the whole text as one gram when it is shorter than n)."""
    words = normalize_text(text).split()
    if len(words) < n:
        return frozenset([tuple(words)]) if words else frozenset()
    return frozenset(tuple(words[i : i + n]) for i in range(len(words) - n + 1))


class ShingleIndex:
    """An inverted index of shingle sets answering "most similar text so far" exactly."""

    def __init__(self, n=3):
        self.n = n
        self.sizes = []
        self.postings = defaultdict(list)

    def add(self, text=None, grams=None):
        grams = shingles(text, self.n) if grams is None else grams
        doc = len(self.sizes)
        self.sizes.append(len(grams))
        for g in grams:
            self.postings[g].append(doc)
        return doc

    def max_jaccard(self, text=None, grams=None):
        """(best Jaccard similarity, index of that text) against the indexed texts; (0.0, None) if none share a gram."""
        grams = shingles(text, self.n) if grams is None else grams
        overlap = Counter()
        for g in grams:
            overlap.update(self.postings.get(g, ()))
        best, best_doc = 0.0, None
        for doc, inter in overlap.items():
            score = inter / (len(grams) + self.sizes[doc] - inter)
            if score > best:
                best, best_doc = score, doc
        return best, best_doc


def load_benchmark_prompts(folder) -> list:
    """The prompts of every `*.jsonl` benchmark file in `folder` (the schema of `dataset_builders.schema`)."""
    folder = Path(folder)
    files = sorted(folder.glob("*.jsonl"))
    if not files:
        raise ValueError(f"No benchmark files (*.jsonl) in {folder}: decontamination needs them (or pass --benchmarks none).")
    prompts = []
    for path in files:
        with open(path) as f:
            prompts.extend(json.loads(line)["prompt"] for line in f if line.strip())
    return prompts


def echoes_request(text, request_text, n=4) -> bool:
    """Does the instruction repeat the request itself (shares a word n-gram with it, or is part of it)?"""
    if not request_text:
        return False
    key, request_key = normalize_text(text), normalize_text(request_text)
    return (bool(key) and f" {key} " in f" {request_key} ") or bool(shingles(text, n) & shingles(request_text, n) - {()})


def filter_instructions(rows, benchmark_prompts=(), seed_prompts=(), near_duplicate_threshold=0.7,
                        contamination_threshold=0.7, ngram=3, request_text=None, show_progress=False):
    """Keep the first of each group of (near) duplicates that matches no benchmark or seed prompt.

    `rows` are generate-stage rows (`instruction` None = unparseable), in request order. Returns
    (kept rows, counts) where counts say how many each filter removed, applied in this order:
    unparseable, exact_duplicate, request_echo (the generator repeating `request_text`, the
    request it was sent), benchmark_contamination, seed_overlap, near_duplicate.
    """
    for name, value in (("near_duplicate_threshold", near_duplicate_threshold), ("contamination_threshold", contamination_threshold)):
        if not 0 < value <= 1:
            raise ValueError(f"{name} must be in (0, 1], got {value}.")
    counts = {"generated": len(rows), "unparseable": 0, "exact_duplicate": 0, "request_echo": 0, "benchmark_contamination": 0,
              "seed_overlap": 0, "near_duplicate": 0}
    references = {}
    for name, texts in (("benchmark_contamination", benchmark_prompts), ("seed_overlap", seed_prompts)):
        index = ShingleIndex(ngram)
        for text in texts:
            index.add(text)
        references[name] = (index, {normalize_text(t) for t in texts})
    kept, seen, kept_index = [], set(), ShingleIndex(ngram)
    iterator = rows
    if show_progress:
        from tqdm.auto import tqdm

        iterator = tqdm(rows, desc="filter")
    for row in iterator:
        text = row["instruction"]
        if not text or not normalize_text(text):
            counts["unparseable"] += 1
            continue
        key = normalize_text(text)
        if key in seen:
            counts["exact_duplicate"] += 1
            continue
        seen.add(key)
        if echoes_request(text, request_text):
            counts["request_echo"] += 1
            continue
        grams = shingles(text, ngram)
        reason = None
        for name, (index, exact) in references.items():
            if key in exact or index.max_jaccard(grams=grams)[0] >= contamination_threshold:
                reason = name
                break
        if reason is None and kept_index.max_jaccard(grams=grams)[0] >= near_duplicate_threshold:
            reason = "near_duplicate"
        if reason:
            counts[reason] += 1
            continue
        kept_index.add(grams=grams)
        kept.append(row)
    counts["kept"] = len(kept)
    return kept, counts


def distinct_n(texts, n) -> float:
    """Distinct-n: distinct word n-grams / all word n-grams over `texts` (0.0 when there are none)."""
    grams = Counter()
    for text in texts:
        words = normalize_text(text).split()
        grams.update(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
    total = sum(grams.values())
    return len(grams) / total if total else 0.0
