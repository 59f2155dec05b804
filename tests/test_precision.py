"""bf16 autocast, the default where the CPU multiplies bf16 natively, and int8, the default where it
has VNNI and no native bf16, keep the labels of float32: the bundled MiniLM student, fine-tuned
briefly on the seed pool, scored each way on a fixed benchmark sample through the public pipeline."""

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

from dataset_builders.benchmarks import load_benchmarks
from dataset_builders.schema import guard_items
from dataset_builders.seed_pool import load_seed_pool
from dataset_builders.splits import stratified_sample
from modeling_saferoute.bundled import resolve
from modeling_saferoute.precision import autocast_context, resolve_autocast, resolve_inference_precision
from modeling_saferoute.inputs import encode_pairs
from publishing.package import PackageArguments, package

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained_student(tmp_path_factory):
    """MiniLM-L6 fine-tuned for 120 steps (batch 32, 64 tokens) on 3,840 base-pool rows: decisive,
    not saturated. In the training stages' precision (`resolve_autocast("auto")`: bf16 autocast over
    float32 weights where the CPU multiplies bf16 natively, float32 elsewhere, where emulated bf16 is
    several times slower)."""
    torch.manual_seed(0)
    path = resolve("bundled:minilm-l6")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    rows = stratified_sample(load_seed_pool("offline-base"), 3840, ("source", "label"), seed=0).shuffle(seed=0)
    items, labels = guard_items(rows), rows["label"]
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5)
    model.train()
    for start in range(0, len(items), 32):
        encodings, _ = encode_pairs(tokenizer, items[start : start + 32], 64)
        batch = tokenizer.pad(encodings, return_tensors="pt")
        with autocast_context("cpu", resolve_autocast("auto", "cpu")):
            loss = model(**batch, labels=torch.tensor(labels[start : start + 32])).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    folder = tmp_path_factory.mktemp("precision")
    model.save_pretrained(folder / "student")
    tokenizer.save_pretrained(folder / "student")
    return package(PackageArguments(student=str(folder / "student"), output_dir=str(folder / "m"), max_length=128, model_card=False))


def test_bf16_autocast_keeps_the_float32_labels(trained_student):
    guard = pipeline("text-classification", model=str(trained_student), trust_remote_code=True)
    sample = [it for ds in load_benchmarks("all", max_per_benchmark=50, seed=1).values() for it in guard_items(ds)]
    fp32 = np.array([r["unsafe_score"] for r in guard(sample, route="never", autocast_dtype="none")])
    bf16 = np.array([r["unsafe_score"] for r in guard(sample, route="never", autocast_dtype="bfloat16")])
    default = np.array([r["unsafe_score"] for r in guard(sample, route="never")])
    agreement = float(np.mean((fp32 > 0.5) == (bf16 > 0.5)))
    print(f"bf16 vs fp32 on {len(sample)} benchmark inputs: label agreement {agreement:.1%}, "
          f"max |dP(unsafe)| {np.abs(bf16 - fp32).max():.4f}, mean {np.abs(bf16 - fp32).mean():.4f}")
    assert fp32.std() > 0.1  # a decisive model: the comparison means something
    assert agreement >= 0.99
    expected = {"bf16": bf16, "float32": fp32}.get(resolve_inference_precision("auto", "cpu"))
    if expected is not None:  # int8 where the CPU has VNNI and no native bf16: test_int8_keeps_the_float32_labels
        np.testing.assert_array_equal(default, expected)


def test_int8_keeps_the_float32_labels(trained_student):
    guard = pipeline("text-classification", model=str(trained_student), trust_remote_code=True)
    sample = [it for ds in load_benchmarks("all", max_per_benchmark=50, seed=1).values() for it in guard_items(ds)]
    fp32 = np.array([r["unsafe_score"] for r in guard(sample, route="never", autocast_dtype="none")])
    int8 = np.array([r["unsafe_score"] for r in guard(sample, route="never", autocast_dtype="int8")])
    gap = np.abs(int8 - fp32)
    agreement = float(np.mean((fp32 > 0.5) == (int8 > 0.5)))
    print(f"int8 vs fp32 on {len(sample)} benchmark inputs: label agreement {agreement:.1%}, max |dP(unsafe)| {gap.max():.4f}, mean {gap.mean():.4f}")
    assert fp32.std() > 0.1 and 0 < gap.max()  # a decisive model, and the int8 path really ran
    assert agreement >= 0.99 and gap.max() <= 0.05
    if resolve_inference_precision("auto", "cpu") == "int8":
        np.testing.assert_array_equal(np.array([r["unsafe_score"] for r in guard(sample, route="never")]), int8)
