"""Resumable stages: each stage writes its results as parquet shards beside a manifest.

Every file is written to a temporary name and moved into place with `os.replace`, so a shard
either exists complete or not at all: a run killed at any point (SIGKILL included) and started
again redoes only the shards that are missing. The manifest records the settings a stage was
made with; resuming with different settings is refused instead of mixing results.
"""

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

MANIFEST = "manifest.json"
_UMASK = os.umask(0)
os.umask(_UMASK)


def derive_seed(seed, *parts) -> int:
    """A 31-bit seed from (seed, stage, index...): the same unit of work always gets the same seed."""
    digest = hashlib.sha256(":".join(str(p) for p in (seed, *parts)).encode()).hexdigest()
    return int(digest[:8], 16) & 0x7FFFFFFF


def fingerprint(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def atomic_write_bytes(path, write):
    """Call `write(file_object)` on a temporary file beside `path`, fsync it and rename it to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".tmp-{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write_text(path, text: str):
    atomic_write_bytes(path, lambda f: f.write(text.encode()))


def write_parquet(path, rows, schema: pa.Schema, metadata=None):
    """Write `rows` (list of dicts) as one parquet file, atomically."""
    table = pa.Table.from_pylist(list(rows), schema=schema)
    if metadata:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), b"saferoute": json.dumps(metadata).encode()})
    atomic_write_bytes(path, lambda f: pq.write_table(table, f))


def read_metadata(path) -> dict:
    meta = pq.read_schema(path).metadata or {}
    return json.loads(meta.get(b"saferoute", b"{}"))


class ShardedStage:
    """The shards `shard-00000-of-00012.parquet`... of one stage in `root/name/`.

    Args:
        root: the work folder of the build.
        name: the stage name (its folder).
        settings: everything the stage's results depend on (JSON-serialisable); stored in the manifest.
        num_shards: how many shards the stage has.
        schema: the pyarrow schema of a shard.
    """

    def __init__(self, root, name, settings: dict, num_shards: int, schema: pa.Schema):
        if num_shards < 0:
            raise ValueError(f"Stage {name!r}: num_shards must be >= 0, got {num_shards}.")
        self.dir = Path(root) / name
        self.name = name
        self.settings = settings
        self.num_shards = num_shards
        self.schema = schema
        self.fingerprint = fingerprint({"settings": settings, "num_shards": num_shards})

    def check(self) -> bool:
        """True when the manifest exists and matches these settings; `ValueError` when it does not match."""
        manifest_path = self.dir / MANIFEST
        if not manifest_path.exists():
            return False
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("fingerprint") != self.fingerprint:
            raise ValueError(
                f"{self.dir} holds a '{self.name}' stage made with other settings "
                f"({manifest.get('settings')} x {manifest.get('num_shards')} shards, now {self.settings} x "
                f"{self.num_shards}). Pass --overwrite to start again, or use another --work_dir."
            )
        return True

    def reset_if_changed(self):
        """Delete this stage's results when they were made with other settings (for cheap, derived stages)."""
        try:
            self.check()
        except ValueError:
            shutil.rmtree(self.dir)
        return self

    def prepare(self):
        """Create the folder and the manifest, or check an existing manifest matches (main process only)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        for stale in self.dir.glob(".tmp-*"):  # left by a killed run
            stale.unlink(missing_ok=True)
        if self.check():
            return self
        manifest_path = self.dir / MANIFEST
        manifest = {
            "stage": self.name,
            "fingerprint": self.fingerprint,
            "settings": self.settings,
            "num_shards": self.num_shards,
            "shards": [self.path(i).name for i in range(self.num_shards)],
        }
        atomic_write_text(manifest_path, json.dumps(manifest, indent=2, default=str))
        return self

    def path(self, index) -> Path:
        return self.dir / f"shard-{index:05d}-of-{self.num_shards:05d}.parquet"

    def done(self, index) -> bool:
        return self.path(index).exists()

    def pending(self, process_index=0, num_processes=1):
        """The missing shards of this process: shard i belongs to process i % num_processes."""
        return [i for i in range(process_index, self.num_shards, num_processes) if not self.done(i)]

    def complete(self) -> bool:
        return all(self.done(i) for i in range(self.num_shards))

    def write(self, index, rows, metadata=None):
        write_parquet(self.path(index), rows, self.schema, metadata)

    def read(self) -> list:
        """All rows in shard order (every shard must exist)."""
        missing = [i for i in range(self.num_shards) if not self.done(i)]
        if missing:
            raise RuntimeError(f"Stage {self.name!r} is incomplete: shards {missing} of {self.num_shards} are missing.")
        rows = []
        for i in range(self.num_shards):
            rows.extend(pq.read_table(self.path(i)).to_pylist())
        return rows

    def metadata(self) -> list:
        return [read_metadata(self.path(i)) for i in range(self.num_shards) if self.done(i)]
