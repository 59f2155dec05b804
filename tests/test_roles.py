"""The role split: one role per id, shares and strata as asked, the same split for the same seed and
pool, per-source mixes, and the guarantee that the router's rows are seen by neither model."""

import json
from collections import Counter

import pytest

from dataset_builders.roles import ROLES, RoleTable, RolesArguments, assign_roles, make_roles, mixed_sample
from dataset_builders.seed_pool import load_seed_pool
from tiny_corpus import tiny_pool_rows, write_pool


@pytest.fixture(scope="module")
def pool_file(tmp_path_factory):
    rows = tiny_pool_rows(400, sources=("a", "b", "c", "d"))
    rows += [dict(rows[0])]  # an exact duplicate: the same id must get one role
    rows += [dict(rows[1], label=1 - rows[1]["label"])]  # one pair labeled twice, differently
    return write_pool(tmp_path_factory.mktemp("pool") / "pool.jsonl", rows)


def test_every_id_gets_one_role_with_the_asked_shares_per_stratum(pool_file, tmp_path):
    out = make_roles(RolesArguments(seed_pool=pool_file, output_dir=str(tmp_path / "r"), teacher=0.5, router=0.2, validation=0.1))
    table = RoleTable(out)
    pool = load_seed_pool(pool_file)
    assert set(table.roles) == set(pool["id"]) and set(table.roles.values()) == set(ROLES)
    counts = Counter(table.roles.values())
    assert (counts["router"], counts["validation"], counts["teacher"], counts["student"]) == (80, 40, 200, 80)
    by_stratum = Counter((table.roles[r["id"]], r["source"], r["level"], r["label"]) for r in pool if r["id"] != pool[0]["id"])
    for role, share in (("router", 0.2), ("teacher", 0.5)):  # stratified: each (source, level, label) keeps the shares
        for stratum in {(s, lv, lb) for _, s, lv, lb in by_stratum}:
            total = sum(v for (_, *k), v in by_stratum.items() if tuple(k) == stratum)
            assert abs(by_stratum[(role, *stratum)] - share * total) <= 1
    summary = json.loads((out / "roles.json").read_text())
    assert summary["rows_per_role"] == dict(Counter(table.roles[i] for i in pool["id"]))
    assert summary["fingerprint"] == table.fingerprint


def test_same_seed_and_pool_give_the_same_split_and_another_seed_another(pool_file, tmp_path):
    args = RolesArguments(seed_pool=pool_file, output_dir=str(tmp_path / "a"))
    first = assign_roles(load_seed_pool(pool_file), args)
    assert first == assign_roles(load_seed_pool(pool_file), args)
    other = assign_roles(load_seed_pool(pool_file), RolesArguments(seed_pool=pool_file, seed=1))
    assert other != first and Counter(other.values()) == Counter(first.values())
    make_roles(args)
    assert make_roles(args) == tmp_path / "a"  # the same split again: kept
    with pytest.raises(ValueError, match="another role split"):
        make_roles(RolesArguments(seed_pool=pool_file, output_dir=str(tmp_path / "a"), seed=1))


def test_router_share_and_shares_are_checked(pool_file):
    with pytest.raises(ValueError, match="at least 0.15"):
        RolesArguments(seed_pool=pool_file, router=0.1)
    with pytest.raises(ValueError, match="sum to less than 1"):
        RolesArguments(seed_pool=pool_file, teacher=0.7, router=0.2, validation=0.1)


def test_mixed_sample_weights_sources_and_caps_them(pool_file, tmp_path):
    pool = load_seed_pool(pool_file)
    mixed = mixed_sample(pool, 100, {"a": 2, "b": 1, "c": 1, "d": 0}, seed=0)
    counts = Counter(mixed["source"])
    assert len(mixed) == 100 and counts["d"] == 0 and counts["a"] == 50 and counts["b"] == counts["c"] == 25
    capped = mixed_sample(pool, 300, {"a": 10}, seed=0)  # a has 101 rows: capped, the rest go to b, c, d
    assert Counter(capped["source"])["a"] == 101 and len(capped) == 300
    assert mixed_sample(pool, None, {"b": 0})["source"].count("b") == 0
    assert mixed_sample(pool, 100, None, seed=0)["id"] == mixed_sample(pool, 100, None, seed=0)["id"]
    with pytest.raises(ValueError, match="absent"):
        mixed_sample(pool, 10, {"nope": 1})


def test_the_router_rows_reach_neither_model(tmp_path, tiny_student_dir, tiny_llama_guard_dir):
    """Through the real stages: the teacher trains on teacher rows, the corpus (so the student) holds
    teacher, student and validation rows, the router learns from router rows only."""
    from dataset_builders.harmaug.build import BuildCorpusArguments, build
    from datasets import load_dataset
    from training.train_guard import TrainGuardConfig, train_guard

    pool_file = write_pool(tmp_path / "pool.jsonl", tiny_pool_rows(120, sources=("a", "b")))
    roles_dir = make_roles(RolesArguments(seed_pool=pool_file, output_dir=str(tmp_path / "roles"), teacher=0.4, router=0.2, validation=0.1))
    roles = RoleTable(roles_dir)
    teacher = train_guard(TrainGuardConfig(
        output_dir=str(tmp_path / "teacher"), base_model=str(tiny_student_dir), seed_pool=pool_file, roles=str(roles_dir),
        max_length=32, max_steps=2, per_device_train_batch_size=8, report_to="none"))
    info = json.loads((teacher / "training_info.json").read_text())
    assert info["roles"]["fingerprint"] == roles.fingerprint and info["train_examples"] == Counter(roles.roles.values())["teacher"]
    bench = tmp_path / "eval"
    bench.mkdir()
    (bench / "b.jsonl").write_text(json.dumps({"prompt": "unrelated"}) + "\n")
    corpus = build(BuildCorpusArguments(
        output_dir=str(tmp_path / "corpus"), seed_pool=pool_file, roles=str(roles_dir), benchmarks=str(bench),
        generator=str(tiny_llama_guard_dir), teacher=str(teacher), num_requests=4, shard_size=2, batch_size=2, num_exemplars=2,
        max_new_tokens=8, min_new_tokens=8, response_max_new_tokens=6, min_words=1, teacher_max_length=32))
    splits = load_dataset(str(corpus))
    seed_train = [i for i, o in zip(splits["train"]["id"], splits["train"]["origin"]) if o == "seed"]
    assert set(roles.role_of(seed_train)) == {"teacher", "student"}
    assert len(seed_train) == sum(r in ("teacher", "student") for r in roles.roles.values())
    assert set(roles.role_of(splits["validation"]["id"])) == {"validation"}
    router_ids = {i for i, r in roles.roles.items() if r == "router"}
    assert not router_ids & set(splits["train"]["id"]) and not router_ids & set(splits["validation"]["id"])


def _issue_key(row):
    """The normalized text of issue 21: NFKC, lower case, whitespace collapsed ((prompt, response);
    a prompt-only row: its prompt). Computed here independently of `schema.content_key`."""
    import unicodedata

    def norm(text):
        return None if text is None else " ".join(unicodedata.normalize("NFKC", text).lower().split())

    return norm(row["prompt"]), norm(row["response"])


def _roles_per_text(pool, roles):
    per_text = {}
    for row in pool:
        per_text.setdefault(_issue_key(row), set()).add(roles[row["id"]])
    return per_text


def test_one_text_gets_one_role_whatever_its_source_on_a_crafted_pool(tmp_path):
    """Copies of rows under another source (another id), re-cased, re-spaced or full-width, land in
    their original's role; a prompt-only row and a pair with the same prompt are two texts."""
    rows = tiny_pool_rows(300, sources=("a", "b", "c"))
    variants = []
    for k, row in enumerate(rows[:90]):
        text = [row["prompt"].upper(), "  " + row["prompt"].replace(" ", "\n\t "), row["prompt"].replace("o", "\uff4f")][k % 3]
        variants.append(dict(row, id=f"copy-{k:012x}", prompt=text, source="d", label=1 - row["label"] if k % 5 == 0 else row["label"]))
    rows += variants
    rows += [dict(rows[2], id="pair-000000000000", response="Sure.", level="response", source="d")]  # rows[2] is prompt-only
    pool = load_seed_pool(write_pool(tmp_path / "pool.jsonl", rows))
    for seed in range(3):
        roles = assign_roles(pool, RolesArguments(seed_pool="x", teacher=0.4, router=0.2, validation=0.1, seed=seed))
        per_text = _roles_per_text(pool, roles)
        assert all(len(r) == 1 for r in per_text.values()), [k for k, r in per_text.items() if len(r) > 1][:3]
        assert len(per_text) == 301 and set(roles) == set(pool["id"])  # 300 texts + the pair; every id has its role
        assert all(roles[f"copy-{k:012x}"] == roles[rows[k]["id"]] for k in range(90))
        counts = Counter(roles[r["id"]] for r in rows[:300] + rows[-1:])  # one row per text: the shares hold per text
        assert abs(counts["router"] - 0.2 * 301) <= 2 and abs(counts["teacher"] - 0.4 * 301) <= 2
    other = assign_roles(pool, RolesArguments(seed_pool="x", teacher=0.4, router=0.2, validation=0.1, seed=1))
    assert other != assign_roles(pool, RolesArguments(seed_pool="x", teacher=0.4, router=0.2, validation=0.1, seed=0))


def test_the_offline_pool_gives_each_normalized_text_one_role():
    """The real pool (`SAFEROUTE_DATA_DIR`): 190 normalized texts carry more than one id, none of
    them lands in two roles; the shares and the stratification still hold."""
    pool = load_seed_pool("offline")
    args = RolesArguments()
    roles = assign_roles(pool, args)
    per_text = _roles_per_text(pool, roles)
    ids_per_text = {}
    for row in pool:
        ids_per_text.setdefault(_issue_key(row), set()).add(row["id"])
    assert sum(len(i) > 1 for i in ids_per_text.values()) >= 150  # the pool does hold such texts
    split = [k for k, r in per_text.items() if len(r) > 1]
    assert not split, f"{len(split)} normalized texts in two roles, e.g. {split[:2]}"
    share = Counter(roles.values())
    for role in ("router", "validation", "teacher"):
        assert abs(share[role] / len(roles) - getattr(args, role)) < 0.005
    by_stratum = Counter((roles[r["id"]], r["source"], r["level"], r["label"]) for r in pool)
    for stratum in {k[1:] for k in by_stratum}:
        total = sum(by_stratum[(role, *stratum)] for role in ROLES)
        if total >= 200:
            assert abs(by_stratum[("router", *stratum)] / total - args.router) < 0.03, stratum
