"""Where a causal-LM guard runs, beside in-process transformers: in-process vLLM, or a served
model behind an OpenAI-compatible `/v1/completions` endpoint (`vllm serve`).

Both read the verdict the same exact way: the guard's rendered, fitted token ids are extended once
with the safe word's first token and once with the unsafe word's, and the log-probability of that
last token (a prompt logprob) is read for each; P(unsafe) = softmax([lp_safe, lp_unsafe] / T)[1],
the same number the transformers adapter computes from the next-token logits (the log-softmax
constant cancels in the 2-way softmax). No sampling, no top-k cut: both logprobs are always there.
"""

import concurrent.futures
import os
import random
import time

import torch

DEFAULT_API_KEY_ENV = "SAFEROUTE_LARGE_GUARD_API_KEY"


class VLLMVerdicts:
    """In-process vLLM (`vllm.LLM`, an optional dependency; one engine per process)."""

    def __init__(self, path, dtype="auto", max_model_len=None, **llm_options):
        try:
            import vllm
        except ImportError as err:
            raise ImportError("backend 'vllm' needs the optional package `vllm` (GPU: `pip install vllm`; "
                              "CPU: `make vllm-env`, see the README).") from err
        self.vllm = vllm
        options = {"enforce_eager": True, **llm_options}
        if max_model_len:
            options["max_model_len"] = max_model_len
        self.llm = vllm.LLM(model=str(path), tokenizer=str(path), dtype=dtype or "auto", **options)
        self.params = vllm.SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)

    def __call__(self, token_ids, verdict_ids):
        from vllm.inputs import TokensPrompt

        prompts = [TokensPrompt(prompt_token_ids=list(ids) + [v]) for ids in token_ids for v in verdict_ids]
        outputs = self.llm.generate(prompts, self.params, use_tqdm=False)
        lps = [out.prompt_logprobs[-1][v].logprob for out, v in zip(outputs, verdict_ids * len(token_ids))]
        return torch.tensor(lps, dtype=torch.float32).view(len(token_ids), len(verdict_ids))


class ServerUnavailable(ConnectionError):
    """The served large guard could not be reached (down, too slow, or refusing) after the retries."""


class ServedVerdicts:
    """A served guard behind an OpenAI-compatible completions endpoint (`vllm serve MODEL`).

    Each request sends token-id prompts with `echo=true, logprobs=0, max_tokens=1`; transport
    errors, timeouts, HTTP 429 and 5xx are retried `max_retries` times with jittered exponential
    backoff, then raise `ServerUnavailable`; other HTTP errors raise at once. Requests of
    `request_batch` items run `concurrency` at a time. The API key is read from the environment
    variable `api_key_env` (never stored in a config).
    """

    def __init__(self, base_url, model, api_key_env=DEFAULT_API_KEY_ENV, timeout=30.0, max_retries=3, backoff=0.5,
                 concurrency=8, request_batch=16):
        import httpx

        if not base_url:
            raise ValueError("A served large guard needs base_url (e.g. http://localhost:8000/v1).")
        self.url = base_url.rstrip("/") + "/completions"
        self.model = model
        self.max_retries, self.backoff, self.concurrency, self.request_batch = max_retries, backoff, concurrency, request_batch
        key = os.environ.get(api_key_env) if api_key_env else None
        self.client = httpx.Client(timeout=timeout, headers={"Authorization": f"Bearer {key}"} if key else {})
        self.httpx = httpx

    def _post(self, prompts):
        body = {"model": self.model, "prompt": prompts, "max_tokens": 1, "temperature": 0.0, "echo": True, "logprobs": 0}
        last = None
        for attempt in range(self.max_retries + 1):
            try:
                response = self.client.post(self.url, json=body)
                if response.status_code == 429 or response.status_code >= 500:
                    last = f"HTTP {response.status_code}: {response.text[:200]}"
                elif response.status_code != 200:
                    raise ValueError(f"The large guard at {self.url} refused the request: HTTP {response.status_code}: {response.text[:500]}")
                else:
                    return response.json()["choices"]
            except (self.httpx.TransportError, self.httpx.TimeoutException) as err:
                last = f"{type(err).__name__}: {err}"
            if attempt < self.max_retries:
                time.sleep(self.backoff * 2**attempt * (0.5 + random.random()))
        raise ServerUnavailable(f"The large guard at {self.url} did not answer after {self.max_retries + 1} tries: {last}")

    def _chunk(self, token_ids, verdict_ids):
        prompts = [list(ids) + [v] for ids in token_ids for v in verdict_ids]
        choices = sorted(self._post(prompts), key=lambda c: c["index"])
        lps = []
        for prompt, choice in zip(prompts, choices):
            logprobs = choice["logprobs"]["token_logprobs"]
            lps.append(float(logprobs[len(prompt) - 1]))  # the appended verdict token, the last of the prompt
        return lps

    def __call__(self, token_ids, verdict_ids):
        chunks = [token_ids[i : i + self.request_batch] for i in range(0, len(token_ids), self.request_batch)]
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, min(self.concurrency, len(chunks)))) as pool:
            parts = list(pool.map(lambda chunk: self._chunk(chunk, verdict_ids), chunks))
        lps = [lp for part in parts for lp in part]
        return torch.tensor(lps, dtype=torch.float32).view(len(token_ids), len(verdict_ids))
