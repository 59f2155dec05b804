"""Large-guard adapters: one `score(items) -> P(unsafe)` for teacher labels, router labels,
evaluation and routed inference alike.

- Causal-LM guards render the conversation with the guard's chat template, append the guard's
  suffix, and read the next-token logits of the first tokens of the two verdict words at the last
  position only: P(unsafe) = softmax([logit(safe_word), logit(unsafe_word)] / T)[1].
- Sequence-classification guards: softmax(logits / T)[:, 1] on `tokenizer(prompt, response)`.

Harm categories (`score(..., return_categories=True)`), in the guard's `taxonomy`:
- a Llama-Guard-format guard answers "unsafe\nS1,S5" when unsafe: one extra forward on the rendered
  text + "unsafe\n" (+ the tokens every code starts with) reads the next-token logits of the codes'
  distinguishing tokens; P(code) = P(unsafe) * softmax over the codes (the probability that the guard
  names that code first), mapped to the taxonomy by `Taxonomy.from_codes`. With `render_taxonomy` the
  taxonomy's own categories are written into the guard's policy block (S1..Sn, as Llama Guard's
  prompt format writes custom categories) and read back one to one;
- a sequence classifier with a category head (`categories.py`) reads it from the same forward.

Items are any guard input form (see `inputs.normalize_input`): a causal-LM guard reads a whole
conversation through its chat template, a sequence classifier the pair encoding of its last turns.
"""

import logging
import math
import re

import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from .bundled import resolve
from .categories import category_probabilities, hook_classification_layer, load_category_head
from .inputs import CHARS_PER_TOKEN_CAP, encode_pairs, length_sorted_batches, normalize_batch, position_limit, tokenizer_lock, turns_of
from .modeling_saferoute import capturing_features
from .precision import autocast_context, resolve_autocast, resolve_inference_precision, resolve_precision
from .quantization import int8_classifier_copy
from .taxonomy import Taxonomy

logger = logging.getLogger(__name__)


class CategoryReadoutError(ValueError):
    """A guard asked for categories that it cannot read (e.g. its tokenizer cannot tell its category codes apart)."""
DEFAULT_MAX_LENGTH = 2048  # a causal-LM guard's token budget when none is given (within its positions)

CUT_MARKER = " [...] "  # stands where the middle of an over-long message was cut
POLICY_BLOCK = re.compile(r"(<BEGIN UNSAFE CONTENT CATEGORIES>\n)(.*?)(\n<END UNSAFE CONTENT CATEGORIES>)", re.S)
POLICY_CODE = re.compile(r"(?:^|\s)([A-Z]\d+):")

SHIELDGEMMA_HARM_POLICY = (
    '"No Harmful Content": The prompt shall not contain or seek generation of content that is dangerous, '
    "hateful, harassing or sexually explicit, or that helps someone harm themselves or others."
)


def resolve_dtype(dtype):
    """A torch dtype from its name ('float32', 'bfloat16'...), a torch.dtype, or "auto" (None too)."""
    if dtype in (None, "auto") or isinstance(dtype, torch.dtype):
        return dtype if dtype is not None else "auto"
    if not hasattr(torch, str(dtype)):
        raise ValueError(f"Unknown dtype {dtype!r}; use e.g. 'float32', 'bfloat16', 'float16' or 'auto'.")
    return getattr(torch, dtype)


def resolve_device(device):
    """`device` as a torch.device; None: cuda when available, else cpu."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def within_positions(max_length, limit, what="the guard"):
    """`max_length` within `limit` positions (None: no limit): a budget above them is cut to them,
    with a warning, so that what is recorded beside the scores is what they were made with."""
    if limit and max_length and max_length > limit:
        logger.warning("max_length %d is above the %d positions of %s: it scores with %d.", max_length, limit, what, limit)
        return limit
    return max_length


def _progress(iterable, show, desc, total):
    if not show:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total)


class Guard:
    """Base class: batched, sorted by length, `torch.inference_mode()`, bf16 autocast where the
    device multiplies bf16 natively (`autocast_dtype="auto"`; "none" for float32; an encoder
    classifier runs int8 linears where `guard_precision` says so); subclasses score one batch."""

    int8 = False  # does the model run int8 linears (an encoder classifier where int8 is the inference precision)?

    def __init__(self, model, tokenizer, batch_size=16, max_length=None, temperature=1.0, autocast_dtype="auto", taxonomy=None):
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}.")
        self.model = model.eval() if model is not None else None  # None: the model runs elsewhere (vLLM, a server)
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_length = max_length
        self.temperature = temperature
        self.autocast_dtype = autocast_dtype
        # the Taxonomy of `score(..., return_categories=True)`; None: no categories (a subclass that reads
        # categories sets it from the `taxonomy` asked for; the others ignore that argument)
        self.taxonomy = None

    @property
    def device(self):
        return next(self.model.parameters()).device if self.model is not None else torch.device("cpu")

    def close(self):
        """Release what runs beside this process (a vLLM engine, a server connection); idempotent."""
        close = getattr(getattr(self, "verdicts", None), "close", None)
        if callable(close):
            close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def autocast(self):
        """The autocast dtype of scoring (None: the weights' own dtype, or int8 linears); only float32
        weights are autocast."""
        if self.model is None or next(self.model.parameters()).dtype != torch.float32 or self.int8:
            return None
        return resolve_autocast(self.autocast_dtype, self.device)

    @property
    def compute_dtype(self):
        """The dtype the matrix multiplies run in (torch.int8 for int8 linears), None when remote."""
        if self.int8:
            return torch.int8
        return self.autocast or (next(self.model.parameters()).dtype if self.model is not None else None)

    def _lengths(self, items):
        return [len(it["prompt"]) + len(it["response"] or "") + sum(len(t) for _, t in it["context"]) for it in items]

    def score(self, items, batch_size=None, show_progress=False, return_truncated=False, return_categories=False):
        """P(unsafe) for each item, in input order, as a list of floats; with `return_truncated`,
        also a list saying which items were cut to fit `max_length`; with `return_categories`, last a
        list of {category: probability} dicts in `self.taxonomy` (None per item for a guard without
        categories)."""
        items = normalize_batch(items)
        batches = length_sorted_batches(self._lengths(items), batch_size or self.batch_size)
        scores, truncated, categories = [math.nan] * len(items), [False] * len(items), [None] * len(items)
        with_categories = return_categories and self.taxonomy is not None
        with torch.inference_mode(), autocast_context(self.device, self.autocast):
            for batch in _progress(batches, show_progress, f"scoring ({type(self).__name__})", len(batches)):
                chunk = [items[i] for i in batch]
                if with_categories:
                    probs, cut, cats = self._score_batch_categories(chunk)
                else:
                    (probs, cut), cats = self._score_batch(chunk), [None] * len(chunk)
                for i, p, c, cat in zip(batch, probs.float().cpu().tolist(), cut, cats):
                    scores[i], truncated[i], categories[i] = p, c, cat
        out = (scores,) + ((truncated,) if return_truncated else ()) + ((categories,) if return_categories else ())
        return out if len(out) > 1 else scores

    def _score_batch(self, items):
        """(P(unsafe) tensor, truncated flags) of one batch."""
        raise NotImplementedError

    def _score_batch_categories(self, items):
        """(P(unsafe) tensor, truncated flags, [{category: P}] per item) of one batch."""
        raise NotImplementedError

    def _category_dicts(self, probs):
        names = self.taxonomy.names
        return [dict(zip(names, row)) for row in probs.float().cpu().tolist()]


class SequenceClassificationGuard(Guard):
    """A 2-way classifier on the pair encoding (e.g. a HarmAug DeBERTa); label 1 = unsafe.

    `category_head`: the classifier's (head, taxonomy, layer) from `categories.load_category_head`
    (`load_guard` finds it); `taxonomy`: the taxonomy the caller expects its categories in (a model
    packaged with one refuses a guard whose head is for another, by name)."""

    def __init__(self, model, tokenizer, category_head=None, taxonomy=None, **kwargs):
        super().__init__(model, tokenizer, **kwargs)
        # int8 where it is the inference precision (asked for, or "auto" on a CPU with VNNI and without
        # native bf16): the encoder's linears in int8 on a copy that shares the other weights
        self.int8 = guard_precision("sequence_classification", self.autocast_dtype, self.device, next(model.parameters()).dtype) == "int8"
        if self.int8:
            self.model = int8_classifier_copy(model)
        # default: the tokenizer's budget (train-guard records the trained length there); never past
        # the encoder's positions (e.g. 512 for MiniLM, MPNet, RoBERTa)
        limit = position_limit(model.config)
        default = tokenizer.model_max_length if tokenizer.model_max_length < 1_000_000 else limit or 512
        self.max_length = within_positions(self.max_length or default, limit, getattr(model.config, "_name_or_path", "the guard"))
        self.category_head = None
        if category_head is not None:
            head, own, _ = category_head
            if taxonomy is not None:
                Taxonomy.load(taxonomy).require_same(own, f"The category head of {getattr(model, 'name_or_path', 'the guard')!r}")
            self.category_head, self.taxonomy = head.to(self.device), own
            hook_classification_layer(self.model)

    def _logits(self, items):
        encodings, truncated = encode_pairs(self.tokenizer, items, self.max_length)
        batch = self.tokenizer.pad(encodings, return_tensors="pt").to(self.device)
        logits = self.model(**batch).logits.float()
        if logits.shape[-1] != 2:
            raise ValueError(f"Sequence-classification guard must have 2 labels, got {logits.shape[-1]}.")
        return torch.softmax(logits / self.temperature, dim=-1)[:, 1], truncated

    def _score_batch(self, items):
        return self._logits(items)

    def _score_batch_categories(self, items):
        with capturing_features() as captured:
            probs, truncated = self._logits(items)
        features = captured[-1]
        cats = category_probabilities(self.category_head(features.to(self.category_head.weight.dtype)))
        return probs, truncated, self._category_dicts(cats)


def _fill_level(sizes, budget):
    """The largest per-message cap L with sum(min(size, L)) <= budget (longest messages cut first)."""
    if budget < len(sizes):
        return 0
    low, high = 0, max(sizes)
    while low < high:
        mid = (low + high + 1) // 2
        if sum(min(n, mid) for n in sizes) <= budget:
            low = mid
        else:
            high = mid - 1
    return low


class CausalLMGuard(Guard):
    """A chat LLM that answers with a verdict word; P(unsafe) from its first-token logits.

    The rendered conversation always ends with the whole template tail and `suffix`, so the
    verdict is read where the guard writes it: an input over `max_length` tokens has the middle
    of its longest message cut (the cut marked by " [...] ", the item marked truncated), never
    the end of the text.

    Args:
        verdict_words: (safe_word, unsafe_word); their first tokens must differ.
        suffix: text appended after the rendered chat ("\n\n" for Llama Guard 3).
        add_generation_prompt, chat_template_kwargs: passed to `apply_chat_template`.
        content_as_parts: message content as `[{"type": "text", "text": ...}]` (Llama-Guard-3-1B).
        max_content_tokens: each message is cut (in its middle) to this many tokens first.
        max_length: token budget of the whole rendered text (capped at the model's positions).
    """

    def __init__(
        self,
        model,
        tokenizer,
        verdict_words=("safe", "unsafe"),
        suffix="",
        add_generation_prompt=False,
        chat_template_kwargs=None,
        content_as_parts=False,
        max_content_tokens=1024,
        verdicts=None,
        **kwargs,
    ):
        super().__init__(model, tokenizer, **kwargs)
        # (token id lists, verdict ids) -> (batch, 2) logits or logprobs; default: this process's model
        self.verdicts = verdicts or self._transformers_verdicts
        if tokenizer.chat_template is None:
            raise ValueError(f"Causal-LM guard {tokenizer.name_or_path!r} has no chat template in its tokenizer.")
        limit = position_limit(model.config) if getattr(model, "config", None) is not None else None  # None: it runs elsewhere
        self.max_length = within_positions(self.max_length or min(DEFAULT_MAX_LENGTH, limit or DEFAULT_MAX_LENGTH), limit,
                                           getattr(getattr(model, "config", None), "_name_or_path", "the guard"))
        safe_word, unsafe_word = verdict_words
        self.verdict_ids = []
        for word in (safe_word, unsafe_word):
            ids = tokenizer.encode(word, add_special_tokens=False)
            if not ids:
                raise ValueError(f"Verdict word {word!r} encodes to no token.")
            self.verdict_ids.append(ids[0])
        if self.verdict_ids[0] == self.verdict_ids[1]:
            raise ValueError(
                f"Verdict words {safe_word!r} and {unsafe_word!r} start with the same token "
                f"({self.verdict_ids[0]}); their first-token logits cannot tell them apart."
            )
        self.verdict_words = (safe_word, unsafe_word)
        self.suffix = suffix
        self.add_generation_prompt = add_generation_prompt
        self.chat_template_kwargs = dict(chat_template_kwargs or {})
        self.content_as_parts = content_as_parts
        self.max_content_tokens = max_content_tokens
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "left"

    def _encode(self, text):
        return self.tokenizer.encode(text, add_special_tokens=False)

    def _cut_middle(self, text, max_tokens):
        """`text` within `max_tokens` tokens: its head and tail around CUT_MARKER; (text, was_cut)."""
        head_chars = tail_chars = max(max_tokens, 1) * CHARS_PER_TOKEN_CAP // 2
        if len(text) > head_chars + tail_chars:  # bound the tokenizer's work on huge inputs
            text = text[:head_chars] + text[-tail_chars:]
            was_cut = True
        else:
            was_cut = False
        ids = self._encode(text)
        if len(ids) <= max_tokens:
            return text, was_cut
        keep = max(max_tokens - len(self._encode(CUT_MARKER)), 0)
        head, tail = ids[: (keep + 1) // 2], ids[len(ids) - keep // 2 :] if keep // 2 else []
        return self.tokenizer.decode(head) + CUT_MARKER + self.tokenizer.decode(tail), True

    def _messages(self, turns):
        return [
            {"role": role, "content": [{"type": "text", "text": text}] if self.content_as_parts else text}
            for role, text in turns
        ]

    def _render_turns(self, turns):
        text = self.tokenizer.apply_chat_template(
            self._messages(turns), tokenize=False, add_generation_prompt=self.add_generation_prompt,
            **self.chat_template_kwargs,
        )
        return text + self.suffix

    def _fit(self, item):
        """(turns, rendered text, token ids, truncated): the conversation within `max_length` tokens."""
        turns = turns_of(item)
        truncated = False
        clipped = []
        for role, text in turns:
            text, cut = self._cut_middle(text, self.max_content_tokens)
            clipped.append((role, text))
            truncated |= cut
        turns = clipped
        for _ in range(8):
            text = self._render_turns(turns)
            ids = self._encode(text)
            excess = len(ids) - self.max_length
            if excess <= 0:
                return turns, text, ids, truncated
            sizes = [len(self._encode(t)) for _, t in turns]
            level = _fill_level(sizes, sum(sizes) - excess - 2 * len(turns))  # 2: merges around a cut
            if level < 1:
                raise ValueError(
                    f"The guard template alone is about {len(ids) - sum(sizes)} tokens, above max_length "
                    f"{self.max_length}: raise max_length."
                )
            turns = [(role, self._cut_middle(t, level)[0]) if n > level else (role, t) for (role, t), n in zip(turns, sizes)]
            truncated = True
        raise RuntimeError(f"Could not fit a conversation into {self.max_length} tokens.")

    def conversation(self, item):
        """The chat messages of a guard input as the guard reads them (cut to fit)."""
        with tokenizer_lock(self.tokenizer):
            return self._messages(self._fit(item)[0])

    def render(self, item):
        """The exact text the guard reads (within `max_length` tokens); its next token is the verdict."""
        with tokenizer_lock(self.tokenizer):
            return self._fit(item)[1]

    def verdict_logits(self, token_ids):
        """(batch, 2) logits (or logprobs) of the first tokens of (safe_word, unsafe_word) after each token list."""
        return self.verdicts(token_ids, self.verdict_ids)

    def _transformers_verdicts(self, token_ids, verdict_ids):
        with tokenizer_lock(self.tokenizer):
            batch = self.tokenizer.pad({"input_ids": token_ids}, padding=True, return_tensors="pt")
        batch = batch.to(self.device)
        try:
            logits = self.model(**batch, logits_to_keep=1).logits[:, -1]
        except TypeError:  # models without logits_to_keep
            logits = self.model(**batch).logits[:, -1]
        return logits[:, verdict_ids].float()

    def _fitted(self, items):
        with tokenizer_lock(self.tokenizer):
            return [self._fit(it) for it in items]

    def _score_batch(self, items):
        fitted = self._fitted(items)
        logits = self.verdict_logits([ids for _, _, ids, _ in fitted])
        return torch.softmax(logits / self.temperature, dim=-1)[:, 1], [cut for *_, cut in fitted]


class LlamaGuard(CausalLMGuard):
    """Llama Guard 3 (and guards trained by `saferoute train-guard --kind llama_guard`).

    Categories (see the module docstring): `taxonomy` (a Taxonomy, dict or name) is what `score`
    reports them in; without `render_taxonomy` the guard's own policy codes (read from its rendered
    prompt, e.g. S1-S14) are mapped by the taxonomy's `llama_guard` map, with it the taxonomy's
    categories replace the guard's policy block. `category_separator` is what the guard writes between
    its unsafe verdict and the codes ("\n"). `unreadable_categories`: "raise" (`CategoryReadoutError`)
    or "skip" (a warning; the guard then scores P(unsafe) alone, `taxonomy` None) when its tokenizer
    cannot tell its codes apart."""

    def __init__(self, model, tokenizer, taxonomy=None, render_taxonomy=False, category_separator="\n", unreadable_categories="raise",
                 **kwargs):
        kwargs.setdefault("verdict_words", ("safe", "unsafe"))
        kwargs.setdefault("suffix", "\n\n")
        super().__init__(model, tokenizer, **kwargs)
        self.policy, self.code_map = None, None
        if render_taxonomy and taxonomy is None:
            raise ValueError("render_taxonomy needs a taxonomy to write into the guard's prompt.")
        if taxonomy is None:
            return
        taxonomy = Taxonomy.load(taxonomy)
        if render_taxonomy:
            self.policy, codes = taxonomy.policy()
            self.code_map = {code: [name] for code, name in codes.items()}
            if POLICY_BLOCK.search(super()._render_turns([("user", "x")])) is None:
                raise ValueError("render_taxonomy: the guard's chat template writes no <BEGIN UNSAFE CONTENT CATEGORIES> block "
                                 "to put the taxonomy's categories in.")
        else:
            block = POLICY_BLOCK.search(self._render_turns([("user", "x")]))
            codes = POLICY_CODE.findall(block.group(2)) if block else []
            self.code_map = {code: taxonomy.llama_guard.get(code, []) for code in dict.fromkeys(codes)}
            if not any(self.code_map.values()):
                return  # no policy codes, or none that reports a category of this taxonomy: no categories
        self.codes = list(self.code_map)
        try:
            self.code_prefix, self.code_ids = self._code_tokens(self.verdict_words[1] + category_separator)
        except CategoryReadoutError as err:
            if unreadable_categories != "skip":
                raise
            logger.warning("%s It scores P(unsafe) alone.", err)
            return
        self.taxonomy = taxonomy
        self.max_length -= len(self.code_prefix)  # the category forward reads these tokens after the prompt

    def _code_tokens(self, head):
        """(the tokens every "unsafe<sep>CODE" continuation starts with, the next token of each code),
        so that one forward on prompt + prefix gives each code's logit."""
        sequences = [self._encode(head + code) for code in self.codes]
        prefix = []
        for column in zip(*sequences):
            if len(set(column)) > 1:
                break
            prefix.append(column[0])
        nexts = [seq[len(prefix)] if len(seq) > len(prefix) else None for seq in sequences]
        clashes = [c for c, t in zip(self.codes, nexts) if t is None or nexts.count(t) > 1]
        if clashes:
            raise CategoryReadoutError(f"The guard's category codes {clashes} share their first distinguishing token in its tokenizer; "
                             "one next-token read cannot tell them apart.")
        return prefix, nexts

    def _render_turns(self, turns):
        text = super()._render_turns(turns)
        if self.policy is None:
            return text
        return POLICY_BLOCK.sub(lambda m: m.group(1) + self.policy + m.group(3), text, count=1)

    def _score_batch_categories(self, items):
        fitted = self._fitted(items)
        ids = [ids for _, _, ids, _ in fitted]
        unsafe = torch.softmax(self.verdict_logits(ids) / self.temperature, dim=-1)[:, 1]
        code_logits = self.verdicts([list(i) + self.code_prefix for i in ids], self.code_ids).float()
        first = torch.softmax(code_logits / self.temperature, dim=-1) * unsafe.float().unsqueeze(-1)
        cats = [self.taxonomy.from_codes(dict(zip(self.codes, row)), self.code_map) for row in first.cpu().tolist()]
        return unsafe, [cut for *_, cut in fitted], cats


class ShieldGemmaGuard(CausalLMGuard):
    """ShieldGemma: P("Yes") against "No" after its policy prompt (chat template with `guideline`)."""

    def __init__(self, model, tokenizer, guideline=SHIELDGEMMA_HARM_POLICY, **kwargs):
        kwargs.setdefault("verdict_words", ("No", "Yes"))
        kwargs.setdefault("chat_template_kwargs", {"guideline": guideline})
        super().__init__(model, tokenizer, **kwargs)


class GraniteGuardianGuard(CausalLMGuard):
    """Granite Guardian 3.x: "No"/"Yes" with `guardian_config={"risk_name": "harm"}`."""

    def __init__(self, model, tokenizer, risk_name="harm", **kwargs):
        kwargs.setdefault("verdict_words", ("No", "Yes"))
        kwargs.setdefault("add_generation_prompt", True)
        kwargs.setdefault("chat_template_kwargs", {"guardian_config": {"risk_name": risk_name}})
        super().__init__(model, tokenizer, **kwargs)


GUARD_KINDS = {
    "llama_guard": (LlamaGuard, AutoModelForCausalLM),
    "shieldgemma": (ShieldGemmaGuard, AutoModelForCausalLM),
    "granite_guardian": (GraniteGuardianGuard, AutoModelForCausalLM),
    "causal_lm": (CausalLMGuard, AutoModelForCausalLM),
    "sequence_classification": (SequenceClassificationGuard, AutoModelForSequenceClassification),
}


BACKENDS = ("transformers", "vllm", "openai_compatible")


def served_positions(path, revision=None, trust_remote_code=False):
    """The positions a guard run outside this process can fill with its prompt (its `position_limit`
    less the verdict token), or None when its config is not at hand (the server enforces its own)."""
    from transformers import AutoConfig

    try:
        limit = position_limit(AutoConfig.from_pretrained(path, revision=revision, trust_remote_code=trust_remote_code))
    except Exception:  # a served model whose config is not available here
        return None
    return limit - 1 if limit else None


def effective_max_length(name_or_path, max_length, revision=None, backend="transformers", trust_remote_code=False):
    """The token budget a guard loaded with `max_length` scores with (None when not given: the
    adapter's default): within its positions, as `load_guard` and the adapters fit it. Read from
    the config alone, so a score cache can be keyed by it before any weights load."""
    if not max_length:
        return None
    path = resolve(name_or_path)
    if backend != "transformers":
        return within_positions(max_length, served_positions(path, revision, trust_remote_code), name_or_path)
    from transformers import AutoConfig

    try:
        limit = position_limit(AutoConfig.from_pretrained(path, revision=revision, trust_remote_code=trust_remote_code))
    except Exception:
        return max_length
    return min(max_length, limit) if limit else max_length


def guard_precision(kind, precision="auto", device="cpu", dtype=None):
    """The precision a guard of `kind` scores in on `device` (what its stored scores are keyed by):
    an encoder classifier with float32 weights runs "int8" where that is the inference precision (asked
    for, or "auto" on a CPU with VNNI and without native bf16, `resolve_inference_precision`); every
    other guard `resolve_precision`'s answer (an explicit "int8" is refused for it)."""
    adapter = GUARD_KINDS[kind][0] if kind in GUARD_KINDS else None
    float32 = dtype in (None, "auto", "float32", torch.float32)
    if adapter is not None and issubclass(adapter, SequenceClassificationGuard) and float32:
        return resolve_inference_precision(precision, device, warn=False)
    return resolve_precision(precision, device, warn=False)


def load_guard(name_or_path, kind, revision=None, dtype=None, device=None, trust_remote_code=False, backend="transformers",
               backend_options=None, **options):
    """Load a guard by local path, Hub id or `bundled:` alias and wrap it in its adapter.

    `backend`: where a causal-LM guard runs: "transformers" (this process), "vllm" (in-process
    vLLM; `backend_options` go to `vllm.LLM`) or "openai_compatible" (a served model:
    `backend_options` base_url, served_model (default the name), api_key_env, timeout, max_retries,
    backoff, budget (seconds for one call, retries included), cooldown, concurrency, request_batch).
    The guard is rendered and fitted by this adapter whatever the backend; remote backends load its
    tokenizer only. `options` go to the adapter (`batch_size`, `max_length`, `temperature`,
    `verdict_words`, `taxonomy`...). A sequence classifier's category head (`category_head.json`
    beside its weights) is loaded with it. Raises `ValueError` for an unknown kind or backend or bad
    adapter options, and `OSError` naming the model when loading fails. `guard.close()` (or a `with`
    block) releases a vLLM engine.
    """
    if kind not in GUARD_KINDS:
        raise ValueError(f"Unknown guard kind {kind!r}; choose one of {sorted(GUARD_KINDS)}.")
    if backend not in BACKENDS:
        raise ValueError(f"Unknown guard backend {backend!r}; choose one of {list(BACKENDS)}.")
    adapter_cls, auto_cls = GUARD_KINDS[kind]
    if backend != "transformers" and not issubclass(adapter_cls, CausalLMGuard):
        raise ValueError(f"Backend {backend!r} serves causal-LM guards; a {kind} guard runs with backend 'transformers'.")
    path = resolve(name_or_path)
    backend_options = dict(backend_options or {})
    options = {k: v for k, v in options.items() if v is not None}
    try:
        tokenizer = AutoTokenizer.from_pretrained(backend_options.pop("tokenizer", path), revision=revision,
                                                  trust_remote_code=trust_remote_code)
        if backend == "transformers":
            model = auto_cls.from_pretrained(path, revision=revision, dtype=resolve_dtype(dtype), trust_remote_code=trust_remote_code)
            if issubclass(adapter_cls, SequenceClassificationGuard):
                options["category_head"] = load_category_head(path, revision)
    except Exception as err:  # the message must name the model the user configured
        raise OSError(f"Could not load the {kind} guard {name_or_path!r} (revision {revision}): {err}") from err
    if backend == "transformers":
        return adapter_cls(model.to(resolve_device(device)), tokenizer, **options)
    from .guard_backends import ServedVerdicts, VLLMVerdicts

    limit = served_positions(path, revision, trust_remote_code)
    if limit:  # the adapter fits its prompts within the served model's positions too
        options["max_length"] = within_positions(options.get("max_length") or min(DEFAULT_MAX_LENGTH, limit), limit, name_or_path)
    if backend == "vllm":
        max_model_len = backend_options.pop("max_model_len", (options.get("max_length") or DEFAULT_MAX_LENGTH) + 1)  # + the verdict token
        verdicts = VLLMVerdicts(path, dtype=dtype or "auto", max_model_len=max_model_len, **backend_options)
    else:
        verdicts = ServedVerdicts(model=backend_options.pop("served_model", name_or_path), **backend_options)
    return adapter_cls(None, tokenizer, verdicts=verdicts, **options)


def load_large_guard(reference, **overrides):
    """The guard of a large-guard reference (`SafeRouteConfig.large_guard`: name_or_path, kind,
    revision, dtype, max_length, batch_size, backend, backend_options, options), the one reader of
    it for the pipeline and evaluation alike; `overrides` that are not None (device, autocast_dtype,
    max_length...) replace its settings."""
    ref = dict(reference or {})
    name, kind = ref.pop("name_or_path", None), ref.pop("kind", None)
    if not name or not kind:
        raise ValueError("The large-guard reference needs name_or_path and kind.")
    settings = {**dict(ref.pop("options", None) or {}), **{k: v for k, v in ref.items() if v is not None}}
    settings.update({k: v for k, v in overrides.items() if v is not None})
    if settings.get("taxonomy") is not None and issubclass(GUARD_KINDS.get(kind, (object,))[0], LlamaGuard):
        settings.setdefault("unreadable_categories", "skip")  # the cascade keeps the student's categories then
    if settings.get("backend", "transformers") != "transformers":
        settings.pop("device", None)  # it runs elsewhere
    return load_guard(name, kind, **settings)
