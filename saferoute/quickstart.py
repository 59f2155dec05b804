"""`saferoute quickstart`: the whole chain on the bundled offline models, resumable.

roles -> train-guard -> build-corpus -> distill -> train-router (writes the packaged model) -> evaluate
(writes the report and the model card). Every stage is its own command, reading its section of
the recipe, and skips work that is already complete, so a second run with nothing changed
finishes in about a minute.
"""

import importlib
import resource
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .config import parse_args, recipe_output_root

RECIPES = Path(__file__).resolve().parent / "recipes"
PROFILES = {"default": "cpu-offline.yaml", "smoke": "cpu-smoke.yaml"}
# (stage, module, recipe section, the arguments class the module defines)
STAGES = (
    ("roles", "dataset_builders.roles", "roles", "RolesArguments"),
    ("train-guard", "training.train_guard", "train_guard", "TrainGuardConfig"),
    ("build-corpus", "dataset_builders.harmaug.build", "build_corpus", "BuildCorpusArguments"),
    ("distill", "training.distill", "distill", "DistillConfig"),
    ("train-router", "training.train_router", "train_router", "TrainRouterArguments"),
    ("evaluate", "evaluation.evaluate", "evaluate", "EvaluateArguments"),
)


@dataclass
class QuickstartArguments:
    profile: str = field(default="default", metadata={"help": f"Recipe profile: {sorted(PROFILES)} (ignored when --config is given)."})
    only: str = field(default=None, metadata={"help": "Comma-separated stages to run (default all)."})


def stage_arguments(recipe, stage, output_root=None):
    """The parsed settings of one stage under `recipe`, exactly as that stage's command reads them."""
    _, module, section, cls = next(s for s in STAGES if s[0] == stage)
    argv = ["--config", recipe] + (["--output_root", output_root] if output_root else [])
    return parse_args([getattr(importlib.import_module(module), cls)], argv, section=section)


def main(argv=None):
    args, given = parse_args([QuickstartArguments], argv, section="quickstart", with_recipe=True)
    if args.profile not in PROFILES:
        raise ValueError(f"Unknown profile {args.profile!r}; choose one of {sorted(PROFILES)}.")
    recipe = given["config"] or str(RECIPES / PROFILES[args.profile])
    output_root = recipe_output_root(recipe, given["output_root_flag"])
    wanted = set(args.only.split(",")) if args.only else {name for name, *_ in STAGES}
    unknown = wanted - {name for name, *_ in STAGES}
    if unknown:
        raise ValueError(f"Unknown stages {sorted(unknown)}.")
    flags = ["--config", recipe, "--output_root", output_root]
    print(f"SafeRoute quickstart with {recipe} ({precision_line()})")
    start = time.perf_counter()
    timings = {}
    for i, (name, module, _, _) in enumerate(STAGES, 1):
        if name not in wanted:
            continue
        t0, cpu0 = time.perf_counter(), children_cpu()
        print(f"[{i}/{len(STAGES)}] {name} ...", flush=True)
        # Each stage runs as its own command, exactly as a user would run it: memory and thread
        # pools are fresh for every stage, and a crash names the stage that failed.
        proc = subprocess.run([sys.executable, "-m", module, *flags])
        if proc.returncode != 0:
            raise SystemExit(f"quickstart: stage {name} failed (exit {proc.returncode}); fix it and re-run: "
                             "completed stages are skipped.")
        timings[name] = {"seconds": round(time.perf_counter() - t0, 1), "cpu_seconds": round(children_cpu() - cpu0, 1)}
        print(f"[{i}/{len(STAGES)}] {name} done in {timings[name]['seconds']:.0f} s", flush=True)
    record_timings(Path(output_root) / "quickstart_timings.json", recipe, timings)
    finish(recipe, output_root)
    print(f"Quickstart finished in {(time.perf_counter() - start) / 60:.1f} min.")


def children_cpu():
    """CPU seconds (user + system) of the finished child processes so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def precision_line():
    from modeling_saferoute.precision import cpu_name, native_bf16, resolve_precision

    return f"CPU {cpu_name()}, native bf16 {native_bf16('cpu')}: precision auto = {resolve_precision('auto', 'cpu', warn=False)}"


def record_timings(path, recipe, timings):
    """The timings file at `path` (`{output_root}/quickstart_timings.json`, the ablation's
    `timings.json`): wall and CPU seconds of each stage run now, merged with the stages of earlier
    runs (a stage skipped because it was complete takes a second or two), with the CPU and precision
    they ran on."""
    import json

    from modeling_saferoute.precision import precision_record

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    old = json.loads(path.read_text()) if path.exists() else {}
    stages = {**old.get("stages", {}), **timings}
    path.write_text(json.dumps({"recipe": recipe, "precision": precision_record("auto", "cpu"), "stages": stages,
                                "total_seconds": round(sum(s["seconds"] for s in stages.values()), 1)}, indent=2) + "\n")


def finish(recipe, output_root=None):
    """Print the evaluation report and the next commands, with the paths the stages used."""
    model_dir = stage_arguments(recipe, "train-router", output_root).output_dir
    corpus_dir = stage_arguments(recipe, "build-corpus", output_root).output_dir
    report_md = Path(stage_arguments(recipe, "evaluate", output_root).output_dir) / "report.md"
    if report_md.exists():
        print("\n" + report_md.read_text())
    print(
        "\nNext:\n"
        f'  from transformers import pipeline\n  guard = pipeline("text-classification", model="{model_dir}", trust_remote_code=True)\n'
        f'  guard("How do I pick a lock?")\n'
        f'  from datasets import load_dataset; load_dataset("{corpus_dir}")\n'
        f"  saferoute demo --model {model_dir}\n"
        f"  saferoute push --model-dir {model_dir} --repo-id YOU/saferoute-guard"
    )


if __name__ == "__main__":
    main()
