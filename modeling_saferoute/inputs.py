"""Validation and encoding of guard inputs, shared by the pipeline, the student and the guard adapters.

A guard input is normalized to `{"prompt": str, "response": str | None, "context": tuple,
"judged_turn": int, "repaired": bool}`:

- a str: a prompt-only item (the prompt is judged);
- `{"text"[, "text_pair"]}` (transformers' pair convention) or `{"prompt"[, "response"]}`
  (WildGuard's): a prompt, and the response to judge if there is one;
- a conversation: a list of `{"role", "content"}` messages (roles user / assistant, alternating,
  starting with user; system messages are dropped), or `{"messages": [...]}`. The last turn is
  judged: a final assistant turn is the response, the user turn before it the prompt; a final
  user turn is a prompt-only item. The earlier turns are the `context` ((role, text) pairs): the
  large guard reads the whole conversation through its chat template, the student reads the
  context turns that fit its token budget, most recent first, before the prompt
  (`encode_pairs`). `judged_turn` is the index of the judged message (in the messages given).

A normalized item may also carry `student_view`: another normalized item that the student reads in
its place (a stream's latest window of the response, `streaming.py`) while the large guard reads
the item itself (the prompt and the whole response so far).

Text that cannot be encoded (lone UTF-16 surrogates, which valid JSON can carry) is repaired by
replacing each with U+FFFD, and the item is marked `repaired`. Anything else that is not a valid
input raises `ValueError` naming the problem (and the message index within a conversation).
"""

import contextlib
import re
import threading
import weakref
from typing import Any

ACCEPTED_KEY_SETS = ({"text"}, {"text", "text_pair"}, {"prompt"}, {"prompt", "response"})
ROLES = ("user", "assistant")
SURROGATE = re.compile("[\ud800-\udfff]")
# A token rarely spans more than this many characters; texts are cut here before tokenizing so
# that a 1,000,000-character input costs no more than a long one.
CHARS_PER_TOKEN_CAP = 32
CONTEXT_NAMES = {"user": "User", "assistant": "Assistant"}
NORMALIZED_KEYS = frozenset({"prompt", "response", "context", "judged_turn", "repaired"})


def is_conversation(value) -> bool:
    """A list of message dicts (each with a "role"), or `{"messages": [...]}`."""
    if isinstance(value, dict):
        return set(value) == {"messages"}
    return isinstance(value, (list, tuple)) and len(value) > 0 and all(isinstance(m, dict) and "role" in m for m in value)


def repair_text(text):
    """(text with lone surrogates replaced by U+FFFD, whether anything was replaced)."""
    if SURROGATE.search(text):
        return SURROGATE.sub("\ufffd", text), True
    return text, False


def _text(value, what):
    if isinstance(value, (bytes, bytearray)):
        raise ValueError(f"Guard input {what} is bytes; decode it to str first.")
    if not isinstance(value, str):
        raise ValueError(f"Guard input {what} must be a str, got {type(value).__name__}.")
    return repair_text(value)


def _conversation(messages):
    """(prompt, response, context, judged_turn, repaired) of a list of messages."""
    turns, repaired = [], False
    for k, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise ValueError(f"Conversation message {k} must be a dict with 'role' and 'content', got {message!r:.80}.")
        role = message["role"]
        if role == "system":
            continue
        if role not in ROLES:
            raise ValueError(f"Conversation message {k} has role {role!r}; expected 'user', 'assistant' or 'system'.")
        content = message["content"]
        if isinstance(content, list):  # [{"type": "text", "text": ...}] parts
            if not all(isinstance(p, dict) and p.get("type") == "text" for p in content):
                raise ValueError(f"Conversation message {k} has non-text content parts; only text can be judged.")
            content = "".join(str(p.get("text", "")) for p in content)
        text, fixed = _text(content, f"message {k} content")
        repaired |= fixed
        if not text.strip():
            raise ValueError(f"Conversation message {k} ({role}) has empty content.")
        if turns and turns[-1][1] == role:
            raise ValueError(f"Conversation message {k} is a second {role} turn in a row; roles must alternate.")
        if not turns and role != "user":
            raise ValueError(f"Conversation message {k} is an {role} turn before any user turn; it must start with the user.")
        turns.append((k, role, text))
    if not turns:
        raise ValueError("The conversation has no user turn.")
    if turns[-1][1] == "assistant":
        (_, _, prompt), (judged, _, response) = turns[-2], turns[-1]
        context = turns[:-2]
    else:
        judged, _, prompt = turns[-1]
        response, context = None, turns[:-1]
    return prompt, response, tuple((role, text) for _, role, text in context), judged, repaired


def _normalized(item, view=False):
    """An item given in the normalized form itself (with its `student_view`, if any), checked as
    thoroughly as any other form."""
    keys = set(item)
    if not NORMALIZED_KEYS <= keys or keys - NORMALIZED_KEYS - ({"student_view"} if not view else set()):
        raise ValueError(f"Guard input in the normalized form must have exactly the keys {sorted(NORMALIZED_KEYS)} "
                         f"(and optionally student_view), got {sorted(keys)}.")
    prompt, repaired = _text(item["prompt"], "prompt")
    if not prompt.strip():
        raise ValueError("Guard input prompt is empty.")
    response = item["response"]
    if response is not None:
        response, fixed = _text(response, "response")
        repaired |= fixed
        response = response if response.strip() else None
    context = item["context"]
    if not isinstance(context, (list, tuple)):
        raise ValueError(f"Guard input context must be a list of (role, text) turns, got {type(context).__name__}.")
    turns = []
    for k, turn in enumerate(context):
        if not isinstance(turn, (list, tuple)) or len(turn) != 2 or turn[0] not in ROLES:
            raise ValueError(f"Guard input context turn {k} must be a (role, text) pair with role 'user' or 'assistant', got {turn!r:.80}.")
        text, fixed = _text(turn[1], f"context turn {k} text")
        repaired |= fixed
        if not text.strip():
            raise ValueError(f"Guard input context turn {k} has empty text.")
        turns.append((turn[0], text))
    judged = item["judged_turn"]
    if isinstance(judged, bool) or not isinstance(judged, int) or judged < 0:
        raise ValueError(f"Guard input judged_turn must be an integer >= 0, got {judged!r}.")
    if not isinstance(item["repaired"], bool):
        raise ValueError(f"Guard input repaired must be a bool, got {item['repaired']!r}.")
    out = {"prompt": prompt, "response": response, "context": tuple(turns), "judged_turn": judged, "repaired": item["repaired"] or repaired}
    if "student_view" in item:
        if not isinstance(item["student_view"], dict):
            raise ValueError(f"Guard input student_view must be a normalized item, got {type(item['student_view']).__name__}.")
        out["student_view"] = _normalized(item["student_view"], view=True)
    return out


def normalize_input(item: Any) -> dict:
    """The normalized form (see the module docstring) of one guard input; `ValueError` naming the
    problem for anything that is not one. An item already in the normalized form is checked like
    any other (every key, type and turn), so it cannot carry what the other forms refuse."""
    if item is None:
        raise ValueError("Guard input is None; expected a string, a dict with 'prompt' (and 'response') or a conversation.")
    if isinstance(item, (bytes, bytearray)):
        raise ValueError("Guard input is bytes; decode it to str first.")
    if isinstance(item, dict) and "judged_turn" in item and "context" in item:
        return _normalized(item)
    if is_conversation(item):
        messages = item["messages"] if isinstance(item, dict) else item
        if not isinstance(messages, (list, tuple)) or not messages:
            raise ValueError("Guard input 'messages' must be a non-empty list of {'role', 'content'} messages.")
        prompt, response, context, judged, repaired = _conversation(messages)
        return {"prompt": prompt, "response": response, "context": context, "judged_turn": judged, "repaired": repaired}
    if isinstance(item, str):
        prompt, response = item, None
    elif isinstance(item, dict):
        keys = set(item)
        if keys not in ACCEPTED_KEY_SETS:
            if keys & {"response", "text_pair"} and not keys & {"prompt", "text"}:
                raise ValueError(f"Guard input has a response but no prompt (keys {sorted(keys)}).")
            raise ValueError(
                f"Guard input dict has keys {sorted(keys)}; expected one of "
                "{'text'}, {'text', 'text_pair'}, {'prompt'}, {'prompt', 'response'} or {'messages'}."
            )
        prompt = item.get("prompt", item.get("text"))
        response = item.get("response", item.get("text_pair"))
    else:
        raise ValueError(f"Guard input must be a str, a dict or a conversation (list of messages), got {type(item).__name__}.")
    prompt, repaired = _text(prompt, "prompt")
    if not prompt.strip():
        raise ValueError("Guard input prompt is empty.")
    if response is not None:
        response, fixed = _text(response, "response")
        repaired |= fixed
        if not response.strip():
            response = None
    return {"prompt": prompt, "response": response, "context": (), "judged_turn": 0 if response is None else 1, "repaired": repaired}


def normalize_batch(items):
    """`normalize_input` of each item; a bad one raises `ValueError` naming its index."""
    out = []
    for i, item in enumerate(items):
        try:
            out.append(normalize_input(item))
        except ValueError as err:
            raise ValueError(f"Input {i}: {err}") from None
    return out


def turns_of(item):
    """The (role, text) turns a guard reads: the context, the prompt, and the response if any."""
    item = normalize_input(item)
    return list(item["context"]) + [("user", item["prompt"])] + ([("assistant", item["response"])] if item["response"] else [])


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


def _with_context(tokenizer, item, max_length):
    """The prompt text the student reads: the context turns that fit `max_length` tokens with the
    pair, most recent first, rendered "User: ...\\nAssistant: ...\\n" before the prompt."""
    if not item.get("context"):
        return item["prompt"]
    response = item["response"]

    def size(prompt):
        args = (prompt,) + ((response,) if response is not None else ())
        return len(tokenizer(*args, truncation=False, verbose=False)["input_ids"])

    prompt = item["prompt"]
    for role, text in reversed(item["context"]):
        text, _ = cap_chars(text, max_length)
        candidate = f"{CONTEXT_NAMES[role]}: {text}\n{prompt}"
        if size(candidate) > max_length:
            break
        prompt = candidate
    return prompt


def encode_pairs(tokenizer, items, max_length):
    """Tokenize guard inputs as `tokenizer(prompt, response)` within `max_length` tokens (a
    conversation's context turns first, as many as fit, see `_with_context`).

    Over-long pairs are cut with the "longest_first" strategy, so both prompt and response stay
    represented. Returns `(input_ids_list, truncated_list)`; no padding.
    """
    items = [normalize_input(it) for it in items]
    prompts, responses, cut = [], [], []
    with tokenizer_lock(tokenizer):
        for item in items:
            prompt, cut_p = cap_chars(_with_context(tokenizer, item, max_length), max_length)
            response, cut_r = cap_chars(item["response"], max_length)
            prompts.append(prompt)
            responses.append(response)
            cut.append(cut_p or cut_r)
        encodings = [None] * len(items)
        truncated = list(cut)
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


def windows(tokenizer, item, max_length, overlap=0.25, max_windows=4096, return_truncated=False):
    """The item split for `long_inputs="chunk"`: when it does not fit `max_length` tokens, its
    response (or, for a prompt-only item, its prompt) cut into windows that overlap by `overlap`
    of their length, each a full item with the rest of the input; else [item].

    With `return_truncated`, also whether part of the text is left unread: the rest of the input
    fills the budget (one window, truncated as usual) or windows past `max_windows` were dropped."""
    item = normalize_input(item)
    long_field = "response" if item["response"] is not None else "prompt"
    with tokenizer_lock(tokenizer):
        encoded, _ = encode_pairs(tokenizer, [item], 10**9)
        if len(encoded[0]["input_ids"]) <= max_length:
            return ([item], False) if return_truncated else [item]
        other = {**item, long_field: "x"} if long_field == "response" else {**item, "prompt": "x", "context": ()}
        overhead = len(encode_pairs(tokenizer, [other], 10**9)[0][0]["input_ids"]) - 1
        ids = tokenizer(item[long_field], add_special_tokens=False, verbose=False)["input_ids"]
    size = max_length - overhead
    if size < 8:  # the rest of the input fills the budget: nothing to window, truncate instead
        return ([item], True) if return_truncated else [item]
    step = max(1, int(size * (1 - overlap)))
    starts = list(range(0, max(len(ids) - size, 0) + 1, step))
    if starts[-1] + size < len(ids):
        starts.append(len(ids) - size)
    dropped = len(starts) > max_windows
    parts = [{**item, long_field: tokenizer.decode(ids[s : s + size])} for s in starts[:max_windows]]
    return (parts, dropped) if return_truncated else parts


# Models whose position ids start after the padding index (RoBERTa's scheme: the i-th token sits at
# position pad_token_id + 1 + i), so `max_position_embeddings` 514 holds 512 tokens.
PADDING_OFFSET_MODEL_TYPES = frozenset({
    "roberta", "roberta-prelayernorm", "xlm-roberta", "xlm-roberta-xl", "camembert", "mpnet", "data2vec-text", "xmod",
    "ibert", "longformer", "markuplm", "layoutlmv3", "lilt", "luke", "esm",
})


def position_limit(config):
    """The most tokens a model's absolute position embeddings take: `max_position_embeddings`, less
    the padding offset of the RoBERTa family (RoBERTa, XLM-R, MPNet...: 514 -> 512); None when it has
    relative positions only (DeBERTa-v2/v3: `position_biased_input` False) or records no limit.
    The one rule for students and guards alike."""
    if getattr(config, "position_biased_input", True) is False:
        return None
    limit = getattr(config, "max_position_embeddings", None)
    if limit and getattr(config, "model_type", None) in PADDING_OFFSET_MODEL_TYPES:
        pad = getattr(config, "pad_token_id", None)
        limit -= (1 if pad is None else pad) + 1
    return limit


def length_sorted_batches(lengths, batch_size):
    """Index batches of similar length (longest first), so padding stays small."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
