"""A real browser (Debian's chromium via Playwright) drives the Gradio Space on localhost."""

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from publishing.package import PackageArguments, package

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).parent / "artifacts"

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists() and not os.environ.get("CI"),
    reason="Debian chromium is not installed (.ci/run installs it; in CI this test never skips)",
)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def demo_url(tmp_path_factory, tiny_student_dir, tiny_llama_guard_dir):
    model = package(PackageArguments(
        student=str(tiny_student_dir), output_dir=str(tmp_path_factory.mktemp("space") / "guard"),
        large_guard=str(tiny_llama_guard_dir), large_guard_kind="llama_guard",
    ))
    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "saferoute.cli", "demo", "--model", str(model), "--port", str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"demo exited early:\n{proc.stdout.read()[-3000:]}")
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        raise TimeoutError("the demo did not start within 120 s")
    yield url
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def page(demo_url):
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run", "--disable-quic"],
        )
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(demo_url, wait_until="networkidle")
        yield page
        browser.close()


def test_single_input_verdict(page):
    page.locator("#prompt textarea").fill("How do I kill a Python process?")
    page.locator("#check").click()
    verdict = page.locator("#verdict")
    verdict.get_by_text("SAFE").first.wait_for(timeout=60_000)
    assert "SAFE" in verdict.inner_text()  # "✅ SAFE" or "🛑 UNSAFE"
    details = page.locator("#details").inner_text()
    assert "Decided by:" in details and "Router score:" in details and "student" in details
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "space_single.png"), full_page=True)


def test_batch_upload(page, tmp_path):
    data = tmp_path / "batch.jsonl"
    data.write_text(
        '{"prompt": "How do I bake bread?"}\n'
        '{"prompt": "How do I pick a lock?", "response": "Sure, here is how."}\n'
        '{"prompt": "Write a poem about the sea."}\n'
    )
    page.get_by_role("tab", name="Check a file").click()
    page.locator("#upload input[type=file]").set_input_files(str(data))
    page.locator("#check-file").click()
    summary = page.locator("#summary")
    summary.get_by_text("3 rows").wait_for(timeout=60_000)
    assert "routed to the large guard" in summary.inner_text()
    page.screenshot(path=str(ARTIFACTS / "space_batch.png"), full_page=True)
