"""Load test of `saferoute serve` on loopback: N requests from C concurrent clients.

Starts the server as its own process (`python -m serving.server`), sends single-input moderation
requests of benchmark texts from C client threads, and reports throughput, latency percentiles,
errors, the server's batching, and how the results compare with the pipeline called in this
process on the same inputs (the same labels; scores within bf16 batching noise).

    python bench/bench_serve.py --model outputs/saferoute-guard --requests 2000 --clients 32
"""

import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx
import numpy as np
from transformers import pipeline

from dataset_builders.benchmarks import load_benchmarks
from saferoute.config import parse_args


@dataclass
class BenchServeArguments:
    model: str = field(default="outputs/saferoute-guard", metadata={"help": "SafeRoute model folder."})
    requests: int = field(default=2000, metadata={"help": "Requests to send (bounded)."})
    clients: int = field(default=32, metadata={"help": "Concurrent clients."})
    route: str = field(default="auto", metadata={"help": "Routing of the compared pipeline calls (the server routes with its model's router)."})
    timeout_s: float = field(default=600.0, metadata={"help": "Give up the run after this many seconds."})
    max_batch_size: int = field(default=64, metadata={"help": "Server batching: most inputs per pipeline call."})
    max_wait_ms: float = field(default=5.0, metadata={"help": "Server batching: the wait of a batch's first input."})


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv=None):
    args = parse_args([BenchServeArguments], argv)
    texts = [p for ds in load_benchmarks("all", max_per_benchmark=max(1, args.requests // 6 + 1), seed=0).values() for p in ds["prompt"]]
    texts = (texts * (args.requests // len(texts) + 1))[: args.requests]
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "serving.server", "--model", args.model, "--port", str(port),
                               "--max_batch_size", str(args.max_batch_size), "--max_wait_ms", str(args.max_wait_ms)],
                              env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        client = httpx.Client(timeout=args.timeout_s, limits=httpx.Limits(max_connections=args.clients))
        client.post(f"{url}/v1/moderations", json={"input": texts[:8]})  # warm-up (loads the large guard if routed)

        def ask(text):
            start = time.perf_counter()
            response = client.post(f"{url}/v1/moderations", json={"input": text})
            seconds = time.perf_counter() - start
            return response.status_code, (response.json()["results"][0] if response.status_code == 200 else None), seconds

        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=args.clients) as pool:
            answers = list(pool.map(ask, texts))
        wall = time.perf_counter() - start
        metrics = client.get(f"{url}/metrics").json()
    finally:
        server.terminate()
        server.wait(timeout=30)
    latencies = np.array([a[2] for a in answers]) * 1000
    errors = sum(a[0] != 200 for a in answers)
    local = pipeline("text-classification", model=args.model, trust_remote_code=True)
    expected = local(texts, route=args.route)
    got = [a[1] for a in answers]
    same_label = np.mean([g is not None and g["flagged"] == (e["label"] == "unsafe") for g, e in zip(got, expected)])
    gap = max(abs(g["category_scores"]["unsafe"] - e["unsafe_score"]) for g, e in zip(got, expected) if g is not None)
    print(f"{len(texts)} requests, {args.clients} clients, loopback, model {args.model}")
    print("| requests/s | p50 ms | p90 ms | p99 ms | errors | mean inputs per batch | share routed | same label as the pipeline | max abs. score gap |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    print(f"| {len(texts) / wall:.1f} | {np.percentile(latencies, 50):.1f} | {np.percentile(latencies, 90):.1f} | "
          f"{np.percentile(latencies, 99):.1f} | {errors} | {metrics['mean_batch_items']:.1f} | {metrics['routed_share']:.3f} | "
          f"{same_label:.1%} | {gap:.4f} |")


if __name__ == "__main__":
    main()
