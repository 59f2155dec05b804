"""LLM paraphrases of prompts, for `saferoute train-router --paraphrases N` (SafeRoute's augmentation).

Each text is shown to a generator LLM (the HarmAug generator classes: `transformers` or `vllm`)
through its chat template with PARAPHRASE_REQUEST; the assistant turn is pre-filled with
PARAPHRASE_PREFIX (an opening that keeps a small instruct model from refusing or chatting) and
the continuation is parsed into one line (`parse_paraphrase`). Copy k of every text is sampled
with seeds derived from (seed, k, batch), so the same call gives the same paraphrases and the
copies differ. A continuation that parses to nothing, repeats the text, or is a refusal is
dropped (counted by reason), never replaced by something else.
"""

import re
from collections import Counter

from tqdm.auto import tqdm

from dataset_builders.harmaug.filters import normalize_text
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
