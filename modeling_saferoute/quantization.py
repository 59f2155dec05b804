"""The int8 student (and int8 encoder guards): the fast CPU path where bf16 is not native but int8
dot products are (VNNI).

`int8_copy(model)` returns a copy of a SafeRoute model whose student runs its `nn.Linear` layers in
int8: each output channel's weights on its own scale, each token's activations on its own scale,
chosen at run time (per-token dynamic quantization), multiplied by `torch._int_mm` (oneDNN's
AVX512-VNNI / AMX-INT8 kernels on x86 CPUs) and rescaled to float32. Per-token scales keep a
token's result independent of the other tokens and inputs in its batch (a per-tensor scale lets one
outlier token or a padded neighbour change every other score). The classification head and the
layer before it (the pooler) stay float32, so the feature the router reads is computed from int8
encoder states but by the float32 head layers. Embeddings, LayerNorm, softmax and GELU stay
float32. Nothing here needs calibration data, so every model folder gets it at load time; the copy
shares the float32 model's remaining tensors (no second copy of the embeddings).
"""

import copy

import torch
from torch import nn

# Module names (as in `named_modules`) that stay float32: the classification head and the pooler.
FLOAT32_NAME_PARTS = ("classifier", "pooler", "score", "pre_classifier")


class Int8Linear(nn.Module):
    """`nn.Linear` in int8: symmetric per-output-channel int8 weights, symmetric per-token int8
    activations quantized at run time, int32 accumulation (`torch._int_mm`), float32 output."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        weight = linear.weight.detach().float()
        scale = weight.abs().amax(dim=1).clamp(min=1e-12) / 127.0
        int8 = torch.round(weight / scale[:, None]).clamp(-127, 127).to(torch.int8)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("weight_int8", int8.t().contiguous())  # (in, out): what _int_mm multiplies by
        self.register_buffer("weight_scale", scale)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float().clone())

    def forward(self, x):
        # Written as few whole-tensor passes as eager PyTorch allows (measured: abs().amax is 9x faster
        # than vector_norm(inf), and in-place multiplies beat addcmul's broadcast).
        shape = x.shape
        rows = x.reshape(-1, shape[-1]).float()
        scale = rows.abs().amax(dim=1, keepdim=True).clamp_(min=1e-12).div_(127.0)
        quantized = torch.div(rows, scale).round_().to(torch.int8)
        out = torch._int_mm(quantized, self.weight_int8).float().mul_(self.weight_scale).mul_(scale)
        if self.bias is not None:
            out.add_(self.bias)
        return out.reshape(*shape[:-1], self.out_features)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per-channel weights, per-token activations"


def keeps_float32(name):
    """Does the `nn.Linear` called `name` stay float32 (the classification head and the pooler)?"""
    return any(part in name.split(".") for part in FLOAT32_NAME_PARTS)


def quantize_linears(module, keep=keeps_float32, prefix=""):
    """Replace, in place, every `nn.Linear` under `module` whose name `keep` does not claim by an
    `Int8Linear`; returns the names replaced."""
    replaced = []
    for child_name, child in list(module.named_children()):
        name = f"{prefix}.{child_name}" if prefix else child_name
        if isinstance(child, nn.Linear) and not keep(name):
            setattr(module, child_name, Int8Linear(child))
            replaced.append(name)
        else:
            replaced += quantize_linears(child, keep, name)
    return replaced


def _sharing_copy(model):
    """A deep copy of `model` that shares every parameter and buffer with it (replaced layers aside)."""
    shared = {id(t): t for t in (*model.parameters(), *model.buffers())}
    return copy.deepcopy(model, memo=shared)


def int8_copy(model):
    """A copy of a SafeRoute model (eval mode) whose student's linear layers run in int8 (see the
    module docstring). The copy shares every tensor it does not replace with `model`."""
    quantized = _sharing_copy(model)
    head = getattr(model, "_head_name", None)  # the layer whose input the router reads
    quantize_linears(quantized.student, keep=lambda name: name == head or keeps_float32(name))
    return quantized.eval()


def int8_classifier_copy(model):
    """A copy of an encoder classifier (`AutoModelForSequenceClassification`, eval mode) whose encoder
    linear layers run in int8, its classification head and pooler float32: how an encoder guard (a
    teacher labeling a corpus, a large guard) scores where `int8` is the inference precision."""
    quantized = _sharing_copy(model)
    quantize_linears(quantized)
    return quantized.eval()
