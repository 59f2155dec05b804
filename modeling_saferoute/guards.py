"""Large-guard adapters: one `score(items) -> P(unsafe)` for teacher labels, router labels,
evaluation and routed inference alike.

- Causal-LM guards render the conversation with the guard's chat template, append the guard's
  suffix, and read the next-token logits of the first tokens of the two verdict words at the last
  position only: P(unsafe) = softmax([logit(safe_word), logit(unsafe_word)] / T)[1].
- Sequence-classification guards: softmax(logits / T)[:, 1] on `tokenizer(prompt, response)`.

Items are `{"prompt": str, "response": str | None}` dicts (see `inputs.normalize_input`).
"""

import math

import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from .bundled import resolve
from .inputs import cap_chars, encode_pairs, length_sorted_batches, normalize_input

SHIELDGEMMA_HARM_POLICY = (
    '"No Harmful Content": The prompt shall not contain or seek generation of content that is dangerous, '
    "hateful, harassing or sexually explicit, or that helps someone harm themselves or others."
)


def _dtype(dtype):
    if dtype in (None, "auto") or isinstance(dtype, torch.dtype):
        return dtype if dtype is not None else "auto"
    if not hasattr(torch, str(dtype)):
        raise ValueError(f"Unknown dtype {dtype!r}; use e.g. 'float32', 'bfloat16', 'float16' or 'auto'.")
    return getattr(torch, dtype)


def _device(device):
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _progress(iterable, show, desc, total):
    if not show:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total)


class Guard:
    """Base class: batched, sorted by length, `torch.inference_mode()`; subclasses score one batch."""

    def __init__(self, model, tokenizer, batch_size=16, max_length=2048, temperature=1.0):
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}.")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_length = max_length
        self.temperature = temperature

    @property
    def device(self):
        return next(self.model.parameters()).device

    def _lengths(self, items):
        return [len(it["prompt"]) + len(it["response"] or "") for it in items]

    def score(self, items, batch_size=None, show_progress=False):
        """P(unsafe) for each item, in input order, as a list of floats."""
        items = [normalize_input(it) for it in items]
        batches = length_sorted_batches(self._lengths(items), batch_size or self.batch_size)
        scores = [math.nan] * len(items)
        with torch.inference_mode():
            for batch in _progress(batches, show_progress, f"scoring ({type(self).__name__})", len(batches)):
                probs = self._score_batch([items[i] for i in batch])
                for i, p in zip(batch, probs.float().cpu().tolist()):
                    scores[i] = p
        return scores

    def _score_batch(self, items):
        raise NotImplementedError


class SequenceClassificationGuard(Guard):
    """A 2-way classifier on the pair encoding (e.g. a HarmAug DeBERTa); label 1 = unsafe."""

    def __init__(self, model, tokenizer, **kwargs):
        super().__init__(model, tokenizer, **kwargs)
        # never encode past the encoder's position limit (e.g. 512 for MiniLM / MPNet)
        limits = [getattr(model.config, "max_position_embeddings", None), tokenizer.model_max_length]
        self.max_length = min([self.max_length] + [x for x in limits if x and x < 1_000_000])

    def _score_batch(self, items):
        encodings, _ = encode_pairs(self.tokenizer, items, self.max_length)
        batch = self.tokenizer.pad(encodings, return_tensors="pt").to(self.device)
        logits = self.model(**batch).logits.float()
        if logits.shape[-1] != 2:
            raise ValueError(f"Sequence-classification guard must have 2 labels, got {logits.shape[-1]}.")
        return torch.softmax(logits / self.temperature, dim=-1)[:, 1]


class CausalLMGuard(Guard):
    """A chat LLM that answers with a verdict word; P(unsafe) from its first-token logits.

    Args:
        verdict_words: (safe_word, unsafe_word); their first tokens must differ.
        suffix: text appended after the rendered chat ("\\n\\n" for Llama Guard 3).
        add_generation_prompt, chat_template_kwargs: passed to `apply_chat_template`.
        content_as_parts: message content as `[{"type": "text", "text": ...}]` (Llama-Guard-3-1B).
        max_content_tokens: each message is cut to this many tokens before rendering.
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
        **kwargs,
    ):
        super().__init__(model, tokenizer, **kwargs)
        if tokenizer.chat_template is None:
            raise ValueError(f"Causal-LM guard {model.name_or_path!r} has no chat template in its tokenizer.")
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

    def _clip(self, text):
        text, _ = cap_chars(text, self.max_content_tokens)
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        if len(ids) <= self.max_content_tokens:
            return text
        return self.tokenizer.decode(ids[: self.max_content_tokens])

    def conversation(self, item):
        """The chat messages of a guard input: the user turn, plus the assistant turn if any."""
        turns = [("user", item["prompt"])] + ([("assistant", item["response"])] if item["response"] else [])
        messages = []
        for role, text in turns:
            text = self._clip(text)
            content = [{"type": "text", "text": text}] if self.content_as_parts else text
            messages.append({"role": role, "content": content})
        return messages

    def render(self, item):
        """The exact text the guard reads; its next token is the verdict."""
        text = self.tokenizer.apply_chat_template(
            self.conversation(item),
            tokenize=False,
            add_generation_prompt=self.add_generation_prompt,
            **self.chat_template_kwargs,
        )
        return text + self.suffix

    def verdict_logits(self, texts):
        """(batch, 2) logits of the first tokens of (safe_word, unsafe_word) after each text."""
        batch = self.tokenizer(
            texts, add_special_tokens=False, padding=True, truncation=True, max_length=self.max_length,
            return_tensors="pt",
        ).to(self.device)
        try:
            logits = self.model(**batch, logits_to_keep=1).logits[:, -1]
        except TypeError:  # models without logits_to_keep
            logits = self.model(**batch).logits[:, -1]
        return logits[:, self.verdict_ids].float()

    def _score_batch(self, items):
        logits = self.verdict_logits([self.render(it) for it in items])
        return torch.softmax(logits / self.temperature, dim=-1)[:, 1]


class LlamaGuard(CausalLMGuard):
    """Llama Guard 3 (and guards trained by `saferoute train-guard --kind llama_guard`)."""

    def __init__(self, model, tokenizer, **kwargs):
        kwargs.setdefault("verdict_words", ("safe", "unsafe"))
        kwargs.setdefault("suffix", "\n\n")
        super().__init__(model, tokenizer, **kwargs)


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


def load_guard(name_or_path, kind, revision=None, dtype=None, device=None, trust_remote_code=False, **options):
    """Load a guard by local path, Hub id or `bundled:` alias and wrap it in its adapter.

    `options` go to the adapter (`batch_size`, `max_length`, `temperature`, `verdict_words`...).
    Raises `ValueError` for an unknown kind and `OSError` naming the model when loading fails.
    """
    if kind not in GUARD_KINDS:
        raise ValueError(f"Unknown guard kind {kind!r}; choose one of {sorted(GUARD_KINDS)}.")
    adapter_cls, auto_cls = GUARD_KINDS[kind]
    path = resolve(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, revision=revision, trust_remote_code=trust_remote_code)
        model = auto_cls.from_pretrained(
            path, revision=revision, dtype=_dtype(dtype), trust_remote_code=trust_remote_code
        )
    except Exception as err:  # the message must name the model the user configured
        raise OSError(f"Could not load the {kind} guard {name_or_path!r} (revision {revision}): {err}") from err
    options = {k: v for k, v in options.items() if v is not None}
    return adapter_cls(model.to(_device(device)), tokenizer, **options)
