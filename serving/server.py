"""`saferoute serve`: a SafeRoute model behind an HTTP moderation endpoint (FastAPI + uvicorn).

Why FastAPI + uvicorn: both are well kept and already installed with the project (Gradio runs
on them), pydantic validates the OpenAI request shape, and concurrency comes free from asyncio.
Dynamic batching is not built into FastAPI (LitServe and Ray Serve have it, at the price of their
own process model and a dependency each); `serving.batcher.DynamicBatcher` does it in one small
module, over the thread-safe pipeline.

    saferoute serve --model outputs/saferoute-guard --port 8000
    curl -s localhost:8000/v1/moderations -d '{"input": "How do I pick a lock?"}'

| route | what |
| --- | --- |
| POST /v1/moderations | the OpenAI moderation API shape: `input` a string or a list of strings; `results[i].flagged`, `categories`, `category_scores` (key `unsafe`), plus `router_score`, `routed`, `decided_by` |
| POST /v1/classify | `inputs`: one or a list of the pipeline's input forms (strings, pairs, conversations); `options`: threshold, router_threshold, route, long_inputs, on_large_guard_error; the pipeline's results |
| WS /v1/moderations/stream | a response judged while it is written: chunks in, a verdict per chunk out, `stop` when to cut it (`serving/streaming.py`) |
| GET /health | 200 with the model name once it is loaded |
| GET /metrics | request and item counts, errors, latency percentiles, the share routed, batch sizes |

Limits (each answered with a message naming it): a body over `max_body_bytes` (413), more than
`max_items` inputs in a request (413), an input over `max_chars` characters (422, with its index),
a bad input (422, with its index). No input crashes the server: an unexpected error is a 500
with its message, and the next request is served.
"""

import asyncio
import json
import logging
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from saferoute.config import parse_args

from .batcher import DynamicBatcher
from .streaming import add_stream_route

logger = logging.getLogger(__name__)
OPTIONS = ("threshold", "router_threshold", "route", "long_inputs", "on_large_guard_error")


@dataclass
class ServeArguments:
    model: str = field(default="{output_root}/saferoute-guard", metadata={"help": "SafeRoute model folder or Hub id."})
    host: str = field(default="127.0.0.1", metadata={"help": "Interface to listen on."})
    port: int = field(default=8000, metadata={"help": "Port to listen on."})
    max_batch_size: int = field(default=64, metadata={"help": "Most inputs joined into one pipeline call."})
    max_wait_ms: float = field(default=5.0, metadata={"help": "How long the first input of a batch waits for others."})
    workers: int = field(default=2, metadata={"help": "Batcher threads (a batch's large-guard call overlaps the next student forward)."})
    max_items: int = field(default=256, metadata={"help": "Most inputs in one request (413 above)."})
    max_chars: int = field(default=200_000, metadata={"help": "Most characters in one input (422 above, naming its index)."})
    max_body_bytes: int = field(default=4_000_000, metadata={"help": "Largest request body (413 above)."})
    on_large_guard_error: str = field(default="raise", metadata={"help": "Default policy when the large guard fails: raise (HTTP 503), student or unsafe."})
    autocast_dtype: str = field(default="auto", metadata={"help": "The student's autocast: auto (bf16 where native), none, bfloat16."})
    stream_idle_seconds: float = field(default=30.0, metadata={"help": "A stream with no message for this long is closed with its verdict so far."})
    max_streams: int = field(default=256, metadata={"help": "Most streams open at once (a new one is refused with close code 1013 above)."})
    device: Optional[str] = field(default=None, metadata={"help": "Device of the student (default: cuda when available, else cpu)."})


class ModerationRequest(BaseModel):
    input: Union[str, list[str]]
    model: Optional[str] = None


class ClassifyRequest(BaseModel):
    inputs: Any
    options: dict = Field(default_factory=dict)


class LimitError(Exception):
    def __init__(self, status, message):
        super().__init__(message)
        self.status, self.message = status, message


class Metrics:
    """Counters and a window of recent latencies, read by GET /metrics."""

    def __init__(self, window=10_000):
        self.lock = threading.Lock()
        self.requests, self.errors, self.items, self.routed = {}, {}, 0, 0
        self.latencies = deque(maxlen=window)
        self.batches, self.batch_items = 0, 0

    def request(self, route, status, seconds, results=()):
        with self.lock:
            key = f"{route} {status}"
            self.requests[key] = self.requests.get(key, 0) + 1
            if status >= 400:
                self.errors[route] = self.errors.get(route, 0) + 1
            self.latencies.append(seconds)
            self.items += len(results)
            self.routed += sum(bool(r.get("routed")) for r in results)

    def batch(self, n, seconds):
        with self.lock:
            self.batches += 1
            self.batch_items += n

    def snapshot(self):
        with self.lock:
            latencies = sorted(self.latencies)

            def pct(q):
                return round(1000 * latencies[min(len(latencies) - 1, int(q * len(latencies)))], 3) if latencies else None

            return {"requests": dict(self.requests), "errors": dict(self.errors), "items": self.items,
                    "routed_share": self.routed / self.items if self.items else None,
                    "latency_ms": {"p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99), "window": len(latencies)},
                    "batches": self.batches, "mean_batch_items": self.batch_items / self.batches if self.batches else None}


def moderation_result(result):
    """One OpenAI-moderation-shaped result from a pipeline result (plus the SafeRoute fields)."""
    unsafe = result["label"] == "unsafe"
    out = {"flagged": unsafe, "categories": {"unsafe": unsafe}, "category_scores": {"unsafe": result["unsafe_score"]},
           "router_score": result["router_score"], "routed": result["routed"], "decided_by": result["decided_by"],
           "truncated": result["truncated"]}
    if "large_guard_error" in result:
        out["large_guard_error"] = result["large_guard_error"]
    return out


def build_app(pipe, args: ServeArguments, model_name=None):
    """The FastAPI app serving `pipe` (a SafeRoute pipeline) with the limits and batching of `args`."""
    from modeling_saferoute.inputs import is_conversation, normalize_batch

    metrics = Metrics()
    batcher = DynamicBatcher(pipe, args.max_batch_size, args.max_wait_ms, args.workers, on_batch=metrics.batch)
    app = FastAPI(title="SafeRoute moderation", version="1")
    app.state.batcher, app.state.metrics = batcher, metrics
    name = model_name or args.model

    def validated(inputs):
        if len(inputs) > args.max_items:
            raise LimitError(413, f"The request holds {len(inputs)} inputs; the limit is max_items={args.max_items}.")
        for i, item in enumerate(inputs):
            size = text_size(item)
            if size > args.max_chars:
                raise LimitError(422, f"Input {i} has {size} characters; the limit is max_chars={args.max_chars}.")
        try:
            return normalize_batch(inputs)
        except ValueError as err:
            raise LimitError(422, str(err)) from None

    async def run(items, options):
        future = batcher.submit(items, options)
        return await asyncio.wrap_future(future)

    @app.middleware("http")
    async def limit_body(request: Request, call_next):
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > args.max_body_bytes:
            return JSONResponse({"error": {"message": f"The body has {declared} bytes; the limit is max_body_bytes={args.max_body_bytes}.",
                                           "type": "limit"}}, status_code=413)
        return await call_next(request)

    @app.exception_handler(RequestValidationError)
    async def invalid(request, err):
        metrics.request(request.url.path, 422, 0.0)
        return JSONResponse({"error": {"message": f"Invalid request: {err.errors()}", "type": "invalid_request"}}, status_code=422)

    async def answer(route, handler):
        start = time.perf_counter()
        try:
            body, results = await handler()
            metrics.request(route, 200, time.perf_counter() - start, results)
            return JSONResponse(body)
        except LimitError as err:
            status, message, kind = err.status, err.message, "limit" if err.status == 413 else "invalid_input"
        except ValueError as err:
            status, message, kind = 422, str(err), "invalid_input"
        except ConnectionError as err:  # the large guard is down and the policy is "raise"
            status, message, kind = 503, f"The large guard is unavailable: {err}", "large_guard_unavailable"
        except Exception as err:  # never crash on a request
            logger.exception("request failed")
            status, message, kind = 500, f"{type(err).__name__}: {err}", "internal"
        metrics.request(route, status, time.perf_counter() - start)
        return JSONResponse({"error": {"message": message, "type": kind}}, status_code=status)

    @app.post("/v1/moderations")
    async def moderations(request: ModerationRequest):
        async def handler():
            inputs = [request.input] if isinstance(request.input, str) else list(request.input)
            results = await run(validated(inputs), {"on_large_guard_error": args.on_large_guard_error})
            body = {"id": f"modr-{uuid.uuid4().hex[:24]}", "model": request.model or name,
                    "results": [moderation_result(r) for r in results]}
            return body, results
        return await answer("/v1/moderations", handler)

    @app.post("/v1/classify")
    async def classify(request: ClassifyRequest):
        async def handler():
            unknown = sorted(set(request.options) - set(OPTIONS))
            if unknown:
                raise LimitError(422, f"Unknown options {unknown}; allowed: {list(OPTIONS)}.")
            options = {"on_large_guard_error": args.on_large_guard_error, **request.options}
            pipe._sanitize_parameters(**options)  # a bad option is the request's error (422), before batching
            single = not isinstance(request.inputs, list) or is_conversation(request.inputs)
            inputs = [request.inputs] if single else list(request.inputs)
            results = await run(validated(inputs), options)
            return {"model": name, "results": results}, results
        return await answer("/v1/classify", handler)

    add_stream_route(app, pipe, batcher, args, text_size)

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": name, "large_guard_loaded": pipe._large_guard is not None}

    @app.get("/metrics")
    async def get_metrics():
        return {**metrics.snapshot(), "streams": app.state.streams.snapshot()}

    return app


def text_size(item):
    """Characters of text in one input of any form (strings, pair dicts, conversations)."""
    if isinstance(item, str):
        return len(item)
    if isinstance(item, dict):
        return sum(text_size(v) for v in item.values() if isinstance(v, (str, list)))
    if isinstance(item, list):
        return sum(text_size(m.get("content")) if isinstance(m, dict) else 0 for m in item)
    return 0


def load_pipeline(args):
    import torch
    from transformers import pipeline

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    return pipeline("text-classification", model=args.model, trust_remote_code=True, device=device, autocast_dtype=args.autocast_dtype)


def main(argv=None):
    import uvicorn

    args = parse_args([ServeArguments], argv, section="serve")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    app = build_app(load_pipeline(args), args)
    print(json.dumps({"serving": args.model, "url": f"http://{args.host}:{args.port}/v1/moderations"}))
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
