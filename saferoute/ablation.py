"""`saferoute ablate`: the HarmAug ablation and the SafeRoute table from one recipe, resumable.

corpus (build-corpus) -> students (distill: every arm at every seed, the same step budget) ->
evaluate (each student, the teacher and the standing baselines on the six benchmarks) -> router
(train-router on one arm's seed-0 student, then evaluate the SafeRoute model) -> table.

Every stage is the stage's own command reading its section of the recipe (the `ablate` section
names the arms, seeds and sizes), run as a subprocess like `saferoute quickstart` does. Finished
students and reports are kept, so a re-run after a crash redoes only what is missing. Writes
`{output_dir}/ablation.md` and `ablation.json` (per seed, mean ± sd per arm, the papers' order
checked) and `timings.json` (wall and CPU seconds per stage, with the CPU and precision).
"""

import json
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .config import parse_args
from .quickstart import children_cpu, record_timings, stage_arguments

STAGES = ("corpus", "students", "evaluate", "router", "table")
METRICS = ("f1", "auprc")


@dataclass
class AblateArguments:
    arms: str = field(default="human=--labels human --no_augmentation;kd=--no_augmentation;kd_harmaug=",
                      metadata={"help": "Arms in the papers' order, 'name=distill flags;name=flags;...' (flags may be empty)."})
    seeds: str = field(default="0,1,2", metadata={"help": "Comma-separated seeds; every arm trains once per seed."})
    max_per_benchmark: int = field(default=500, metadata={"help": "Stratified, seeded examples per benchmark (all where a set is smaller)."})
    router_arm: str = field(default="kd_harmaug", metadata={"help": "The arm whose first-seed student gets the router ('' or 'none': no SafeRoute stage)."})
    teacher: str = field(default="{output_root}/teacher", metadata={"help": "The teacher (the large guard of the SafeRoute stage): the quickstart's."})
    teacher_max_length: int = field(default=192, metadata={"help": "Token budget the teacher is evaluated with (the large guard's)."})
    student_max_length: int = field(default=128, metadata={"help": "Token budget the students are evaluated with (their training budget)."})
    output_dir: str = field(default="{output_root}/ablation", metadata={"help": "Where the students, reports and tables go."})
    only: Optional[str] = field(default=None, metadata={"help": f"Comma-separated stages to run (default all): {list(STAGES)}."})


def parse_arms(text):
    """[(name, [distill flags])] of 'name=flags;name=flags'; names must be unique and non-empty."""
    arms = []
    for part in (p for p in str(text).split(";") if p.strip()):
        name, sep, flags = part.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ValueError(f"--arms: each arm is 'name=distill flags', got {part!r}.")
        if name in dict(arms):
            raise ValueError(f"--arms: arm {name!r} is named twice.")
        arms.append((name, shlex.split(flags)))
    if not arms:
        raise ValueError("--arms names no arm.")
    return arms


def parse_seeds(text):
    seeds = [int(s) for s in str(text).split(",") if s.strip()]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds must be distinct integers, got {text!r}.")
    return seeds


def student_dir(out, arm, seed):
    return Path(out) / "students" / f"{arm}-seed{seed}"


def student_done(folder):
    """Does `folder` hold a complete student (distill's own test: training_info.json says complete)?"""
    info = Path(folder) / "training_info.json"
    return info.exists() and json.loads(info.read_text()).get("complete", False) and (Path(folder) / "config.json").exists()


def eval_dir(out, name):
    return Path(out) / "eval" / name


def report_done(folder, max_per_benchmark):
    """Is there a finished report in `folder` for this sample size?"""
    path = Path(folder) / "report.json"
    if not path.exists():
        return False
    report = json.loads(path.read_text())
    return report.get("settings", {}).get("max_per_benchmark") == max_per_benchmark


class Runner:
    """Runs stage commands as subprocesses with the recipe and output root, timing each."""

    def __init__(self, recipe, output_root):
        self.flags = ["--config", recipe, "--output_root", output_root]
        self.timings = {}

    def __call__(self, name, module, *args):
        t0, cpu0 = time.perf_counter(), children_cpu()
        print(f"[ablate] {name} ...", flush=True)
        proc = subprocess.run([sys.executable, "-m", module, *self.flags, *map(str, args)])
        if proc.returncode != 0:
            raise SystemExit(f"ablate: {name} failed (exit {proc.returncode}); fix it and re-run: finished work is kept.")
        self.timings[name] = {"seconds": round(time.perf_counter() - t0, 1), "cpu_seconds": round(children_cpu() - cpu0, 1)}
        print(f"[ablate] {name} done in {self.timings[name]['seconds']:.0f} s", flush=True)


def evaluate_guard(run, args, folder, model, max_length, baselines="none"):
    if report_done(folder, args.max_per_benchmark):
        return
    run(f"evaluate {Path(folder).name}", "evaluation.evaluate", "--model", "", "--guard", model,
        "--guard_kind", "sequence_classification", "--max_length", max_length, "--max_per_benchmark", args.max_per_benchmark,
        "--output_dir", folder, "--baselines", baselines, "--categories", "false", "--plots", "false")


def average(report, method):
    values = report["average"]["methods"][method]
    return {m: values[m] for m in METRICS}


def summarize(args, arms, seeds):
    """The ablation table (markdown) and its numbers from the finished reports."""
    out = Path(args.output_dir)
    teacher = json.loads((eval_dir(out, "teacher") / "report.json").read_text())
    result = {"arms": {}, "max_per_benchmark": args.max_per_benchmark, "seeds": seeds,
                        "benchmarks": {b: v["n"] for b, v in teacher["benchmarks"].items()}}
    for arm, flags in arms:
        per_seed = []
        for seed in seeds:
            report = json.loads((eval_dir(out, f"{arm}-seed{seed}") / "report.json").read_text())
            info = json.loads((student_dir(out, arm, seed) / "training_info.json").read_text())
            per_seed.append({"seed": seed, **average(report, "guard"), "train_rows": info["rows"]["train"],
                             "synthetic_rows": info["rows"].get("synthetic_train", 0), "steps": info["steps_done"]})
        stats = {m: (statistics.mean(r[m] for r in per_seed), statistics.stdev(r[m] for r in per_seed) if len(per_seed) > 1 else 0.0)
                 for m in METRICS}
        result["arms"][arm] = {"flags": flags, "per_seed": per_seed, "mean": {m: s[0] for m, s in stats.items()},
                               "sd": {m: s[1] for m, s in stats.items()}}
    result["teacher"] = average(teacher, "guard")
    result["baselines"] = {name: average(teacher, name) for name in teacher["average"]["methods"] if name != "guard"}
    result["checks"] = order_checks(result["arms"])
    return table(result), result


def order_checks(arms):
    """The papers' order over consecutive arms, each gap against the larger of the two arms' seed
    standard deviations: each mean AUPRC above the previous one, and the last arm's mean F1 at least
    the previous one's. `holds`: the gap is larger than that bar; `in_mean`: it has the right sign."""
    names = list(arms)

    def check(name, a, b, metric, strict):
        gap = arms[b]["mean"][metric] - arms[a]["mean"][metric]
        bar = max(arms[a]["sd"][metric], arms[b]["sd"][metric])
        return {"check": name, "gap": gap, "bar": bar, "holds": gap > bar, "in_mean": gap > 0 if strict else gap >= 0}

    checks = [check(f"AUPRC {a} < {b}", a, b, "auprc", True) for a, b in zip(names, names[1:])]
    if len(names) >= 2:
        a, b = names[-2], names[-1]
        checks.append(check(f"F1 {b} >= {a}", a, b, "f1", False))
    return checks


def table(result):
    lines = [f"| student | avg F1 (mean ± sd, {len(result['seeds'])} seeds) | avg AUPRC (mean ± sd) | train rows (synthetic) | steps | per seed (F1 / AUPRC) |",
             "| --- | --- | --- | --- | --- | --- |"]
    for arm, r in result["arms"].items():
        first = r["per_seed"][0]
        seeds = ", ".join(f"{s['f1']:.3f} / {s['auprc']:.3f}" for s in r["per_seed"])
        lines.append(f"| {arm} | {r['mean']['f1']:.3f} ± {r['sd']['f1']:.3f} | {r['mean']['auprc']:.3f} ± {r['sd']['auprc']:.3f} | "
                     f"{first['train_rows']:,} ({first['synthetic_rows']:,}) | {first['steps']} | {seeds} |")
    for name, m in result["baselines"].items():
        lines.append(f"| ({name}) | {m['f1']:.3f} | {m['auprc']:.3f} | | | |")
    lines.append(f"| (teacher) | {result['teacher']['f1']:.3f} | {result['teacher']['auprc']:.3f} | | | |")
    sizes = ", ".join(f"{b} {n}" for b, n in result["benchmarks"].items())
    lines += ["", f"Six-benchmark averages, at most {result['max_per_benchmark']} per benchmark ({sizes}).", ""]
    verdict = lambda c: "holds" if c["holds"] else "in the mean only" if c["in_mean"] else "does NOT hold"  # noqa: E731
    lines += [f"- {c['check']}: gap {c['gap']:+.3f} against the larger seed sd {c['bar']:.3f}: {verdict(c)}"
              for c in result["checks"]]
    return "\n".join(lines) + "\n"


def main(argv=None):
    args, given = parse_args([AblateArguments], argv, section="ablate", with_recipe=True)
    if not given["config"]:
        raise SystemExit("ablate: --config RECIPE is required (e.g. saferoute/recipes/cpu-ablation.yaml).")
    arms, seeds = parse_arms(args.arms), parse_seeds(args.seeds)
    wanted = set(args.only.split(",")) if args.only else set(STAGES)
    if wanted - set(STAGES):
        raise ValueError(f"--only: unknown stages {sorted(wanted - set(STAGES))}; choose from {list(STAGES)}.")
    router_arm = None if args.router_arm in ("", "none") else args.router_arm
    if router_arm and router_arm not in dict(arms):
        raise ValueError(f"--router_arm {router_arm!r} is not one of the arms {[a for a, _ in arms]}.")
    if not Path(args.teacher).exists():
        raise SystemExit(f"ablate: no teacher at {args.teacher}: run `make quickstart` (or its train-guard stage) first.")
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    run = Runner(given["config"], given["output_root"])
    # the students learn from the corpus this recipe builds, whatever the distill section's default
    corpus = stage_arguments(given["config"], "build-corpus", given["output_root"]).output_dir
    start = time.perf_counter()
    if "corpus" in wanted:
        run("build-corpus", "dataset_builders.harmaug.build")
    if "students" in wanted:
        for seed in seeds:  # seed-major: a stopped run has every arm at the first seeds
            for arm, flags in arms:
                if not student_done(student_dir(out, arm, seed)):
                    run(f"distill {arm}-seed{seed}", "training.distill", "--seed", seed, "--corpus", corpus,
                        "--output_dir", student_dir(out, arm, seed), *flags)
    if "evaluate" in wanted:
        evaluate_guard(run, args, eval_dir(out, "teacher"), args.teacher, args.teacher_max_length, baselines="tfidf_logreg")
        for seed in seeds:
            for arm, _ in arms:
                evaluate_guard(run, args, eval_dir(out, f"{arm}-seed{seed}"), student_dir(out, arm, seed), args.student_max_length)
    if "router" in wanted and router_arm:
        model = out / "saferoute-guard"
        if not (model / "config.json").exists():
            run("train-router", "training.train_router", "--student", student_dir(out, router_arm, seeds[0]), "--output_dir", model)
        if not report_done(eval_dir(out, "saferoute"), args.max_per_benchmark):
            run("evaluate saferoute", "evaluation.evaluate", "--model", model, "--max_per_benchmark", args.max_per_benchmark,
                "--output_dir", eval_dir(out, "saferoute"), "--plots", "false")
    record_timings(out / "timings.json", given["config"], run.timings)
    if "table" in wanted:
        markdown, result = summarize(args, arms, seeds)
        (out / "ablation.md").write_text(markdown)
        (out / "ablation.json").write_text(json.dumps(result, indent=2) + "\n")
        print("\n" + markdown)
        saferoute = eval_dir(out, "saferoute") / "report.md"
        if saferoute.exists():
            print(saferoute.read_text())
    print(f"ablate finished in {(time.perf_counter() - start) / 60:.1f} min.")


if __name__ == "__main__":
    main()
