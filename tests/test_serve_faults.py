"""The cascade under faults, on loopback with tiny models: a bad request never fails another, the
server sheds load (503 + Retry-After) and keeps its deadline (504) instead of hanging, a SIGTERM
answers or refuses every accepted request, limits hold on the bytes read and on every content form,
and each way a served large guard can fail meets the `on_large_guard_error` policy (422 stays the
client's, 502 / 503 the upstream's)."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from transformers import AutoTokenizer, pipeline

from modeling_saferoute.guards import load_guard
from modeling_saferoute.inputs import normalize_batch, normalize_input
from publishing.package import PackageArguments, package
from serving.batcher import DynamicBatcher, QueueFull, ShuttingDown
from serving.server import ServeArguments, build_app
from test_concurrency import mixed_inputs
from upstream import OK_LOGPROBS, FakeUpstream, free_port, running

REPO = Path(__file__).resolve().parents[1]
POISON = {"prompt": 123, "context": [["robot", "x"]], "judged_turn": "a"}  # the issue's: it passed normalize_batch


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_student_dir, tiny_llama_guard_dir):
    return package(PackageArguments(student=str(tiny_student_dir), output_dir=str(tmp_path_factory.mktemp("faults") / "m"),
                                    large_guard=str(tiny_llama_guard_dir), large_guard_kind="llama_guard", model_card=False))


@pytest.fixture(scope="module")
def pipe(model_dir):
    return pipeline("text-classification", model=str(model_dir), trust_remote_code=True, autocast_dtype="none")


@pytest.fixture(scope="module")
def upstream():
    server = FakeUpstream()
    yield server
    server.close()


class Gated:
    """The real pipeline, whose student passes wait for `gate` and are recorded (their sizes)."""

    def __init__(self, pipe):
        self.pipe, self.gate, self.sizes = pipe, threading.Event(), []
        self.gate.set()

    def student_pass(self, items, **options):
        self.sizes.append(len(items))
        assert self.gate.wait(60)
        return self.pipe.student_pass(items, **options)

    def __call__(self, *args, **kwargs):
        return self.pipe(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.pipe, name)


def wait_for(condition, seconds=30):
    end = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.01)


# -- one bad request never fails another ----------------------------------------------------------------
@pytest.mark.parametrize("bad, message", [
    (POISON, "exactly the keys"),
    ({**POISON, "response": None, "repaired": False}, "prompt must be a str"),
    ({"prompt": "hi", "response": None, "context": [["robot", "x"]], "judged_turn": 0, "repaired": False}, "context turn 0"),
    ({"prompt": "hi", "response": None, "context": [], "judged_turn": "a", "repaired": False}, "judged_turn"),
    ({"prompt": "hi", "response": 5, "context": [], "judged_turn": 1, "repaired": False}, "response must be a str"),
    ({"prompt": "hi", "response": None, "context": [], "judged_turn": 0, "repaired": "yes"}, "repaired must be a bool"),
])
def test_an_item_in_the_normalized_form_is_checked_like_any_other(bad, message):
    with pytest.raises(ValueError, match=f"Input 1: .*{message}"):
        normalize_batch(["fine", bad])
    good = normalize_input([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello \ud800"}])
    assert normalize_input(good) == good and good["repaired"]
    assert normalize_input({**good, "context": [["user", "Earlier"]]})["context"] == (("user", "Earlier"),)


def test_a_poisoned_request_fails_alone_and_the_rest_of_its_batch_is_answered(pipe):
    gated = Gated(pipe)
    batcher = DynamicBatcher(gated, max_batch_size=64, max_wait_ms=50, workers=1)
    try:
        gated.gate.clear()
        first = batcher.submit(["hold the worker"])
        wait_for(lambda: gated.sizes == [1])
        good = [[normalize_input(x)] for x in mixed_inputs(24)]
        jobs = [batcher.submit(items) for items in good[:12]]
        poisoned = batcher.submit([{**POISON, "response": None, "repaired": False}])  # past the door's check, inside a batch
        jobs += [batcher.submit(items) for items in good[12:]]
        gated.gate.set()
        assert first.result(60)[0]["label"] in ("safe", "unsafe")
        with pytest.raises(ValueError, match="prompt must be a str"):
            poisoned.result(60)
        for items, job in zip(good, jobs):
            assert job.result(60) == pipe(items)  # run again alone: exactly the pipeline's own answer
        assert gated.sizes[:2] == [1, 25] and sorted(gated.sizes[2:]) == [1] * 25  # one batch failed, then each alone
    finally:
        batcher.close()


def test_one_poisoned_classify_request_among_24_good_ones(pipe):
    args = ServeArguments(model="m", max_wait_ms=50)
    texts = [x if isinstance(x, str) else x.get("prompt", x.get("text")) for x in mixed_inputs(24)]
    with running(build_app(pipe, args)) as url, httpx.Client(timeout=60) as client:
        def ask(body):
            return client.post(f"{url}/v1/classify", json=body)

        with ThreadPoolExecutor(25) as pool:
            answers = list(pool.map(ask, [{"inputs": t} for t in texts[:12]] + [{"inputs": [POISON]}] + [{"inputs": t} for t in texts[12:]]))
    bad = answers.pop(12)
    assert bad.status_code == 422 and "Input 0: Guard input in the normalized form must have exactly the keys" in bad.json()["error"]["message"]
    assert [a.status_code for a in answers] == [200] * 24
    want = pipe(texts)
    assert [a.json()["results"][0]["unsafe_score"] for a in answers] == pytest.approx([w["unsafe_score"] for w in want], abs=1e-5)


# -- shedding, deadlines, shutdown ---------------------------------------------------------------------
def test_a_full_queue_sheds_with_503_and_retry_after_and_answers_what_it_accepted(pipe):
    gated = Gated(pipe)
    args = ServeArguments(model="m", max_queue=8, max_items=4, max_batch_size=4, workers=1, max_wait_ms=1)
    with running(build_app(gated, args)) as url, httpx.Client(timeout=60) as client, ThreadPoolExecutor(4) as pool:
        gated.gate.clear()
        held = pool.submit(client.post, f"{url}/v1/moderations", json={"input": ["a", "b", "c", "d"]})
        wait_for(lambda: gated.sizes == [4])  # in the student's hands: the queue is empty again
        queued = [pool.submit(client.post, f"{url}/v1/moderations", json={"input": [f"q{k}"] * 4}) for k in range(2)]
        wait_for(lambda: client.get(f"{url}/metrics").json()["queued_inputs"] == 8)
        shed = client.post(f"{url}/v1/moderations", json={"input": "one more"})
        assert shed.status_code == 503 and shed.json()["error"]["type"] == "overloaded"
        assert int(shed.headers["retry-after"]) >= 1 and "max_queue=8" in shed.json()["error"]["message"]
        gated.gate.set()
        assert [f.result(60).status_code for f in [held, *queued]] == [200] * 3
        assert client.post(f"{url}/v1/moderations", json={"input": "served again"}).status_code == 200
        metrics = client.get(f"{url}/metrics").json()
    assert metrics["requests"]["/v1/moderations 503"] == 1


def test_past_its_deadline_a_request_is_answered_504_and_its_queued_work_dropped(pipe):
    gated = Gated(pipe)
    args = ServeArguments(model="m", deadline_s=0.5, workers=1, max_wait_ms=1)
    with running(build_app(gated, args)) as url, httpx.Client(timeout=60) as client, ThreadPoolExecutor(2) as pool:
        gated.gate.clear()
        start = time.monotonic()
        running_one = pool.submit(client.post, f"{url}/v1/moderations", json={"input": "held in the student"})
        wait_for(lambda: gated.sizes == [1])
        queued_one = client.post(f"{url}/v1/moderations", json={"input": "waits in the queue"})
        assert queued_one.status_code == 504 and queued_one.json()["error"]["type"] == "deadline_exceeded"
        assert running_one.result(60).status_code == 504 and time.monotonic() - start < 10
        gated.gate.set()
        assert client.post(f"{url}/v1/moderations", json={"input": "on time"}).status_code == 200
    assert gated.sizes == [1, 1]  # the queued request's work never ran


def test_close_answers_or_refuses_every_accepted_request_and_refuses_new_ones(pipe):
    gated = Gated(pipe)
    batcher = DynamicBatcher(gated, workers=1, max_wait_ms=1)
    gated.gate.clear()
    accepted = [batcher.submit([f"request {k}"]) for k in range(5)]
    wait_for(lambda: gated.sizes)
    start = time.monotonic()
    batcher.close(timeout=0.3)
    assert time.monotonic() - start < 5 and all(f.done() for f in accepted)
    for future in accepted:
        with pytest.raises(ShuttingDown):
            future.result(0)
    start = time.monotonic()
    with pytest.raises(ShuttingDown):
        batcher.submit(["too late"])
    assert time.monotonic() - start < 0.1
    gated.gate.set()
    # with time enough, everything accepted is answered
    batcher = DynamicBatcher(pipe, workers=2, max_wait_ms=5)
    accepted = [batcher.submit([f"request {k}"]) for k in range(20)]
    batcher.close(timeout=60)
    assert [len(f.result(0)) for f in accepted] == [1] * 20


def test_a_queue_bound_below_one_request_is_refused(pipe):
    with pytest.raises(ValueError, match="max_queue"):
        build_app(pipe, ServeArguments(model="m", max_queue=10, max_items=20))
    batcher = DynamicBatcher(pipe, max_queue=3)
    with pytest.raises(QueueFull):
        batcher.submit(["a", "b", "c", "d"])
    batcher.close()


def test_past_the_large_guard_queue_routed_inputs_get_the_policy_at_once(pipe):
    batcher = DynamicBatcher(pipe, max_large_guard_queue=2, workers=1)
    try:
        fallback = batcher.submit(["a", "b", "c"], {"route": "always", "on_large_guard_error": "student"}).result(60)
        assert [r["decided_by"] for r in fallback] == ["student_fallback"] * 3 and "LargeGuardBusy" in fallback[0]["large_guard_error"]
        with pytest.raises(RuntimeError, match="max_large_guard_queue=2"):  # the policy "raise"
            batcher.submit(["a", "b", "c"], {"route": "always"}).result(60)
        assert [r["decided_by"] for r in batcher.submit(["a", "b"], {"route": "always"}).result(60)] == ["large_guard"] * 2
    finally:
        batcher.close()


def served_model(tmp_path, tiny_student_dir, tiny_llama_guard_dir, base_url, **options):
    backend = {"base_url": base_url, "max_retries": 1, "backoff": 0.01, "timeout": 2, "budget": 4, "cooldown": 0, **options}
    return package(PackageArguments(student=str(tiny_student_dir), output_dir=str(tmp_path / "served"), model_card=False,
                                    large_guard=str(tiny_llama_guard_dir), large_guard_kind="llama_guard",
                                    large_guard_backend="openai_compatible", large_guard_backend_options=json.dumps(backend)))


@pytest.mark.slow
def test_sigterm_answers_the_accepted_requests_then_exits(tmp_path, tiny_student_dir, tiny_llama_guard_dir, upstream):
    """Requests waiting on a slow large guard (1.5 s) when SIGTERM arrives are answered 200 by the
    large guard; what comes after is refused; the server shuts down cleanly."""
    out = served_model(tmp_path, tiny_student_dir, tiny_llama_guard_dir, upstream.url("ok-1.5"))
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    server = subprocess.Popen([sys.executable, "-m", "serving.server", "--model", str(out), "--port", str(port), "--deadline_s", "20"],
                              cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(1200):
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                assert server.poll() is None, server.stderr.read()
                time.sleep(0.1)
        before = upstream.hits["ok"]
        with ThreadPoolExecutor(4) as pool:
            asked = [pool.submit(httpx.post, f"{url}/v1/classify", json={"inputs": f"question {k}", "options": {"route": "always"}},
                                 timeout=60) for k in range(4)]
            wait_for(lambda: upstream.hits["ok"] > before)  # the large guard is being asked
            server.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            try:
                late = httpx.post(f"{url}/v1/moderations", json={"input": "after SIGTERM"}, timeout=10).status_code
            except httpx.ConnectError:
                late = "refused"
            answers = [f.result(60) for f in asked]
        assert server.wait(timeout=60) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once it has shut down
    finally:
        if server.poll() is None:
            server.kill()
    assert "Shut down cleanly" in server.stderr.read()
    assert [a.status_code for a in answers] == [200] * 4
    assert {a.json()["results"][0]["decided_by"] for a in answers} == {"large_guard"}
    assert late in ("refused", 503)


# -- a slow or failing large guard ----------------------------------------------------------------------
def test_a_hanging_large_guard_costs_its_budget_and_never_stalls_student_only_traffic(pipe, tiny_llama_guard_dir, upstream):
    guard = load_guard(str(tiny_llama_guard_dir), "llama_guard", backend="openai_compatible",
                       backend_options={"base_url": upstream.url("hang"), "timeout": 2, "max_retries": 3, "backoff": 0.05, "budget": 3})
    routed_pipe = type(pipe)(model=pipe.model, tokenizer=pipe.tokenizer, large_guard=guard)
    args = ServeArguments(model="m", on_large_guard_error="student", max_wait_ms=1)
    with running(build_app(routed_pipe, args)) as url, httpx.Client(timeout=60) as client, ThreadPoolExecutor(4) as pool:
        start = time.monotonic()
        routed = [pool.submit(client.post, f"{url}/v1/classify", json={"inputs": f"routed {k}", "options": {"route": "always"}})
                  for k in range(4)]
        wait_for(lambda: upstream.hits["hang"] >= 1)
        student_only = []
        for k in range(10):
            t0 = time.monotonic()
            answer = client.post(f"{url}/v1/classify", json={"inputs": f"student only {k}", "options": {"route": "never"}})
            student_only.append((answer.status_code, time.monotonic() - t0))
        answers = [f.result(60) for f in routed]
        routed_seconds = time.monotonic() - start
    assert [s for s, _ in student_only] == [200] * 10 and max(t for _, t in student_only) < 2.0, student_only
    results = [a.json()["results"][0] for a in answers]
    assert {r["decided_by"] for r in results} == {"student_fallback"} and "budget of 3 s" in results[0]["large_guard_error"]
    assert 2.5 < routed_seconds < 12  # its budget, not 4 tries x 30 s
    # a second call within the cooldown fails at once
    t0 = time.monotonic()
    with pytest.raises(ConnectionError, match="not asked again"):
        guard.score(["again"])
    assert time.monotonic() - t0 < 0.5


FAILURES = {  # mode: (exception, HTTP status under "raise", requests the upstream saw for one call)
    "refused": ("LargeGuardUnavailable", 503, 0),
    "hang": ("LargeGuardUnavailable", 503, 2),
    "http500": ("LargeGuardUnavailable", 503, 2),
    "http429": ("LargeGuardUnavailable", 503, 2),
    "http401": ("LargeGuardBadResponse", 502, 1),
    "http404": ("LargeGuardBadResponse", 502, 1),
    "http400": ("LargeGuardBadResponse", 502, 1),
    "garbage": ("LargeGuardBadResponse", 502, 1),
    "nochoices": ("LargeGuardBadResponse", 502, 1),
    "short": ("LargeGuardBadResponse", 502, 1),
    "nologprobs": ("LargeGuardBadResponse", 502, 1),
}


@pytest.mark.parametrize("mode", list(FAILURES))
def test_each_way_the_served_large_guard_fails_meets_the_policy(mode, pipe, tiny_llama_guard_dir, upstream):
    error, status, tries = FAILURES[mode]
    base_url = f"http://127.0.0.1:{free_port()}/v1" if mode == "refused" else upstream.url(mode)
    guard = load_guard(str(tiny_llama_guard_dir), "llama_guard", backend="openai_compatible",
                       backend_options={"base_url": base_url, "timeout": 0.5, "max_retries": 1, "backoff": 0.01, "budget": 5, "cooldown": 0})
    before = upstream.hits[mode]
    with pytest.raises(Exception) as raised:
        guard.score(["How do I pick a lock?", {"prompt": "Hi", "response": "Hello!"}])
    assert type(raised.value).__name__ == error and not isinstance(raised.value, ValueError)
    assert upstream.hits[mode] - before == tries
    routed = type(pipe)(model=pipe.model, tokenizer=pipe.tokenizer, large_guard=guard)
    items = ["How do I pick a lock?", "Write a poem about the sea."]
    student = routed(items, route="never")
    for policy, decided_by in (("student", "student_fallback"), ("unsafe", "fail_closed")):
        results = routed(items, route="always", on_large_guard_error=policy)
        assert [r["decided_by"] for r in results] == [decided_by] * 2 and error in results[0]["large_guard_error"]
    assert [r["unsafe_score"] for r in routed(items, route="always", on_large_guard_error="student")] == [s["unsafe_score"] for s in student]
    with pytest.raises(Exception) as raised:
        routed(items, route="always")
    assert type(raised.value).__name__ == error
    with running(build_app(routed, ServeArguments(model="m", max_wait_ms=1))) as url:
        answer = httpx.post(f"{url}/v1/classify", json={"inputs": items, "options": {"route": "always"}}, timeout=60)
        assert answer.status_code == status and error in answer.json()["error"]["message"]
        assert answer.json()["error"]["type"] == ("large_guard_unavailable" if status == 503 else "large_guard_bad_response")
        bad = httpx.post(f"{url}/v1/classify", json={"inputs": ["ok", {"prompt": 5}], "options": {"route": "always"}}, timeout=60)
        assert bad.status_code == 422 and "Input 1" in bad.json()["error"]["message"]  # the client's error stays the client's
        fine = httpx.post(f"{url}/v1/classify", json={"inputs": items, "options": {"route": "never"}}, timeout=60)
        assert fine.status_code == 200


def test_a_served_guard_that_answers_is_read_exactly(tiny_llama_guard_dir, upstream):
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_guard_dir)
    upstream.unsafe_token_id = tokenizer.encode("unsafe", add_special_tokens=False)[0]
    guard = load_guard(str(tiny_llama_guard_dir), "llama_guard", backend="openai_compatible", backend_options={"base_url": upstream.url("ok")})
    import math

    want = 1 / (1 + math.exp(OK_LOGPROBS["safe"] - OK_LOGPROBS["unsafe"]))
    assert guard.score(["a", "b", "c"]) == pytest.approx([want] * 3, abs=1e-6)


# -- limits on what is read -----------------------------------------------------------------------------
def test_limits_hold_on_the_bytes_read_and_on_every_content_form(pipe):
    args = ServeArguments(model="m", max_body_bytes=200_000, max_chars=5_000)
    with running(build_app(pipe, args)) as url:
        def chunked():  # no Content-Length: 8 MB in 64 KB chunks
            yield b'{"input": "'
            for _ in range(128):
                yield b"a" * 65_536
            yield b'"}'

        # counted on the bytes read: refused at the door (413), not read whole and answered by the per-item check (422)
        response = httpx.post(f"{url}/v1/moderations", content=chunked(), headers={"content-type": "application/json"}, timeout=60)
        assert response.status_code == 413 and "passed 200000 bytes; the limit is max_body_bytes=200000" in response.json()["error"]["message"]
        parts = [{"role": "user", "content": [{"type": "text", "text": "x" * 100_000}, {"type": "text", "text": "y"}]}]
        answer = httpx.post(f"{url}/v1/classify", json={"inputs": [parts]}, timeout=60)
        assert answer.status_code == 422 and "Input 0 has 100001 characters; the limit is max_chars=5000" in answer.json()["error"]["message"]
        context = {"messages": [{"role": "user", "content": "z" * 4_000}, {"role": "assistant", "content": "ok"},
                                {"role": "user", "content": "z" * 4_000}]}
        answer = httpx.post(f"{url}/v1/classify", json={"inputs": context}, timeout=60)
        assert answer.status_code == 422 and "Input 0 has 8002 characters" in answer.json()["error"]["message"]
        assert httpx.post(f"{url}/v1/classify", json={"inputs": 5}, timeout=60).status_code == 422  # not an input form
        assert httpx.post(f"{url}/v1/moderations", json={"input": "still serving"}, timeout=60).status_code == 200


# -- one large-guard reference --------------------------------------------------------------------------
@pytest.mark.slow
def test_the_routed_pipeline_and_evaluate_score_the_same_text_with_the_same_settings(tmp_path, tiny_student_dir, tiny_llama_guard_dir):
    """The packaged reference carries every setting (a served backend, a 40-token budget, a
    temperature, a content cut): the routed pipeline and evaluate read it the same way and give the
    same P(unsafe) for the same text, through the same server, equal to the adapter in process."""
    import pandas as pd

    from dataset_builders.benchmarks import load_benchmarks
    from dataset_builders.schema import guard_items
    from evaluation.evaluate import evaluate_saferoute
    from serving.completions_server import build_completions_app

    app = build_completions_app(tiny_llama_guard_dir, served_model_name="tiny-guard")
    calls = []

    @app.middleware("http")
    async def count(request, call_next):
        calls.append(request.url.path)
        return await call_next(request)

    settings = {"max_length": 40, "temperature": 2.0, "max_content_tokens": 24}
    with running(app) as url:
        out = package(PackageArguments(
            student=str(tiny_student_dir), output_dir=str(tmp_path / "m"), model_card=False, large_guard=str(tiny_llama_guard_dir),
            large_guard_kind="llama_guard", large_guard_max_length=40, large_guard_batch_size=3,
            large_guard_options=json.dumps({"temperature": 2.0, "max_content_tokens": 24}), large_guard_backend="openai_compatible",
            large_guard_backend_options=json.dumps({"base_url": f"{url}/v1", "served_model": "tiny-guard"})))
        ref = json.loads((out / "config.json").read_text())["large_guard"]
        assert (ref["max_length"], ref["batch_size"], ref["options"], ref["backend"]) == (40, 3, {"temperature": 2.0, "max_content_tokens": 24},
                                                                                          "openai_compatible")
        report = evaluate_saferoute(out, benchmarks="wildguardmix_response", max_per_benchmark=16, validation="none",
                                    baselines="none", output_dir=str(tmp_path / "eval"), plots=False, model_card=False, precision="float32")
        served_by_evaluate = len(calls)
        items = guard_items(load_benchmarks(["wildguardmix_response"], "offline", 16, 0)["wildguardmix_response"])
        routed = pipeline("text-classification", model=str(out), trust_remote_code=True, autocast_dtype="none")(items, route="always")
    assert served_by_evaluate > 0 and len(calls) > served_by_evaluate  # both asked the served guard (evaluate kept the backend)
    assert report["models"]["large_guard"]["backend"] == "openai_compatible" and report["models"]["large_guard"]["max_length"] == 40
    evaluated = pd.read_parquet(tmp_path / "eval" / "scores.parquet")["large_unsafe_score"].tolist()
    assert [r["unsafe_score"] for r in routed] == pytest.approx(evaluated, abs=1e-6)
    assert any(r["truncated"] for r in routed)  # the 40-token budget cut some: the setting was applied
    in_process = load_guard(str(tiny_llama_guard_dir), "llama_guard", autocast_dtype="none", **settings).score(items)
    assert evaluated == pytest.approx(in_process, abs=1e-4)
    default = load_guard(str(tiny_llama_guard_dir), "llama_guard", autocast_dtype="none").score(items)
    assert max(abs(a - b) for a, b in zip(default, in_process)) > 1e-3  # the settings change the scores: the comparison means something
