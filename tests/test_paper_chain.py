"""`saferoute/recipes/paper.yaml` end to end on CPU, with the Hub models replaced by tiny random
models of the same architectures: a tiny random Llama with a Llama-Guard-3-style template (S1-S14,
"\\n\\n" suffix), adapted by train-guard (LoRA, the recipe's optional first stage), as the corpus'
teacher; a DeBERTa-v2 classifier (relative positions only) as the student; a tiny instruct Llama as
generator and paraphraser; and as the large guard (the stand-in of Llama-Guard-3-8B) a Llama of the
same template whose verdict is set by hand (unsafe iff a marker word is in the conversation). The
router learns from pairs of rows that differ only in that marker, which no stage before it saw: the
large guard is right on every row by construction and the student, blind to the marker, is wrong on
one row of each pair it does not split, so the router label t has positives on any CPU, in any
precision. Every stage reads the recipe file plus
overrides; build-corpus and distill run under `torchrun --nproc_per_node 2` (gloo); bundled models
are disabled (SAFEROUTE_BUNDLED=0), so nothing in the chain can fall back on one."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from datasets import load_dataset

from tiny_corpus import tiny_pool_rows, write_pool
from tiny_models import build_tiny_deberta, build_tiny_instruct, build_tiny_keyword_guard3, build_tiny_llama_guard3

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "saferoute" / "recipes" / "paper.yaml"
MARKER = "verdict"  # the hand-set large guard's unsafe word: in no pool row, template or benchmark sample here


def router_pairs(n_pairs=24):
    """Router rows neither model saw: each pool-style text twice, without the marker (label 0) and
    with it (label 1), as the large guard reads them."""
    rows = []
    for i, row in enumerate(tiny_pool_rows(n_pairs, seed=7, sources=("router_pairs",))):
        for label in (0, 1):
            prompt = f"{row['prompt']} {MARKER}" if label and row["response"] is None else row["prompt"]
            response = f"{row['response']} {MARKER}" if label and row["response"] is not None else row["response"]
            rows.append({**row, "id": f"router_pairs-{2 * i + label:012x}", "prompt": prompt, "response": response, "label": label})
    return rows


def run(cmd, cwd, timeout=900, **env_extra):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SAFEROUTE_BUNDLED": "0", "TOKENIZERS_PARALLELISM": "false", **env_extra}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc


def torchrun(module, *args, cwd):
    return run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", module, *args], cwd)


def stage(command, *args, cwd):
    return run([sys.executable, "-m", "saferoute.cli", command, *args], cwd)


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """Runs every stage of paper.yaml once; returns the folders, the overrides and the single-process corpus."""
    root = tmp_path_factory.mktemp("paper")
    models = {"guard": build_tiny_llama_guard3(root / "tiny-llama-guard-3"), "student": build_tiny_deberta(root / "tiny-deberta-v2"),
              "instruct": build_tiny_instruct(root / "tiny-instruct"), "large": build_tiny_keyword_guard3(root / "tiny-keyword-guard-3", MARKER)}
    pool = write_pool(root / "wildguardmix-train.jsonl", tiny_pool_rows(320, sources=("wildguardmix",)))
    router_data = write_pool(root / "router-pairs.jsonl", router_pairs())
    bench = root / "bench"
    bench.mkdir()
    (bench / "suite.jsonl").write_text(json.dumps({"prompt": "What is the capital of France?"}) + "\n")
    base = ["--config", str(RECIPE), "--output_root", str(root / "outputs")]
    common = [*base, "--seed_pool", pool]  # the stages that read the pool (distill reads the corpus)
    guard = root / "outputs" / "teacher-llama-guard-3-1b"  # train-guard's output: the corpus' teacher
    overrides = {
        "roles": {},
        "train_guard": {"base_model": str(models["guard"]), "roles": str(root / "roles-with-teacher"), "max_steps": 40,
                        "learning_rate": 0.01, "per_device_train_batch_size": 4, "gradient_accumulation_steps": 1,
                        "max_content_tokens": 48, "max_val_examples": 16, "save_strategy": "no"},
        "build_corpus": {"generator": str(models["instruct"]), "backend": "transformers", "teacher": str(guard),
                         "num_requests": 8, "shard_size": 2, "batch_size": 4, "max_new_tokens": 8, "response_max_new_tokens": 8,
                         "min_words": 1, "num_exemplars": 2, "teacher_batch_size": 8, "teacher_max_length": 48,
                         "label_shard_size": 32, "benchmarks": str(bench)},
        "distill": {"student": str(models["student"]), "max_length": 128, "per_device_train_batch_size": 8,
                    "gradient_accumulation_steps": 2, "per_device_eval_batch_size": 8},
        "train_router": {"large_guard": str(models["large"]), "data": router_data, "paraphraser": str(models["instruct"]), "paraphrase_backend": "transformers",
                         "paraphrase_max_new_tokens": 12, "paraphrase_batch_size": 8, "large_guard_batch_size": 8},
        "evaluate": {"benchmark_source": "offline", "max_per_benchmark": 8, "max_validation": 16, "batch_size": 8},
    }
    flags = {section: [x for k, v in values.items() for x in (f"--{k}", str(v))] for section, values in overrides.items()}
    stage("roles", *common, cwd=root)
    stage("roles", *common, "--output_dir", str(root / "roles-with-teacher"), "--teacher", "0.3", cwd=root)
    stage("train-guard", *common, *flags["train_guard"], cwd=root)
    single = root / "corpus-one-process"
    # one thread, as each torchrun process has: the bf16 scores are then the same bit for bit
    run([sys.executable, "-m", "dataset_builders.harmaug.build", *common, *flags["build_corpus"], "--output_dir", str(single)], cwd=root,
        OMP_NUM_THREADS="1")
    torchrun("dataset_builders.harmaug.build", *common, *flags["build_corpus"], cwd=root)
    torchrun("training.distill", *base, *flags["distill"], cwd=root)
    stage("train-router", *common, *flags["train_router"], cwd=root)
    stage("evaluate", *common, *flags["evaluate"], cwd=root)
    return {"root": root, "out": root / "outputs", "overrides": overrides, "single": single, "models": models, "guard": guard}


def records(chain):
    out = chain["out"]
    corpus_stats = json.loads((out / "harmaug.work" / "stats.json").read_text())
    return {
        "roles": json.loads((out / "roles" / "roles.json").read_text()),
        "train_guard": json.loads((out / "teacher-llama-guard-3-1b" / "training_info.json").read_text())["arguments"],
        "build_corpus": corpus_stats["arguments"],
        "distill": json.loads((out / "student" / "training_info.json").read_text())["arguments"],
        "train_router": json.loads((out / "saferoute-guard" / "router_info.json").read_text())["arguments"],
        "evaluate": json.loads((out / "eval" / "report.json").read_text())["arguments"],
    }


def test_every_setting_of_the_recipe_reaches_its_stage(chain):
    recipe = yaml.safe_load(RECIPE.read_text())
    got = records(chain)
    roles_summary = got.pop("roles")
    assert roles_summary["shares"] == {k: recipe["roles"][k] for k in ("teacher", "router", "validation")}
    for section, settings in recipe.items():
        if section in ("output_root", "seed_pool", "score_store", "roles"):
            continue
        for key, value in settings.items():
            expected = chain["overrides"].get(section, {}).get(key, value)
            if isinstance(expected, str):
                expected = expected.replace("{output_root}", str(chain["out"]))
            recorded = got[section][key]
            assert recorded == expected or (isinstance(expected, (int, float)) and recorded == pytest.approx(float(expected))), \
                (section, key, recorded, expected)


def test_the_paper_settings_shape_each_model(chain):
    out = chain["out"]
    # distill: the paper's loss and schedule, the final model, DeBERTa's relative positions widened to the training length
    student = json.loads((out / "student" / "training_info.json").read_text())
    assert student["loss"] == "0.5*(CE+KL)" and student["kept"] == "final" and student["hyperparameters"]["num_train_epochs"] == 3
    assert student["steps_done"] == student["budget_steps"]
    assert student["hyperparameters"]["train_sampling_strategy"] == "random" and student["effective_batch_size"] == 8 * 2 * 2
    assert student["student_config_overrides"] == {"max_position_embeddings": 128}
    assert json.loads((out / "student" / "config.json").read_text())["max_position_embeddings"] == 128
    # train-router: Bayesian, AdamW, 1000 epochs, the final router, threshold 0.5, 7 pair paraphrases per training row
    router = json.loads((out / "saferoute-guard" / "router_info.json").read_text())
    assert router["router_threshold"] == 0.5 and router["threshold_choice"] == "fixed" and router["bayesian"]
    assert router["fit"]["kept"] == "final" and router["fit"]["kept_step"] == router["fit"]["steps"]
    assert router["fit"]["steps"] == 1000 * -(-router["fit"]["train_examples"] // 512)
    para = router["paraphrases"]
    assert para["mode"] == "pair" and para["requested"] == 7 * router["examples"]["train"]
    assert para["made"] + sum(para["dropped"].values()) == para["requested"]
    config = json.loads((out / "saferoute-guard" / "config.json").read_text())
    assert config["large_guard"] == {"name_or_path": str(chain["models"]["large"]), "kind": "llama_guard", "revision": None,
                                     "dtype": "bfloat16", "max_length": None, "batch_size": 8}
    teacher = json.loads((chain["guard"] / "training_info.json").read_text())
    assert teacher["global_steps"] == 40 and 0 < router["positive_rate"] < 1
    # evaluate: every method of both papers, entropy in bits
    report = json.loads((out / "eval" / "report.json").read_text())
    assert report["settings"]["entropy_unit"] == "bits" and {"random_p50", "random_same_usage", "temperature"} <= set(report["average"]["methods"])


def test_two_processes_build_the_same_corpus_as_one(chain):
    two = load_dataset(str(chain["out"] / "harmaug"))
    one = load_dataset(str(chain["single"]))
    for split in ("train", "validation"):
        assert one[split].to_list() == two[split].to_list() and len(one[split]) > 0
    assert json.loads((chain["out"] / "harmaug.work" / "stats.json").read_text())["teacher_kind"] == "llama_guard"
