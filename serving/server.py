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
| POST /v1/moderations | the OpenAI moderation API shape: `input` a string or a list of strings; `results[i].flagged` (the binary verdict), `categories`, `category_scores` and `category_applied_input_types` keyed by the model's taxonomy (the 13 OpenAI moderation categories by default; a model without a category head answers the key `unsafe`), plus `router_score`, `routed`, `decided_by` |
| POST /v1/classify | `inputs`: one or a list of the pipeline's input forms (strings, pairs, conversations); `options`: threshold, router_threshold, route, long_inputs, on_large_guard_error; the pipeline's results |
| WS /v1/moderations/stream | a response judged while it is written: chunks in, a verdict per chunk out, `stop` when to cut it (`serving/streaming.py`) |
| GET /health | 200 with the model name once it is loaded (503 while shutting down), queue depths |
| GET /metrics | request and item counts, errors, latency percentiles, the share routed, batch sizes, queue depths |

Limits and failures, each answered with a status and a message naming it (`error.type`):

| what | status |
| --- | --- |
| a body over `max_body_bytes`, counted on the bytes read (a chunked upload too: nothing past the limit is kept) | 413 `limit` |
| more than `max_items` inputs in a request | 413 `limit` |
| an input over `max_chars` characters, in whatever form (a message's text parts included) | 422 `invalid_input`, naming its index |
| a bad input or option | 422 `invalid_input`, naming its index |
| `max_queue` inputs already waiting, or more queued work than the deadline leaves time for | 503 `overloaded` + `Retry-After` (shed, not queued) |
| no answer within `deadline_s` of the request's first byte | 504 `deadline_exceeded` (its queued work is dropped) |
| shutting down (SIGTERM) | 503 `shutting_down` + `Retry-After`; accepted requests are answered first |
| the large guard down, too slow for its budget, or `max_large_guard_queue` routed inputs waiting (policy "raise") | 503 `large_guard_unavailable` |
| the large guard refusing or answering garbage (policy "raise") | 502 `large_guard_bad_response` |

A request is never failed by another one: inputs are validated at the door, and a batch that
fails is run again one request at a time. Routed inputs wait on the large guard in their own
threads, so the student keeps answering while the large guard is slow or down. No input crashes
the server: an unexpected error is a 500 with its message, and the next request is served. Every
answer carries `Server-Timing: total;dur=<ms>` (the server's own time for it).
"""

import asyncio
import contextlib
import json
import logging
import math
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Optional, Union

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, StrictStr

from saferoute.config import parse_args

from .batcher import DeadlineExceeded, DynamicBatcher, failure
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
    workers: int = field(default=2, metadata={"help": "Threads running the student's batches."})
    max_items: int = field(default=256, metadata={"help": "Most inputs in one request (413 above)."})
    max_chars: int = field(default=200_000, metadata={"help": "Most characters in one input (422 above, naming its index)."})
    max_body_bytes: int = field(default=4_000_000, metadata={"help": "Largest request body (413 above)."})
    max_queue: int = field(default=1024, metadata={"help": "Most inputs waiting for the student; past it requests are shed (503 + Retry-After)."})
    deadline_s: float = field(default=30.0, metadata={"help": "Seconds a request may take; past it the answer is 504 and its queued work is dropped."})
    large_guard_workers: int = field(default=2, metadata={"help": "Threads asking the large guard for routed inputs (apart from the student's)."})
    max_large_guard_queue: int = field(default=256, metadata={"help": "Most routed inputs waiting on the large guard; past it the policy applies at once."})
    shutdown_timeout_s: float = field(default=30.0, metadata={"help": "On SIGTERM, how long accepted requests are still answered before the rest are refused (503)."})
    on_large_guard_error: str = field(default="raise", metadata={"help": "Default policy when the large guard fails: raise (HTTP 503/502), student or unsafe."})
    autocast_dtype: str = field(default="auto", metadata={"help": "The student's precision: auto (bf16 where native, int8 where VNNI and no native bf16, else float32), int8, bf16, fp16 or float32."})
    stream_idle_seconds: float = field(default=30.0, metadata={"help": "A stream with no message for this long is closed with its verdict so far."})
    max_streams: int = field(default=256, metadata={"help": "Most streams open at once (a new one is refused with close code 1013 above)."})
    device: Optional[str] = field(default=None, metadata={"help": "Device of the student (default: cuda when available, else cpu)."})


class ModerationRequest(BaseModel):
    input: Union[str, list[str]]
    model: Optional[str] = None


class ClassifyRequest(BaseModel):
    inputs: Union[StrictStr, dict, list]  # one input or a list of them; each item is checked by `normalize_batch`
    options: dict = Field(default_factory=dict)


class LimitError(Exception):
    def __init__(self, status, message):
        super().__init__(message)
        self.status, self.message = status, message


def server_timing(start):
    """The `Server-Timing` header: milliseconds from the request's first byte handled to its answer."""
    return {"Server-Timing": f"total;dur={1000 * (time.monotonic() - start):.1f}"}


def error_response(status, message, kind, retry_after=None):
    headers = {"Retry-After": str(int(math.ceil(retry_after)))} if retry_after else None
    return JSONResponse({"error": {"message": message, "type": kind}}, status_code=status, headers=headers)


class BodyLimit:
    """ASGI middleware: a request body over `max_bytes` is answered 413 as soon as the bytes read
    pass the limit, declared (Content-Length) or not (chunked); the body read is handed on."""

    def __init__(self, app, max_bytes):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        scope.setdefault("state", {})["arrived"] = time.monotonic()  # the request's deadline counts from here
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            return await self._refuse(scope, receive, send, f"The body has {int(declared)} bytes")
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                return await self._refuse(scope, receive, send, f"The body passed {self.max_bytes} bytes")
            if not message.get("more_body"):
                break
        body, sent = b"".join(chunks), False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope, receive, send, what):
        response = error_response(413, f"{what}; the limit is max_body_bytes={self.max_bytes}.", "limit")
        await response(scope, receive, send)


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
    """One OpenAI-moderation-shaped result from a pipeline result (plus the SafeRoute fields, P(unsafe)
    among them): every category of the model's taxonomy with its flag and score, each applied to the text input."""
    unsafe = result["label"] == "unsafe"
    if "category_scores" in result:
        scores = result["category_scores"]
        out = {"flagged": unsafe, "categories": result["categories"], "category_scores": scores,
               "category_applied_input_types": {c: ["text"] for c in scores}}
    else:  # a model without a category head
        out = {"flagged": unsafe, "categories": {"unsafe": unsafe}, "category_scores": {"unsafe": result["unsafe_score"]}}
    out.update(unsafe_score=result["unsafe_score"], router_score=result["router_score"], routed=result["routed"], decided_by=result["decided_by"],
               truncated=result["truncated"])
    if "large_guard_error" in result:
        out["large_guard_error"] = result["large_guard_error"]
    return out


def build_app(pipe, args: ServeArguments, model_name=None):
    """The FastAPI app serving `pipe` (a SafeRoute pipeline) with the limits and batching of `args`;
    its lifespan closes the batcher (answering or refusing every accepted request) and the pipeline."""
    from modeling_saferoute.inputs import is_conversation, normalize_batch

    if args.max_queue < args.max_items:
        raise ValueError(f"max_queue ({args.max_queue}) must hold at least one full request (max_items={args.max_items}).")
    metrics = Metrics()
    batcher = DynamicBatcher(pipe, args.max_batch_size, args.max_wait_ms, args.workers, on_batch=metrics.batch, max_queue=args.max_queue,
                             large_guard_workers=args.large_guard_workers, max_large_guard_queue=args.max_large_guard_queue)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        open_requests = batcher.stats()["open_requests"]
        await asyncio.get_running_loop().run_in_executor(None, batcher.close, args.shutdown_timeout_s)
        close = getattr(pipe, "close", None)
        if callable(close):
            close()  # the large guard's engine or connection
        logger.info("Shut down cleanly (%d requests were still open at shutdown; each answered or refused).", open_requests)

    app = FastAPI(title="SafeRoute moderation", version="1", lifespan=lifespan)
    app.add_middleware(BodyLimit, max_bytes=args.max_body_bytes)
    app.state.batcher, app.state.metrics = batcher, metrics
    name = model_name or args.model

    def validated(inputs):
        if len(inputs) > args.max_items:
            raise LimitError(413, f"The request holds {len(inputs)} inputs; the limit is max_items={args.max_items}.")
        try:
            items = normalize_batch(inputs)
        except ValueError as err:
            raise LimitError(422, str(err)) from None
        for i, item in enumerate(items):
            size = text_size(item)
            if size > args.max_chars:
                raise LimitError(422, f"Input {i} has {size} characters; the limit is max_chars={args.max_chars}.")
        return items

    async def run(items, options, start):
        deadline = start + args.deadline_s  # time.monotonic()
        future = batcher.submit(items, options, deadline=deadline)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), timeout=max(deadline - time.monotonic(), 0.001))
        except asyncio.TimeoutError:
            future.cancel()  # still queued: never run
            raise DeadlineExceeded(f"No answer within the deadline of {args.deadline_s:g} s (deadline_s).") from None

    @app.exception_handler(RequestValidationError)
    async def invalid(request, err):
        metrics.request(request.url.path, 422, 0.0)
        return error_response(422, f"Invalid request: {err.errors()}", "invalid_request")

    async def answer(route, raw, handler):
        start = getattr(raw.state, "arrived", None) or time.monotonic()
        retry_after = None
        try:
            body, results = await handler(start)
            metrics.request(route, 200, time.monotonic() - start, results)
            return JSONResponse(body, headers=server_timing(start))
        except LimitError as err:
            status, message, kind = err.status, err.message, "limit" if err.status == 413 else "invalid_input"
        except ValueError as err:  # the request's own input or option
            status, message, kind = 422, str(err), "invalid_input"
        except Exception as err:  # never crash on a request
            message, known = f"{type(err).__name__}: {err}", failure(err)
            if known is None:
                logger.exception("request failed")
                status, kind = 500, "internal"
            else:  # shed, shutting down, past its deadline, or the large guard failed under the policy "raise"
                status, kind, retry_after = known
        metrics.request(route, status, time.monotonic() - start)
        response = error_response(status, message, kind, retry_after)
        response.headers.update(server_timing(start))
        return response

    @app.post("/v1/moderations")
    async def moderations(request: ModerationRequest, raw: Request):
        async def handler(start):
            inputs = [request.input] if isinstance(request.input, str) else list(request.input)
            results = await run(validated(inputs), {"on_large_guard_error": args.on_large_guard_error}, start)
            body = {"id": f"modr-{uuid.uuid4().hex[:24]}", "model": request.model or name,
                    "results": [moderation_result(r) for r in results]}
            return body, results
        return await answer("/v1/moderations", raw, handler)

    @app.post("/v1/classify")
    async def classify(request: ClassifyRequest, raw: Request):
        async def handler(start):
            unknown = sorted(set(request.options) - set(OPTIONS))
            if unknown:
                raise LimitError(422, f"Unknown options {unknown}; allowed: {list(OPTIONS)}.")
            options = {"on_large_guard_error": args.on_large_guard_error, **request.options}
            pipe._sanitize_parameters(**options)  # a bad option is the request's error (422), before batching
            single = not isinstance(request.inputs, list) or is_conversation(request.inputs)
            inputs = [request.inputs] if single else list(request.inputs)
            results = await run(validated(inputs), options, start)
            return {"model": name, "results": results}, results
        return await answer("/v1/classify", raw, handler)

    add_stream_route(app, pipe, batcher, args, text_size)

    @app.get("/health")
    async def health():
        state = batcher.stats()
        body = {"status": "shutting_down" if state["closing"] else "ok", "model": name,
                "large_guard_loaded": pipe._large_guard is not None, **state}
        return JSONResponse(body, status_code=503 if state["closing"] else 200)

    @app.get("/metrics")
    async def get_metrics():
        return {**metrics.snapshot(), **batcher.stats(), "streams": app.state.streams.snapshot()}

    return app


def text_size(item):
    """Characters of text in one input of any form, counted on its normalized form (prompt, response,
    every earlier turn; a message's text parts joined); 0 for what is not an input (refused on its own)."""
    from modeling_saferoute.inputs import normalize_input

    try:
        item = normalize_input(item)
    except ValueError:
        return 0
    return len(item["prompt"]) + len(item["response"] or "") + sum(len(text) for _, text in item["context"])


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
    # SIGTERM: uvicorn stops accepting, waits for the open requests (each bounded by deadline_s), then the
    # lifespan closes the batcher, which answers or refuses what is left
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=args.deadline_s + args.shutdown_timeout_s)


if __name__ == "__main__":
    main()
