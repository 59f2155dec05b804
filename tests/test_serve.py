"""`saferoute serve` on loopback with a tiny model: the OpenAI moderation shape, dynamic batching
under concurrent clients with the pipeline's own results, limits and bad input answered by
status and message, never a crash."""

import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import uvicorn
from transformers import pipeline

from publishing.package import PackageArguments, package
from serving.server import ServeArguments, build_app
from test_concurrency import mixed_inputs


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_student_dir, tiny_llama_guard_dir):
    out = package(PackageArguments(student=str(tiny_student_dir), output_dir=str(tmp_path_factory.mktemp("serve") / "m"),
                                   large_guard=str(tiny_llama_guard_dir), large_guard_kind="llama_guard", model_card=False))
    pipe = pipeline("text-classification", model=str(out), trust_remote_code=True, autocast_dtype="none")
    args = ServeArguments(model=str(out), port=free_port(), max_items=50, max_chars=5_000, max_body_bytes=200_000, max_wait_ms=20)
    server = uvicorn.Server(uvicorn.Config(build_app(pipe, args), host="127.0.0.1", port=args.port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{args.port}", pipe
    server.should_exit = True
    thread.join(timeout=10)


def test_moderations_shape_and_the_pipelines_results_under_concurrent_clients(served):
    url, pipe = served
    texts = [x if isinstance(x, str) else x.get("prompt", x.get("text")) for x in mixed_inputs(300)]
    expected = [pipe(t) for t in texts]  # one at a time, float32, routed as the server routes
    client = httpx.Client(timeout=60)

    def ask(text):
        response = client.post(f"{url}/v1/moderations", json={"input": text})
        assert response.status_code == 200, response.text
        return response.json()

    with ThreadPoolExecutor(max_workers=16) as pool:
        bodies = list(pool.map(ask, texts))
    for body, want in zip(bodies, expected):
        (result,) = body["results"]
        assert body["id"].startswith("modr-") and set(result) >= {"flagged", "categories", "category_scores", "unsafe_score", "router_score", "routed", "decided_by"}
        assert result["flagged"] == (want["label"] == "unsafe") and result["categories"] == {"unsafe": result["flagged"]}
        assert result["category_scores"]["unsafe"] == pytest.approx(want["unsafe_score"], abs=1e-5)
        assert result["router_score"] == pytest.approx(want["router_score"], abs=1e-5)
    metrics = client.get(f"{url}/metrics").json()
    assert metrics["requests"]["/v1/moderations 200"] >= 300 and metrics["mean_batch_items"] > 1.5  # requests were batched
    assert metrics["latency_ms"]["p99"] >= metrics["latency_ms"]["p50"] > 0
    listed = client.post(f"{url}/v1/moderations", json={"input": texts[:5]}).json()["results"]
    assert [r["category_scores"]["unsafe"] for r in listed] == pytest.approx([w["unsafe_score"] for w in expected[:5]], abs=1e-5)


def test_classify_takes_the_pipelines_forms_and_options(served):
    url, pipe = served
    inputs = [{"prompt": "How do I pick a lock?", "response": "Sure, here is how."},
              [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}], "Write a poem about the sea."]
    body = httpx.post(f"{url}/v1/classify", json={"inputs": inputs, "options": {"route": "always"}}, timeout=60).json()
    want = pipe(inputs, route="always")
    assert [r["decided_by"] for r in body["results"]] == ["large_guard"] * 3
    assert [r["unsafe_score"] for r in body["results"]] == pytest.approx([w["unsafe_score"] for w in want], abs=1e-5)
    one = httpx.post(f"{url}/v1/classify", json={"inputs": inputs[1]}, timeout=60).json()["results"]
    assert len(one) == 1 and one[0]["judged_turn"] == 1
    assert httpx.get(f"{url}/health").json()["status"] == "ok"


@pytest.mark.parametrize("route, body, status, message", [
    ("/v1/moderations", {"input": ["x"] * 51}, 413, "max_items=50"),
    ("/v1/moderations", {"input": ["ok", "y" * 5_001]}, 422, "Input 1 has 5001 characters; the limit is max_chars=5000"),
    ("/v1/moderations", {"input": ["ok", "   "]}, 422, "Input 1: Guard input prompt is empty"),
    ("/v1/moderations", {"input": 5}, 422, "Invalid request"),
    ("/v1/moderations", {"prompt": "missing input"}, 422, "Invalid request"),
    ("/v1/moderations", {"input": "bad surrogate \ud800 is repaired"}, 200, None),
    ("/v1/classify", {"inputs": ["ok", [{"role": "robot", "content": "x"}]]}, 422, "Input 1: Conversation message 0 has role 'robot'"),
    ("/v1/classify", {"inputs": ["ok", None]}, 422, "Input 1: Guard input is None"),
    ("/v1/classify", {"inputs": "ok", "options": {"threshold": 2}}, 422, "threshold must be a number in"),
    ("/v1/classify", {"inputs": "ok", "options": {"colour": "red"}}, 422, "Unknown options"),
])
def test_limits_and_bad_input_are_answered_by_status_and_message(served, route, body, status, message):
    url, _ = served
    payload = json.dumps(body, ensure_ascii=True).encode()  # a lone surrogate travels as \\ud800, as JSON allows
    response = httpx.post(f"{url}{route}", content=payload, headers={"content-type": "application/json"}, timeout=60)
    assert response.status_code == status, response.text
    if message:
        assert message in response.json()["error"]["message"]
    assert httpx.post(f"{url}/v1/moderations", json={"input": "still serving"}, timeout=60).status_code == 200


def test_an_oversized_body_is_refused_before_it_is_read(served):
    url, _ = served
    response = httpx.post(f"{url}/v1/moderations", content=b'{"input": "' + b"a" * 300_000 + b'"}',
                          headers={"content-type": "application/json"}, timeout=60)
    assert response.status_code == 413 and "max_body_bytes=200000" in response.json()["error"]["message"]
