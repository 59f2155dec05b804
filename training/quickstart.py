"""`saferoute quickstart`: the whole chain on the bundled offline models, resumable.

train-guard -> build-corpus -> distill -> train-router (writes the packaged model) -> evaluate ->
model card. Every stage reads its section of the recipe and skips work that is already complete,
so a second run with nothing changed finishes in seconds.
"""

import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .config import load_recipe, parse_args

PROFILES = {
    "default": "training/recipes/cpu-offline.yaml",
    "smoke": "training/recipes/cpu-smoke.yaml",
}
STAGES = (
    ("train-guard", "training.train_guard", "train_guard"),
    ("build-corpus", "dataset_builders.harmaug.build", "build_corpus"),
    ("distill", "training.distill", "distill"),
    ("train-router", "training.train_router", "train_router"),
    ("evaluate", "training.evaluate", "evaluate"),
)


@dataclass
class QuickstartArguments:
    profile: str = field(default="default", metadata={"help": f"Recipe profile: {sorted(PROFILES)} (ignored when --config is given)."})
    only: str = field(default=None, metadata={"help": "Comma-separated stages to run (default all)."})


def recipe_path(argv, profile):
    if "--config" in argv:
        return argv[argv.index("--config") + 1]
    root = Path(__file__).resolve().parents[1]
    return str(root / PROFILES[profile])


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args([QuickstartArguments], argv, section="quickstart")
    if args.profile not in PROFILES:
        raise ValueError(f"Unknown profile {args.profile!r}; choose one of {sorted(PROFILES)}.")
    recipe = recipe_path(argv, args.profile)
    wanted = set(args.only.split(",")) if args.only else {name for name, _, _ in STAGES}
    unknown = wanted - {name for name, _, _ in STAGES}
    if unknown:
        raise ValueError(f"Unknown stages {sorted(unknown)}.")
    print(f"SafeRoute quickstart with {recipe}")
    start = time.perf_counter()
    for i, (name, module_name, section) in enumerate(STAGES, 1):
        if name not in wanted:
            continue
        t0 = time.perf_counter()
        print(f"[{i}/{len(STAGES)}] {name} ...", flush=True)
        # Each stage runs as its own command, exactly as a user would run it: memory and thread
        # pools are fresh for every stage, and a crash names the stage that failed.
        proc = subprocess.run([sys.executable, "-m", module_name, "--config", recipe])
        if proc.returncode != 0:
            raise SystemExit(f"quickstart: stage {name} failed (exit {proc.returncode}); fix it and re-run: "
                             "completed stages are skipped.")
        print(f"[{i}/{len(STAGES)}] {name} done in {time.perf_counter() - t0:.0f} s", flush=True)
    finish(recipe)
    print(f"Quickstart finished in {(time.perf_counter() - start) / 60:.1f} min.")


def finish(recipe):
    """Write the model card from the evaluation report, print the results and the next commands."""
    shared, router = load_recipe(recipe, "train_router")
    _, evaluate = load_recipe(recipe, "evaluate")
    _, corpus = load_recipe(recipe, "build_corpus")
    model_dir = Path(router.get("output", "outputs/saferoute-guard"))
    eval_dir = Path(evaluate.get("output", "outputs/eval"))
    corpus_dir = corpus.get("output", "outputs/harmaug")
    report_md = eval_dir / "report.md"
    if report_md.exists():
        from model_cards import render_model_card
        import json

        report = json.loads((eval_dir / "report.json").read_text())
        render_model_card(model_dir, report=report).save(model_dir / "README.md")
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
