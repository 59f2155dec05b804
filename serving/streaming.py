"""The streaming route of `saferoute serve`: `WS /v1/moderations/stream` judges a response while it is written.

Why a WebSocket (and not server-sent events): the client sends response chunks as the LLM writes
them and reads a verdict after each, both ways on one connection; SSE only streams server to
client, so chunks would need a request each, tied to a server-side session by an id that nothing
closes when the client goes away. A WebSocket's end is the stream's end: a client that disconnects
frees its stream at once. (uvicorn serves WebSockets with the `websockets` package; the client
below uses its sync client.)

Messages are JSON text frames:

| from | message | answer |
| --- | --- | --- |
| client, first | `{"type": "start", "input": PROMPT_OR_CONVERSATION, "options": {...}}` (options: stride, window, patience, threshold, router_threshold, route, on_large_guard_error) | `{"type": "ready", "id", "window", "stride", "patience"}` |
| client | `{"type": "chunk", "text": "..."}` | `{"type": "verdict", ...}`: label, unsafe_score, decided_by, stop, tokens, checks, stopped_at, ... |
| client | `{"type": "end"}` | `{"type": "final", "reason": "end", ...}`, then the server closes (1000) |
| server | no message for `stream_idle_seconds` | `{"type": "final", "reason": "idle", ...}` (the verdict so far, its last tokens checked), then close (1000) |
| server | bad message or input | `{"type": "error", "error": {"message", "type"}}`, then close (1008; 1013 when `max_streams` are open, the server is at capacity or shutting down, or the large guard is unavailable; 1011 when it answers garbage or on another failure) |

Checks of all open streams go through the server's dynamic batcher, so concurrent streams share
student forwards (and with `/v1/moderations` requests of the same options).
"""

import asyncio
import json
import logging
import threading
import uuid

from fastapi import WebSocket, WebSocketDisconnect

from .batcher import failure

logger = logging.getLogger(__name__)
CLOSE_NORMAL, CLOSE_POLICY, CLOSE_ERROR, CLOSE_TRY_AGAIN = 1000, 1008, 1011, 1013
SERVER_OPTIONS = ("stride", "window", "patience", "threshold", "router_threshold", "route", "on_large_guard_error")


class StreamError(Exception):
    def __init__(self, message, kind="invalid_input", code=CLOSE_POLICY):
        super().__init__(message)
        self.message, self.kind, self.code = message, kind, code


class OpenStreams:
    """The server's open streams (id -> stream) and their counters, read by GET /metrics."""

    def __init__(self):
        self.lock = threading.Lock()
        self.streams = {}
        self.counts = {"opened": 0, "ended": 0, "idle_closed": 0, "disconnected": 0, "errors": 0, "refused": 0, "checks": 0, "stopped": 0}

    def add(self, stream_id, stream, limit):
        with self.lock:
            if len(self.streams) >= limit:
                self.counts["refused"] += 1
                return False
            self.streams[stream_id] = stream
            self.counts["opened"] += 1
            return True

    def remove(self, stream_id, how):
        with self.lock:
            if self.streams.pop(stream_id, None) is not None:
                self.counts[how] += 1

    def count(self, key, n=1):
        with self.lock:
            self.counts[key] += n

    def __len__(self):
        with self.lock:
            return len(self.streams)

    def snapshot(self):
        with self.lock:
            return {"open": len(self.streams), **self.counts}


def add_stream_route(app, pipe, batcher, args, text_size):
    """Register `WS /v1/moderations/stream` on `app`, its checks batched by `batcher`; open streams in
    `app.state.streams` (an `OpenStreams`)."""
    from modeling_saferoute.streaming import StreamClosedError

    streams = app.state.streams = OpenStreams()
    defaults = {"on_large_guard_error": args.on_large_guard_error}

    async def run(stream, checks):
        if not checks:
            return stream.verdict
        streams.count("checks", len(checks))
        try:
            results = await asyncio.wrap_future(batcher.submit([c.item for c in checks], stream.call_options))
        except ValueError as err:
            raise StreamError(str(err)) from None
        except Exception as err:  # shed, shutting down, past the deadline, or the large guard failed (policy "raise")
            known = failure(err)
            if known is None:
                raise
            raise StreamError(f"{type(err).__name__}: {err}", known[1], CLOSE_TRY_AGAIN if known[0] in (503, 504) else CLOSE_ERROR) from None
        was_stopped = stream.verdict["stop"]
        for check, result in zip(checks, results):
            verdict = stream.apply(check, result)
        if verdict["stop"] and not was_stopped:
            streams.count("stopped")
        return verdict

    def opened(message):
        if message.get("type") != "start" or "input" not in message:
            raise StreamError("The first message must be {\"type\": \"start\", \"input\": PROMPT_OR_CONVERSATION[, \"options\": {...}]}.")
        options = message.get("options") or {}
        if not isinstance(options, dict):
            raise StreamError(f"options must be an object, got {type(options).__name__}.")
        unknown = sorted(set(options) - set(SERVER_OPTIONS))
        if unknown:
            raise StreamError(f"Unknown options {unknown}; allowed: {list(SERVER_OPTIONS)}.")
        size = text_size(message["input"])
        if size > args.max_chars:
            raise StreamError(f"The input has {size} characters; the limit is max_chars={args.max_chars}.")
        try:
            return pipe.stream(message["input"], **{**defaults, **options})
        except ValueError as err:
            raise StreamError(str(err)) from None

    async def receive(websocket):
        try:
            text = await asyncio.wait_for(websocket.receive_text(), timeout=args.stream_idle_seconds)
        except asyncio.TimeoutError:
            return None
        try:
            message = json.loads(text)
        except json.JSONDecodeError as err:
            raise StreamError(f"A message is not JSON: {err}.") from None
        if not isinstance(message, dict):
            raise StreamError(f"A message must be a JSON object, got {type(message).__name__}.")
        return message

    @app.websocket("/v1/moderations/stream")
    async def moderate_stream(websocket: WebSocket):
        await websocket.accept()
        stream_id, how = f"strm-{uuid.uuid4().hex[:24]}", "errors"
        registered = False
        try:
            first = await receive(websocket)
            if first is None:
                raise StreamError(f"No start message within stream_idle_seconds={args.stream_idle_seconds}.", "idle")
            stream = opened(first)
            if not streams.add(stream_id, stream, args.max_streams):
                how = "refused"
                raise StreamError(f"{args.max_streams} streams are open; the limit is max_streams={args.max_streams}.", "limit", CLOSE_TRY_AGAIN)
            registered = True
            await websocket.send_json({"type": "ready", "id": stream_id, "window": stream.window, "stride": stream.stride,
                                       "patience": stream.patience})
            while True:
                message = await receive(websocket)
                if message is None or message.get("type") == "end":
                    reason = "idle" if message is None else "end"
                    try:
                        verdict = await run(stream, stream.end())
                    except ValueError as err:  # an empty response
                        raise StreamError(str(err)) from None
                    await websocket.send_json({"type": "final", "reason": reason, "id": stream_id, **verdict})
                    how = "idle_closed" if message is None else "ended"
                    await websocket.close(CLOSE_NORMAL)
                    return
                if message.get("type") != "chunk" or not isinstance(message.get("text"), str):
                    raise StreamError("A message after start must be {\"type\": \"chunk\", \"text\": STRING} or {\"type\": \"end\"}.")
                if len(stream.tokens.text) + len(message["text"]) > args.max_chars:
                    raise StreamError(f"The response passed max_chars={args.max_chars} characters.", "limit")
                try:
                    checks = stream.append(message["text"])
                except (StreamClosedError, ValueError) as err:
                    raise StreamError(str(err)) from None
                verdict = await run(stream, checks)
                await websocket.send_json({"type": "verdict", **verdict})
        except WebSocketDisconnect:
            how = "disconnected"
        except StreamError as err:
            await _send_error(websocket, err.message, err.kind, err.code)
        except Exception as err:  # never crash the server on one stream
            logger.exception("stream %s failed", stream_id)
            await _send_error(websocket, f"{type(err).__name__}: {err}", "internal", CLOSE_ERROR)
        finally:
            if registered:
                streams.remove(stream_id, how)
            elif how == "errors":
                streams.count("errors")  # a stream refused at its start


async def _send_error(websocket, message, kind, code):
    try:
        await websocket.send_json({"type": "error", "error": {"message": message, "type": kind}})
        await websocket.close(code)
    except Exception:  # the client is gone already
        pass
