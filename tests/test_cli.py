"""The `saferoute` entry point and recipe parsing."""

from dataclasses import dataclass, field

import pytest

from saferoute.cli import COMMANDS, main
from saferoute.config import parse_args


@dataclass
class Args:
    lr: float = field(default=1e-3, metadata={"help": "learning rate"})
    seed_pool: str = "x"
    steps: int = 10
    output_dir: str = "{output_root}/student"
    corpus: str = "{output_root}/harmaug"


def test_recipe_section_then_flags_override(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("seed_pool: shared\ndistill:\n  lr: 0.5\n  steps: 3\n")
    args = parse_args([Args], ["--config", str(recipe), "--steps", "7"], section="distill")
    assert (args.lr, args.seed_pool, args.steps) == (0.5, "shared", 7)


def test_unknown_top_level_key_is_named_not_dropped(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("other_key: 1\ndistill:\n  lr: 0.5\n")
    with pytest.raises(ValueError, match="other_key"):
        parse_args([Args], ["--config", str(recipe)], section="distill")


def test_stage_paths_derive_from_output_root(tmp_path):
    assert parse_args([Args], []).output_dir == "outputs/student"
    recipe = tmp_path / "r.yaml"
    recipe.write_text("output_root: runs/a\ndistill:\n  corpus: '{output_root}/other-corpus'\n")
    args = parse_args([Args], ["--config", str(recipe)], section="distill")
    assert (args.output_dir, args.corpus) == ("runs/a/student", "runs/a/other-corpus")
    args = parse_args([Args], ["--config", str(recipe), "--output_root", "runs/b", "--output_dir", "{output_root}/s2"], section="distill")
    assert (args.output_dir, args.corpus) == ("runs/b/s2", "runs/b/other-corpus")
    recipe.write_text("output_root: runs/a\ndistill:\n  output_dir: fixed/student\n")
    assert parse_args([Args], ["--config", str(recipe)], section="distill").output_dir == "fixed/student"  # a set path wins


def test_unknown_recipe_key_is_named(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("distill:\n  learning_rate: 0.5\n")
    with pytest.raises(ValueError, match="learning_rate"):
        parse_args([Args], ["--config", str(recipe)], section="distill")


def test_cli_help_and_unknown_command(capsys):
    assert main([]) == 0
    assert "package" in capsys.readouterr().out
    assert main(["no-such-command"]) == 2
    assert set(COMMANDS) >= {"package", "train-guard", "build-corpus", "distill", "train-router", "evaluate", "push", "quickstart"}


def test_ablation_arms_seeds_and_the_order_checks():
    from saferoute.ablation import AblateArguments, order_checks, parse_arms, parse_seeds

    recipe = parse_args([AblateArguments], ["--config", "saferoute/recipes/cpu-ablation.yaml"], section="ablate")
    assert [name for name, _ in parse_arms(recipe.arms)] == ["human", "kd", "kd_harmaug"]
    assert parse_arms("a=--labels human --no_augmentation;b=") == [("a", ["--labels", "human", "--no_augmentation"]), ("b", [])]
    for bad, match in (("a=;a=", "named twice"), ("nameless", "name=distill flags"), (";", "no arm")):
        with pytest.raises(ValueError, match=match):
            parse_arms(bad)
    assert parse_seeds("0, 1,2") == [0, 1, 2]
    with pytest.raises(ValueError, match="distinct"):
        parse_seeds("1,1")
    arm = lambda f1, auprc, sd: {"mean": {"f1": f1, "auprc": auprc}, "sd": {"f1": sd, "auprc": sd}}  # noqa: E731
    checks = order_checks({"human": arm(.6, .60, .01), "kd": arm(.6, .63, .02), "kd_harmaug": arm(.59, .64, .02)})
    assert [(c["check"], c["holds"], c["in_mean"]) for c in checks] == [
        ("AUPRC human < kd", True, True), ("AUPRC kd < kd_harmaug", False, True), ("F1 kd_harmaug >= kd", False, False)]
    assert checks[1]["bar"] == .02 and abs(checks[1]["gap"] - .01) < 1e-12
    checks = order_checks({"kd": arm(.568, .63, .008), "kd_harmaug": arm(.579, .66, .016)})  # F1: +.011 against .016
    assert (checks[-1]["holds"], checks[-1]["in_mean"], checks[-1]["bar"]) == (False, True, .016)
    assert order_checks({"kd": arm(.55, .63, .01), "kd_harmaug": arm(.57, .66, .01)})[-1]["holds"]
