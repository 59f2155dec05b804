"""Cards rendered from measured results: their YAML parses and carries the report's numbers."""

import json
import random

import pytest
from huggingface_hub import ModelCard

from dataset_builders.benchmarks import BENCHMARKS
from evaluation.evaluate import report_titles
from evaluation.methods import METHODS
from model_cards import render_model_card
from publishing.package import PackageArguments, package


def fake_report(seed=0):
    """A report.json-shaped dict with random numbers, as `saferoute evaluate` writes it."""
    rng = random.Random(seed)
    metrics = ("f1", "precision", "recall", "accuracy", "auprc", "large_usage", "routing_f1")
    bench = {
        name: {"n": 50, "methods": {m: {k: rng.random() for k in metrics} for m in METHODS}}
        for name in BENCHMARKS
    }
    average = {m: {k: sum(bench[b]["methods"][m][k] for b in bench) / len(bench) for k in metrics} for m in METHODS}
    throughput = {s: {"examples": 300, "seconds": 3.0, "examples_per_second": rng.uniform(1, 200)} for s in ("student", "large_guard", "saferoute")}
    return {"benchmarks": bench, "average": {"methods": average, "throughput": throughput},
            "settings": {"max_per_benchmark": 50, "seed": 0, "threshold": 0.5}, "titles": report_titles(list(bench), list(METHODS))}


def test_model_card_yaml_matches_report(tmp_path, tiny_student_dir):
    model = package(PackageArguments(student=str(tiny_student_dir), output_dir=str(tmp_path / "m"), model_card=False))
    report = fake_report()
    render_model_card(model, report=report).save(model / "README.md")
    card = ModelCard.load(model / "README.md")
    data = card.data.to_dict()
    assert data["pipeline_tag"] == "text-classification" and "custom_code" in data["tags"]
    found = {}
    for result in card.data.eval_results:
        found[(result.dataset_config, result.metric_type)] = result.metric_value
    assert len(found) == 2 * len(BENCHMARKS)
    for name, bench in report["benchmarks"].items():
        for metric in ("f1", "auprc"):
            assert found[(name, metric)] == pytest.approx(bench["methods"]["saferoute"][metric], abs=5e-5)
    body = card.text
    avg_f1 = report["average"]["methods"]["saferoute"]["f1"]
    assert f"{avg_f1:.3f}" in body
    assert 'pipeline("text-classification"' in body and "untrained" in body  # tiny model: router untrained
    json.dumps(data)  # metadata is plain data
