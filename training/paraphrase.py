"""LLM paraphrases for `saferoute train-router --paraphrases N` (SafeRoute's augmentation).

Two modes, both through a generator LLM (the HarmAug generator classes: `transformers` or
`vllm`) and its chat template:

- `paraphrase` (mode "prompt"): each distinct prompt alone, with PARAPHRASE_REQUEST; the assistant
  turn is pre-filled with PARAPHRASE_PREFIX (an opening that keeps a small instruct model from
  refusing or chatting) and the continuation is parsed into one line (`parse_paraphrase`).
- `paraphrase_pairs` (mode "pair", SafeRoute's code): a prompt and its response together, with
  PAIR_REQUEST, answered as "Prompt: ..." and "Response: ..." sections, each kept whole (several
  lines); a prompt-only row gets its prompt paraphrased the same way, with "Response: None".

Copy k of every input is sampled with seeds derived from (seed, k, batch), so the same call gives
the same paraphrases and the copies differ. A continuation that parses to nothing, repeats its
source, or is a refusal is dropped (counted by reason), never replaced by something else.
"""

import re
from collections import Counter

from tqdm.auto import tqdm

from dataset_builders.schema import normalize_text
from dataset_builders.harmaug.generate import QUOTES, render_chat, strip_quotes
from dataset_builders.harmaug.shards import derive_seed

PARAPHRASE_REQUEST = "Paraphrase the following request. Keep its meaning and intent; answer with the paraphrase only.\n\n{text}"
PARAPHRASE_PREFIX = "Paraphrased request:"
DROP_REASONS = ("empty", "echo", "refusal")

# "Paraphrase:", "Here is the paraphrased request:", "Sure! Here's a rephrased version:" (a line of its own or before the text)
LABEL = re.compile(
    r"^(?:sure[,.!]?\s*)?(?:here(?:'s|\s+is)\s+)?(?:the\s+|a\s+|my\s+)?(?:paraphrased?|rephrased?|reworded)"
    r"(?:\s+(?:request|prompt|version|question|text|sentence|instruction))?\s*:\s*",
    re.I,
)
REFUSAL = re.compile(r"^(?:i\s*(?:'m|am)\s+sorry|sorry|i\s+(?:can\s*'?no?t|cannot|won'?t|am\s+(?:not\s+able|unable))|as\s+an\s+ai)\b", re.I)


PAIR_REQUEST = (
    "Paraphrase the prompt and the response below, each keeping its meaning, intent and level of detail. Do not repeat "
    "the originals. Answer in exactly this format: a line starting with \"Prompt:\" followed by the paraphrased prompt, "
    "then a line starting with \"Response:\" followed by the paraphrased response (write None when the response is None)."
    "\n\nPrompt: {prompt}\n\nResponse: {response}"
)
PAIR = re.compile(r"\**\s*prompt\s*\**\s*:\s*\**(.*?)\n\s*\**\s*response\s*\**\s*:\s*\**(.*)", re.I | re.S)


def paraphrase_messages(text, request=PARAPHRASE_REQUEST):
    return [{"role": "user", "content": request.format(text=text)}]


def parse_paraphrase(text, max_chars=4000):
    """The paraphrase in a generator continuation, or None: its first non-empty line once labels
    ("Paraphrase:") and markdown emphasis are removed; a line that opens with a quote keeps the
    quoted span only (trailing commentary goes)."""
    if not text:
        return None
    for line in text.replace("\r", "\n").split("\n"):
        line = LABEL.sub("", line.strip().replace("**", "").strip()).strip()
        if line:
            break
    else:
        return None
    if line[0] in QUOTES:
        line = strip_quotes(line)
    line = " ".join(line.strip(" \t\"\u201c\u201d`").split())
    return line if line and len(line) <= max_chars else None


def drop_reason(paraphrase, source):
    """Why a parsed paraphrase of `source` is dropped ('empty', 'echo', 'refusal'), or None to keep it."""
    if not paraphrase or not normalize_text(paraphrase):
        return "empty"
    if normalize_text(paraphrase) == normalize_text(source):
        return "echo"
    if REFUSAL.match(paraphrase) and not REFUSAL.match(source.strip()):
        return "refusal"
    return None


def paraphrase(generator, texts, n, seed, max_new_tokens=64, temperature=0.9, top_p=0.95, batch_size=16,
               request=PARAPHRASE_REQUEST, prefix=PARAPHRASE_PREFIX, show_progress=True):
    """N sampled paraphrases of each text: (paraphrases, stats).

    `paraphrases[i]` is a list of `n` entries for `texts[i]`, entry k being copy k (a string) or
    None where it was dropped. `stats`: requested, made, dropped (per reason), new_tokens.
    `generator` has `.tokenizer` and `.generate(texts, seed, max_new_tokens=, min_new_tokens=,
    temperature=, top_p=) -> (continuations, new tokens)` (see `dataset_builders.harmaug.generate`).
    Texts are batched by length; batch b of copy k is sampled with `derive_seed(seed, "paraphrase", k, b)`.
    """
    order = sorted(range(len(texts)), key=lambda i: (len(texts[i]), i))
    rendered = [render_chat(generator.tokenizer, paraphrase_messages(t, request), prefix) for t in texts]
    out = [[None] * n for _ in texts]
    dropped, new_tokens = Counter({reason: 0 for reason in DROP_REASONS}), 0
    bar = tqdm(total=n * len(texts), desc="paraphrases", disable=not show_progress)
    for k in range(n):
        for b, start in enumerate(range(0, len(order), batch_size)):
            batch = order[start : start + batch_size]
            raw, tokens = generator.generate(
                [rendered[i] for i in batch], derive_seed(seed, "paraphrase", k, b), max_new_tokens=max_new_tokens,
                min_new_tokens=0, temperature=temperature, top_p=top_p,
            )
            new_tokens += tokens
            for i, continuation in zip(batch, raw):
                text = parse_paraphrase(continuation)
                reason = drop_reason(text, texts[i])
                if reason:
                    dropped[reason] += 1
                else:
                    out[i][k] = text
            bar.update(len(batch))
    bar.close()
    made = sum(p is not None for copies in out for p in copies)
    return out, {"requested": n * len(texts), "made": made, "dropped": dict(dropped), "new_tokens": new_tokens}


def _clean(text):
    return "\n".join(" ".join(line.split()) for line in text.strip().strip("*").strip().splitlines()).strip()


def parse_pair(text, max_chars=20000):
    """(prompt, response) from a "Prompt: ... Response: ..." continuation (each may span lines;
    "None" -> None), or (None, None) when the format is not there."""
    found = PAIR.search(text or "")
    if not found:
        return None, None
    prompt, response = _clean(found.group(1)), _clean(found.group(2))
    if response.rstrip(".").lower() == "none":
        response = None
    if not prompt or len(prompt) > max_chars or (response is not None and len(response) > max_chars):
        return None, None
    return prompt, response


def pair_drop_reason(prompt, response, source_prompt, source_response):
    """Why a parsed pair paraphrase is dropped ('empty', 'echo', 'refusal'), or None to keep it.
    A response paraphrase must exist exactly when the source had a response."""
    if not prompt or not normalize_text(prompt) or (source_response is not None and not response):
        return "empty"
    same_prompt = normalize_text(prompt) == normalize_text(source_prompt)
    same_response = source_response is None or normalize_text(response or "") == normalize_text(source_response)
    if same_prompt and same_response:
        return "echo"
    if REFUSAL.match(prompt) and not REFUSAL.match(source_prompt.strip()):
        return "refusal"
    return None


def paraphrase_pairs(generator, pairs, n, seed, max_new_tokens=1024, temperature=1.0, top_p=1.0, batch_size=16,
                     request=PAIR_REQUEST, show_progress=True):
    """N sampled paraphrases of each (prompt, response) pair (response None for a prompt-only row):
    (paraphrases, stats); `paraphrases[i][k]` is copy k of pair i as (prompt, response), or None
    where it was dropped. Batch b of copy k is sampled with `derive_seed(seed, "pair", k, b)`."""
    order = sorted(range(len(pairs)), key=lambda i: (len(pairs[i][0]) + len(pairs[i][1] or ""), i))
    rendered = [render_chat(generator.tokenizer, [{"role": "user", "content": request.format(prompt=p, response=r)}])
                for p, r in pairs]
    out = [[None] * n for _ in pairs]
    dropped, new_tokens = Counter({reason: 0 for reason in DROP_REASONS}), 0
    bar = tqdm(total=n * len(pairs), desc="pair paraphrases", disable=not show_progress)
    for k in range(n):
        for b, start in enumerate(range(0, len(order), batch_size)):
            batch = order[start : start + batch_size]
            raw, tokens = generator.generate([rendered[i] for i in batch], derive_seed(seed, "pair", k, b),
                                             max_new_tokens=max_new_tokens, min_new_tokens=0, temperature=temperature, top_p=top_p)
            new_tokens += tokens
            for i, continuation in zip(batch, raw):
                prompt, response = parse_pair(continuation)
                if pairs[i][1] is None:
                    response = None
                reason = pair_drop_reason(prompt, response, *pairs[i])
                if reason:
                    dropped[reason] += 1
                else:
                    out[i][k] = (prompt, response)
            bar.update(len(batch))
    bar.close()
    made = sum(p is not None for copies in out for p in copies)
    return out, {"requested": n * len(pairs), "made": made, "dropped": dict(dropped), "new_tokens": new_tokens}
