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
