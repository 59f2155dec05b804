"""Recipes and command-line parsing, shared by every `saferoute <command>`.

A recipe is one YAML file for the whole chain: top-level settings shared by the commands that
know them (`output_root` among them) and a section per command (`train_guard:`, `build_corpus:`,
...). `parse_args` builds a command's dataclasses from their defaults, then the recipe, then the
command line (HfArgumentParser, like TRL's TrlParser).

`output_root` is real: any string setting may name `{output_root}`, and the stage paths default
to folders under it (`{output_root}/teacher`, `{output_root}/student`, ...), so a recipe sets it
once; a recipe value or a flag that names a path itself wins.
"""

import dataclasses
import sys

import yaml
from transformers import HfArgumentParser

SECTIONS = ("roles", "train_guard", "build_corpus", "distill", "train_router", "package", "evaluate", "export",
            "push", "serve", "quickstart", "ablate")
# The top-level settings a recipe may hold besides its sections; each applies to every command
# that has a field of its name (any other top-level key is refused, never silently dropped).
SHARED = ("output_root", "seed_pool", "score_store")
DEFAULT_OUTPUT_ROOT = "outputs"
ROOT = "{output_root}"


def load_recipe(path, section):
    """(shared top-level settings, the settings of `section`) of the recipe at `path`."""
    with open(path) as f:
        values = yaml.safe_load(f) or {}
    if not isinstance(values, dict):
        raise ValueError(f"{path}: a recipe must be a YAML mapping.")
    shared = {k: v for k, v in values.items() if k not in SECTIONS}
    unknown = sorted(set(shared) - set(SHARED))
    if unknown:
        raise ValueError(f"{path}: unknown top-level settings {unknown}; a recipe holds {list(SHARED)} and the sections {list(SECTIONS)}.")
    own = values.get(section) if section else None
    if own is not None and not isinstance(own, dict):
        raise ValueError(f"{path}: section {section!r} must be a mapping.")
    return shared, dict(own or {})


def _expand(value, output_root):
    return value.replace(ROOT, output_root) if isinstance(value, str) else value


def parse_args(dataclass_types, argv=None, section=None, with_recipe=False):
    """Parse `argv` into instances of `dataclass_types`: defaults, then `--config FILE` (its shared
    settings and its `section`), then the flags. Keys of the section that no field knows raise a
    `ValueError` naming them; `{output_root}` in any string value becomes `--output_root` (else the
    recipe's, else "outputs"). Returns one instance, or a tuple for several types; with
    `with_recipe`, also `{"config": FILE or None, "output_root": ROOT, "output_root_flag": the
    --output_root given or None}` last."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = HfArgumentParser(dataclass_types, prog=f"saferoute {section.replace('_', '-')}" if section else None)
    parser.add_argument("--config", default=None, help="YAML recipe; command-line flags override it.")
    parser.add_argument("--output_root", "--output-root", default=None,
                        help=f"Folder under which every stage path defaults (recipe `output_root`, else {DEFAULT_OUTPUT_ROOT!r}).")
    early = parser.parse_known_args(argv)[0]
    shared, own = load_recipe(early.config, section) if early.config else ({}, {})
    known = {f.name: f for dc in dataclass_types for f in dataclasses.fields(dc)}
    unknown = sorted(set(own) - set(known))
    if unknown:
        raise ValueError(f"{early.config}: unknown settings {unknown} in section {section!r}.")
    output_root = early.output_root or shared.get("output_root") or DEFAULT_OUTPUT_ROOT
    defaults = {name: _expand(f.default, output_root) for name, f in known.items()
                if isinstance(f.default, str) and ROOT in f.default}
    defaults.update({k: _expand(v, output_root) for k, v in shared.items() if k in known})
    defaults.update({k: _expand(v, output_root) for k, v in own.items()})
    parser.set_defaults(**defaults)
    argv = [_expand(a, output_root) for a in argv]
    *instances, _extra, rest = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    parsed = instances[0] if len(instances) == 1 else tuple(instances)
    given = {"config": early.config, "output_root": output_root, "output_root_flag": early.output_root}
    return (parsed, given) if with_recipe else parsed


def recipe_output_root(recipe, flag=None):
    """The output_root a stage run with `--config recipe [--output_root flag]` uses."""
    return flag or load_recipe(recipe, None)[0].get("output_root") or DEFAULT_OUTPUT_ROOT


def recorded_arguments(args):
    """The settings of a parsed dataclass as plain JSON values, for a stage's record (what it ran with)."""
    def plain(value):
        if isinstance(value, (str, int, float, bool, type(None))):
            return True
        if isinstance(value, (list, tuple)):
            return all(plain(v) for v in value)
        if isinstance(value, dict):
            return all(isinstance(k, str) and plain(v) for k, v in value.items())
        return False

    out = {}
    for f in dataclasses.fields(args):
        value = getattr(args, f.name)
        value = getattr(value, "value", value)  # enums (TrainingArguments' strategies) as their value
        if plain(value):
            out[f.name] = list(value) if isinstance(value, tuple) else value
    return out
