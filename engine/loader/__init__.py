"""Model loading, one concern per module: :mod:`.device` (torch/SMP imports, device choice), :mod:`.network`
(card → SMP network and its dropout), :mod:`.weights` (weight formats, checked state dicts) with
:mod:`.lightning_checkpoint` (Lightning checkpoints whose hyper-parameters hold OmegaConf objects, read as data),
:mod:`.programs` (whole programs by suffix: :mod:`.torchscript`, :mod:`.onnx_program` through onnxruntime,
:mod:`.exported_program` for ``torch.export`` ``.pt2``) and :mod:`.loader` (:func:`load_model` sequencing them,
:class:`LoadedModel`).
"""

from .device import resolve_device
from .loader import NO_DROPOUT_WARNING, LoadedModel, check_band_count, load_model

__all__ = ["LoadedModel", "load_model", "resolve_device", "check_band_count", "NO_DROPOUT_WARNING"]
