"""Fault benchmark of `saferoute serve` on loopback: bad traffic, a failing large guard, a burst.

The SafeRoute model's student and router are served with a *served* large guard (a causal-LM guard
behind `serving/completions_server.py`, OpenAI-compatible completions with logprobs, as `vllm
serve` would be), both as their own processes. Then, in bounded time:

1. `--requests` requests from `--clients` concurrent clients, `--poisoned` of them bad (malformed
   items, unknown roles, non-text parts, oversized content parts, bad options, a normalized dict
   that lies about its types): every bad one must get its 4xx, every good one its correct answer.
   They go in three thirds: the large guard up; its process killed (SIGKILL) as the second third
   starts, so routed inputs get the `--policy` answer; restarted (`--down_s` after the kill, then
   however long its model takes to load) before the last third, which it serves again.
2. A burst at `--burst_factor` x the capacity measured in step 1, open loop for `--burst_s`
   seconds: the server sheds what it cannot serve (503 + Retry-After) or answers it.

"Answered correctly": HTTP 200 and the verdict of the model that decided it (`decided_by`), as
recomputed in this process: the student's for "student" / "student_fallback" (the policy while the
large guard was down), the large guard's (its own adapter, in process) for "large_guard". Printed:
the good requests answered correctly, the bad ones answered 4xx (and 5xx, which must be 0), the
shed count and share, p50 / p99 latency, decided_by counts, and the server's resident memory
before and after.

    python bench/bench_faults.py --model outputs/saferoute-guard --guard bundled:smollm2-135m-instruct
"""

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

from dataset_builders.benchmarks import load_benchmarks
from saferoute.config import parse_args

REPO = Path(__file__).resolve().parents[1]
POISONS = [  # (route, body): each must be answered 4xx, naming the problem
    ("/v1/classify", {"inputs": [{"prompt": 123, "context": [["robot", "x"]], "judged_turn": "a"}]}),
    ("/v1/classify", {"inputs": [None]}),
    ("/v1/classify", {"inputs": [[{"role": "robot", "content": "x"}]]}),
    ("/v1/classify", {"inputs": [[{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}]]}),
    ("/v1/classify", {"inputs": [[{"role": "user", "content": [{"type": "text", "text": "x" * 250_000}]}]]}),
    ("/v1/classify", {"inputs": "fine", "options": {"threshold": 7}}),
    ("/v1/moderations", {"input": ["fine", "   "]}),
    ("/v1/moderations", {"input": 5}),
]


@dataclass
class BenchFaultsArguments:
    model: str = field(default="outputs/saferoute-guard", metadata={"help": "SafeRoute model folder (its student and router are served)."})
    guard: str = field(default="bundled:smollm2-135m-instruct", metadata={"help": "Causal-LM guard to serve as the large guard."})
    guard_kind: str = field(default="llama_guard", metadata={"help": "Adapter kind of --guard."})
    guard_max_length: int = field(default=256, metadata={"help": "Token budget of the large guard."})
    requests: int = field(default=2000, metadata={"help": "Requests of step 1."})
    clients: int = field(default=32, metadata={"help": "Concurrent clients of step 1."})
    poisoned: float = field(default=0.05, metadata={"help": "Share of bad requests in step 1."})
    texts: int = field(default=400, metadata={"help": "Distinct benchmark texts the good requests cycle through."})
    down_s: float = field(default=5.0, metadata={"help": "Seconds the large guard stays down before its restart."})
    burst_factor: float = field(default=4.0, metadata={"help": "Burst rate as a multiple of the capacity measured in step 1."})
    burst_s: float = field(default=5.0, metadata={"help": "Length of the burst (open loop)."})
    policy: str = field(default="student", metadata={"help": "The server's on_large_guard_error."})
    deadline_s: float = field(default=10.0, metadata={"help": "The server's per-request deadline (every request ends within it)."})
    max_queue: int = field(default=512, metadata={"help": "The server's queue bound (inputs)."})
    budget: float = field(default=3.0, metadata={"help": "The served guard's time budget per call (seconds, retries included)."})


def free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_ms(response):
    """The server's own time for a request (its `Server-Timing` header), in ms."""
    timing = response.headers.get("server-timing", "") if response is not None else ""
    return float(timing.split("dur=")[1]) if "dur=" in timing else float("nan")


def pct(values, q):
    values = [v for v in values if v == v]
    return f"{np.percentile(values, q):.0f}" if values else "-"


def rss_mb(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def wait_healthy(url, proc, seconds=600):
    end = time.time() + seconds
    while time.time() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} did not come up")


class Upstream:
    """The served large guard as its own process, killed and restarted on demand."""

    def __init__(self, guard, port, env):
        self.cmd = [sys.executable, "-m", "serving.completions_server", "--model", guard, "--port", str(port),
                    "--served_model_name", "guard"]
        self.env, self.url, self.proc = env, f"http://127.0.0.1:{port}", None

    def start(self):
        self.proc = subprocess.Popen(self.cmd, cwd=REPO, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_healthy(self.url, self.proc)

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


def package_served(args, upstream_url, out):
    from publishing.package import PackageArguments, package

    options = {"base_url": f"{upstream_url}/v1", "served_model": "guard", "budget": args.budget, "timeout": args.budget,
               "max_retries": 2, "backoff": 0.2, "cooldown": 2.0}
    return package(PackageArguments(student=args.model, output_dir=str(out), model_card=False, large_guard=args.guard,
                                    large_guard_kind=args.guard_kind, large_guard_max_length=args.guard_max_length,
                                    large_guard_backend="openai_compatible", large_guard_backend_options=json.dumps(options)))


def expected_verdicts(model_dir, guard, kind, max_length, texts, routed_texts):
    """The student's verdicts of every text, and the large guard's (in process) of the routed ones."""
    from transformers import pipeline

    from modeling_saferoute.guards import load_guard

    student = pipeline("text-classification", model=str(model_dir), trust_remote_code=True)(texts, route="never")
    routed_texts = sorted(routed_texts)
    large = load_guard(guard, kind, max_length=max_length).score(routed_texts) if routed_texts else []
    return {t: s for t, s in zip(texts, student)}, dict(zip(routed_texts, large))


def main(argv=None):
    args = parse_args([BenchFaultsArguments], argv)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false"}
    datasets = load_benchmarks("all", max_per_benchmark=args.texts // 6 + 1, seed=0)
    texts = list(dict.fromkeys(p for ds in datasets.values() for p in ds["prompt"]))[: args.texts]
    n_bad = int(round(args.requests * args.poisoned))
    every = args.requests // max(n_bad, 1)
    plan = [("bad", POISONS[k // every % len(POISONS)]) if n_bad and k % every == every // 2 and k // every < n_bad
            else ("good", texts[k % len(texts)]) for k in range(args.requests)]
    upstream = Upstream(args.guard, free_port(), env)
    upstream.start()
    tmp = tempfile.TemporaryDirectory()
    model_dir = package_served(args, upstream.url, Path(tmp.name) / "served")
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "serving.server", "--model", str(model_dir), "--port", str(port),
                               "--on_large_guard_error", args.policy, "--deadline_s", str(args.deadline_s), "--max_queue", str(args.max_queue)],
                              cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, server)
        client = httpx.Client(timeout=args.deadline_s + 30, limits=httpx.Limits(max_connections=args.clients + 8))
        client.post(f"{url}/v1/moderations", json={"input": texts[:16]})  # warm-up: loads the served guard's tokenizer
        memory_before = rss_mb(server.pid)
        fault = {}

        def ask(step):
            kind, what = step
            route, body = what if kind == "bad" else ("/v1/moderations", {"input": what})
            start = time.perf_counter()
            try:
                response = client.post(f"{url}{route}", json=body)
                status, payload = response.status_code, response.json()
            except httpx.HTTPError as err:
                status, payload, response = type(err).__name__, None, None
            return kind, what, status, payload, time.perf_counter() - start, server_ms(response)

        start = time.perf_counter()
        thirds = [plan[k * len(plan) // 3 : (k + 1) * len(plan) // 3] for k in range(3)]
        answers, seconds = [], []
        with ThreadPoolExecutor(args.clients) as pool:
            for k, third in enumerate(thirds):
                if k == 1:  # the large guard dies
                    upstream.kill()
                    fault["killed"] = time.perf_counter() - start
                    restart = threading.Timer(args.down_s, upstream.start)
                    restart.start()
                if k == 2:  # and comes back
                    restart.join()
                    fault["back"] = time.perf_counter() - start
                t0 = time.perf_counter()
                answers.append(list(pool.map(ask, third)))
                seconds.append(time.perf_counter() - t0)
        wall = sum(seconds)
        capacity = sum(1 for kind, *_ in answers[0] if kind == "good") / seconds[0]  # good requests/s with every part up
        burst = asyncio.run(open_loop(url, texts, args.burst_factor * capacity, args.burst_s, args.deadline_s))
        memory_after = rss_mb(server.pid)
        metrics = client.get(f"{url}/metrics").json()
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=120)
        if upstream.proc and upstream.proc.poll() is None:
            upstream.kill()
    report(args, answers, seconds, burst, capacity, memory_before, memory_after, metrics, model_dir, fault)
    tmp.cleanup()


async def open_loop(url, texts, rate, seconds, deadline):
    """`rate` requests/s for `seconds`, each sent on schedule whatever the answers: (status, seconds) each."""
    n = max(1, int(rate * seconds))
    async with httpx.AsyncClient(timeout=deadline + 30, limits=httpx.Limits(max_connections=1000)) as client:
        async def one(k):
            await asyncio.sleep(k / rate)
            start = time.perf_counter()
            try:
                response = await client.post(f"{url}/v1/moderations", json={"input": texts[k % len(texts)]})
                return response.status_code, time.perf_counter() - start, server_ms(response)
            except httpx.HTTPError as err:
                return type(err).__name__, time.perf_counter() - start, None

        return await asyncio.gather(*(one(k) for k in range(n)))


def report(args, thirds, seconds, burst, capacity, memory_before, memory_after, metrics, model_dir, fault):
    answers = [a for third in thirds for a in third]
    good = [a for a in answers if a[0] == "good"]
    answered = [a for a in good if a[2] == 200]
    routed_texts = {a[1] for a in answered if a[3]["results"][0]["decided_by"] == "large_guard"}
    student, large = expected_verdicts(model_dir, args.guard, args.guard_kind, args.guard_max_length, sorted({a[1] for a in good}), routed_texts)

    def correct(answer):
        _, text, status, payload, *_ = answer
        if status != 200:
            return False, None
        result = payload["results"][0]
        want = {"large_guard": large.get(text), "fail_closed": 1.0}.get(result["decided_by"], student[text]["unsafe_score"])
        return result["flagged"] == (want > 0.5), abs(result["unsafe_score"] - want)

    print(f"model {args.model} (student + router), large guard {args.guard} served on loopback ({args.guard_kind}, "
          f"{args.guard_max_length} tokens, budget {args.budget:g} s), policy {args.policy}, deadline {args.deadline_s:g} s, "
          f"max_queue {args.max_queue}; {args.clients} clients")
    print(f"large guard killed at {fault['killed']:.1f} s, serving again at {fault['back']:.1f} s; "
          f"capacity (first third) {capacity:.1f} good requests/s")
    print("| step | requests | good answered correctly | bad answered 4xx | 5xx | shed (503) | share shed | p50 / p99 ms (client) | "
          "p50 / p99 ms (server) | decided_by |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    names = ("1a: large guard up", "1b: large guard killed", "1c: large guard restarted")
    gaps = []
    for name, third, secs in zip(names, thirds, seconds):
        good = [a for a in third if a[0] == "good"]
        bad = [a for a in third if a[0] == "bad"]
        checks = [correct(a) for a in good]
        gaps += [g for ok, g in checks if g is not None]
        lat, server = [1000 * a[4] for a in good], [a[5] for a in good]
        statuses = Counter(str(a[2]) for a in third)
        decided = Counter(a[3]["results"][0]["decided_by"] for a in good if a[2] == 200)
        print(f"| {name} ({secs:.1f} s) | {len(third)} | {sum(ok for ok, _ in checks)}/{len(good)} | "
              f"{sum(str(a[2]).startswith('4') for a in bad)}/{len(bad)} | {sum(k.startswith('5') for k in statuses.elements())} | "
              f"{statuses.get('503', 0)} | {statuses.get('503', 0) / len(third):.1%} | {pct(lat, 50)} / {pct(lat, 99)} | "
              f"{pct(server, 50)} / {pct(server, 99)} | {dict(decided)} |")
    burst_status = Counter(str(b[0]) for b in burst)
    lat, server = [1000 * b[1] for b in burst if b[0] == 200], [b[2] for b in burst if b[0] == 200]
    shed = burst_status.get("503", 0)
    print(f"| 2: burst at {args.burst_factor:g}x capacity ({len(burst) / args.burst_s:.0f} req/s for {args.burst_s:g} s) | {len(burst)} | "
          f"{burst_status.get('200', 0)} answered | - | {sum(v for k, v in burst_status.items() if k.startswith('5')) - shed} besides 503 | "
          f"{shed} | {shed / len(burst):.1%} | {pct(lat, 50)} / {pct(lat, 99)} | {pct(server, 50)} / {pct(server, 99)} | |")
    print(f"max |score - recomputed| of the good answers {max(gaps) if gaps else float('nan'):.4f}; bad requests: "
          f"{dict(Counter(str(a[2]) for a in answers if a[0] == 'bad'))}; burst statuses: {dict(burst_status)}")
    print(f"server memory (RSS): {memory_before:.0f} MB before, {memory_after:.0f} MB after; server metrics: "
          f"{ {k: metrics[k] for k in ('requests', 'mean_batch_items', 'routed_share')} }")


if __name__ == "__main__":
    main()
