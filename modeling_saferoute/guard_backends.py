"""Where a causal-LM guard runs, beside in-process transformers: in-process vLLM, or a served
model behind an OpenAI-compatible `/v1/completions` endpoint (`vllm serve`).

Both read the verdict the same exact way: the guard's rendered, fitted token ids are extended once
with the safe word's first token and once with the unsafe word's, and the log-probability of that
last token (a prompt logprob) is read for each; P(unsafe) = softmax([lp_safe, lp_unsafe] / T)[1],
the same number the transformers adapter computes from the next-token logits (the log-softmax
constant cancels in the 2-way softmax). No sampling, no top-k cut: both logprobs are always there.

A large guard that cannot give a verdict raises a `LargeGuardError` (never a `ValueError`, which
is kept for the caller's bad input): `LargeGuardUnavailable` when it cannot be reached in time
(connection refused, timeouts, HTTP 429 / 5xx after the retries, its time budget spent, marked down
after such a failure), `LargeGuardBadResponse` when it answered but refused the request (another
4xx) or with something that is not a completion with logprobs. The pipeline applies its
`on_large_guard_error` policy to these; `http_status` is the status a server answers with under
the policy "raise" (a server may hold the remote-code copy of these classes: it reads the attribute).
"""

import atexit
import concurrent.futures
import math
import os
import random
import threading
import time
import weakref

import torch

DEFAULT_API_KEY_ENV = "SAFEROUTE_LARGE_GUARD_API_KEY"


class LargeGuardError(RuntimeError):
    """The large guard could not give a verdict (a backend failure, not the caller's input)."""

    http_status = 502


class LargeGuardUnavailable(LargeGuardError, ConnectionError):
    """The large guard could not be reached in time: down, too slow, overloaded, or not loadable."""

    http_status = 503


class LargeGuardBadResponse(LargeGuardError):
    """The large guard answered, but refused the request or sent something that is not a verdict."""

    http_status = 502


ServerUnavailable = LargeGuardUnavailable  # the earlier name


def is_large_guard_error(error):
    """Whether `error` is a `LargeGuardError`, also one of another copy of this module (a model folder's
    remote code is imported under its own module name, with its own classes)."""
    return any(cls.__name__ == "LargeGuardError" for cls in type(error).__mro__)


def _shutdown_llm(llm):
    """Stop a `vllm.LLM`'s engine (its EngineCore process and workers) and wait for it."""
    shutdown = getattr(llm, "shutdown", None)  # vLLM versions that have it
    if callable(shutdown):
        shutdown()
        return
    core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
    if core is not None and callable(getattr(core, "shutdown", None)):
        core.shutdown()


class VLLMVerdicts:
    """In-process vLLM (`vllm.LLM`, an optional dependency).

    vLLM's engine is not thread-safe: every `generate` holds this object's lock, so one guard can be
    shared by the pipeline's threads. The engine (an EngineCore process on vLLM V1) is shut down by
    `close()`, on leaving a `with` block, when this object is collected, or at interpreter exit,
    whichever comes first: no engine process outlives its owner.
    """

    def __init__(self, path, dtype="auto", max_model_len=None, **llm_options):
        try:
            import vllm
        except ImportError as err:
            raise ImportError("backend 'vllm' needs the optional package `vllm` (GPU: `pip install vllm`; "
                              "CPU: `make vllm-env`, see the README).") from err
        options = {"enforce_eager": True, **llm_options}
        if max_model_len:
            options["max_model_len"] = max_model_len
        self.llm = vllm.LLM(model=str(path), tokenizer=str(path), dtype=dtype or "auto", **options)
        self.params = vllm.SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
        self._lock = threading.Lock()
        self._finalizer = weakref.finalize(self, _shutdown_llm, self.llm)
        # At exit, shut down from an atexit hook, as close() would: with gc on and before weakref's
        # exit hook, which runs every pending finalizer (vLLM's own included) with gc off.
        atexit.register(self._finalizer)

    def __call__(self, token_ids, verdict_ids):
        from vllm.inputs import TokensPrompt

        prompts = [TokensPrompt(prompt_token_ids=list(ids) + [v]) for ids in token_ids for v in verdict_ids]
        with self._lock:
            if not self._finalizer.alive:
                raise LargeGuardUnavailable("The in-process vLLM large guard was closed.")
            outputs = self.llm.generate(prompts, self.params, use_tqdm=False)
        lps = [out.prompt_logprobs[-1][v].logprob for out, v in zip(outputs, verdict_ids * len(token_ids))]
        return torch.tensor(lps, dtype=torch.float32).view(len(token_ids), len(verdict_ids))

    def close(self):
        """Shut the engine down (idempotent); later calls raise `LargeGuardUnavailable`."""
        with self._lock:
            self._finalizer()
        atexit.unregister(self._finalizer)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class ServedVerdicts:
    """A served guard behind an OpenAI-compatible completions endpoint (`vllm serve MODEL`).

    Each request sends token-id prompts with `echo=true, logprobs=0, max_tokens=1`. One call (one
    large-guard batch) has `budget` seconds in all, retries and backoff included: transport errors,
    timeouts, HTTP 429 and 5xx are retried up to `max_retries` times with jittered exponential
    backoff within the budget (each try waits at most `timeout` and what is left of the budget),
    then raise `LargeGuardUnavailable`, after which the guard counts as down for `cooldown` seconds
    (calls fail at once instead of waiting out the budget again: a dead upstream costs one budget,
    not one per batch). Other HTTP errors and answers that are not completions with logprobs raise
    `LargeGuardBadResponse` at once. Requests of `request_batch` items run `concurrency` at a time.
    The API key is read from the environment variable `api_key_env` (never stored in a config).
    """

    def __init__(self, base_url, model, api_key_env=DEFAULT_API_KEY_ENV, timeout=30.0, max_retries=3, backoff=0.5,
                 concurrency=8, request_batch=16, budget=15.0, cooldown=5.0):
        import httpx

        if not base_url:
            raise ValueError("A served large guard needs base_url (e.g. http://localhost:8000/v1).")
        for name, value in (("timeout", timeout), ("budget", budget)):
            if not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"The served large guard's {name} must be a number of seconds > 0, got {value!r}.")
        self.url = base_url.rstrip("/") + "/completions"
        self.model = model
        self.timeout, self.budget, self.cooldown = float(timeout), float(budget), float(cooldown or 0)
        self.max_retries, self.backoff, self.concurrency, self.request_batch = max_retries, backoff, concurrency, request_batch
        key = os.environ.get(api_key_env) if api_key_env else None
        self.client = httpx.Client(timeout=timeout, headers={"Authorization": f"Bearer {key}"} if key else {})
        self.httpx = httpx
        self._down = (0.0, "")  # (monotonic time until which the guard counts as down, why); replaced whole, never mutated

    def _post(self, prompts, deadline):
        body = {"model": self.model, "prompt": prompts, "max_tokens": 1, "temperature": 0.0, "echo": True, "logprobs": 0}
        last, tries = "no try fitted the budget", 0
        for attempt in range(self.max_retries + 1):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            tries += 1
            try:
                response = self.client.post(self.url, json=body, timeout=min(self.timeout, left))
            except (self.httpx.TransportError, self.httpx.TimeoutException) as err:
                last = f"{type(err).__name__}: {err}"
            else:
                if response.status_code == 200:
                    return self._choices(response, len(prompts))
                text = response.text[:300]
                if response.status_code != 429 and response.status_code < 500:
                    raise LargeGuardBadResponse(f"The large guard at {self.url} refused the request: HTTP {response.status_code}: {text}")
                last = f"HTTP {response.status_code}: {text}"
            if attempt < self.max_retries:
                pause = self.backoff * 2**attempt * (0.5 + random.random())
                if time.monotonic() + pause >= deadline:
                    break
                time.sleep(pause)
        raise LargeGuardUnavailable(f"The large guard at {self.url} did not answer after {tries} tries within its "
                                    f"budget of {self.budget:g} s: {last}")

    def _choices(self, response, n):
        """The completions of one answer, in prompt order; `LargeGuardBadResponse` for anything else."""
        try:
            choices = response.json()["choices"]
            choices = sorted(choices, key=lambda c: c["index"])
            if len(choices) != n:
                raise ValueError(f"{len(choices)} choices for {n} prompts")
            return [c["logprobs"]["token_logprobs"] for c in choices]
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise LargeGuardBadResponse(f"The large guard at {self.url} sent an answer that is not a completion with "
                                        f"logprobs ({type(err).__name__}: {err}): {response.text[:200]!r}") from None

    def _chunk(self, token_ids, verdict_ids, deadline):
        prompts = [list(ids) + [v] for ids in token_ids for v in verdict_ids]
        lps = []
        for prompt, logprobs in zip(prompts, self._post(prompts, deadline)):
            try:
                lp = float(logprobs[len(prompt) - 1])  # the appended verdict token, the last of the prompt
            except (IndexError, TypeError, ValueError):
                lp = math.nan
            if not math.isfinite(lp) and lp != -math.inf:
                raise LargeGuardBadResponse(f"The large guard at {self.url} sent no logprob for the verdict token "
                                            f"(position {len(prompt) - 1} of a {len(logprobs or [])}-token echo).")
            lps.append(lp)
        return lps

    def __call__(self, token_ids, verdict_ids):
        until, why = self._down
        if time.monotonic() < until:
            raise LargeGuardUnavailable(f"The large guard at {self.url} did not answer ({why}); not asked again for "
                                        f"{until - time.monotonic():.1f} s more (cooldown {self.cooldown:g} s).")
        deadline = time.monotonic() + self.budget
        chunks = [token_ids[i : i + self.request_batch] for i in range(0, len(token_ids), self.request_batch)]
        try:
            with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, min(self.concurrency, len(chunks)))) as pool:
                parts = list(pool.map(lambda chunk: self._chunk(chunk, verdict_ids, deadline), chunks))
        except LargeGuardUnavailable as err:
            if self.cooldown:
                self._down = (time.monotonic() + self.cooldown, str(err)[-200:])
            raise
        lps = [lp for part in parts for lp in part]
        return torch.tensor(lps, dtype=torch.float32).view(len(token_ids), len(verdict_ids))

    def close(self):
        self.client.close()
