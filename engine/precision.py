"""Reduced precision for the model's forward pass, where it pays: autocast, never the statistics.

``float32`` (default) runs the model as loaded. ``float16`` and ``bfloat16`` run it under ``torch.autocast``:
matrix products and convolutions in the reduced type, reductions and normalisations as autocast decides. The
logits are cast back to float32 before the softmax (:func:`engine.samplers.class_probabilities`), so the
probabilities, the sums over samples, the merge (float64) and the uncertainty maps are computed exactly as in a
float32 run; only the network's own arithmetic changes.

Where each is accepted:
- CUDA: float16 and bfloat16 (bfloat16 needs a GPU that supports it, compute capability ≥ 8.0).
- CPU: bfloat16 when the CPU has native bfloat16 instructions (AVX-512 BF16 or AMX, as oneDNN reports);
  float16 autocast is not offered on CPU (slow or unsupported on most CPUs).
A refused choice is an :class:`~engine.errors.InvalidOptionError` naming the device and what it supports.
"""

import contextlib

from .errors import InvalidOptionError
from .options import Precision, look_up_option

__all__ = ["check_precision", "autocast", "cpu_supports_bfloat16"]


def cpu_supports_bfloat16():
    """True when oneDNN reports native bfloat16 support on this CPU."""
    import torch

    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def check_precision(precision, device):
    """The :class:`Precision` for ``precision`` on ``device`` (a torch.device), or a clear error."""
    import torch

    precision = look_up_option(precision, Precision, "PRECISION")
    if precision is Precision.FLOAT32:
        return precision
    if device.type == "cuda":
        if precision is Precision.BFLOAT16 and not torch.cuda.is_bf16_supported():
            raise InvalidOptionError(
                "PRECISION bfloat16: this GPU does not support bfloat16. Choose float16 or float32."
            )
        return precision
    if device.type == "cpu":
        if precision is Precision.FLOAT16:
            raise InvalidOptionError(
                "PRECISION float16 is offered on CUDA GPUs only. On the CPU choose bfloat16 (on CPUs with "
                "bfloat16 instructions) or float32."
            )
        if not cpu_supports_bfloat16():
            raise InvalidOptionError(
                "PRECISION bfloat16: this CPU has no native bfloat16 instructions (AVX-512 BF16 or AMX), where it "
                "would be slower than float32. Choose float32."
            )
        return precision
    raise InvalidOptionError(f"PRECISION {precision.value} is not offered on {device.type}. Choose float32.")


def autocast(precision, device):
    """A context in which the model's forward runs at ``precision`` (checked by :func:`check_precision`)."""
    import torch

    precision = look_up_option(precision, Precision, "PRECISION")
    if precision is Precision.FLOAT32:
        return contextlib.nullcontext()
    dtype = torch.float16 if precision is Precision.FLOAT16 else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)
