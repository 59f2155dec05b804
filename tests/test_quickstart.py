"""`saferoute quickstart --profile smoke`: the whole chain on the bundled models, on tiny slices."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from saferoute.quickstart import RECIPES

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("quickstart")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "saferoute.cli", "quickstart", "--profile", "smoke"],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return cwd, proc.stdout


def test_every_output_loads(smoke_run):
    cwd, stdout = smoke_run
    out = cwd / "outputs"
    for stage in ("train-guard", "build-corpus", "distill", "train-router", "evaluate"):
        assert f"{stage} done in" in stdout
    assert "## F1" in stdout and 'pipeline("text-classification"' in stdout  # results table + next steps
    from datasets import load_dataset
    from transformers import pipeline

    corpus = load_dataset(str(out / "harmaug"), split="train")
    assert {"prompt", "response", "unsafe_score", "label", "source"} <= set(corpus.column_names)
    assert set(corpus["origin"]) == {"seed", "synthetic", "prefix"}  # prefix rows: the recipe's prefix_rows
    guard = pipeline("text-classification", model=str(out / "saferoute-guard"), trust_remote_code=True)
    stream = guard.stream("How do I kill a Python process?", stride=4)  # the packaged model streams
    assert stream.feed("Use the kill command with the process id. ")["checks"] >= 1 and stream.close()["final"]
    results = guard(["How do I kill a Python process?", {"prompt": "Hi", "response": "Hello!"}], route="auto")
    assert all(r["label"] in ("safe", "unsafe") for r in results)
    config = json.loads((out / "saferoute-guard" / "config.json").read_text())
    router = json.loads((out / "saferoute-guard" / "router_info.json").read_text())
    assert config["head_trained"] and config["large_guard"]["kind"] == "sequence_classification"
    # tiny slices: the router trains when some rows have t=1 (too_few_positives: route_nothing otherwise, then nothing routes)
    assert config["router_trained"] != router["routes_nothing"]
    if router["routes_nothing"]:
        assert config["router_threshold"] == 1.0 and not any(r["routed"] for r in results)
    report = json.loads((out / "eval" / "report.json").read_text())
    assert set(report["benchmarks"]) == {"openai_moderation", "toxicchat", "harmbench", "wildguardmix_prompt",
                                         "wildguardmix_response", "xstest_response"}
    card = (out / "saferoute-guard" / "README.md").read_text()
    assert "model-index" in card and f"{report['average']['methods']['saferoute']['f1']:.3f}" in card
    distill = json.loads((out / "saferoute-guard" / "distill_info.json").read_text())  # the stage records reach the card
    assert "## Training" in card and f"on {distill['rows']['train']} rows of the corpus" in card
    calibration = distill["calibration"]  # the recipe's default: Platt on the validation rows, unless it could not fit
    assert ("Calibrated (Platt" in card) == (calibration["method"] == "platt") and (calibration["method"] == "platt" or calibration["skipped"])
    assert f"trained on {router['examples']['train']} rows the student never saw" in card
    assert (out / "eval" / "pr_curves.png").exists() and (out / "eval" / "f1_vs_usage.png").exists()


def test_second_run_resumes_every_stage(smoke_run):
    cwd, _ = smoke_run
    weights = cwd / "outputs" / "saferoute-guard" / "model.safetensors"
    before = weights.stat().st_mtime_ns
    proc = subprocess.run([sys.executable, "-m", "saferoute.cli", "quickstart", "--profile", "smoke"],
                          cwd=cwd, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert weights.stat().st_mtime_ns == before
    report = json.loads((cwd / "outputs" / "eval" / "report.json").read_text())
    assert report["scored_this_run"] == {"student": 0, "large_guard": 0, "tfidf_logreg": 0}


def test_ablation_reuses_the_quickstart(smoke_run):
    """`saferoute ablate`: every arm at every seed with one step budget, each student and the teacher
    evaluated, the router on the chosen arm's student, the table with the papers' order checked; a
    second run trains and evaluates nothing."""
    cwd, _ = smoke_run
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "saferoute.cli", "ablate", "--config", str(RECIPES / "cpu-smoke.yaml")]
    proc = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = cwd / "outputs" / "ablation"
    result = json.loads((out / "ablation.json").read_text())
    assert list(result["arms"]) == ["human", "kd", "kd_harmaug"]
    steps = {s["steps"] for arm in result["arms"].values() for s in arm["per_seed"]}
    assert len(steps) == 1  # one step budget for every arm and seed
    for name, arm in result["arms"].items():
        assert [s["seed"] for s in arm["per_seed"]] == [0, 1]
        assert (arm["per_seed"][0]["synthetic_rows"] > 0) == (name == "kd_harmaug")
        info = json.loads((out / "students" / f"{name}-seed1" / "training_info.json").read_text())
        assert info["labels"] == ("human" if name == "human" else "teacher") and info["arguments"]["seed"] == 1
        assert Path(info["corpus"]).resolve() == (cwd / "outputs" / "harmaug").resolve()  # the recipe's build-corpus output
        f1s = [s["f1"] for s in arm["per_seed"]]
        assert abs(arm["mean"]["f1"] - sum(f1s) / 2) < 1e-9
    assert [c["holds"] for c in result["checks"]] == [c["gap"] > c["bar"] for c in result["checks"]]
    assert result["checks"][2]["in_mean"] == (result["checks"][2]["gap"] >= 0)
    assert "tfidf_logreg" in result["baselines"] and 0 <= result["teacher"]["auprc"] <= 1
    assert "| kd_harmaug |" in (out / "ablation.md").read_text()
    saferoute = json.loads((out / "eval" / "saferoute" / "report.json").read_text())
    assert saferoute["settings"]["max_per_benchmark"] == 8
    assert json.loads((out / "saferoute-guard" / "distill_info.json").read_text())["arguments"]["seed"] == 0
    proc = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[ablate] distill" not in proc.stdout and "[ablate] evaluate" not in proc.stdout
