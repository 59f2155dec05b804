"""Every labeled row's role, decided once: `saferoute roles` writes `{output_root}/roles/`.

One seeded split of the seed pool, stratified on (source, level, label), gives each text one role:

| role | who reads it | guarantee |
| --- | --- | --- |
| teacher | train-guard trains the large guard on these rows | |
| router | train-router learns from these rows only | never seen by the teacher nor the student |
| validation | train-guard and distill select models on them; evaluate fits its temperature on them | never trained on |
| student | distill trains the student on these (with the teacher's rows and the synthetic rows) | |

Roles go by content, not by id: ids whose rows share a normalized text (`schema.content_key`:
NFKC, lower case, words only; the (prompt, response) pair, or the prompt of a prompt-only row) are
one group, and a group gets one role, so the same text under two sources (two ids) never lands in
two roles. Rows sharing an id (exact duplicates, or one text labeled twice) share a role too.
Each stage reads its rows from the role file (`RoleTable`), samples them with a per-source mix
(`mixed_sample`), records the roles fingerprint in its `training_info.json`, and refuses rows
outside its roles unless forced.

    saferoute roles --config saferoute/recipes/cpu-offline.yaml
"""

import hashlib
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from saferoute.config import parse_args

from .schema import content_key
from .seed_pool import load_seed_pool
from .splits import strata_of, stratified_indices, stratified_split

logger = logging.getLogger(__name__)

ROLES = ("teacher", "router", "validation", "student")
STUDENT_ROLES = ("teacher", "student")  # the seed rows the student trains on
ROLES_FILE = "roles.parquet"
SUMMARY_FILE = "roles.json"
STRATA = ("source", "level", "label")
MIN_ROUTER_SHARE = 0.15


@dataclass
class RolesArguments:
    """Settings of `saferoute roles` (section `roles:` of a recipe)."""

    seed_pool: str = field(default="offline", metadata={"help": "The labeled pool: 'offline' (base + extended files), 'offline-base', 'wildguardmix' or a .jsonl/.parquet file."})
    output_dir: str = field(default="{output_root}/roles", metadata={"help": "Folder of the role file (roles.parquet) and its summary (roles.json)."})
    teacher: float = field(default=0.55, metadata={"help": "Share of the pool the teacher may train on (0 when the large guard is not trained here, e.g. Llama-Guard-3-8B)."})
    router: float = field(default=0.15, metadata={"help": f"Share kept for the router, unseen by both models (at least {MIN_ROUTER_SHARE})."})
    validation: float = field(default=0.05, metadata={"help": "Share for model selection and calibration; the rest is the student's."})
    seed: int = field(default=0, metadata={"help": "Seed of the split."})
    overwrite: bool = field(default=False, metadata={"help": "Write a new split even when one with other settings exists (the stages trained on the old one no longer match it)."})

    def __post_init__(self):
        shares = {name: getattr(self, name) for name in ("teacher", "router", "validation")}
        if any(not 0 <= v < 1 for v in shares.values()) or sum(shares.values()) > 1 - 1e-9:
            raise ValueError(f"Role shares must be in [0, 1) and sum to less than 1 (the student gets the rest), got {shares}.")
        if self.router < MIN_ROUTER_SHARE:
            raise ValueError(f"--router must be at least {MIN_ROUTER_SHARE}: the router learns from rows neither model saw, got {self.router}.")
        if self.validation <= 0:
            raise ValueError("--validation must be > 0: the stages select models on those rows.")


def content_groups(pool):
    """The ids of `pool` grouped by content: ids whose rows share a `content_key` (the normalized
    (prompt, response) pair; a prompt-only row: its normalized prompt) are one group, transitively
    (union-find over ids and keys). Returns (groups: lists of ids, first: the pool index of each
    group's first row), both in pool order."""
    parent = {}

    def find(node):
        parent.setdefault(node, node)
        while parent[node] != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    ids = pool["id"]
    for i, prompt, response in zip(ids, pool["prompt"], pool["response"]):
        a, b = find(("id", i)), find(("text", content_key(prompt, response)))
        if a != b:
            parent[b] = a
    members, first = {}, {}
    for k, i in enumerate(ids):
        root = find(("id", i))
        members.setdefault(root, {})[i] = None
        first.setdefault(root, k)
    return [list(m) for m in members.values()], list(first.values())


def assign_roles(pool, args):
    """{id: role}: one seeded split per role over the content groups of `pool` (`content_groups`),
    each stratified on (source, level, label) of the group's first row; every id of a group gets
    the group's role."""
    groups, first = content_groups(pool)
    if len(groups) < 4:
        raise ValueError(f"The pool holds {len(groups)} distinct texts (roles go by normalized text): too few for four roles.")
    strata = strata_of(pool.select(first), STRATA)
    remaining = list(range(len(groups)))
    roles = {}
    share_left = 1.0
    for role in ("router", "validation", "teacher"):
        share = getattr(args, role)
        if share <= 0:
            continue
        part = share / share_left  # of what is left
        rest, taken = stratified_indices([strata[i] for i in remaining], part, seed=args.seed + ROLES.index(role))
        roles.update({i: role for j in taken for i in groups[remaining[j]]})
        remaining = [remaining[j] for j in rest]
        share_left -= share
    roles.update({i: "student" for g in remaining for i in groups[g]})
    return roles


def fingerprint(ids_roles):
    """A short digest of an {id: role} mapping: stages record it, so a changed split is noticed."""
    digest = hashlib.sha256("\n".join(f"{i}\t{r}" for i, r in sorted(ids_roles.items())).encode()).hexdigest()
    return digest[:16]


def summary(pool, roles, args):
    """Counts per role and per (role, source, level, label), and the settings: `roles.json`."""
    counts, detail = {r: 0 for r in ROLES}, {}
    for row in pool:
        role = roles[row["id"]]
        counts[role] += 1
        key = f"{role}/{row['source']}/{row['level']}/{row['label']}"
        detail[key] = detail.get(key, 0) + 1
    return {"seed_pool": args.seed_pool, "seed": args.seed, "shares": {r: getattr(args, r) for r in ROLES[:3]},
            "stratify": list(STRATA), "grouped_by": "content", "rows": len(pool), "ids": len(roles),
            "fingerprint": fingerprint(roles),
            "rows_per_role": counts, "rows_per_role_source_level_label": dict(sorted(detail.items()))}


def make_roles(args: RolesArguments):
    """Write (or keep, when one with these settings exists) the role split; returns its folder."""
    out = Path(args.output_dir)
    pool = load_seed_pool(args.seed_pool)
    roles = assign_roles(pool, args)
    info = summary(pool, roles, args)
    existing = out / SUMMARY_FILE
    if existing.is_file() and not args.overwrite:
        old = json.loads(existing.read_text())
        if old.get("fingerprint") == info["fingerprint"]:
            logger.info("%s already holds this role split (%s).", out, info["fingerprint"])
            return out
        raise ValueError(f"{out} holds another role split ({old.get('fingerprint')} of {old.get('seed_pool')}, seed "
                         f"{old.get('seed')}); models trained on it would no longer match. Pass --overwrite or another --output_dir.")
    out.mkdir(parents=True, exist_ok=True)
    table = pa.table({"id": list(roles), "role": list(roles.values())})
    pq.write_table(table.replace_schema_metadata({b"saferoute_roles": json.dumps({k: v for k, v in info.items() if not k.startswith("rows_per_role_")}).encode()}),
                   out / ROLES_FILE)
    existing.write_text(json.dumps(info, indent=2) + "\n")
    return out


class RoleTable:
    """The role of every id of a split written by `saferoute roles`."""

    def __init__(self, folder):
        self.folder = Path(folder)
        path = self.folder / ROLES_FILE if self.folder.is_dir() else self.folder
        if not path.is_file():
            raise FileNotFoundError(f"No role file at {path}: run `saferoute roles --config RECIPE` first (quickstart does).")
        table = pq.read_table(path)
        self.roles = dict(zip(table["id"].to_pylist(), table["role"].to_pylist()))
        meta = json.loads((table.schema.metadata or {}).get(b"saferoute_roles", b"{}"))
        self.seed_pool = meta.get("seed_pool")
        self.fingerprint = meta.get("fingerprint") or fingerprint(self.roles)

    def record(self, used):
        """What a stage writes into its training_info.json about the roles it read."""
        return {"file": str(self.folder.resolve()), "fingerprint": self.fingerprint, "seed_pool": self.seed_pool, "roles": list(used)}

    def role_of(self, ids):
        return [self.roles.get(i) for i in ids]

    def rows(self, pool, roles):
        """The rows of `pool` whose id has one of `roles`."""
        wanted = {roles} if isinstance(roles, str) else set(roles)
        return pool.filter(lambda i: self.roles.get(i) in wanted, input_columns="id")

    def check(self, ids, allowed, stage, force=False):
        """Refuse (ValueError naming a few ids and their roles) rows whose role is not in `allowed`;
        pool rows without a role are refused too. With `force`, log a warning instead."""
        allowed = set(allowed)
        bad = [(i, self.roles.get(i)) for i in ids if self.roles.get(i) not in allowed]
        if not bad:
            return
        message = (f"{stage}: {len(bad)} rows are outside its roles {sorted(map(str, allowed))} (e.g. {bad[:3]}; role None = not in the "
                   f"split {self.fingerprint}). Training on them breaks the split's guarantees; pass --force to do it anyway.")
        if not force:
            raise ValueError(message)
        logger.warning(message)


def parse_weights(value):
    """Per-source weights from a recipe mapping, a JSON object, or "source=weight,source=weight"."""
    if value in (None, "", {}):
        return {}
    if isinstance(value, dict):
        return {str(k): float(v) for k, v in value.items()}
    text = str(value).strip()
    if text.startswith("{"):
        return {str(k): float(v) for k, v in json.loads(text).items()}
    pairs = [p.split("=", 1) for p in text.split(",") if p.strip()]
    if any(len(p) != 2 for p in pairs):
        raise ValueError(f"source weights must be a mapping, JSON or 'source=weight,...', got {value!r}.")
    return {k.strip(): float(v) for k, v in pairs}


def rows_per_source(rows):
    """{source: rows} of a dataset in the schema (what the cards report)."""
    counts = {}
    for source in rows["source"]:
        counts[source] = counts.get(source, 0) + 1
    return dict(sorted(counts.items()))


def mixed_sample(rows, n=None, source_weights=None, seed=0):
    """A per-source mix of `rows`: each source gets a share of the `n` rows in proportion to its
    row count times its weight (default 1; 0 leaves it out), capped at what it has (the rest goes to
    the other sources), sampled stratified on level and label. `n` None keeps every row of the
    weighted sources."""
    weights = parse_weights(source_weights)
    unknown = set(weights) - set(rows.unique("source"))
    if unknown:
        raise ValueError(f"source_weights name sources absent from these rows: {sorted(unknown)} (present: {sorted(rows.unique('source'))}).")
    if any(w < 0 for w in weights.values()):
        raise ValueError(f"source_weights must be >= 0, got {weights}.")
    by_source = {}
    for k, source in enumerate(rows["source"]):
        by_source.setdefault(source, []).append(k)
    keep = {s: idx for s, idx in by_source.items() if weights.get(s, 1.0) > 0}
    if n is None or n >= sum(len(v) for v in keep.values()):
        return rows.select(sorted(i for idx in keep.values() for i in idx)) if n is None or len(keep) < len(by_source) else rows
    quota = _allocate(n, {s: len(idx) for s, idx in keep.items()}, {s: weights.get(s, 1.0) for s in keep})
    picked = []
    for source, idx in sorted(keep.items()):
        if quota[source] >= len(idx):
            picked += idx
        elif quota[source] > 0:
            picked += [idx[j] for j in stratified_split(rows.select(idx), ("level", "label"), quota[source], seed)[1]]
    return rows.select(sorted(picked))


def _allocate(n, sizes, weights):
    """Integer quotas summing to n: proportional to size * weight, never above a source's size."""
    quota, open_ = {s: 0 for s in sizes}, dict(sizes)
    left = n
    while left > 0 and open_:
        total = sum(sizes[s] * weights[s] for s in open_)
        share = {s: left * sizes[s] * weights[s] / total for s in open_}
        capped = {s for s in open_ if quota[s] + share[s] >= sizes[s]}
        if capped:
            for s in capped:
                left -= sizes[s] - quota[s]
                quota[s] = sizes[s]
                del open_[s]
            continue
        floors = {s: int(share[s]) for s in open_}
        for s, k in floors.items():
            quota[s] += k
        left -= sum(floors.values())
        for s in sorted(open_, key=lambda s: share[s] - floors[s], reverse=True)[:left]:
            quota[s] += 1
        left = 0
    return quota


def main(argv=None):
    args = parse_args([RolesArguments], argv, section="roles")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    out = make_roles(args)
    info = json.loads((out / SUMMARY_FILE).read_text())
    print(f"Roles in {out}: {info['rows_per_role']} rows ({info['fingerprint']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
