"""Validation and encoding of guard inputs, shared by the pipeline, the student and the guard adapters.

A guard input is a `{"prompt": str, "response": str | None}` dict; `response` None means a
prompt-only (prompt-harmfulness) item.
"""

import contextlib
import threading
import weakref
from typing import Any

ACCEPTED_KEY_SETS = ({"text"}, {"text", "text_pair"}, {"prompt"}, {"prompt", "response"})
# A token rarely spans more than this many characters; texts are cut here before tokenizing so
# that a 1,000,000-character input costs no more than a long one.
CHARS_PER_TOKEN_CAP = 32


def normalize_input(item: Any) -> dict:
    """Return `{"prompt", "response"}` for a str, `{"text", "text_pair"}` or `{"prompt", "response"}`.

    Raises `ValueError` naming the problem for anything else.
    """
    if item is None:
        raise ValueError("Guard input is None; expected a string or a dict with 'prompt' (and 'response').")
    if isinstance(item, str):
        prompt, response = item, None
    elif isinstance(item, dict):
        keys = set(item)
        if keys not in ACCEPTED_KEY_SETS:
            if keys & {"response", "text_pair"} and not keys & {"prompt", "text"}:
                raise ValueError(f"Guard input has a response but no prompt (keys {sorted(keys)}).")
            raise ValueError(
                f"Guard input dict has keys {sorted(keys)}; expected one of "
                "{'text'}, {'text', 'text_pair'}, {'prompt'}, {'prompt', 'response'}."
            )
        prompt = item.get("prompt", item.get("text"))
        response = item.get("response", item.get("text_pair"))
    else:
        raise ValueError(f"Guard input must be a str or a dict, got {type(item).__name__}.")
    if not isinstance(prompt, str):
        raise ValueError(f"Guard input prompt must be a str, got {type(prompt).__name__}.")
    if not prompt.strip():
        raise ValueError("Guard input prompt is empty.")
    if response is not None and not isinstance(response, str):
        raise ValueError(f"Guard input response must be a str or None, got {type(response).__name__}.")
    if response is not None and not response.strip():
        response = None
    return {"prompt": prompt, "response": response}


_TOKENIZER_LOCKS = {}  # id(tokenizer) -> its lock, dropped when the tokenizer is collected
_LOCKS_GUARD = threading.Lock()


def tokenizer_lock(tokenizer):
    """The lock of `tokenizer`. Every `tokenizer(...)` call here holds it: a fast tokenizer whose
    truncation or padding settings change while another thread encodes raises "Already borrowed"
    (or encodes with the other call's settings), and these calls change them."""
    key = id(tokenizer)
    with _LOCKS_GUARD:
        lock = _TOKENIZER_LOCKS.get(key)
        if lock is None:
            lock = _TOKENIZER_LOCKS[key] = threading.RLock()
            with contextlib.suppress(TypeError):  # runs before the id can be reused
                weakref.finalize(tokenizer, _TOKENIZER_LOCKS.pop, key, None)
    return lock


def cap_chars(text, max_tokens):
    """Cut `text` to at most `max_tokens * CHARS_PER_TOKEN_CAP` characters; return (text, was_cut)."""
    if text is None:
        return None, False
    limit = max_tokens * CHARS_PER_TOKEN_CAP
    return (text[:limit], True) if len(text) > limit else (text, False)


def encode_pairs(tokenizer, items, max_length):
    """Tokenize guard inputs as `tokenizer(prompt, response)` within `max_length` tokens.

    Over-long pairs are cut with the "longest_first" strategy, so both prompt and response stay
    represented. Returns `(input_ids_list, truncated_list)`; no padding.
    """
    prompts, responses, cut = [], [], []
    for item in items:
        prompt, cut_p = cap_chars(item["prompt"], max_length)
        response, cut_r = cap_chars(item["response"], max_length)
        prompts.append(prompt)
        responses.append(response)
        cut.append(cut_p or cut_r)
    encodings = [None] * len(items)
    truncated = list(cut)
    with tokenizer_lock(tokenizer):
        _encode_groups(tokenizer, prompts, responses, max_length, encodings, truncated)
    return encodings, truncated


def _encode_groups(tokenizer, prompts, responses, max_length, encodings, truncated):
    """Fill `encodings` / `truncated` in place: prompt-only items, then pairs (two tokenizer calls each)."""
    for has_response in (False, True):
        idx = [i for i, r in enumerate(responses) if (r is not None) == has_response]
        if not idx:
            continue
        args = ([prompts[i] for i in idx],) + (([responses[i] for i in idx],) if has_response else ())
        full = tokenizer(*args, truncation=False, verbose=False)
        too_long = [j for j, ids in enumerate(full["input_ids"]) if len(ids) > max_length]
        too_long_set = set(too_long)
        if too_long:
            cut_args = [[a[j] for j in too_long] for a in args]
            short = tokenizer(*cut_args, truncation="longest_first", max_length=max_length)
            for j, k in enumerate(too_long):
                for key in full:
                    full[key][k] = short[key][j]
        for j, i in enumerate(idx):
            encodings[i] = {key: full[key][j] for key in full}
            truncated[i] = truncated[i] or j in too_long_set


def length_sorted_batches(lengths, batch_size):
    """Index batches of similar length (longest first), so padding stays small."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
