"""The precision of a Trainer-based stage: `--precision` (default "auto") resolved to the Trainer's
`bf16` flag by the one rule of `modeling_saferoute.precision`."""

from modeling_saferoute.precision import normalize_precision, resolve_precision


def training_precision(precision, bf16, use_cpu):
    """(precision, bf16 flag) of a training run: an explicit `bf16` true / false (the Trainer's own
    flag) forces bf16 / float32; otherwise `precision` decides on the device the run uses (a CPU
    without native bf16 gets float32 under "auto"; an explicit bf16 there warns that it is emulated)."""
    if bf16 is not None:
        precision = "bf16" if bf16 else "float32"
    precision = normalize_precision(precision)
    if precision == "fp16":
        raise ValueError("precision 'fp16' is not supported for training here; use 'auto', 'bf16' or 'float32'.")
    device = "cpu" if use_cpu else "cuda"
    return precision, resolve_precision(precision, device) == "bf16"
