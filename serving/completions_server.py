"""A minimal OpenAI-compatible `/v1/completions` server for a transformers causal-LM guard: what a
served large guard (`backend: openai_compatible`) asks of `vllm serve`, for CPU machines without
vLLM, the tests and `bench/bench_faults.py`.

It answers only the requests `ServedVerdicts` sends: token-id prompts with `echo: true`,
`logprobs: 0`, `max_tokens: 1`. Each choice's `logprobs.token_logprobs` holds the log-probability
of the prompt's last token given the tokens before it (the verdict the client appended); the other
positions are null (not computed), and no token is generated. Prompts run in left-padded batches
with explicit position ids, so a padded prompt scores as it would alone.

    python -m serving.completions_server --model outputs/llm-guard --port 8001
"""

import json
import threading
import uuid
from dataclasses import dataclass, field

import torch
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from saferoute.config import parse_args


@dataclass
class CompletionsServerArguments:
    model: str = field(metadata={"help": "Causal LM folder, Hub id or bundled: alias."})
    host: str = field(default="127.0.0.1", metadata={"help": "Interface to listen on."})
    port: int = field(default=8001, metadata={"help": "Port to listen on."})
    served_model_name: str = field(default=None, metadata={"help": "The name requests give as `model` (default: --model as given)."})
    dtype: str = field(default="float32", metadata={"help": "Weight dtype (float32, bfloat16)."})
    batch_size: int = field(default=16, metadata={"help": "Prompts per forward."})


class CompletionRequest(BaseModel):
    model: str
    prompt: list
    max_tokens: int = 16
    echo: bool = False
    logprobs: int = None


def last_token_logprobs(model, prompts, pad_id, batch_size=16):
    """log P(prompt[-1] | prompt[:-1]) of each token-id prompt (left-padded batches, explicit positions)."""
    out = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        width = max(len(p) for p in chunk)
        ids = torch.tensor([[pad_id] * (width - len(p)) + list(p) for p in chunk])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk])
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.inference_mode():
            logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=2).logits[:, 0].float()
        out.extend(torch.log_softmax(logits, -1).gather(1, ids[:, -1:]).squeeze(1).tolist())
    return out


def build_completions_app(model_path, served_model_name=None, dtype="float32", batch_size=16):
    from transformers import AutoModelForCausalLM

    from modeling_saferoute.bundled import resolve
    from modeling_saferoute.guards import resolve_dtype

    model = AutoModelForCausalLM.from_pretrained(resolve(model_path), dtype=resolve_dtype(dtype)).eval()
    pad_id = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    name = served_model_name or str(model_path)
    lock = threading.Lock()  # one forward at a time (FastAPI runs sync routes in a thread pool)
    app = FastAPI(title="completions (prompt logprobs)")

    @app.post("/v1/completions")
    def complete(request: CompletionRequest):
        prompts = request.prompt if request.prompt and isinstance(request.prompt[0], list) else [request.prompt]
        if request.model != name:
            return JSONResponse({"error": {"message": f"The model {request.model!r} does not exist; this server serves {name!r}."}}, 404)
        if not (request.echo and request.logprobs is not None and request.max_tokens <= 1):
            return JSONResponse({"error": {"message": "Only echo=true, logprobs>=0, max_tokens<=1 (prompt logprobs) is served."}}, 400)
        if not all(p and all(isinstance(t, int) and 0 <= t < model.config.vocab_size for t in p) for p in prompts):
            return JSONResponse({"error": {"message": "Each prompt must be a non-empty list of token ids of the vocabulary."}}, 400)
        with lock:
            lps = last_token_logprobs(model, prompts, pad_id, batch_size)
        choices = [{"index": k, "text": "", "finish_reason": "length",
                    "logprobs": {"token_logprobs": [None] * (len(p) - 1) + [lp], "tokens": None, "top_logprobs": None}}
                   for k, (p, lp) in enumerate(zip(prompts, lps))]
        return {"id": f"cmpl-{uuid.uuid4().hex[:16]}", "object": "text_completion", "model": name, "choices": choices}

    @app.get("/health")
    def health():
        return {"status": "ok", "model": name}

    return app


def main(argv=None):
    import uvicorn

    args = parse_args([CompletionsServerArguments], argv)
    app = build_completions_app(args.model, args.served_model_name, args.dtype, args.batch_size)
    print(json.dumps({"serving": args.model, "url": f"http://{args.host}:{args.port}/v1/completions"}), flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
