"""Whole-program models (a card without ``model:``), chosen by the weights file's suffix.

``.onnx`` → onnxruntime (:mod:`.onnx_program`), ``.pt2`` → ``torch.export.load`` (:mod:`.exported_program`),
anything else → ``torch.jit.load`` (:mod:`.torchscript`).
"""

from .torchscript import load_torchscript

__all__ = ["load_program", "program_kind"]

_KINDS = {".onnx": "ONNX model", ".pt2": "torch.export program"}


def program_kind(card):
    """How messages name the program of ``card``: "ONNX model", "torch.export program" or "TorchScript model"."""
    return _KINDS.get(card.weights_path.suffix.lower(), "TorchScript model")


def load_program(card, device, torch, notes):
    """The module that runs the program of ``card`` on ``device``; loader notes are appended to ``notes``."""
    suffix = card.weights_path.suffix.lower()
    if suffix == ".onnx":
        from .onnx_program import load_onnx_module

        model, more = load_onnx_module(card.weights_path, card, device)
    elif suffix == ".pt2":
        from .exported_program import load_exported_program

        model, more = load_exported_program(card.weights_path, device)
    else:
        return load_torchscript(card, device, torch)
    notes.extend(more)
    return model
