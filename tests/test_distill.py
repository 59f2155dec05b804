"""`saferoute distill`: HarmAug KD of a tiny student on a tiny corpus, through the real code path."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from datasets import load_dataset
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from dataset_builders.roles import RoleTable
from dataset_builders.schema import SYNTHETIC_KINDS
from tiny_corpus import build_tiny_corpus, tiny_paths
from training.sampling import BalancedLengthGroupedSampler
from evaluation.metrics import fit_platt
from training.calibration import fold_platt
from training.distill import (
    DistillConfig,
    distill,
    harmaug_loss,
    load_corpus,
    main,
    prepare,
)
from saferoute.config import parse_args

# lr 3e-3 at batch 32: the loss falls for every seed tried (0-4); 1e-2 at batch 16 stalled for some
FAST = ["--max_steps", "60", "--learning_rate", "3e-3", "--warmup_steps", "0", "--per_device_train_batch_size", "32",
        "--eval_steps", "30", "--save_steps", "30", "--logging_steps", "5", "--weight_decay", "0"]


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    return build_tiny_corpus(tmp_path_factory.mktemp("corpus"))


def config(*argv):
    """Distill settings; the role split of a tiny corpus comes with it."""
    argv = list(argv)
    if "--corpus" in argv and "--roles" not in argv:
        argv += ["--roles", tiny_paths(argv[argv.index("--corpus") + 1])[1]]
    return parse_args([DistillConfig], argv, section="distill")


def unsafe_probs(folder, rows):
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    enc = tok([r["prompt"] for r in rows], [r["response"] or "" for r in rows], padding=True, return_tensors="pt")
    with torch.no_grad():
        return torch.softmax(model(**enc).logits, -1)[:, 1]


def one_by_one_probs(folder, rows):
    """P(unsafe) of each row, run alone (no padding, no sampler): an independent check of distill's scoring."""
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    with torch.no_grad():
        return torch.tensor([torch.softmax(model(**tok(r["prompt"], r["response"] or "", return_tensors="pt")).logits, -1)[0, 1]
                             for r in rows]).double()


def log_loss_against(targets, probs):
    t, p = torch.tensor(targets).double(), probs.clamp(1e-7, 1 - 1e-7)
    return float(-(t * p.log() + (1 - t) * (1 - p).log()).mean())


def test_harmaug_loss_is_half_ce_plus_kl():
    logits = torch.tensor([[2.0, -1.0], [0.3, 0.8], [-0.5, 0.1]])
    labels = torch.tensor([0, 1, 1])
    soft = torch.tensor([0.1, 0.7, 0.55])
    q = torch.softmax(logits, -1)
    p = torch.stack([1 - soft, soft], -1)
    kl = (p * (p.log() - q.log())).sum(-1).mean()
    ce = -q.log()[torch.arange(3), labels].mean()
    assert torch.allclose(harmaug_loss(logits, labels, soft), 0.5 * (ce + kl), atol=1e-6)
    assert torch.allclose(harmaug_loss(logits, labels), F.cross_entropy(logits, labels))


def test_balanced_sampler_balances_and_groups_by_length():
    labels = [0] * 90 + [1] * 10
    lengths = list(range(100))
    sampler = BalancedLengthGroupedSampler(labels, seed=1)
    drawn = [i for _ in range(40) for i in sampler]
    share = sum(labels[i] for i in drawn) / len(drawn)
    assert 0.45 < share < 0.55  # 10% of the rows, half of the draws
    def spread(order):  # summed length range within batches of 4
        return sum(max(lengths[i] for i in order[k : k + 4]) - min(lengths[i] for i in order[k : k + 4]) for k in range(0, len(order), 4))

    grouped = list(BalancedLengthGroupedSampler(labels, lengths=lengths, batch_size=4, seed=1))
    ungrouped = list(BalancedLengthGroupedSampler(labels, lengths=lengths, batch_size=4, seed=1, group_by_length=False))
    assert spread(grouped) < spread(ungrouped) / 3


def test_platt_fit_recovers_a_known_map_and_refuses_what_it_cannot_fit():
    margins = torch.linspace(-4, 4, 200).double()
    soft = torch.sigmoid(1.7 * margins - 0.8)
    scale, bias = fit_platt(soft.numpy(), margins.numpy())
    assert abs(scale - 1.7) < 1e-2 and abs(bias + 0.8) < 1e-2
    labels = (torch.rand(200, generator=torch.Generator().manual_seed(0)) < torch.sigmoid(2.0 * margins + 1.0)).double()
    scale, bias = fit_platt(labels.numpy(), margins.numpy())  # hard labels: a noisy but close fit
    assert 1.2 < scale < 3.0 and 0.3 < bias < 1.8
    with pytest.raises(ValueError, match="both classes"):
        fit_platt([0.1] * 5, [0.0, 1.0, 2.0, 3.0, 4.0])
    with pytest.raises(ValueError, match="margins that differ"):
        fit_platt([0.1, 0.9], [1.0, 1.0])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        fit_platt([0.1, 1.5], [0.0, 1.0])


def test_folding_platt_into_the_head_maps_every_margin(tiny_student_dir):
    tok = AutoTokenizer.from_pretrained(tiny_student_dir)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_student_dir).eval()
    enc = tok(["how do I bake bread", "tell me how to hurt someone", "hello"], ["", "no", "hi there"], padding=True, return_tensors="pt")
    with torch.no_grad():
        before = model(**enc).logits
        assert fold_platt(model, 0.6, -0.4) == "classifier"
        after = model(**enc).logits
    margin = lambda z: z[:, 1] - z[:, 0]
    assert torch.allclose(margin(after), 0.6 * margin(before) - 0.4, atol=1e-5)
    assert not torch.allclose(margin(before), margin(after), atol=1e-3)


def test_ablations_share_the_budget_and_differ_in_rows(corpus_dir):
    runs = {
        "full": config("--corpus", str(corpus_dir), "--per_device_train_batch_size", "32"),
        "no_aug": config("--corpus", str(corpus_dir), "--no-augmentation", "--per_device_train_batch_size", "32"),
        "human": config("--corpus", str(corpus_dir), "--labels", "human", "--per_device_train_batch_size", "32"),
    }
    plans = {k: prepare(v) for k, v in runs.items()}
    corpus = load_corpus(str(corpus_dir))
    by_id = {r["id"]: r for r in corpus}
    n_train = len(corpus)  # teacher + student rows (112 of 160) + 48 synthetic
    assert n_train == 112 + 48
    # the budget of the full run, whatever the ablation: 3 epochs of the corpus' train split
    steps = {k: p[2] for k, p in plans.items()}
    assert steps["full"] == steps["no_aug"] == steps["human"] == 3 * math.ceil(n_train / 32)
    roles = RoleTable(tiny_paths(corpus_dir)[1])
    for name, (rows, validation, _, _) in plans.items():
        assert {roles.roles.get(i) for i, o in zip(rows["id"], rows["origin"]) if o == "seed"} <= {"teacher", "student"}
        assert set(roles.role_of(validation["id"])) == {"validation"} and len(validation) == 16
        assert not {roles.roles.get(i) for i in rows["id"]} & {"router", "validation"}
        assert set(rows["origin"]) == ({"seed", "synthetic"} if name == "full" else {"seed"})
        key = "human_label" if name == "human" else "label"
        assert rows["target"] == [by_id[i][key] for i in rows["id"]]
    # the epochs protocol: each arm runs its epochs over its own rows
    epochs = {k: prepare(config(*a, "--step_budget", "epochs"))[2] for k, a in
              {"full": ["--corpus", str(corpus_dir)], "human": ["--corpus", str(corpus_dir), "--labels", "human"]}.items()}
    assert epochs["full"] == 3 * math.ceil(160 / 32) and epochs["human"] == 3 * math.ceil(112 / 32)


def test_synthetic_kinds_keep_only_those_synthetic_rows_and_count_them_in_the_budget(corpus_dir):
    corpus = load_corpus(str(corpus_dir))
    kinds = {k: sum(o == "synthetic" and kk == k for o, kk in zip(corpus["origin"], corpus["kind"]))
             for k in SYNTHETIC_KINDS}
    assert all(kinds.values())
    rows, _, steps, _ = prepare(config("--corpus", str(corpus_dir), "--synthetic_kinds", "compliant,refusal",
                                       "--per_device_train_batch_size", "32"))
    synthetic = [k for o, k in zip(rows["origin"], rows["kind"]) if o == "synthetic"]
    assert sorted(set(synthetic)) == ["compliant", "refusal"] and len(synthetic) == kinds["compliant"] + kinds["refusal"]
    assert sum(o == "seed" for o in rows["origin"]) == 112
    assert steps == 3 * math.ceil((112 + len(synthetic)) / 32)
    # the ablation without augmentation shares that budget
    _, _, no_aug_steps, _ = prepare(config("--corpus", str(corpus_dir), "--synthetic_kinds", "compliant,refusal",
                                           "--no-augmentation", "--per_device_train_batch_size", "32"))
    assert no_aug_steps == steps
    # a kind the corpus never has is refused when the arguments are parsed, before any loading
    with pytest.raises(ValueError, match="--synthetic_kinds.*harmful"):
        config("--corpus", str(corpus_dir), "--synthetic_kinds", "harmful,refusal")
    assert config("--synthetic_kinds", " refusal,compliant ").synthetic_kinds == "compliant,refusal"


def test_rows_outside_the_students_roles_are_refused(corpus_dir, tmp_path):
    """A corpus holding a router row (never to be trained on) is refused, unless forced."""
    pool, roles_dir = tiny_paths(corpus_dir)
    roles = RoleTable(roles_dir)
    router_id = next(i for i, r in roles.roles.items() if r == "router")
    bad = tmp_path / "bad"
    (bad / "data").mkdir(parents=True)
    train = load_dataset(str(corpus_dir), split="train")
    train = train.map(lambda r, k: {"id": router_id} if k == 0 else {}, with_indices=True)
    train.to_parquet(str(bad / "data" / "train-00000-of-00001.parquet"))
    load_dataset(str(corpus_dir), split="validation").to_parquet(str(bad / "data" / "validation-00000-of-00001.parquet"))
    (bad / "README.md").write_text((corpus_dir / "README.md").read_text())
    with pytest.raises(ValueError, match=rf"outside its roles.*{router_id}.*router.*--force"):
        prepare(config("--corpus", str(bad), "--roles", roles_dir))
    rows, *_ = prepare(config("--corpus", str(bad), "--roles", roles_dir, "--force_roles"))
    assert router_id in rows["id"]


def test_a_corpus_without_validation_split_validates_on_a_share_of_train(corpus_dir, tmp_path):
    only_train = tmp_path / "hub-corpus"
    (only_train / "data").mkdir(parents=True)
    load_dataset(str(corpus_dir), split="train").to_parquet(str(only_train / "data" / "train-00000-of-00001.parquet"))
    (only_train / "README.md").write_text("---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n    path: data/train-*.parquet\n---\n")
    rows, validation, steps, _ = prepare(config("--corpus", str(only_train), "--roles", tiny_paths(corpus_dir)[1]))
    assert len(validation) == 16 and len(rows) == 160 - 16 and not set(rows["id"]) & set(validation["id"])


def test_distill_kd_trains_and_writes_a_student(corpus_dir, tiny_student_dir, tmp_path):
    out = tmp_path / "student"
    main(["--corpus", str(corpus_dir), "--roles", tiny_paths(corpus_dir)[1], "--student", str(tiny_student_dir), "--output_dir", str(out), *FAST])
    info = json.loads((out / "training_info.json").read_text())
    losses = [h["loss"] for h in info["log_history"] if "loss" in h]
    assert sum(losses[:2]) / 2 > sum(losses[-2:]) / 2 + 0.05  # the loss falls
    assert info["complete"] and info["loss"] == "0.5*(CE+KL)" and info["budget_steps"] == 60
    assert info["rows"]["synthetic_train"] > 0
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "training_info.json"]
    model = AutoModelForSequenceClassification.from_pretrained(out)
    assert model.config.id2label == {0: "safe", 1: "unsafe"}
    assert info["roles"]["fingerprint"] == RoleTable(tiny_paths(corpus_dir)[1]).fingerprint
    rows = list(load_dataset(str(corpus_dir), split="train"))
    p = unsafe_probs(out, rows)
    target = torch.tensor([r["label"] for r in rows]).bool()
    assert p[target].mean() > p[~target].mean() + 0.05  # it learned the teacher's labels
    # calibrated by default: the saved student's validation cross-entropy is the one the fit reports,
    # scored row by row here (a misordered or wrongly folded fit would not match), and no worse than before
    calibration = info["calibration"]
    assert calibration["method"] == "platt" and calibration["rows"] == 16 and calibration["scale"] > 0
    validation = list(load_dataset(str(corpus_dir), split="validation"))
    soft = [r["unsafe_score"] for r in validation]
    after = log_loss_against(soft, one_by_one_probs(out, validation))
    assert after == pytest.approx(calibration["validation_after"]["log_loss"], abs=1e-4)
    assert after <= calibration["validation_before"]["log_loss"] + 1e-9
    assert info["hyperparameters"]["calibration"] == "platt"


def test_calibrate_only_calibrates_a_finished_student_once(corpus_dir, tiny_student_dir, tmp_path):
    out = tmp_path / "student-uncalibrated"
    base = ["--corpus", str(corpus_dir), "--student", str(tiny_student_dir), "--output_dir", str(out)]
    distill(config(*base, *FAST[2:], "--calibration", "none", "--max_steps", "30"))
    info = json.loads((out / "training_info.json").read_text())
    assert info["calibration"] == {"method": "none"}
    validation = list(load_dataset(str(corpus_dir), split="validation"))
    soft = [r["unsafe_score"] for r in validation]
    raw = one_by_one_probs(out, validation)
    with pytest.raises(ValueError, match="--labels teacher; pass the same"):
        distill(config(*base, "--labels", "human", "--calibrate_only"))
    distill(config(*base, "--calibrate_only"))
    calibration = json.loads((out / "training_info.json").read_text())["calibration"]
    assert calibration["method"] == "platt" and calibration["applied"] == "calibrate_only"
    assert log_loss_against(soft, raw) == pytest.approx(calibration["validation_before"]["log_loss"], abs=1e-4)
    calibrated = one_by_one_probs(out, validation)
    expected = torch.sigmoid(calibration["scale"] * torch.logit(raw) + calibration["bias"])
    assert torch.allclose(calibrated, expected, atol=1e-4)
    with pytest.raises(ValueError, match="already calibrated"):
        distill(config(*base, "--calibrate_only"))
    with pytest.raises(ValueError, match="--calibration must be one of"):
        config("--calibration", "isotonic")


def test_distill_human_labels_then_skips_when_complete(corpus_dir, tiny_student_dir, tmp_path):
    out = tmp_path / "student-human"
    short = ["--max_steps", "6", "--eval_steps", "3", "--save_steps", "3", "--per_device_train_batch_size", "8"]
    args = config("--corpus", str(corpus_dir), "--student", str(tiny_student_dir), "--output_dir", str(out), "--labels", "human", *short)
    distill(args)
    info = json.loads((out / "training_info.json").read_text())
    assert info["loss"] == "CE" and info["labels"] == "human" and info["rows"]["synthetic_train"] == 0
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    distill(config("--corpus", str(corpus_dir), "--student", str(tiny_student_dir), "--output_dir", str(out), "--labels", "human"))
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp  # complete: skipped


@pytest.mark.parametrize("flags, frozen_prefixes", [(["--freeze_embeddings", "true"], ("bert.embeddings.",)),
                                                     (["--freeze_layers", "1"], ("bert.embeddings.", "bert.encoder.layer.0."))])
def test_frozen_lower_layers_keep_their_weights_and_the_rest_trains(corpus_dir, tiny_student_dir, tmp_path, flags, frozen_prefixes):
    out = tmp_path / "student-frozen"
    short = ["--max_steps", "6", "--eval_steps", "3", "--save_steps", "3", "--per_device_train_batch_size", "8", "--learning_rate", "3e-3"]
    distill(config("--corpus", str(corpus_dir), "--student", str(tiny_student_dir), "--output_dir", str(out), *short, *flags))
    before = AutoModelForSequenceClassification.from_pretrained(tiny_student_dir).state_dict()
    after = AutoModelForSequenceClassification.from_pretrained(out).state_dict()
    shared = [k for k in before if not k.startswith("classifier.")]
    frozen = [k for k in shared if k.startswith(frozen_prefixes)]
    trained = [k for k in shared if not k.startswith(frozen_prefixes) and after[k].dtype.is_floating_point]
    assert frozen and trained
    assert all(torch.equal(before[k], after[k]) for k in frozen)
    assert sum(not torch.equal(before[k], after[k]) for k in trained) > len(trained) // 2  # the upper layers moved
    info = json.loads((out / "training_info.json").read_text())
    assert info["hyperparameters"]["freeze_layers"] == (1 if "--freeze_layers" in flags else 0)
    with pytest.raises(ValueError, match="in \\[0, 2\\]"):
        distill(config("--corpus", str(corpus_dir), "--student", str(tiny_student_dir), "--output_dir", str(tmp_path / "x"),
                       "--freeze_layers", "3", *short))


def test_bad_inputs_are_named(corpus_dir, tmp_path):
    with pytest.raises(ValueError, match="--labels"):
        config("--labels", "soft")
    bad = tmp_path / "bad"
    (bad / "data").mkdir(parents=True)
    load_dataset(str(corpus_dir), split="train").remove_columns(["unsafe_score", "origin"]).to_parquet(str(bad / "data" / "train-0.parquet"))
    with pytest.raises(ValueError, match="step-budget"):
        config("--step_budget", "tokens")
    with pytest.raises(ValueError, match="unsafe_score"):
        load_corpus(str(bad))
    with pytest.raises(ValueError, match="neither"):
        load_corpus("no-such-thing")


def test_position_limit_caps_absolute_positions_only():
    from transformers import BertConfig, DebertaV2Config

    from modeling_saferoute.modeling_saferoute import position_limit

    def student_max_length(config, requested):  # what distill does with it
        return min(requested, position_limit(config) or requested)

    assert student_max_length(BertConfig(max_position_embeddings=512), 1024) == 512
    assert student_max_length(BertConfig(max_position_embeddings=512), 128) == 128
    assert student_max_length(DebertaV2Config(max_position_embeddings=512, position_biased_input=False), 1024) == 1024


def test_deberta_students_trained_past_their_positions_widen_the_relative_buckets(tmp_path):
    """HarmAug's code sets DeBERTa-v3's max_position_embeddings to the training length (1024)."""
    from transformers import BertConfig, DebertaV2Config

    from training.distill import relative_position_overrides

    deberta = DebertaV2Config(max_position_embeddings=512, position_biased_input=False, relative_attention=True)
    assert relative_position_overrides(deberta, 1024) == {"max_position_embeddings": 1024}
    assert relative_position_overrides(deberta, 512) == {}
    assert relative_position_overrides(BertConfig(max_position_embeddings=512), 1024) == {}  # absolute positions: capped instead
