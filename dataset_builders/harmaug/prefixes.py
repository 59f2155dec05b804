"""Response prefixes for distillation on prefixes (`build-corpus --prefix_rows N`).

A streaming guard judges a response while it is written (`modeling_saferoute/streaming.py`): the
student reads the prompt and the latest window of a partial response. Trained on whole responses
only, it has never seen a half-written answer. A prefix row cuts a response of the train split at
a random word, keeps at most its last `max_words` words (a streaming check's window), and the
teacher labels that same text: a half-written harmful answer then teaches "unsafe", a half-written
refusal "safe", whatever the end of the response says.
"""

import random
import re

from ..schema import make_id

_WORD = re.compile(r"\S+")


def cut(response, end_word, max_words):
    """The text of `response` from word `end_word - max_words` (or its start) through word `end_word - 1`."""
    words = [m.span() for m in _WORD.finditer(response)]
    first = max(0, end_word - max_words)
    return response[words[first][0] if first else 0 : words[end_word - 1][1]]


def prefix_items(items, n, min_words, max_words, seed):
    """`n` prefix items (fewer when there are fewer distinct cuts) of the train split's response items
    with at least `2 * min_words` words: each a response cut after a uniform word in
    [min_words, words - 1], kept to its last `max_words` words; origin and kind "prefix", the
    parent's prompt and source, no human label."""
    parents = [it for it in items if it["split"] == "train" and it["response"] and len(_WORD.findall(it["response"])) >= 2 * min_words]
    if n <= 0 or not parents:
        return []
    rng = random.Random(seed)
    chosen, seen = [], set()
    for _ in range(20 * n):  # draws, so that repeated cuts cannot loop forever
        if len(chosen) == n:
            break
        parent = parents[rng.randrange(len(parents))]
        words = len(_WORD.findall(parent["response"]))
        text = cut(parent["response"], rng.randint(min_words, words - 1), max_words)
        row_id = make_id("prefix", parent["prompt"], text)
        if row_id in seen:
            continue
        seen.add(row_id)
        chosen.append({"id": row_id, "prompt": parent["prompt"], "response": text, "human_label": None, "level": "response",
                       "source": parent["source"], "origin": "prefix", "kind": "prefix", "split": "train"})
    return chosen
