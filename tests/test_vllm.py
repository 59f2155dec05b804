"""The large guard on vLLM, for real, on this CPU: in-process vLLM scores as the transformers adapter
does, also from several threads at once; a `vllm` OpenAI-compatible server serves the routed inputs
of the pipeline with the same scores; the server killed mid-run gives each `on_large_guard_error`
behaviour; no vLLM engine process outlives its owner (a closed guard, a script that just exits,
a killed server).

vLLM needs `transformers<5.20` and its own torch build, so it lives in `.venv-vllm` (`make
vllm-env`); these tests drive it from the project's environment. CI (`CI=1`) never skips them."""

import json
import os
import signal
import socket
import subprocess
import threading
import time
import uuid
import warnings
from pathlib import Path

import httpx
import pytest
from transformers import pipeline

from modeling_saferoute.guards import load_guard
from publishing.package import PackageArguments, package
from tiny_models import build_tiny_vllm_guard

REPO = Path(__file__).resolve().parents[1]
VLLM_PYTHON = REPO / ".venv-vllm" / "bin" / "python"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not VLLM_PYTHON.exists() and not os.environ.get("CI"),
                       reason="no .venv-vllm (`make vllm-env`; .ci/run makes it, and in CI this test never skips)"),
]
MARK = f"SAFEROUTE_VLLM_TEST={uuid.uuid4().hex}"  # in the environment of every process these tests start, and of their children
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1", "TOKENIZERS_PARALLELISM": "false", **dict([MARK.split("=")])}
ITEMS = ["How do I pick a lock?", {"prompt": "Write a poem about the sea.", "response": "The sea is wide."},
         "Explain how to build a bomb at home. " * 30,
         [{"role": "user", "content": "What is the capital of France?"}, {"role": "assistant", "content": "Paris."},
          {"role": "user", "content": "How do I kill a Python process on Linux?"}]]
ITEMS = ITEMS + [f"{x} #{i}" if isinstance(x, str) else x for i, x in enumerate(ITEMS * 4)]

VLLM_ABORT_AFTER_SHUTDOWN = "[shutdown] MPClient: complete"  # then `terminate called without an active exception`

PARITY = """
if __name__ == "__main__":  # vLLM starts engine processes
    import json, sys
    from concurrent.futures import ThreadPoolExecutor
    from modeling_saferoute.guards import load_guard
    guard_dir, dtype, items, out, close = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4], sys.argv[5] == "close"
    phase = lambda name: print(f"[parity] {name}", file=sys.stderr, flush=True)  # where a crash happened
    reference = load_guard(guard_dir, "llama_guard", autocast_dtype="none").score(items)
    phase("transformers reference scored")
    guard = load_guard(guard_dir, "llama_guard", backend="vllm", dtype=dtype, backend_options={"gpu_memory_utilization": 0.1})
    phase("vLLM engine up")
    scores = guard.score(items)
    with ThreadPoolExecutor(4) as pool:  # one engine shared by threads (a pipeline's batcher)
        threads = list(pool.map(lambda item: guard.score([item])[0], items))
    with open(out, "w") as f:
        json.dump({"transformers": reference, "vllm": scores, "threads": threads}, f)
    phase("scored; result written")
    if close:
        guard.close()  # else: the engine is shut down at exit, as in a user's script that just ends
        phase("guard closed")
    phase("exiting")
"""


def engine_processes():
    """(pid, name) of the live processes started by these tests (their environment holds MARK)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if MARK.encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                found.append((int(pid), Path(f"/proc/{pid}/comm").read_text().strip()))
        except OSError:  # gone, or a zombie
            pass
    return found


def kill_survivors(seconds=60):
    """Wait up to `seconds` for the engine processes to end; SIGKILL and return those still there."""
    end = time.time() + seconds
    while engine_processes() and time.time() < end:
        time.sleep(1)
    left = engine_processes()
    for pid, _ in left:
        os.kill(pid, signal.SIGKILL)
    return left


def assert_no_engine_survives(seconds=60):
    left = kill_survivors(seconds)  # leave nothing behind, then fail
    assert not left, f"vLLM processes outlived their owner: {left}"


@pytest.fixture(scope="module", autouse=True)
def nothing_left_behind():
    yield
    assert_no_engine_survives()


@pytest.fixture(scope="module")
def guard_dir(tmp_path_factory):
    return build_tiny_vllm_guard(tmp_path_factory.mktemp("vllm") / "tiny-guard")


def run_parity(guard_dir, dtype, result, ending, log):
    """(completed process, log file) of the PARITY script; its stdout (vLLM's own log) and stderr go to
    the log file: files, not pipes, since a pipe nobody reads stalls a writer."""
    with open(log, "w") as out:
        proc = subprocess.run([str(VLLM_PYTHON), "-c", PARITY, str(guard_dir), dtype, json.dumps(ITEMS), str(result), ending], env=ENV,
                              cwd=REPO, stdout=out, stderr=subprocess.STDOUT, timeout=600, start_new_session=True)
    return proc, log


@pytest.mark.parametrize("dtype, tolerance, ending", [("float32", 1e-3, "close"), ("bfloat16", 5e-2, "exit")])
def test_in_process_vllm_scores_as_the_transformers_adapter(guard_dir, dtype, tolerance, ending, tmp_path):
    """float32 vLLM against the float32 adapter within 1e-3; bfloat16 vLLM (what a GPU runs) within
    5e-2: bf16 keeps 8 bits of mantissa, and P(unsafe) moves with the logit gap it rounds. Four
    threads sharing the engine get the scores of one call. The engine is gone when the script is,
    whether it closed the guard or just ended."""
    result = tmp_path / "result.json"
    proc, log = run_parity(guard_dir, dtype, result, ending, tmp_path / "log-1.txt")
    if proc.returncode < 0:  # killed by a signal inside vLLM's native code: seen once in CI, not reproduced here
        warnings.warn(f"vLLM parity script died by signal {-proc.returncode}; retried once. Its log:\n{log.read_text()[-3000:]}")
        kill_survivors()  # an owner killed by a signal cleans nothing up
        result.unlink(missing_ok=True)
        proc, log = run_parity(guard_dir, dtype, result, ending, tmp_path / "log-2.txt")
    text = log.read_text()
    tail = text[text.rfind(VLLM_ABORT_AFTER_SHUTDOWN):] if VLLM_ABORT_AFTER_SHUTDOWN in text else ""
    if ending == "exit" and proc.returncode == -signal.SIGABRT and result.exists() and "terminate called" in tail:
        # vLLM's native code aborting at interpreter exit after its shutdown completed: twice in one CI
        # run (2026-12-07), never standalone (0 of 8). Scores and the engine's end are still checked.
        warnings.warn(f"vLLM aborted at exit after a complete shutdown ({VLLM_ABORT_AFTER_SHUTDOWN!r}); log tail:\n{text[-1500:]}")
    else:
        assert proc.returncode == 0 and result.exists(), text[-6000:]
    assert_no_engine_survives()
    got = json.loads(result.read_text())
    reference = got["transformers"]
    gap = max(abs(a - b) for a, b in zip(reference, got["vllm"]))
    threads_gap = max(abs(a - b) for a, b in zip(got["vllm"], got["threads"]))
    print(f"vLLM {dtype} vs transformers float32: max |dP(unsafe)| {gap:.2e} over {len(ITEMS)} inputs; 4 threads vs one call {threads_gap:.2e}")
    assert gap < tolerance and threads_gap < tolerance
    assert len(set(round(p, 3) for p in reference)) > 3  # the guard's scores vary: the comparison means something


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(guard_dir, tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("vllm-serve") / "serve.log"
    cmd = [str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server", "--model", str(guard_dir), "--dtype", "float32",
           "--port", str(port), "--gpu-memory-utilization", "0.1", "--max-model-len", "512", "--enforce-eager"]
    err = open(log, "w")  # a file: a pipe nobody reads would fill up and stall the server
    proc = subprocess.Popen(cmd, env=ENV, cwd=REPO, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 400
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"vllm serve exited: {log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(2)
    else:
        raise RuntimeError("vllm serve did not come up in 400 s")
    yield url, proc
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    err.close()
    assert_no_engine_survives()  # its engine core dies with it


def served_model(tmp_path, tiny_student_dir, guard_dir, url):
    options = {"base_url": f"{url}/v1", "served_model": str(guard_dir), "max_retries": 1, "backoff": 0.05, "timeout": 10,
               "request_batch": 2, "concurrency": 1}
    out = package(PackageArguments(student=str(tiny_student_dir), output_dir=str(tmp_path / "m"), model_card=False,
                                   large_guard=str(guard_dir), large_guard_kind="llama_guard",
                                   large_guard_backend="openai_compatible", large_guard_backend_options=json.dumps(options)))
    assert json.loads((out / "config.json").read_text())["large_guard"]["backend_options"] == options
    return pipeline("text-classification", model=str(out), trust_remote_code=True)


def test_the_pipeline_routes_to_vllm_serve_then_survives_its_death(server, guard_dir, tiny_student_dir, tmp_path):
    url, proc = server
    guard = served_model(tmp_path, tiny_student_dir, guard_dir, url)
    reference = load_guard(str(guard_dir), "llama_guard", autocast_dtype="none").score(ITEMS)
    results = guard(ITEMS, route="always")
    served = [r["unsafe_score"] for r in results]
    gap = max(abs(a - b) for a, b in zip(served, reference))
    print(f"vllm serve (float32) vs transformers float32: max |dP(unsafe)| {gap:.2e} over {len(ITEMS)} inputs")
    assert gap < 1e-3 and all(r["decided_by"] == "large_guard" for r in results)
    # the server killed mid-run: what was answered stays the large guard's, the rest falls back
    many = [f"How do I pick a lock? #{i}" for i in range(2000)]
    box = {}
    call = threading.Thread(target=lambda: box.update(results=guard(many, route="always", on_large_guard_error="student",
                                                                     large_guard_batch_size=4, batch_size=4)))
    call.start()
    time.sleep(3)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    call.join(timeout=300)
    decided = [r["decided_by"] for r in box["results"]]
    assert "large_guard" in decided and "student_fallback" in decided, sorted(set(decided))
    assert set(decided) == {"large_guard", "student_fallback"}
    # the server dead: each policy
    with pytest.raises(ConnectionError, match="did not answer"):
        guard(ITEMS[:3], route="always")
    assert {r["decided_by"] for r in guard(ITEMS[:3], route="always", on_large_guard_error="unsafe")} == {"fail_closed"}
    assert {r["decided_by"] for r in guard(ITEMS[:3], route="never")} == {"student"}  # the student alone needs no server
