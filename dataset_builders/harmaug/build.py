"""`saferoute build-corpus`: build the HarmAug corpus folder (a Hub dataset repo).

    saferoute build-corpus --config saferoute/recipes/cpu-offline.yaml [--num_requests 300 ...]
    torchrun --nproc_per_node 2 -m dataset_builders.harmaug.build --config ...   # shards split over processes
    accelerate launch -m dataset_builders.harmaug.build --config ...

Stages (generate, filter, respond, label) write parquet shards under `--work_dir`; a killed run
started again with the same settings continues where it stopped and ends with the same rows.

With `--prefix_rows N` the train split also holds N response prefixes (origin and kind "prefix",
`prefixes.py`), each labeled by the teacher on the same prefix, for a student that judges partial
responses (streaming moderation); they are labeled in a stage of their own, so adding them keeps
the other labels.

Seed rows come from the role split (`saferoute roles`): the `train` split holds the teacher's and
the student's rows (a per-source mix of `seed_rows` of them) with every synthetic row, the
`validation` split a sample of the validation rows; the router's rows never enter the corpus.
"""

import hashlib
import json
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import pyarrow as pa
import pyarrow.parquet as pq

from publishing.hub import push_folder
from saferoute.config import parse_args, recorded_arguments

from ..roles import STUDENT_ROLES, RoleTable, mixed_sample, parse_weights, rows_per_source
from ..schema import SYNTHETIC_KINDS, data_dir, make_id
from ..seed_pool import load_seed_pool
from . import card, filters, generate, label, prefixes, respond
from .shards import ShardedStage, atomic_write_bytes, atomic_write_text, derive_seed

STAGES = ("generate", "filter", "respond", "label", "prefixes", "write")
SPLITS = ("train", "validation")
CORPUS_SCHEMA = pa.schema([
    ("id", pa.string()), ("prompt", pa.string()), ("response", pa.string()), ("unsafe_score", pa.float64()),
    ("label", pa.int64()), ("human_label", pa.int64()), ("level", pa.string()), ("source", pa.string()),
    ("origin", pa.string()), ("kind", pa.string()),
])
GENERATE_SCHEMA = pa.schema([("request_index", pa.int64()), ("id", pa.string()), ("raw", pa.string()), ("instruction", pa.string())])
FILTER_SCHEMA = pa.schema([("request_index", pa.int64()), ("id", pa.string()), ("instruction", pa.string())])
RESPOND_SCHEMA = pa.schema([("id", pa.string()), ("kind", pa.string()), ("response", pa.string())])
LABEL_SCHEMA = pa.schema([("id", pa.string()), ("unsafe_score", pa.float64()), ("category_scores", pa.list_(pa.float64()))])
TAXONOMY_FILE = "taxonomy.json"  # the taxonomy of the corpus' `category_scores` (beside README.md)


def corpus_schema(categories=()):
    """The corpus parquet schema; with the teacher's categories, a `category_scores` struct column
    (one float per category, null for a row the teacher gave none)."""
    if not categories:
        return CORPUS_SCHEMA
    return CORPUS_SCHEMA.append(pa.field("category_scores", pa.struct([(c, pa.float64()) for c in categories])))


@dataclass
class BuildCorpusArguments:
    """Settings of `saferoute build-corpus` (section `build_corpus:` of a recipe)."""

    output_dir: str = field(default="{output_root}/harmaug", metadata={"help": "Output folder: a Hub dataset repo (README.md + data/*.parquet)."})
    work_dir: Optional[str] = field(default=None, metadata={"help": "Stage shards and manifests (default: <output_dir>.work)."})
    overwrite: bool = field(default=False, metadata={"help": "Delete the work folder first instead of resuming."})
    stop_after: str = field(default="write", metadata={"help": f"Last stage to run: one of {STAGES}."})
    seed_pool: str = field(default="offline", metadata={"help": "The pool the role split was made from: 'offline', 'wildguardmix' or a .jsonl/.parquet file in the schema."})
    roles: str = field(default="{output_root}/roles", metadata={"help": "The role split (`saferoute roles`): teacher and student rows go to the train split, validation rows to the validation split."})
    seed_rows: int = field(default=-1, metadata={"help": "Teacher + student rows to label and include in the train split (a per-source mix, stratified on level and label); -1 = all."})
    seed_source_weights: Optional[Union[dict, str]] = field(default=None, metadata={"help": "Per-source weights of the seed rows' mix ('source=weight,...'; default 1 each)."})
    validation_rows: int = field(default=-1, metadata={"help": "Validation rows to label into the validation split (stratified per source); -1 = all."})
    exemplar_sources: Optional[str] = field(default=None, metadata={"help": "Comma-separated sources whose harmful prompts are the generator's exemplars (default: every source of the train split)."})
    benchmarks: Optional[str] = field(default=None, metadata={"help": "Folder of benchmark *.jsonl to decontaminate against (default <data_dir>/eval); 'none' disables."})
    generator: str = field(default="bundled:smollm2-135m-instruct", metadata={"help": "Generator LLM (path, Hub id or bundled: alias)."})
    responder: Optional[str] = field(default=None, metadata={"help": "Responder LLM (default: the generator)."})
    backend: str = field(default="transformers", metadata={"help": "Generation backend: 'transformers', 'llama_cpp' (the GGUF as it is, llama-cpp-python) or 'vllm' (optional dependencies)."})
    precision: str = field(default="auto", metadata={"help": "Precision of generation and labeling: 'auto' (bf16 where the device multiplies it natively: AMX / AVX512-BF16 CPUs, bf16 GPUs; float32 elsewhere), 'bf16' or 'float32'."})
    dtype: Optional[str] = field(default=None, metadata={"help": "Generator / responder weight dtype; default: --precision's ('float32', 'bfloat16'...)."})
    teacher_dtype: str = field(default="auto", metadata={"help": "Teacher weight dtype ('auto': its checkpoint's; float32 weights are autocast by --precision)."})
    device: Optional[str] = field(default=None, metadata={"help": "Device (default: this process's accelerator, else CPU)."})
    num_requests: int = field(default=300, metadata={"help": "Generation requests (one instruction each before filtering)."})
    num_exemplars: int = field(default=3, metadata={"help": "Seed-pool harmful prompts shown per request."})
    exemplar_max_chars: int = field(default=300, metadata={"help": "Longest seed prompt used as an exemplar."})
    request: str = field(default=generate.HARMFUL_REQUEST, metadata={"help": "The request to the generator."})
    prefix: str = field(default=generate.AFFIRMATIVE_PREFIX, metadata={"help": "Affirmative prefix pre-filled in the assistant turn ('' = none)."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature (0 = greedy)."})
    top_p: float = field(default=0.95, metadata={"help": "Nucleus sampling top-p."})
    max_new_tokens: int = field(default=48, metadata={"help": "New tokens per instruction."})
    min_new_tokens: int = field(default=0, metadata={"help": "Minimum new tokens per instruction."})
    min_words: int = field(default=4, metadata={"help": "Shortest parsed instruction kept (words)."})
    max_words: int = field(default=80, metadata={"help": "Longest parsed instruction kept (words)."})
    max_chars: int = field(default=600, metadata={"help": "Longest parsed instruction kept (characters)."})
    ngram: int = field(default=3, metadata={"help": "Word n-gram size of the near-duplicate / contamination Jaccard."})
    near_duplicate_threshold: float = field(default=0.7, metadata={"help": "Jaccard at or above which an instruction duplicates a kept one."})
    contamination_threshold: float = field(default=0.7, metadata={"help": "Jaccard at or above which an instruction matches a benchmark or seed prompt."})
    response_max_new_tokens: int = field(default=96, metadata={"help": "New tokens per response."})
    response_min_new_tokens: int = field(default=0, metadata={"help": "Minimum new tokens per response."})
    compliant_prefix: str = field(default=respond.STYLES["compliant"][1], metadata={"help": "Opening of the compliant responses."})
    refusal_prefix: str = field(default=respond.STYLES["refusal"][1], metadata={"help": "Opening of the refusals."})
    batch_size: int = field(default=16, metadata={"help": "Generation batch size."})
    shard_size: int = field(default=32, metadata={"help": "Requests (generate) or instructions (respond) per shard."})
    teacher: str = field(default="{output_root}/teacher", metadata={"help": "Teacher guard: `saferoute train-guard` output, Hub id (meta-llama/Llama-Guard-3-8B) or path."})
    teacher_kind: str = field(default="auto", metadata={"help": "Guard kind of the teacher ('auto' reads its config)."})
    teacher_batch_size: int = field(default=16, metadata={"help": "Teacher scoring batch size."})
    teacher_max_length: int = field(default=512, metadata={"help": "Token bound of a teacher input (per message for causal-LM guards)."})
    teacher_taxonomy: str = field(default="auto", metadata={"help": "The teacher's category scores: 'auto' (a classifier's category head; a Llama-Guard-format teacher's S1-S14 read into the project's taxonomy), 'none', or a taxonomy name / file."})
    label_shard_size: int = field(default=256, metadata={"help": "Items per label shard."})
    prefix_rows: int = field(default=0, metadata={"help": "Response prefixes added to the train split, each labeled by the teacher on the same prefix (distillation on prefixes, for streaming moderation); 0 = none."})
    prefix_min_words: int = field(default=4, metadata={"help": "Shortest prefix (words); responses of fewer than twice this are not cut."})
    prefix_max_words: int = field(default=64, metadata={"help": "A prefix keeps at most its last this many words (a streaming check's window)."})
    rows_per_file: int = field(default=100_000, metadata={"help": "Rows per output parquet file."})
    score_store: Optional[str] = field(default=None, metadata={"help": "Folder of the score store shared by the stages (recipes: {output_root}/scores): the teacher scores each text once across stages and runs; default <work_dir>/scores."})
    license: str = field(default="cc-by-nc-4.0", metadata={"help": "Licence in the dataset card (the offline seed pool is mostly CC-BY-NC-4.0)."})
    seed: int = field(default=0, metadata={"help": "Seed: each request and shard derives its own from it."})
    generation_seed: Optional[int] = field(default=None, metadata={"help": "Seed of the exemplars, generations and responses only (default: --seed): another draw of the synthetic rows over the same seed rows."})
    push_to_hub: Optional[str] = field(default=None, metadata={"help": "Upload the output folder to this dataset repo id."})
    hub_private: bool = field(default=False, metadata={"help": "Create the Hub repo private."})

    def __post_init__(self):
        if self.stop_after not in STAGES:
            raise ValueError(f"stop_after must be one of {STAGES}, got {self.stop_after!r}.")
        for name in ("num_requests", "num_exemplars", "batch_size", "shard_size", "label_shard_size", "rows_per_file",
                     "max_new_tokens", "response_max_new_tokens", "teacher_batch_size", "ngram", "prefix_min_words", "prefix_max_words"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if not 0 < self.min_words <= self.max_words:
            raise ValueError(f"Need 0 < min_words <= max_words, got {self.min_words} and {self.max_words}.")
        if self.prefix_rows < 0:
            raise ValueError(f"prefix_rows must be >= 0, got {self.prefix_rows}.")
        if self.backend not in generate.BACKENDS:
            raise ValueError(f"backend must be one of {sorted(generate.BACKENDS)}, got {self.backend!r}.")
        if self.work_dir is None:
            self.work_dir = str(Path(self.output_dir)) + ".work"
        self.seed_source_weights = parse_weights(self.seed_source_weights)


def _progress(items, desc, state):
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, disable=not state.is_main_process)


def _run_stage(stage, state, work, desc):
    """Prepare (main process), run this process's missing shards, wait for every process."""
    if state.is_main_process:
        stage.prepare()
    state.wait_for_everyone()
    if not state.is_main_process and not stage.check():
        raise RuntimeError(f"Stage {stage.name!r}: the main process wrote no manifest in {stage.dir}.")
    for index in _progress(stage.pending(state.process_index, state.num_processes), desc, state):
        rows, meta = work(index)
        stage.write(index, rows, meta)
    state.wait_for_everyone()
    return stage


class _Models:
    """Load each model once, on first use."""

    def __init__(self, args, device):
        self.args, self.device, self.cache = args, device, {}

    def generator(self, name):
        if name not in self.cache:
            self.cache[name] = generate.load_generator(name, self.args.backend, dtype=generation_dtype(self.args, self.device), device=self.device,
                                                      batch_size=self.args.batch_size)
        return self.cache[name]

    def teacher(self):
        if "teacher" not in self.cache:
            self.cache["teacher"] = label.load_teacher(self.args, self.device)
        return self.cache["teacher"]


def generation_dtype(args, device):
    """The generator's weight dtype: `--dtype`, else the one of `--precision` on `device`."""
    from modeling_saferoute.precision import torch_dtype

    return args.dtype or torch_dtype(args.precision, device or "cpu")


def seed_rows(args):
    """(seed pool, role table, {split: the seed rows of that split}): the teacher + student rows
    (all, or a per-source mix of `seed_rows`) and the validation rows (all, or `validation_rows`)."""
    roles = RoleTable(args.roles)
    if roles.seed_pool not in (None, args.seed_pool):
        raise ValueError(f"The role split {args.roles} was made from the pool {roles.seed_pool!r}, not --seed-pool {args.seed_pool!r}.")
    pool = load_seed_pool(args.seed_pool)
    wanted = {"train": args.seed_rows, "validation": args.validation_rows}
    roles_of = {"train": STUDENT_ROLES, "validation": ("validation",)}
    chosen = {}
    for split in SPLITS:
        rows = roles.rows(pool, roles_of[split])
        n = None if wanted[split] < 0 else wanted[split]
        chosen[split] = mixed_sample(rows, n, args.seed_source_weights if split == "train" else None, args.seed) if n != 0 else rows.select([])
    return pool, roles, chosen


def exemplar_rows(args, pool, roles):
    """The rows whose harmful prompts may be shown to the generator: every teacher and student row
    (never a router or validation row) of the sources `exemplar_sources` (default all)."""
    rows = roles.rows(pool, STUDENT_ROLES)
    if not args.exemplar_sources:
        return rows
    wanted = {s.strip() for s in args.exemplar_sources.split(",") if s.strip()}
    unknown = wanted - set(rows.unique("source"))
    if unknown:
        raise ValueError(f"--exemplar-sources names sources absent from the teacher and student rows: {sorted(unknown)}.")
    return rows.filter(lambda s: s in wanted, input_columns="source")


def corpus_items(seeds, kept, responses):
    """The corpus rows without scores, each with its split: seed rows of each split, then per kept
    instruction prompt-only, compliant, refusal (train split)."""
    items = []
    for split in SPLITS:
        for row in seeds[split]:
            level = row["level"] or ("response" if row["response"] else "prompt")
            items.append({"id": row["id"], "prompt": row["prompt"], "response": row["response"], "human_label": row["label"],
                          "level": level, "source": row["source"], "origin": "seed", "kind": "seed", "split": split})
    by_instruction = {(r["id"], r["kind"]): r["response"] for r in responses}
    for row in kept:
        for kind in SYNTHETIC_KINDS:
            response = None if kind == "prompt_only" else by_instruction[(row["id"], kind)]
            items.append({"id": make_id("harmaug", row["instruction"], response, kind), "prompt": row["instruction"],
                          "response": response, "human_label": None, "level": "prompt" if response is None else "response",
                          "source": "harmaug", "origin": "synthetic", "kind": kind, "split": "train"})
    return items


def dataset_info(splits, files, schema=CORPUS_SCHEMA):
    """The card's `dataset_info` (features, split sizes, bytes). Besides documenting the data it keeps
    `datasets`' cache honest: for a local folder whose card declares `configs`, the cache key is the
    folder name plus the card's metadata, so without sizes a rebuilt corpus could load stale rows."""
    from datasets import DatasetInfo, Features, SplitDict, SplitInfo
    from datasets.info import DatasetInfosDict

    split_dict, total = SplitDict(), 0
    for name, rows in splits.items():
        num_bytes = pa.Table.from_pylist(rows, schema=schema).nbytes
        split_dict.add(SplitInfo(name=name, num_bytes=num_bytes, num_examples=len(rows)))
        total += num_bytes
    info = DatasetInfo(features=Features.from_arrow_schema(schema), splits=split_dict, config_name="default",
                       download_size=sum(Path(f).stat().st_size for f in files), dataset_size=total)
    return DatasetInfosDict({"default": info})


def _parquet_blobs(rows, rows_per_file, schema=CORPUS_SCHEMA):
    blobs = []
    for k in range(max(1, -(-len(rows) // rows_per_file))):
        sink = pa.BufferOutputStream()
        pq.write_table(pa.Table.from_pylist(rows[k * rows_per_file : (k + 1) * rows_per_file], schema=schema), sink)
        blobs.append(sink.getvalue().to_pybytes())
    return blobs


def write_corpus(output, splits, stats, rows_per_file, repo_id=None, stats_path=None, taxonomy=None):
    """`output/data/<split>-<content hash>-XXXXX-of-YYYYY.parquet` for each split of `splits`
    ({split: rows}) + `output/README.md` (+ `output/taxonomy.json`, the taxonomy of the teacher's
    `category_scores`, when it has categories), each written atomically.

    The content hash in the file names (and in the card's `configs` patterns) gives every distinct
    corpus its own `datasets` cache entry: for a local folder whose card declares `configs`,
    `datasets` keys its cache on the folder name and the card's metadata only, so a rebuilt corpus
    under the same name would otherwise load the previous rows.
    """
    from model_cards import render_dataset_card

    data = Path(output) / "data"
    data.mkdir(parents=True, exist_ok=True)
    schema = corpus_schema([c["name"] for c in taxonomy["categories"]] if taxonomy else ())
    blobs = {name: _parquet_blobs(rows, rows_per_file, schema) for name, rows in splits.items() if rows}
    digest = hashlib.sha1(b"".join(hashlib.sha1(b).digest() for bs in blobs.values() for b in bs)).hexdigest()[:10]
    written = []
    for name, parts in blobs.items():
        for k, blob in enumerate(parts):
            path = data / f"{name}-{digest}-{k:05d}-of-{len(parts):05d}.parquet"
            atomic_write_bytes(path, lambda f, b=blob: f.write(b))
            written.append(path)
    card = render_dataset_card(stats, repo_id=repo_id or str(output), data_files={name: f"data/{name}-{digest}-*.parquet" for name in blobs})
    dataset_info({name: rows for name, rows in splits.items() if rows}, written, schema).to_dataset_card_data(card.data)
    atomic_write_text(Path(output) / "README.md", str(card))
    if taxonomy:
        atomic_write_text(Path(output) / TAXONOMY_FILE, json.dumps(taxonomy, indent=2))
    else:
        (Path(output) / TAXONOMY_FILE).unlink(missing_ok=True)
    for stale in data.glob("*.parquet"):
        if stale not in written:
            stale.unlink()
    if stats_path:
        atomic_write_text(stats_path, json.dumps(stats, indent=2))
    return Path(output)


GENERATE_SETTINGS = ("seed_pool", "exemplar_sources", "generator", "backend", "precision", "dtype", "num_requests", "num_exemplars", "exemplar_max_chars",
                     "request", "prefix", "temperature", "top_p", "max_new_tokens", "min_new_tokens", "min_words",
                     "max_words", "max_chars", "batch_size", "shard_size", "seed")
FILTER_SETTINGS = ("benchmarks", "ngram", "near_duplicate_threshold", "contamination_threshold")
RESPOND_SETTINGS = ("backend", "precision", "dtype", "temperature", "top_p", "response_max_new_tokens", "response_min_new_tokens",
                    "compliant_prefix", "refusal_prefix", "batch_size", "shard_size", "seed")
LABEL_SETTINGS = ("teacher", "teacher_kind", "precision", "teacher_dtype", "teacher_batch_size", "teacher_max_length", "label_shard_size",
                  "teacher_taxonomy")
PREFIX_SETTINGS = ("prefix_rows", "prefix_min_words", "prefix_max_words", "seed")


class CorpusBuild:
    """One build: the processes' state, the work folder, the models (loaded once) and the seed rows;
    a method per stage, each returning its `ShardedStage` once every process has finished it."""

    def __init__(self, args):
        import torch
        from accelerate import PartialState

        self.args = args
        self.state = PartialState(cpu=args.device == "cpu" or not torch.cuda.is_available())
        device = args.device or (str(self.state.device) if self.state.device.type != "cpu" else "cpu")
        self.work = Path(args.work_dir)
        if args.overwrite and self.state.is_main_process and self.work.exists():
            shutil.rmtree(self.work)
        self.state.wait_for_everyone()
        self.models = _Models(args, device)
        self.pool, self.roles, self.seeds = seed_rows(args)
        self.exemplars = generate.exemplar_pool(exemplar_rows(args, self.pool, self.roles), args.exemplar_max_chars)
        if len(self.exemplars) < args.num_exemplars:
            raise ValueError(f"The teacher and student rows of {args.seed_pool!r} have {len(self.exemplars)} usable harmful prompts, fewer than "
                             f"num_exemplars={args.num_exemplars}.")

    def _settings(self, names, **extra):
        return {**extra, **{k: getattr(self.args, k) for k in names}}

    def _generation_seed(self):
        """The seed the exemplars, generations and responses derive theirs from, and its settings
        entry (none when it is --seed, so builds made before the option resume as they were)."""
        seed = generate.generation_seed(self.args)
        return seed, {} if self.args.generation_seed is None else {"generation_seed": seed}

    def generate(self):
        args = self.args
        seed, seed_setting = self._generation_seed()
        stage = ShardedStage(self.work, "generate", self._settings(GENERATE_SETTINGS, roles=self.roles.fingerprint, **seed_setting),
                             -(-args.num_requests // args.shard_size), GENERATE_SCHEMA)

        def work(index):
            indices = list(range(index * args.shard_size, min((index + 1) * args.shard_size, args.num_requests)))
            return generate.generate_shard(self.models.generator(args.generator), self.exemplars, indices, args,
                                           derive_seed(seed, "generate", index))

        return _run_stage(stage, self.state, work, "generate")

    def filter(self, generated):
        """One shard on the main process; derived in seconds from the generations, so it is redone
        (not refused) when its settings change."""
        args = self.args
        settings = self._settings(FILTER_SETTINGS, upstream=generated.fingerprint, version=filters.FILTER_VERSION)
        stage = ShardedStage(self.work, "filter", settings, 1, FILTER_SCHEMA)
        if self.state.is_main_process:
            stage.reset_if_changed()

        def work(index):
            bench = [] if args.benchmarks == "none" else filters.load_benchmark_prompts(args.benchmarks or data_dir() / "eval")
            kept, counts = filters.filter_instructions(
                generated.read(), bench, self.pool["prompt"], args.near_duplicate_threshold, args.contamination_threshold,
                args.ngram, request_text=generate.request_messages([], args.request)[0]["content"],
                show_progress=self.state.is_main_process)
            atomic_write_text(self.work / "filter" / "counts.json", json.dumps(counts, indent=2))
            return [{k: r[k] for k in ("request_index", "id", "instruction")} for r in kept], {"counts": counts}

        _run_stage(stage, self.state, work, "filter")
        if self.state.is_main_process:
            print(f"filter: {json.dumps(stage.metadata()[0]['counts'])}", file=sys.stderr)
        return stage

    def respond(self, filtered):
        args, kept = self.args, filtered.read()
        seed, seed_setting = self._generation_seed()
        settings = self._settings(RESPOND_SETTINGS, upstream=filtered.fingerprint, responder=args.responder or args.generator, **seed_setting)
        stage = ShardedStage(self.work, "respond", settings, -(-len(kept) // args.shard_size), RESPOND_SCHEMA)

        def work(index):
            rows = kept[index * args.shard_size : (index + 1) * args.shard_size]
            return respond.respond_shard(self.models.generator(args.responder or args.generator), rows, args,
                                         derive_seed(seed, "respond", index))

        return _run_stage(stage, self.state, work, "respond")

    def label(self, items, responded):
        """Relabelled (keeping the generations) when the teacher or the seed sample changes."""
        args = self.args
        settings = self._settings(LABEL_SETTINGS, upstream=responded.fingerprint, seed_rows=args.seed_rows,
                                  validation_rows=args.validation_rows, seed_source_weights=args.seed_source_weights,
                                  roles=self.roles.fingerprint)
        return self._teacher_labels("label", items, settings)

    def prefixes(self, items, labeled):
        """The prefix items and their teacher labels (a stage of its own: relabeled when the labels'
        settings or the prefix settings change, without touching the other labels)."""
        args = self.args
        cuts = prefixes.prefix_items(items, args.prefix_rows, args.prefix_min_words, args.prefix_max_words,
                                     derive_seed(args.seed, "prefixes"))
        return cuts, self._teacher_labels("prefixes", cuts, self._settings(PREFIX_SETTINGS, upstream=labeled.fingerprint))

    def _teacher_labels(self, name, items, settings):
        """Stage `name`: the teacher's score of each item, through the score store, redone when `settings` change."""
        args = self.args
        stage = ShardedStage(self.work, name, settings, -(-len(items) // args.label_shard_size), LABEL_SCHEMA)
        if self.state.is_main_process:
            stage.reset_if_changed()

        taxonomy = label.teacher_taxonomy(args)
        store = label.teacher_store(args, self.models.device, args.score_store or str(self.work / "scores"), taxonomy)

        def work(index):
            shard = items[index * args.label_shard_size : (index + 1) * args.label_shard_size]
            return label.label_shard(store, self.models.teacher, shard, args.teacher_batch_size, taxonomy)

        return _run_stage(stage, self.state, work, name)

    def write(self, items, kept, counts, labeled, generation_meta):
        """The corpus folder (main process), then the optional Hub upload."""
        args, output = self.args, Path(self.args.output_dir)
        if self.state.is_main_process:
            teacher_taxonomy = label.teacher_taxonomy(args)
            taxonomy = teacher_taxonomy.to_dict() if teacher_taxonomy is not None else None
            rows = scored_rows(items, labeled, self.work, teacher_taxonomy.names if teacher_taxonomy else ())
            splits = {name: [r for r, it in zip(rows, items) if it["split"] == name] for name in SPLITS}
            stats = card.corpus_stats(splits["train"], args, counts, [r["instruction"] for r in kept],
                                      label.teacher_kind(args.teacher, args.teacher_kind), generation_meta)
            stats["teacher_precision"] = label.teacher_precision(args, self.models.device)
            stats["generation_precision"] = str(generation_dtype(args, self.models.device)).replace("torch.", "")
            stats["roles"] = self.roles.record(STUDENT_ROLES + ("validation",))
            stats["arguments"] = recorded_arguments(args)
            stats["splits"] = {name: len(part) for name, part in splits.items()}
            stats["seed_rows_per_source"] = {name: rows_per_source(self.seeds[name]) for name in SPLITS}
            stats["categories"] = card.category_stats(splits["train"], taxonomy) if taxonomy else None
            write_corpus(output, splits, stats, args.rows_per_file, repo_id=args.push_to_hub, stats_path=self.work / "stats.json",
                         taxonomy=taxonomy)
            print(f"build-corpus: {stats['splits']} rows ({counts['kept']} instructions kept of {counts['generated']}) -> {output}", file=sys.stderr)
            if args.push_to_hub:
                url = push_folder(output, args.push_to_hub, repo_type="dataset", private=args.hub_private,
                                  commit_message="Upload HarmAug corpus (saferoute build-corpus)")
                print(f"pushed to {url}", file=sys.stderr)
        self.state.wait_for_everyone()
        return output


def scored_rows(items, scores, work, categories=()):
    """Corpus rows: the items with the teacher's unsafe_score and its hard label (and, with the
    teacher's `categories`, its `category_scores` {category: P})."""
    rows = []
    for item, scored in zip(items, scores):
        if item["id"] != scored["id"]:
            raise RuntimeError(f"Label shards of {work} are out of step with the items ({item['id']} != {scored['id']}).")
        score = scored["unsafe_score"]
        rows.append({"id": item["id"], "prompt": item["prompt"], "response": item["response"], "unsafe_score": score,
                     "label": int(score > 0.5), "human_label": item["human_label"], "level": item["level"],
                     "source": item["source"], "origin": item["origin"], "kind": item["kind"]})
        if categories:
            values = scored.get("category_scores")
            rows[-1]["category_scores"] = dict(zip(categories, values)) if values is not None else None
    return rows


def build(args: BuildCorpusArguments):
    """Run the stages up to `args.stop_after`; returns the output folder (or the work folder)."""
    import importlib.util

    if args.backend in ("vllm", "llama_cpp") and importlib.util.find_spec(args.backend) is None:
        generate.BACKENDS[args.backend](args.generator)  # raises the ImportError that says what to install, before any work
    if STAGES.index(args.stop_after) >= STAGES.index("label"):
        label.teacher_kind(args.teacher, args.teacher_kind)  # a missing teacher fails now, not after generating
    run = CorpusBuild(args)
    generated = run.generate()
    if args.stop_after == "generate":
        return run.work
    filtered = run.filter(generated)
    if args.stop_after == "filter":
        return run.work
    responded = run.respond(filtered)
    if args.stop_after == "respond":
        return run.work
    kept = filtered.read()
    items = corpus_items(run.seeds, kept, responded.read())
    labeled = run.label(items, responded)
    if args.stop_after == "label":
        return run.work
    cuts, labeled_cuts = run.prefixes(items, labeled)
    if args.stop_after == "prefixes":
        return run.work
    items, labels = items + cuts, labeled.read() + (labeled_cuts.read() if cuts else [])
    counts = filtered.metadata()[0]["counts"]
    return run.write(items, kept, counts, labels, generated.metadata() + responded.metadata())


def main(argv=None):
    args = parse_args([BuildCorpusArguments], argv, section="build_corpus")
    build(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
