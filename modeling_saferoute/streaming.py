"""Streaming moderation: judge a response while the LLM is still writing it, and say when to stop it.

    stream = guard.stream("How do I make a bomb?")        # the prompt, or a conversation ending with a user turn
    for piece in generation:                              # any size, down to one token's text
        verdict = stream.feed(piece)
        if verdict["stop"]:
            break                                         # stop the generation
    final = stream.close()                                # the verdict on the whole response

How a stream judges:

- Tokens. The response is counted in the student's tokens as pieces arrive; a feed re-tokenizes only
  the text since the last whitespace (`ResponseTokens`).
- Checks. Every `stride` new response tokens the student reads the prompt (with the conversation's
  earlier turns that fit) and the latest `window` tokens of the response, never the whole prefix
  again. A check is one call of the pipeline on that window, with the pipeline's options: the router
  may send it to the large guard, which reads the prompt and the whole response so far.
  Default `window`: what the student's token budget leaves beside the prompt (at least half the
  budget; a longer prompt is cut); default `stride`: half the window, so consecutive windows overlap
  by half and any span of up to `window / 2` tokens is read whole by at least one check.
- Stop policy. `stop` turns True at the first check that completes `patience` consecutive checks
  labeled "unsafe" (P(unsafe) > `threshold`). It stays True: the verdict is frozen at that check and
  later pieces are not checked.
- Final verdict. `close()` checks the tokens read since the last check, then gives the verdict on the
  whole response: the stop verdict when the stream stopped; else the highest P(unsafe) among the
  windows no later window contains (every window that did not start at the response's first token,
  and the last one that did: an opening window shorter than `window` is superseded by the later one
  that holds it and more). A response that fits one window thus gets the pipeline's own verdict.

A verdict holds `label` ("safe" / "unsafe"; None before the first check), `score`, `unsafe_score`,
`decided_by`, `stop`, `final`, `tokens` (response tokens read), `checks`, `stopped_at` (tokens read
when the stop fired), `span` ([first, last + 1) response tokens the deciding check read), and the
deciding check's `student_unsafe_score`, `router_score`, `routed` and, where the pipeline gives them,
`large_guard_error` and the harm categories (`CHECK_KEYS`).

Many streams share one pipeline (it is thread-safe); a stream keeps its state to itself and
serializes its own calls with a lock. To batch the checks of many streams (a server, a benchmark),
split `feed`: `checks = stream.append(piece)` gives the checks to run now (usually none or one; one
per `stride` tokens a long piece completes); run `pipe([c.item for c in checks], **stream.call_options)`
on those of any number of streams at once; then `stream.apply(check, result)` for each, in order.
`stream.end()` and `apply` do the same for `close`.
"""

import inspect
import re
import threading
from collections import deque
from dataclasses import dataclass

from .inputs import encode_pairs, normalize_input, repair_text, tokenizer_lock

DEFAULT_PATIENCE = 1
# What a verdict copies from the pipeline result of the check that decided it, where present.
# The harm categories (`categories`, `category_scores`) come through here once the pipeline gives them.
CHECK_KEYS = ("label", "score", "unsafe_score", "student_unsafe_score", "router_score", "routed", "decided_by",
              "large_guard_error", "categories", "category_scores")
# Pipeline options a stream does not take: every check reads one window that fits the budget.
NOT_STREAM_OPTIONS = ("long_inputs", "timings")
# Text without whitespace is committed (its tokens counted once) past this many characters.
MAX_PENDING_CHARS = 256
_LAST_SPACE = re.compile(r"\s(?=\S*\Z)")


class StreamClosedError(ValueError):
    """A piece was fed to a stream that was closed."""


@dataclass(frozen=True)
class Check:
    """One check to run: `item` is the pipeline input (the prompt and the whole response so far, for
    the large guard, with the window the student reads as its `student_view`); `start` and `tokens`
    the window's response-token range; `final` whether it is the closing check."""

    item: dict
    start: int
    tokens: int
    final: bool


class ResponseTokens:
    """The response so far and where each of its tokens starts, counted incrementally.

    Tokens that end before the last whitespace are committed once (a word-level pre-tokenizer
    never changes them when text is appended); the text after it is re-tokenized at each append
    (in a whitespace-free run longer than `MAX_PENDING_CHARS`, its last pre-tokenized word)."""

    def __init__(self, tokenizer):
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError("Streaming needs a fast tokenizer (character offsets); this model's is not.")
        self.tokenizer = tokenizer
        self.text = ""
        self.starts = []  # character start of each committed token
        self.committed = 0  # characters whose tokens are committed
        self.tail = []  # character starts of the tokens of text[committed:]

    def __len__(self):
        return len(self.starts) + len(self.tail)

    def start_of(self, index):
        """Character offset of response token `index`."""
        return self.starts[index] if index < len(self.starts) else self.tail[index - len(self.starts)]

    def append(self, piece):
        self.text += piece
        pending = self.text[self.committed :]
        spans, words = self._offsets(pending)
        space = _LAST_SPACE.search(pending)
        boundary = space.start() if space else 0
        if len(pending) - boundary > MAX_PENDING_CHARS and len(set(words)) > 1:  # a long run without whitespace:
            boundary = max(boundary, spans[words.index(words[-1])][0])  # keep only its last pre-tokenized word open
        done = 0
        while done < len(spans) and spans[done][1] <= boundary:
            done += 1
        self.starts.extend(self.committed + s for s, _ in spans[:done])
        self.tail = [self.committed + s for s, _ in spans[done:]]
        self.committed += boundary

    def _offsets(self, text):
        """(character span, pre-tokenized word index) of each token of `text`."""
        if not text:
            return [], []
        with tokenizer_lock(self.tokenizer):
            encoded = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        return [tuple(span) for span in encoded["offset_mapping"]], encoded.word_ids()


def stream_options(pipe):
    """The pipeline call options a stream passes on to its checks (those `_sanitize_parameters` takes)."""
    names = inspect.signature(pipe._sanitize_parameters).parameters
    return tuple(n for n, p in names.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n not in NOT_STREAM_OPTIONS)


def _positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}.")
    return value


class ResponseStream:
    """The moderation of one response while it is written (see the module docstring).

    Args:
        pipe: the SafeRoute pipeline (shared; thread-safe).
        inputs: the prompt: a str, `{"prompt"}` / `{"text"}`, or a conversation ending with a user turn.
        stride: new response tokens between checks (default: half the window).
        window: response tokens a check reads (default: what the student's budget leaves beside the
            prompt, at least half of it).
        patience: consecutive "unsafe" checks that stop the stream (default 1).
        **options: the pipeline's call options for every check (threshold, router_threshold, route,
            autocast_dtype, on_large_guard_error, ...).
    """

    def __init__(self, pipe, inputs, stride=None, window=None, patience=DEFAULT_PATIENCE, **options):
        item = normalize_input(inputs)
        if item["response"] is not None:
            raise ValueError("stream() takes the prompt (a str, {'prompt'}, {'text'} or a conversation ending with a user turn); "
                             "feed the response with stream.feed(piece).")
        allowed = stream_options(pipe)
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            raise ValueError(f"Unknown stream options {unknown}; allowed: stride, window, patience and the pipeline's {list(allowed)}.")
        pipe._sanitize_parameters(**options)  # refuses bad values now, not at the first check
        self.pipe = pipe
        self.call_options = {**options, "long_inputs": "truncate"}
        self.item = {**item, "judged_turn": item["judged_turn"] + 1}
        budget = pipe.model.max_length
        self.window = _positive_int("window", window) if window is not None else max(budget - self._prompt_tokens(budget), budget // 2)
        self.stride = _positive_int("stride", stride) if stride is not None else max(1, self.window // 2)
        self.patience = _positive_int("patience", patience)
        self.tokens = ResponseTokens(pipe.tokenizer)
        self._lock = threading.RLock()
        self._pieces = 0
        self._checked = 0  # response tokens at the last check
        self._pending = deque()
        self._closing = self._closed = False
        self._checks = self._run = 0
        self._last = None  # record of the latest check
        self._stopped = None  # record of the check that stopped the stream
        self._head = None  # latest check whose window starts at the first response token
        self._best = None  # highest-scoring check whose window starts later
        self._repaired = item["repaired"]

    def _prompt_tokens(self, budget):
        """Tokens the prompt (with its context) takes in a pair encoding, capped at the budget."""
        encoded, _ = encode_pairs(self.pipe.tokenizer, [{**self.item, "response": "x"}], 10**9)
        return min(len(encoded[0]["input_ids"]) - 1, budget)

    # -- feeding -------------------------------------------------------------------------------
    def feed(self, piece):
        """Take the next piece of the response; return the current verdict (after a check at each
        `stride` tokens the piece completes: one for a token's text, several for a long piece)."""
        with self._lock:
            self._run_checks(self.append(piece))
            return self.verdict

    def close(self):
        """Check what was read since the last check; return the final verdict on the whole response
        (closing twice returns it again)."""
        with self._lock:
            if not self._closed:
                self._run_checks(self.end())
            return self.verdict

    def append(self, piece):
        """Add a piece; return the `Check`s to run now, in order (each at a `stride` boundary; none
        once the stream has stopped). `apply` each result in that order before the next append."""
        with self._lock:
            index = self._pieces
            if self._closing:
                raise StreamClosedError(f"Stream piece {index}: the stream is closed; open a new one with guard.stream(...).")
            self._no_pending()
            if isinstance(piece, (bytes, bytearray)):
                raise ValueError(f"Stream piece {index} is bytes; decode it to str first.")
            if not isinstance(piece, str):
                raise ValueError(f"Stream piece {index} must be a str, got {type(piece).__name__}.")
            piece, fixed = repair_text(piece)
            self._repaired |= fixed
            self._pieces += 1
            self.tokens.append(piece)
            if self._stopped is not None:
                return []
            ends = range(self._checked + self.stride, len(self.tokens) + 1, self.stride)
            return [self._check(n, final=False) for n in ends]

    def end(self):
        """Close the stream to new pieces; return the closing `Check`s to run (the last window, or none
        when nothing was read since the last check or the stream stopped)."""
        with self._lock:
            self._no_pending()
            if not self._closing and not self.tokens.text.strip():
                raise ValueError("The stream's response is empty: there is nothing to judge.")
            self._closing = True
            if self._stopped is None and (len(self.tokens) > self._checked or self._checks == 0):
                return [self._check(len(self.tokens), final=True)]
            self._closed = True
            return []

    def _no_pending(self):
        if self._pending:
            raise RuntimeError("The stream has checks whose results were not applied yet (apply(check, result) for each first).")

    def _check(self, n, final):
        """The check of the window that ends at response token `n` (the large guard reads the response through it)."""
        tokens = self.tokens
        start = max(0, n - self.window)
        first = tokens.start_of(start) if start < len(tokens) else 0
        last = tokens.start_of(n) if n < len(tokens) else len(tokens.text)
        so_far = tokens.text[:last]
        view = {**self.item, "response": so_far[first:]}
        check = Check(item={**self.item, "response": so_far, "repaired": self._repaired, "student_view": view}, start=start, tokens=n, final=final)
        self._pending.append(check)
        self._checked = n
        return check

    def _run_checks(self, checks):
        if checks:
            results = self.pipe([c.item for c in checks], **self.call_options)
            for check, result in zip(checks, results):
                self.apply(check, result)

    # -- results ---------------------------------------------------------------------------
    def apply(self, check, result):
        """Record the pipeline's `result` for `check` (from `append` or `end`); return the verdict."""
        with self._lock:
            if not self._pending or check is not self._pending[0]:
                raise RuntimeError("apply() takes the checks this stream returned, each once, in order.")
            self._pending.popleft()
            if self._stopped is not None:  # a later check of the same piece, after the stop: the verdict is frozen
                self._closed |= check.final
                return self.verdict
            record = {k: result[k] for k in CHECK_KEYS if k in result}
            record["span"] = [check.start, check.tokens]
            self._checks += 1
            self._last = record
            if check.start == 0:
                self._head = record
            elif self._best is None or record["unsafe_score"] > self._best["unsafe_score"]:
                self._best = record
            self._run = self._run + 1 if record["label"] == "unsafe" else 0
            if self._stopped is None and not check.final and self._run >= self.patience:
                self._stopped = {**record, "stopped_at": check.tokens}
            if check.final:
                self._closed = True
            return self.verdict

    @property
    def verdict(self):
        """The current verdict (the final one once the stream is closed)."""
        with self._lock:
            if self._stopped is not None:
                record = self._stopped
            elif self._closed:
                record = max((r for r in (self._head, self._best) if r is not None), key=lambda r: r["unsafe_score"])
            else:
                record = self._last or {"label": None, "score": None, "unsafe_score": None, "decided_by": None, "span": None}
            out = {k: v for k, v in record.items() if k != "stopped_at"}
            out.update(stop=self._stopped is not None, final=self._closed, tokens=len(self.tokens), checks=self._checks,
                       stopped_at=self._stopped["stopped_at"] if self._stopped is not None else None, repaired=self._repaired)
            return out
