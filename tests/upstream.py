"""Loopback stand-ins for what a SafeRoute server talks to, for the tests of failures.

`FakeUpstream`: an OpenAI-compatible completions endpoint whose behaviour is chosen by the first
path segment of the base URL (`http://127.0.0.1:PORT/<mode>/v1`), counting the requests of each
mode. "ok" answers every prompt with fixed verdict logprobs (after `?delay` seconds, e.g.
`/ok-1.5/v1`); the others fail in one way each (see MODES). `running(app)` serves an ASGI app on a
free loopback port in a thread.
"""

import contextlib
import json
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# mode -> what the upstream does
MODES = {
    "ok": "answers with the logprobs of a valid completion",
    "hang": "never answers in time (sleeps 30 s)",
    "http500": "HTTP 500",
    "http429": "HTTP 429",
    "http401": "HTTP 401",
    "http404": "HTTP 404",
    "http400": "HTTP 400",
    "garbage": "HTTP 200 with a body that is not JSON",
    "nochoices": "HTTP 200 with JSON that has no choices",
    "short": "HTTP 200 with fewer choices than prompts",
    "nologprobs": "HTTP 200 with choices without logprobs",
}
OK_LOGPROBS = {"safe": -0.2, "unsafe": -1.7}  # every prompt's last-token logprob: P(unsafe) = softmax([-0.2, -1.7])[1]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FakeUpstream:
    def __init__(self, unsafe_token_id=None):
        self.hits = Counter()
        self.unsafe_token_id = unsafe_token_id  # the appended verdict token that gets OK_LOGPROBS["unsafe"]
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
                mode, _, delay = self.path.strip("/").split("/")[0].partition("-")
                upstream.hits[mode] += 1
                if delay:
                    time.sleep(float(delay))
                prompts = body.get("prompt") or []
                lp = lambda p: OK_LOGPROBS["unsafe"] if p[-1] == upstream.unsafe_token_id else OK_LOGPROBS["safe"]  # noqa: E731
                choices = [{"index": k, "text": "", "logprobs": {"token_logprobs": [None] * (len(p) - 1) + [lp(p)]}}
                           for k, p in enumerate(prompts)]
                if mode == "hang":
                    time.sleep(30)
                status, payload = {
                    "http500": (500, b"upstream broke"), "http429": (429, b"slow down"), "http401": (401, b"bad key"),
                    "http404": (404, b"no such model"), "http400": (400, b"prompt too long"), "garbage": (200, b"<html>oops"),
                    "nochoices": (200, b'{"object": "error"}'),
                    "short": (200, json.dumps({"choices": choices[:-1]}).encode()),
                    "nologprobs": (200, json.dumps({"choices": [{"index": c["index"], "text": ""} for c in choices]}).encode()),
                }.get(mode, (200, json.dumps({"choices": choices}).encode()))
                try:
                    self.send_response(status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:  # the client gave up (a timeout)
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, mode):
        return f"http://127.0.0.1:{self.port}/{mode}/v1"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@contextlib.contextmanager
def running(app, **config):
    """Serve an ASGI app on loopback in a thread; yields its URL; stops it (lifespan included) after."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", **config))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
