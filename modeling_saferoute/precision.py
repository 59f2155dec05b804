"""One precision rule for every stage: training, generation, labeling, evaluation and serving.

`precision="auto"` (the default everywhere, recipes included) is bf16 where the device multiplies
bf16 natively (a CUDA GPU with bf16; a CPU with AMX or AVX512-BF16) and float32 elsewhere. "bf16"
and "float32" force one; "fp16" is for GPUs. bf16 forced on a CPU without native bf16 still runs,
emulated, with a warning: it is several times slower than float32 there.

The CPU's answer is read from /proc/cpuinfo. `SAFEROUTE_NATIVE_BF16=0` (or `1`) overrides it, so the
no-bf16 case can be measured on a machine that has bf16 (set `ONEDNN_MAX_CPU_ISA=AVX512_CORE_VNNI`
too to make oneDNN's bf16 kernels emulated there as well) and both answers can be tested anywhere.

Inference of an encoder classifier adds "int8" (`resolve_inference_precision`): "auto" runs the
student, and an encoder guard (a teacher labeling a corpus, an encoder large guard:
`guards.guard_precision`), in int8 on a CPU that has int8 dot products (VNNI) but no native bf16,
where it is the fast path (`modeling_saferoute/quantization.py`); the training stages and causal-LM
guards never run in int8.
"""

import contextlib
import functools
import os
import platform
import warnings

import torch

PRECISIONS = ("auto", "bf16", "fp16", "float32")
_ALIASES = {
    "auto": "auto", "bf16": "bf16", "bfloat16": "bf16", "torch.bfloat16": "bf16", "fp16": "fp16", "float16": "fp16",
    "torch.float16": "fp16", "half": "fp16", "float32": "float32", "fp32": "float32", "torch.float32": "float32", "none": "float32",
}
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "float32": torch.float32}
NATIVE_BF16_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})
VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
ENV_OVERRIDE = "SAFEROUTE_NATIVE_BF16"
EMULATED_BF16 = (
    "bf16 was requested on a CPU without native bf16 (no AMX / AVX512-BF16): it runs emulated, measured 5x slower "
    "than float32 for a 1024x1024 matmul on such a CPU (52 against 261 GFLOP/s; `python bench/bench_precision.py`). "
    "precision='auto' picks float32 there."
)


@functools.lru_cache(maxsize=1)
def cpu_flags():
    """The CPU's feature flags (from /proc/cpuinfo; empty where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


@functools.lru_cache(maxsize=1)
def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _override():
    value = os.environ.get(ENV_OVERRIDE, "").strip()
    if value in ("0", "1"):
        return value == "1"
    if value:
        raise ValueError(f"{ENV_OVERRIDE} must be 0 or 1, got {value!r}.")
    return None


def native_bf16(device="cpu"):
    """Does `device` multiply bf16 matrices natively: a CUDA GPU with bf16, or a CPU with AMX or
    AVX512-BF16 (`SAFEROUTE_NATIVE_BF16` overrides the CPU's answer)?"""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    override = _override()
    return override if override is not None else bool(cpu_flags() & NATIVE_BF16_FLAGS)


def cpu_has_vnni():
    """Does the CPU have int8 dot-product instructions (AVX512-VNNI, AVX-VNNI or AMX-INT8)?"""
    return bool(cpu_flags() & VNNI_FLAGS)


def normalize_precision(value):
    """'auto', 'bf16', 'fp16' or 'float32' from any accepted spelling (a torch dtype, 'bfloat16', 'none'...)."""
    if value is None:
        return "float32"
    key = str(value).strip().lower()
    if key not in _ALIASES:
        raise ValueError(f"precision must be one of {list(PRECISIONS)} (or a dtype name such as 'bfloat16'), got {value!r}.")
    return _ALIASES[key]


def resolve_precision(value="auto", device="cpu", warn=True):
    """The precision a stage runs in on `device`: 'bf16', 'fp16' or 'float32'. "auto" follows
    `native_bf16`; an explicit bf16 on a CPU without it is kept, with a warning (`EMULATED_BF16`)."""
    precision = normalize_precision(value)
    device = torch.device(device)
    if precision == "auto":
        return "bf16" if native_bf16(device) else "float32"
    if warn and precision == "bf16" and device.type == "cpu" and not native_bf16(device):
        warnings.warn(EMULATED_BF16, stacklevel=2)
    return precision


def normalize_inference_precision(value):
    """`normalize_precision`, plus "int8" (a student forward only)."""
    return "int8" if str(value).strip().lower() == "int8" else normalize_precision(value)


def resolve_inference_precision(value="auto", device="cpu", warn=True):
    """The precision a student forward runs in on `device`: "int8" where asked (CPU only), or where
    "auto" meets a CPU with VNNI and without native bf16; otherwise `resolve_precision`'s answer."""
    precision = normalize_inference_precision(value)
    device = torch.device(device)
    if precision == "int8":
        if device.type != "cpu":
            raise ValueError(f"precision 'int8' runs on CPU only; the model is on {device.type!r}.")
        return "int8"
    if precision == "auto" and device.type == "cpu" and cpu_has_vnni() and not native_bf16(device):
        return "int8"
    return resolve_precision(precision, device, warn)


def torch_dtype(value="auto", device="cpu"):
    """The torch dtype of `resolve_precision(value, device)`."""
    return _DTYPES[resolve_precision(value, device)]


def resolve_autocast(value, device):
    """The autocast dtype to run float32 weights with on `device` (None: plain float32)."""
    dtype = torch_dtype(value, device)
    return None if dtype == torch.float32 else dtype


def autocast_context(device, dtype):
    """`torch.autocast` on `device` with `dtype`, or a no-op context when `dtype` is None."""
    return torch.autocast(torch.device(device).type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def precision_record(requested, device="cpu"):
    """What a stage records about its precision: what was asked, what ran, and why (the device)."""
    device = torch.device(device)
    ran = resolve_precision(requested, device, warn=False)
    record = {"requested": normalize_precision(requested), "ran": ran, "device": device.type}
    if device.type == "cpu":
        record.update(cpu=cpu_name(), native_bf16=native_bf16(device), vnni=cpu_has_vnni(),
                      emulated=ran == "bf16" and not native_bf16(device))
        if _override() is not None:
            record["native_bf16_override"] = os.environ[ENV_OVERRIDE]
    else:
        record["native_bf16"] = native_bf16(device)
    return record
