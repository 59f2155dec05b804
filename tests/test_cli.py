"""The `saferoute` entry point and recipe parsing."""

from dataclasses import dataclass, field

import pytest

from training.cli import COMMANDS, main
from training.config import parse_args


@dataclass
class Args:
    lr: float = field(default=1e-3, metadata={"help": "learning rate"})
    name: str = "x"
    steps: int = 10


def test_recipe_section_then_flags_override(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: shared\nother_key: 1\ndistill:\n  lr: 0.5\n  steps: 3\n")
    args = parse_args([Args], ["--config", str(recipe), "--steps", "7"], section="distill")
    assert (args.lr, args.name, args.steps) == (0.5, "shared", 7)


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
