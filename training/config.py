"""Command-line parsing: dataclasses with docstring help, `--config recipe.yaml`, flags override it.

A recipe is one YAML file for the whole chain: a section per command (`train_guard:`,
`build_corpus:`, `distill:`, `train_router:`, `package:`, `evaluate:`), plus top-level settings
shared by every command that knows them.
"""

import dataclasses
import sys

import yaml
from transformers import HfArgumentParser

SECTIONS = ("train_guard", "build_corpus", "distill", "train_router", "package", "evaluate", "quickstart", "export")


def load_recipe(path, section):
    """The settings of `section` in the recipe at `path`: its section over the shared top level."""
    with open(path) as f:
        values = yaml.safe_load(f) or {}
    if not isinstance(values, dict):
        raise ValueError(f"{path}: a recipe must be a YAML mapping.")
    shared = {k: v for k, v in values.items() if k not in SECTIONS}
    return shared, dict(values.get(section) or {})


def parse_args(dataclass_types, argv=None, section=None):
    """Parse `argv` into instances of `dataclass_types` (HfArgumentParser), like TRL's TrlParser.

    Values from `--config FILE` become defaults and flags on the command line override them. Keys
    of the command's own section that no field knows raise a `ValueError` naming them.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = HfArgumentParser(dataclass_types, prog=f"saferoute {section.replace('_', '-')}" if section else None)
    parser.add_argument("--config", default=None, help="YAML recipe; command-line flags override it.")
    config_path = parser.parse_known_args(argv)[0].config
    if config_path:
        shared, own = load_recipe(config_path, section)
        known = {f.name for dc in dataclass_types for f in dataclasses.fields(dc)}
        unknown = sorted(set(own) - known)
        if unknown:
            raise ValueError(f"{config_path}: unknown settings {unknown} in section {section!r}.")
        parser.set_defaults(**{k: v for k, v in shared.items() if k in known}, **own)
    *instances, _config, rest = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return instances[0] if len(instances) == 1 else tuple(instances)
