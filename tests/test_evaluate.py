"""`saferoute evaluate`: end to end on tiny models, the score cache, and every reported number
recomputed with scikit-learn from the saved per-example scores."""

import json
import shutil
import warnings
import zlib

import numpy as np
import pandas as pd
import pytest
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import accuracy_score, average_precision_score, f1_score, precision_score, recall_score

import evaluation.baselines as B
import evaluation.evaluate as E
from dataset_builders.benchmarks import load_benchmarks
from dataset_builders.schema import guard_items
from dataset_builders.score_store import text_key
from evaluation import metrics as M
from evaluation.methods import METHODS, RoutingInputs, evaluate_methods, final_scores, routed_mask
from saferoute.cli import main as cli
from publishing.package import PackageArguments, package
from dataset_builders.roles import STUDENT_ROLES, RoleTable
from tiny_corpus import tiny_pool_rows, tiny_roles, write_pool

BENCHMARKS = ["openai_moderation", "toxicchat", "harmbench", "wildguardmix_prompt", "wildguardmix_response", "xstest_response"]
ARGS = ["--benchmarks", "all", "--max-per-benchmark", "50", "--max-validation", "60"]
THRESHOLDS = {"fixed": 0.5, "best_f1": 0.35, "budget": 0.7}  # as train-router would record them


@pytest.fixture(scope="module", autouse=True)
def validation_rows(tmp_path_factory):
    """A tiny pool and its role split (the TF-IDF baseline fits on its teacher and student rows:
    `--roles`, `--seed_pool`), and labeled rows the tiny models never saw, for the temperature fit
    and the budget (`--validation FILE`, last)."""
    folder = tmp_path_factory.mktemp("validation")
    pool = write_pool(folder / "pool.jsonl", tiny_pool_rows(160, seed=0))
    path = write_pool(folder / "validation.jsonl", tiny_pool_rows(120, seed=3))
    added = ["--roles", str(tiny_roles(pool, folder / "roles")), "--seed_pool", pool, "--validation", path]
    ARGS.extend(added)
    yield path
    del ARGS[-len(added):]


def _arg(flag):
    return ARGS[ARGS.index(flag) + 1]


def _boom(*args, **kwargs):
    raise AssertionError("a model was loaded although every score is cached")


@pytest.fixture(scope="module")
def saferoute_dir(tmp_path_factory, tiny_student_dir, tiny_llama_guard_dir):
    out = tmp_path_factory.mktemp("saferoute") / "model"
    return package(PackageArguments(student=str(tiny_student_dir), large_guard=str(tiny_llama_guard_dir),
                                    large_guard_kind="llama_guard", output_dir=str(out), model_card=False,
                                    router_thresholds=THRESHOLDS, router_threshold_choice="budget"))


@pytest.fixture(scope="module")
def first_run(saferoute_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "eval"
    cli(["evaluate", "--model", str(saferoute_dir), *ARGS, "--output_dir", str(out)])
    return out


def _mtimes(folder):
    """{model key: its parts' names and mtimes} of the score store under `folder`."""
    return {d.name: sorted((p.name, p.stat().st_mtime_ns) for p in d.glob("part-*.parquet")) for d in (folder / "cache").iterdir() if d.is_dir()}


def _parts(folder):
    return [p for d in (folder / "cache").iterdir() if d.is_dir() for p in d.glob("part-*.parquet")]


def _text_labels():
    """{text key: label} of the benchmark rows evaluated (the store is keyed by text, not id)."""
    return {text_key(it): y for ds in load_benchmarks(BENCHMARKS, "offline", 50, 0).values() for it, y in zip(guard_items(ds), ds["label"])}


def test_first_run_writes_report_cache_and_plots(first_run, saferoute_dir):
    report = json.loads((first_run / "report.json").read_text())
    assert report["mode"] == "saferoute"
    assert list(report["benchmarks"]) == BENCHMARKS
    for name, bench in report["benchmarks"].items():
        assert bench["n"] == 50
        assert set(bench["methods"]) == set(METHODS) | {"tfidf_logreg"}
        for method in METHODS:
            assert set(M.METRICS) <= set(bench["methods"][method])
        assert set(bench["methods"]["tfidf_logreg"]) == set(M.CLASSIFICATION_METRICS)  # no routing metrics
        assert set(bench["throughput"]) == {"student", "large_guard", "saferoute"}
        assert bench["throughput"]["student"]["examples_per_second"] > 0
        assert bench["methods"]["large"]["large_usage"] == 1.0 and bench["methods"]["student"]["large_usage"] == 0.0
    assert report["scored_this_run"]["student"] > 300 and report["scored_this_run"]["large_guard"] > 250
    assert report["scored_this_run"]["tfidf_logreg"] > 250
    assert 0 < report["settings"]["temperature"] and report["settings"]["entropy_unit"] == "bits"
    assert report["settings"]["router_thresholds"] == THRESHOLDS and report["settings"]["router_threshold_choice"] == "budget"
    assert report["settings"]["router_threshold"] == THRESHOLDS["budget"]
    assert len(_mtimes(first_run)) == 3  # the SafeRoute model's, the large guard's and the baseline's caches
    for png in ("pr_curves.png", "f1_vs_usage.png"):
        assert (first_run / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (first_run / "report.md").read_text()
    assert "| SafeRoute |" in md and "## Throughput" in md and "## SafeRoute routing thresholds" in md
    assert "| budget | 0.7000 |" in md and md.count("| yes |") == 1
    scores = pd.read_parquet(first_run / "scores.parquet")
    columns = ["student_unsafe_score", "router_score", "large_unsafe_score", "tfidf_logreg_unsafe_score"]
    assert len(scores) == 300 and scores[columns].notna().all().all()
    # the baseline's row: its own title in every table (F1 and AUPRC filled, no routing metric), the rows it was fitted on
    assert report["titles"]["methods"]["tfidf_logreg"] == B.BASELINES["tfidf_logreg"].title
    table_rows = [line for line in md.splitlines() if line.startswith(f"| {B.BASELINES['tfidf_logreg'].title} |")]
    filled = [all(cell.strip() != "-" for cell in line.split("|")[2:-1]) for line in table_rows]
    assert filled == [metric in M.CLASSIFICATION_METRICS for metric in M.METRICS]  # one row per metric's table
    fit = report["settings"]["baselines"]["tfidf_logreg"]["fitted_on"]
    roles = RoleTable(_arg("--roles"))
    assert fit["roles_fingerprint"] == roles.fingerprint and fit["role_names"] == list(STUDENT_ROLES)
    assert fit["rows"] == sum(role in STUDENT_ROLES for role in roles.roles.values()) > 50
    assert f"fitted on the human labels of {fit['rows']} rows" in md
    average = report["average"]["methods"]["tfidf_logreg"]
    assert set(average) == set(M.CLASSIFICATION_METRICS) and 0 <= average["f1"] <= 1 and 0 < average["auprc"] <= 1
    card = (saferoute_dir / "README.md").read_text()  # the model card's tables carry the row too (usage: "-")
    card_rows = [line for line in card.splitlines() if line.startswith(f"| {B.BASELINES['tfidf_logreg'].title} |")]
    assert len(card_rows) == 3 and f"{average['f1']:.3f} |" in card_rows[0] and card_rows[2].endswith("| - |")
    assert f"fitted on the human labels of\n{fit['rows']:,} rows" in card


def test_rerun_loads_no_model(first_run, saferoute_dir, monkeypatch):
    before = json.loads((first_run / "report.json").read_text())
    mtimes = _mtimes(first_run)
    monkeypatch.setattr(E, "pipeline", _boom)
    monkeypatch.setattr(E, "load_guard", _boom)
    monkeypatch.setattr(B, "load_seed_pool", _boom)  # the baseline reads the store: no pool, no fit
    cli(["evaluate", "--model", str(saferoute_dir), *ARGS, "--output_dir", str(first_run)])
    after = json.loads((first_run / "report.json").read_text())
    assert after["scored_this_run"] == {"student": 0, "large_guard": 0, "tfidf_logreg": 0}
    assert after["settings"]["baselines"] == before["settings"]["baselines"]  # the fit's record comes from the store
    assert _mtimes(first_run) == mtimes
    assert after["benchmarks"] == before["benchmarks"] and after["average"] == before["average"]


def test_other_large_guard_is_not_served_stale_scores(first_run, saferoute_dir, tmp_path, monkeypatch):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    guard_dir = tmp_path / "other-guard"
    src = json.loads((saferoute_dir / "config.json").read_text())["large_guard"]["name_or_path"]
    model = AutoModelForCausalLM.from_pretrained(src)
    with torch.no_grad():
        model.lm_head.weight.mul_(30)
    model.save_pretrained(guard_dir)
    AutoTokenizer.from_pretrained(src).save_pretrained(guard_dir)
    out = tmp_path / "eval"
    shutil.copytree(first_run, out)
    monkeypatch.setattr(E, "pipeline", _boom)  # the student's scores are reused
    report = E.evaluate_saferoute(saferoute_dir, benchmarks="toxicchat,harmbench", max_per_benchmark=50, validation=ARGS[-1],
                                  max_validation=60, output_dir=str(out), large_guard=str(guard_dir),
                                  large_guard_kind="llama_guard", plots=False, roles=_arg("--roles"), seed_pool=_arg("--seed_pool"))
    assert report["scored_this_run"]["student"] == 0 and report["scored_this_run"]["tfidf_logreg"] == 0
    assert report["scored_this_run"]["large_guard"] >= 95  # 100 rows, a few duplicate ids
    assert len(_mtimes(out)) == 4


def _synthetic_cache(folder, labels_by_key):
    """Replace every stored score by label-correlated random scores (the tiny models are near-constant)."""
    rng = np.random.default_rng(0)
    for path in _parts(folder):
        frame = pd.read_parquet(path)
        y = np.array([labels_by_key.get(k, rng.integers(2)) for k in frame["text_key"]])
        sign = 2 * y - 1
        if "router_score" in frame:
            frame["student_unsafe_score"] = 1 / (1 + np.exp(-(0.8 * sign + rng.normal(0, 1.5, len(y)))))
            frame["router_score"] = rng.uniform(0, 1, len(y))
        else:
            frame["unsafe_score"] = 1 / (1 + np.exp(-(1.5 * sign + rng.normal(0, 1.5, len(y)))))
        frame.to_parquet(path, index=False)


def _expected(name, y, s, r, lg, settings):
    """Every method's routing decisions (and final scores), written independently of `evaluation`:
    entropy in bits > 0.5 as SafeRoute's code has it; the temperature method keeps the scaled P
    on what it does not route; random routes SafeRoute's count, or each input with p = 0.5, with
    seeds derived from the benchmark's name (CRC32) and the seed's index."""
    p = np.clip(s, 1e-7, 1 - 1e-7)
    pt = 1 / (1 + np.exp(-np.log(p / (1 - p)) / settings["temperature"]))
    bits = lambda q: -(q * np.log2(q) + (1 - q) * np.log2(1 - q))  # noqa: E731
    target = ((s > 0.5) != y) & ((lg > 0.5) == y)
    n = len(y)
    routes = {
        "student": np.zeros(n, bool), "large": np.ones(n, bool), "saferoute": r > settings["router_threshold"],
        "entropy": bits(p) > 0.5, "temperature": bits(pt) > 0.5, "oracle": target,
        **{f"saferoute_{k}": r > v for k, v in settings["router_thresholds"].items()},
    }
    k = int(routes["saferoute"].sum())
    routes["entropy_same_usage"] = np.isin(np.arange(n), np.argsort(-bits(p), kind="stable")[:k])
    finals = {m: np.where(routed, lg, s) for m, routed in routes.items()}
    finals["temperature"] = np.where(routes["temperature"], lg, pt)
    randoms = {"random_same_usage": [], "random_p50": []}
    for seed in range(settings["random_seeds"]):
        entropy = [zlib.crc32(name.encode()), seed]
        mask = np.zeros(n, bool)
        mask[np.random.default_rng(entropy).choice(n, size=k, replace=False)] = True
        randoms["random_same_usage"].append(mask)
        randoms["random_p50"].append(np.random.default_rng(entropy).random(n) < 0.5)
    return routes, finals, randoms, target


def _sk(y, final, routed, target):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pred = (final > 0.5).astype(int)
        return {
            "f1": f1_score(y, pred), "precision": precision_score(y, pred), "recall": recall_score(y, pred),
            "accuracy": accuracy_score(y, pred), "auprc": average_precision_score(y, final),
            "large_usage": routed.mean(), "routing_f1": f1_score(target, routed),
        }


def test_every_reported_number_recomputes_with_sklearn(first_run, saferoute_dir, tmp_path, monkeypatch):
    out = tmp_path / "eval"
    shutil.copytree(first_run, out)
    _synthetic_cache(out, _text_labels())
    monkeypatch.setattr(E, "pipeline", _boom)
    monkeypatch.setattr(E, "load_guard", _boom)
    cli(["evaluate", "--model", str(saferoute_dir), *ARGS, "--large-budget", "0.2", "--output_dir", str(out)])
    report = json.loads((out / "report.json").read_text())
    scores = pd.read_parquet(out / "scores.parquet")
    settings = report["settings"]
    keys = {(b, i): text_key(it) for b, ds in load_benchmarks(BENCHMARKS, "offline", 50, 0).items() for i, it in zip(ds["id"], guard_items(ds))}
    row_keys = [keys[(b, i)] for b, i in zip(scores["benchmark"], scores["id"])]
    stores = {store: pd.concat([pd.read_parquet(p) for p in store.glob("part-*.parquet")]).drop_duplicates("text_key").set_index("text_key")
              for store in (out / "cache").iterdir()}
    # --large-budget: the budget row's threshold is chosen here, on the validation rows' router scores
    student_store = next(cache for cache in stores.values() if "router_score" in cache)
    validation = E._validation_split(E.EvaluateArguments(model=str(saferoute_dir), validation=ARGS[ARGS.index("--validation") + 1],
                                                         max_validation=60))
    val_router = student_store.loc[[text_key(it) for it in guard_items(validation)], "router_score"].to_numpy()
    assert settings["router_thresholds"]["budget"] == M.budget_threshold(val_router, 0.2) != THRESHOLDS["budget"]
    assert (val_router > settings["router_thresholds"]["budget"]).mean() <= 0.2
    assert settings["router_thresholds"]["best_f1"] == THRESHOLDS["best_f1"] and settings["router_threshold"] == THRESHOLDS["budget"]
    for store, cache in stores.items():  # each row carries its own text's stored score
        pairs = [("student_unsafe_score", "student_unsafe_score"), ("router_score", "router_score")]
        if "router_score" not in cache:
            pairs = [("tfidf_logreg_unsafe_score" if store.name.startswith("baseline-") else "large_unsafe_score", "unsafe_score")]
        for mine, theirs in pairs:
            assert (cache.loc[row_keys, theirs].to_numpy() == scores[mine].to_numpy()).all()
    for name in BENCHMARKS:
        f = scores[scores["benchmark"] == name]
        y, s, r, lg = (f[c].to_numpy() for c in ("label", "student_unsafe_score", "router_score", "large_unsafe_score"))
        assert s.std() > 0.1 and lg.std() > 0.1  # the synthetic scores are what got evaluated
        routes, finals, randoms, target = _expected(name, y, s, r, lg, settings)
        reported = report["benchmarks"][name]["methods"]
        for method, routed in routes.items():
            expected = _sk(y, finals[method], routed, target)
            for metric, value in expected.items():
                assert reported[method][metric] == pytest.approx(value, abs=1e-9), (name, method, metric)
        for method, masks in randoms.items():
            runs = [_sk(y, np.where(m, lg, s), m, target) for m in masks]
            for metric in M.METRICS:
                assert reported[method][metric] == pytest.approx(np.mean([x[metric] for x in runs]), abs=1e-9)
                assert reported[method]["std"][metric] == pytest.approx(np.std([x[metric] for x in runs]), abs=1e-9)
        for same in ("random_same_usage", "entropy_same_usage"):
            assert reported["saferoute"]["large_usage"] == pytest.approx(reported[same]["large_usage"])
        baseline = f["tfidf_logreg_unsafe_score"].to_numpy()
        assert baseline.std() > 0.1  # the synthetic scores again
        expected = _sk(y, baseline, np.zeros(len(y), bool), target)
        for metric in M.CLASSIFICATION_METRICS:
            assert reported["tfidf_logreg"][metric] == pytest.approx(expected[metric], abs=1e-9), (name, metric)
        t = report["benchmarks"][name]["throughput"]
        assert t["saferoute"]["seconds"] == pytest.approx(
            f["student_seconds"].sum() + f["large_seconds"][routes["saferoute"]].sum())
    for method in [*METHODS, "tfidf_logreg"]:
        assert report["average"]["methods"][method]["f1"] == pytest.approx(
            np.mean([report["benchmarks"][n]["methods"][method]["f1"] for n in BENCHMARKS]))
    assert report["average"]["methods"]["oracle"]["f1"] >= report["average"]["methods"]["large"]["f1"]
    # six benchmarks of 50 rows each: seeded per benchmark, their random masks differ
    usages = {tuple(report["benchmarks"][n]["methods"]["random_p50"]["per_seed"]["large_usage"]) for n in BENCHMARKS}
    assert len(usages) == len(BENCHMARKS)


def test_guard_mode(tiny_student_dir, tmp_path):
    report = E.evaluate_guard(tiny_student_dir, "sequence_classification", benchmarks="toxicchat,harmbench",
                              max_per_benchmark=20, output_dir=str(tmp_path / "g"), roles=_arg("--roles"), seed_pool=_arg("--seed_pool"))
    assert report["mode"] == "guard" and list(report["benchmarks"]) == ["toxicchat", "harmbench"]
    scores = pd.read_parquet(tmp_path / "g" / "scores.parquet")
    for name, bench in report["benchmarks"].items():
        f = scores[scores["benchmark"] == name]
        assert set(bench["methods"]) == {"guard", "tfidf_logreg"}  # the baseline row in guard mode too
        assert bench["methods"]["tfidf_logreg"]["auprc"] == pytest.approx(average_precision_score(f["label"], f["tfidf_logreg_unsafe_score"]))
        assert bench["methods"]["guard"]["auprc"] == pytest.approx(average_precision_score(f["label"], f["unsafe_score"]))
        assert bench["methods"]["guard"]["accuracy"] == pytest.approx(accuracy_score(f["label"], f["unsafe_score"] > 0.5))
        assert bench["throughput"]["guard"]["examples_per_second"] > 0
    assert (tmp_path / "g" / "pr_curves.png").exists() and "| guard |" in (tmp_path / "g" / "report.md").read_text()


def test_bad_arguments(saferoute_dir, tiny_student_dir, tmp_path):
    with pytest.raises(ValueError, match="exactly one"):
        E.run_evaluation(E.EvaluateArguments(model=str(saferoute_dir), guard="x", guard_kind="llama_guard"))
    with pytest.raises(ValueError, match="guard-kind"):
        E.evaluate_guard("x", "nope")
    with pytest.raises(ValueError, match="large-budget"):
        E.evaluate_guard(tiny_student_dir, "sequence_classification", large_budget=0.2)
    no_large = package(PackageArguments(student=str(tiny_student_dir), output_dir=str(tmp_path / "m"), model_card=False))
    with pytest.raises(ValueError, match="no large guard"):
        E.evaluate_saferoute(no_large, benchmarks="harmbench", max_per_benchmark=5, output_dir=str(tmp_path / "e"), validation="none",
                             baselines="none")
    with pytest.raises(ValueError, match="--baselines: unknown baseline 'bm25'"):
        E.evaluate_saferoute(saferoute_dir, baselines="tfidf_logreg,bm25")
    with pytest.raises(FileNotFoundError, match="--baselines tfidf_logreg fits on the teacher and student rows.*--baselines none"):
        E.evaluate_guard(tiny_student_dir, "sequence_classification", benchmarks="harmbench", max_per_benchmark=5,
                         output_dir=str(tmp_path / "g"), roles=str(tmp_path / "no-roles"))


# -- the metric helpers on hand-made examples ---------------------------------------------------------
def test_metrics_match_sklearn_on_a_hand_made_example():
    y = [1, 0, 1, 1, 0, 0, 1, 0]
    s = [0.9, 0.2, 0.4, 0.7, 0.6, 0.1, 0.55, 0.5]
    pred = [1, 0, 0, 1, 1, 0, 1, 0]  # 0.5 is not above the threshold
    got = M.classification_metrics(y, s)
    assert got == pytest.approx({"f1": f1_score(y, pred), "precision": precision_score(y, pred),
                                 "recall": recall_score(y, pred), "accuracy": accuracy_score(y, pred),
                                 "auprc": average_precision_score(y, s)})
    assert got["f1"] == pytest.approx(0.75) and got["accuracy"] == pytest.approx(0.75)
    large = [0.8, 0.1, 0.9, 0.2, 0.3, 0.7, 0.6, 0.4]
    # student wrong & large right: index 2 (y=1, s=.4, l=.9) and 4 (y=0, s=.6, l=.3)
    assert M.router_label(y, s, large).tolist() == [0, 0, 1, 0, 1, 0, 0, 0]
    routed = np.array([False, False, True, True, False, False, False, False])
    got = M.routing_metrics(y, s, large, routed)
    assert got["large_usage"] == 0.25
    assert got["routing_f1"] == pytest.approx(f1_score([0, 0, 1, 0, 1, 0, 0, 0], routed))  # = 0.5
    assert got["f1"] == pytest.approx(f1_score(y, [1, 0, 1, 0, 1, 0, 1, 0]))


@pytest.mark.parametrize("y, s", [([0, 0, 0], [0.1, 0.7, 0.2]), ([1, 1, 1], [0.1, 0.2, 0.3]), ([0, 0], [0.1, 0.2])])
def test_single_class_edge_cases_report_zero_with_a_warning(y, s, caplog):
    sink = []
    with M.collect_warnings(sink, "edge"):
        got = M.classification_metrics(y, s)
    assert got["f1"] == 0.0 and got["precision"] == 0.0 and not np.isnan(got["auprc"])
    assert sink and all(w.startswith("edge: ") for w in sink)
    assert any("ill-defined" in w or "positive" in w for w in sink)
    assert any(r.levelname == "WARNING" for r in caplog.records)
    with pytest.warns(UndefinedMetricWarning):  # outside collect_warnings, scikit-learn's own warning
        M.classification_metrics(y, s)


def test_entropy_routes_the_bits_band_by_hand():
    """SafeRoute's entropy baseline: binary entropy in bits > 0.5, i.e. P(unsafe) in about (0.110, 0.890)."""
    from scipy.optimize import brentq

    low = brentq(lambda q: -(q * np.log2(q) + (1 - q) * np.log2(1 - q)) - 0.5, 1e-6, 0.5)  # 0.110028...
    assert low == pytest.approx(0.110028, abs=1e-6)
    p = np.array([0.0, 0.05, 0.10, 0.109, 0.111, 0.2, 0.5, 0.8, 0.889, 0.891, 0.95, 1.0])
    y = np.array([0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1])
    inputs = RoutingInputs(y, p, 1 - p, router=np.zeros_like(p))
    got = evaluate_methods(inputs)["entropy"]["large_usage"]
    in_band = (p > low) & (p < 1 - low)
    assert in_band.tolist() == [False] * 4 + [True] * 5 + [False] * 3
    assert got == pytest.approx(in_band.mean())  # 5 of 12
    assert M.binary_entropy(np.array([0.5]))[0] == pytest.approx(1.0)  # bits
    # the temperature row: what it does not route keeps the temperature-scaled P (AUPRC moves, F1 does not)
    scaled = RoutingInputs(y, p, 1 - p, router=np.zeros_like(p), temperature=2.0)
    final = final_scores("temperature", scaled)
    kept = ~routed_mask("temperature", scaled)
    np.testing.assert_allclose(final[kept], M.temperature_scale(p, 2.0)[kept])


def test_entropy_temperature_and_budget():
    assert M.binary_entropy(np.array([0.5]))[0] == pytest.approx(1.0)  # bits
    rng = np.random.default_rng(0)
    z = rng.normal(0, 2, 4000)
    y = (rng.uniform(size=z.size) < 1 / (1 + np.exp(-z))).astype(int)
    overconfident = 1 / (1 + np.exp(-3 * z))
    assert M.fit_temperature(y, overconfident) == pytest.approx(3.0, rel=0.15)
    r = np.array([0.9, 0.8, 0.8, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05])
    for budget, usage in [(0.0, 0.0), (0.1, 0.1), (0.2, 0.1), (0.35, 0.3), (1.0, 1.0)]:
        assert (r > M.budget_threshold(r, budget)).mean() == pytest.approx(usage)  # ties never overshoot
    with pytest.raises(ValueError):
        M.budget_threshold(r, 1.5)
