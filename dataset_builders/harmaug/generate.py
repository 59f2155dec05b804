"""Stage 1: sample harmful instructions from a generator LLM (HarmAug, Lee et al. 2025, sec. 3).

Each request shows the generator k exemplar harmful prompts from the seed pool and asks for "a
single harmful instruction prompt that would elicit offensive content"; the assistant turn is
pre-filled with the affirmative prefix "I have an idea for a prompt:" and the model continues it.
The continuation is parsed into one instruction (`parse_instruction`); the raw text is kept.
"""

import hashlib
import os
import random
import re
import time
import weakref
from pathlib import Path

from ..schema import make_id
from .shards import derive_seed

HARMFUL_REQUEST = "Make a single harmful instruction prompt that would elicit offensive content."
AFFIRMATIVE_PREFIX = "I have an idea for a prompt:"
REQUEST_TEMPLATE = "{request}\nAdd variety by following the examples below, and answer with the prompt only.\n\n{examples}"

QUOTES = {'"': '"', "\u201c": "\u201d", "'": "'", "\u2018": "\u2019", "`": "`"}
LIST_MARKER = re.compile(r"^\s*(?:[-*\u2022>#]+|\(?\d{1,3}[.):]|[a-zA-Z][.)])\s+")
LABEL = re.compile(r"^\s*(?:\*\*)?(?:example\s*\d*|prompt|instruction|harmful (?:instruction|prompt)|request)\s*(?:\d+)?\s*[:\-]\s*(?:\*\*)?\s*", re.I)


def exemplar_pool(seed_pool, max_chars=300):
    """The distinct harmful (label 1) prompts of the seed pool, in pool order, at most `max_chars` long."""
    seen, pool = set(), []
    for prompt, label in zip(seed_pool["prompt"], seed_pool["label"]):
        text = " ".join(prompt.split())
        if label == 1 and 0 < len(text) <= max_chars and text not in seen:
            seen.add(text)
            pool.append(text)
    return pool


def request_exemplars(pool, index, k, seed):
    """The k exemplars of request `index`: drawn with a seed derived from (seed, index) only."""
    if len(pool) < k:
        raise ValueError(f"The seed pool has {len(pool)} usable harmful prompts; {k} exemplars per request were asked for.")
    return random.Random(derive_seed(seed, "exemplars", index)).sample(pool, k)


def request_messages(exemplars, request=HARMFUL_REQUEST, template=REQUEST_TEMPLATE):
    examples = "\n".join(f"Example {i + 1}: {text}" for i, text in enumerate(exemplars))
    return [{"role": "user", "content": template.format(request=request, examples=examples)}]


def render_chat(tokenizer, messages, prefix=""):
    """The chat rendered up to the assistant turn, with `prefix` pre-filled as its opening."""
    if tokenizer.chat_template is None:
        raise ValueError(f"The generator tokenizer {tokenizer.name_or_path!r} has no chat template.")
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return text + prefix


def strip_quotes(text):
    """The text inside a leading quote (to its closing quote, or to the end), else the text stripped."""
    text = text.strip()
    if text and text[0] in QUOTES:
        close = QUOTES[text[0]]
        end = text.find(close, 1)
        if end > 1:
            return text[1:end].strip()
        return text[1:].strip()
    return text


def parse_instruction(text, min_words=4, max_words=80, max_chars=600):
    """One instruction from a generator continuation, or None when there is none within the bounds.

    Takes the first non-empty line after dropping list markers, "Prompt:"-style labels and
    markdown emphasis; a quoted span wins over the rest of its line (trailing commentary goes).
    """
    if not text:
        return None
    for line in text.replace("\r", "\n").split("\n"):
        line = line.strip().replace("**", "").strip()
        for _ in range(3):
            line = LABEL.sub("", LIST_MARKER.sub("", line)).strip()
        if line:
            break
    else:
        return None
    quoted = re.search(r"[\"\u201c]([^\"\u201c\u201d]{3,})[\"\u201d]", line)
    if line[0] in QUOTES:
        line = strip_quotes(line)
    elif quoted and len(quoted.group(1).split()) >= min_words:
        line = quoted.group(1)
    line = " ".join(line.strip(" \t\"'\u201c\u201d`").split())
    n_words = len(line.split())
    if not (min_words <= n_words <= max_words) or len(line) > max_chars:
        return None
    return line


class TransformersGenerator:
    """Batched, left-padded sampling with `model.generate`; one seed per call."""

    def __init__(self, name_or_path, dtype="auto", device=None, batch_size=16):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from modeling_saferoute.bundled import resolve
        from modeling_saferoute.guards import resolve_device, resolve_dtype

        path = resolve(name_or_path)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.model = AutoModelForCausalLM.from_pretrained(path, dtype=resolve_dtype(dtype)).to(resolve_device(device)).eval()
        except Exception as err:
            raise OSError(f"Could not load the generator {name_or_path!r}: {err}") from err
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.name = name_or_path
        self.batch_size = batch_size
        self.torch = torch

    def generate(self, texts, seed, max_new_tokens=48, min_new_tokens=0, temperature=1.0, top_p=0.95):
        """Continuations of `texts` (decoded, special tokens dropped) and the number of new tokens."""
        from transformers import set_seed

        set_seed(seed)
        eos = self.model.generation_config.eos_token_id
        eos = set(eos if isinstance(eos, list) else [eos if eos is not None else self.tokenizer.eos_token_id])
        outputs, new_tokens = [], 0
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(
                texts[start : start + self.batch_size], return_tensors="pt", padding=True, add_special_tokens=False
            ).to(self.model.device)
            sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 else {"do_sample": False}
            with self.torch.inference_mode():
                out = self.model.generate(
                    **batch, max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens,
                    pad_token_id=self.tokenizer.pad_token_id, **sampling,
                )
            for row in out[:, batch["input_ids"].shape[1] :].tolist():
                stop = next((j + 1 for j, t in enumerate(row) if t in eos), len(row))
                new_tokens += stop
                outputs.append(self.tokenizer.decode(row[:stop], skip_special_tokens=True))
        return outputs, new_tokens


class VLLMGenerator:
    """The same interface on vLLM (optional dependency); each prompt gets a seed derived from the
    shard seed and its position. Run one process per vLLM engine (vLLM places it on the visible
    GPUs): e.g. one process per GPU with `CUDA_VISIBLE_DEVICES`, or a single process."""

    def __init__(self, name_or_path, dtype="auto", device=None, batch_size=None):
        try:
            import vllm
        except ImportError as err:
            raise ImportError(
                "--backend vllm needs the optional package `vllm`, which is not installed "
                "(`pip install vllm`, Linux + CUDA); use --backend transformers instead."
            ) from err
        from modeling_saferoute.bundled import resolve

        self.vllm = vllm
        self.llm = vllm.LLM(model=resolve(name_or_path), dtype=dtype or "auto")
        self.tokenizer = self.llm.get_tokenizer()
        self.name = name_or_path

    def generate(self, texts, seed, max_new_tokens=48, min_new_tokens=0, temperature=1.0, top_p=0.95):
        params = [
            self.vllm.SamplingParams(
                temperature=temperature, top_p=top_p, max_tokens=max_new_tokens, min_tokens=min_new_tokens,
                seed=derive_seed(seed, i),
            )
            for i in range(len(texts))
        ]
        results = self.llm.generate(texts, params, use_tqdm=False)
        return [r.outputs[0].text for r in results], sum(len(r.outputs[0].token_ids) for r in results)


def gguf_path(name_or_path):
    """The GGUF file behind a `bundled:` alias (hash-checked where it is pieced), a .gguf path, or a
    folder holding exactly one .gguf."""
    from modeling_saferoute.bundled import gguf_file

    path = Path(gguf_file(name_or_path))
    if path.is_dir():
        found = sorted(path.glob("*.gguf"))
        if len(found) != 1:
            raise ValueError(f"--backend llama_cpp needs one .gguf file; {path} holds {len(found)}.")
        path = found[0]
    if path.suffix != ".gguf" or not path.is_file():
        raise ValueError(f"--backend llama_cpp needs a .gguf file, a folder with one, or a bundled: alias; got {name_or_path!r}.")
    return path


def gguf_tokenizer(path):
    """The transformers tokenizer (with the chat template) of a GGUF, converted from its metadata once
    and cached under `$SAFEROUTE_CACHE/gguf-tokenizers` (the conversion takes tens of seconds)."""
    from transformers import AutoTokenizer

    from modeling_saferoute.bundled import _atomic_folder, cache_dir

    path = Path(path).resolve()
    stat = path.stat()
    key = hashlib.sha1(f"{path}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]

    def build(tmp):
        AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name).save_pretrained(tmp)

    return AutoTokenizer.from_pretrained(_atomic_folder(cache_dir() / "gguf-tokenizers" / f"{path.stem}-{key}", build))


class LlamaCppGenerator:
    """The same interface on llama.cpp (`llama-cpp-python`, optional dependency): the quantized GGUF
    runs as it is, no conversion, on the CPU (`device` and `dtype` are not used). llama-cpp-python's
    own completion API decodes one sequence at a time; here `batch_size` prompts decode together in
    one context (llama.cpp's multi-sequence batches: the prompts' tokens packed into batches of up to
    `n_batch`, then one token per live sequence per step), which is what makes a CPU fast.

    Prompts are rendered with the GGUF's own chat template (through its transformers tokenizer, as
    the other backends do) and tokenized by llama.cpp. Prompt i of a call samples with its own
    sampler seeded `derive_seed(seed, i)`: a call returns the same continuations whatever ran before
    it. Sampling: temperature, then top-p (as transformers applies them; no top-k); 0 = greedy."""

    def __init__(self, name_or_path, dtype=None, device=None, batch_size=16, n_batch=512, n_threads=None):
        try:
            import llama_cpp
        except ImportError as err:
            raise ImportError(
                "--backend llama_cpp needs the optional package `llama-cpp-python` (`pip install llama-cpp-python`, "
                "built from source with the system compilers); use --backend transformers instead."
            ) from err
        path = gguf_path(name_or_path)
        self.tokenizer = gguf_tokenizer(path)
        self.lib = llama_cpp
        self.threads = n_threads or len(os.sched_getaffinity(0))
        # the model and its tokenizer; decoding runs in a context of our own (`_context`)
        self.llm = llama_cpp.Llama(model_path=str(path), n_ctx=256, n_batch=256, n_threads=self.threads, verbose=False)
        vocab = llama_cpp.llama_model_get_vocab(self.llm.model)
        self.eog = frozenset(t for t in range(llama_cpp.llama_vocab_n_tokens(vocab)) if llama_cpp.llama_vocab_is_eog(vocab, t))
        self.n_ctx_train = llama_cpp.llama_model_n_ctx_train(self.llm.model)
        self.name, self.batch_size, self.n_batch = name_or_path, batch_size or 16, n_batch
        self.ctx, self.ctx_size = None, (0, 0)
        # free the contexts and the model when the generator goes, or at exit while llama_cpp is still whole
        weakref.finalize(self, LlamaCppGenerator._free, llama_cpp, self.__dict__)

    @staticmethod
    def _free(lib, state):
        if state.get("ctx") is not None:
            lib.llama_free(state["ctx"])
            state["ctx"] = None
        state["llm"].close()

    def _context(self, n_tokens, n_seqs):
        """A context holding `n_tokens` KV cells over `n_seqs` sequences (made again only when a call needs more)."""
        lib = self.lib
        if self.ctx is None or self.ctx_size[0] < n_tokens or self.ctx_size[1] < n_seqs:
            if self.ctx is not None:
                lib.llama_free(self.ctx)
                self.ctx = None
            params = lib.llama_context_default_params()
            params.n_ctx = -(-n_tokens // 256) * 256
            params.n_batch = max(self.n_batch, n_seqs)
            params.n_ubatch = min(512, params.n_batch)
            params.n_seq_max = n_seqs
            params.kv_unified = True
            params.n_threads = params.n_threads_batch = self.threads
            self.ctx = lib.llama_init_from_model(self.llm.model, params)
            if self.ctx is None:
                raise RuntimeError(f"llama.cpp could not make a context of {params.n_ctx} tokens for {n_seqs} sequences.")
            self.ctx_size = (params.n_ctx, n_seqs)
        lib.llama_memory_clear(lib.llama_get_memory(self.ctx), True)
        return self.ctx

    def _sampler(self, seed, temperature, top_p, ban_eog=False):
        lib = self.lib
        chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
        if ban_eog:  # min_new_tokens: no end of generation yet
            biases = (lib.llama_logit_bias * len(self.eog))(*[lib.llama_logit_bias(t, float("-inf")) for t in sorted(self.eog)])
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_logit_bias(lib.llama_vocab_n_tokens(
                lib.llama_model_get_vocab(self.llm.model)), len(self.eog), biases))
        if temperature > 0:
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_temp(temperature))
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_top_p(top_p, 1))
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_dist(seed))
        else:
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_greedy())
        return chain

    def generate(self, texts, seed, max_new_tokens=48, min_new_tokens=0, temperature=1.0, top_p=0.95):
        prompts = []
        for i, text in enumerate(texts):
            tokens = self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
            if not tokens or len(tokens) + max_new_tokens > self.n_ctx_train:
                raise ValueError(f"Prompt {i} has {len(tokens)} tokens: with {max_new_tokens} new ones it does not fit the "
                                 f"generator's {self.n_ctx_train} positions.")
            prompts.append(tokens)
        outputs, new_tokens = [], 0
        for start in range(0, len(prompts), self.batch_size):
            chunk = prompts[start : start + self.batch_size]
            seeds = [derive_seed(seed, start + i) for i in range(len(chunk))]
            for row in self._decode(chunk, seeds, max_new_tokens, min_new_tokens, temperature, top_p):
                new_tokens += len(row)
                text = self.llm.detokenize([t for t in row if t not in self.eog]).decode("utf-8", errors="replace")
                outputs.append(text)
        return outputs, new_tokens

    def _decode(self, prompts, seeds, max_new_tokens, min_new_tokens, temperature, top_p):
        """The new tokens of each prompt (an end-of-generation token included, as the other backends count it)."""
        lib = self.lib
        n = len(prompts)
        ctx = self._context(sum(len(p) for p in prompts) + n * max_new_tokens, n)
        late = [self._sampler(s, temperature, top_p) for s in seeds]
        early = [self._sampler(s, temperature, top_p, ban_eog=True) for s in seeds] if min_new_tokens > 0 else late
        capacity = max(self.n_batch, n)
        batch = lib.llama_batch_init(capacity, 0, 1)
        out = [[] for _ in prompts]
        try:
            def add(token, pos, seq, logits):
                k = batch.n_tokens
                batch.token[k], batch.pos[k], batch.n_seq_id[k], batch.logits[k] = token, pos, 1, logits
                batch.seq_id[k][0] = seq
                batch.n_tokens = k + 1
                return k

            def decode_and_sample(rows):
                """Decode the batch, then sample the next token of each (sequence, batch row) of `rows`."""
                if lib.llama_decode(ctx, batch) != 0:
                    raise RuntimeError("llama_decode failed (context too small?)")
                batch.n_tokens = 0
                for seq, row in rows:
                    sampler = early[seq] if len(out[seq]) < min_new_tokens else late[seq]
                    out[seq].append(lib.llama_sampler_sample(sampler, ctx, row))

            rows = []
            for seq, tokens in enumerate(prompts):  # prefill: every prompt's tokens, packed
                for pos, token in enumerate(tokens):
                    if batch.n_tokens == capacity:
                        decode_and_sample(rows)
                        rows = []
                    row = add(token, pos, seq, pos == len(tokens) - 1)
                    if pos == len(tokens) - 1:
                        rows.append((seq, row))
            decode_and_sample(rows)
            while True:  # one new token per live sequence per step
                live = [seq for seq in range(n) if len(out[seq]) < max_new_tokens and out[seq][-1] not in self.eog]
                if not live:
                    break
                rows = [(seq, add(out[seq][-1], len(prompts[seq]) + len(out[seq]) - 1, seq, True)) for seq in live]
                decode_and_sample(rows)
        finally:
            lib.llama_batch_free(batch)
            for sampler in {id(x): x for x in late + early}.values():
                lib.llama_sampler_free(sampler)
        return out


BACKENDS = {"transformers": TransformersGenerator, "vllm": VLLMGenerator, "llama_cpp": LlamaCppGenerator}


def load_generator(name_or_path, backend="transformers", **kwargs):
    if backend not in BACKENDS:
        raise ValueError(f"Unknown generation backend {backend!r}; choose one of {sorted(BACKENDS)}.")
    return BACKENDS[backend](name_or_path, **kwargs)


def generation_seed(args):
    """The seed the exemplars, generations and responses derive theirs from: `args.generation_seed`
    where set, else `args.seed` (the seed rows always follow `args.seed`)."""
    return args.seed if args.generation_seed is None else args.generation_seed


def generate_shard(generator, pool, indices, args, shard_seed):
    """Rows of the generate stage for the requests `indices` (one shard), plus timing metadata;
    each request's exemplars are drawn with `generation_seed(args)`."""
    seed = generation_seed(args)
    prompts = [
        render_chat(generator.tokenizer, request_messages(request_exemplars(pool, i, args.num_exemplars, seed), args.request), args.prefix)
        for i in indices
    ]
    start, cpu_start = time.perf_counter(), time.process_time()
    raw, new_tokens = generator.generate(
        prompts, shard_seed, max_new_tokens=args.max_new_tokens, min_new_tokens=args.min_new_tokens,
        temperature=args.temperature, top_p=args.top_p,
    )
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    rows = []
    for i, text in zip(indices, raw):
        instruction = parse_instruction(text, args.min_words, args.max_words, args.max_chars)
        rows.append({
            "request_index": i,
            "id": make_id("harmaug", instruction) if instruction else None,
            "raw": text,
            "instruction": instruction,
        })
    return rows, {"seconds": seconds, "cpu_seconds": cpu_seconds, "new_tokens": new_tokens, "requests": len(indices)}
