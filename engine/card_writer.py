"""Write a model card from a weights file and a few choices, load it once to prove it, report what it found.

:func:`write_model_card` is the engine of ``uncertainty:create_model_card``. For SMP weights (a state_dict,
Lightning ``.ckpt`` or ``.safetensors``) the caller names the architecture, the encoder and any further SMP
arguments; the output channel count is read from the weights (the segmentation head's last convolution) when
they hold one, else taken from the class names. For a whole program (TorchScript ``.pt``, ``.onnx``,
``torch.export`` ``.pt2``) there is no ``model:`` section; the output channel count comes from the ONNX
graph, or from one forward pass on a zero tile.

The card is written to a temporary file beside the target, loaded with
:func:`engine.model_loading.load_model` (same checks as any run: keys and shapes, a forward pass, dropout
layers), and renamed into place only if that succeeded; a card that does not load is never left behind.

Example (a card for a 4-class FPN on bands 3, 2, 1 of 8-bit data)::

    write_model_card("fpn.yaml", "fpn.pth", bands=[3, 2, 1], architecture="FPN", encoder_name="resnet18",
                     scale=255, class_names=["water", "field", "town", "forest"], tile=(256, 256))
"""

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from .errors import ModelCardError, OutputWriteError
from .model_card import DEFAULT_PALETTE, load_model_card, resolve_architecture

__all__ = ["CardReport", "write_model_card", "PROGRAM_SUFFIXES"]

#: Weights files that are whole programs (no ``model:`` section in their card).
PROGRAM_SUFFIXES = (".onnx", ".pt2", ".pt", ".ts", ".jit")


@dataclass(frozen=True)
class CardReport:
    """What loading the written card found: parameters (None for ONNX), dropout layers MC Dropout can
    sample, output channels of the network, and the loader's warnings."""

    path: Path
    n_parameters: object
    n_dropout_layers: int
    out_channels: int
    warnings: tuple

    def summary(self):
        params = "unknown (ONNX)" if self.n_parameters is None else f"{self.n_parameters:,}"
        return (f"Model card {self.path}: {params} parameters, {self.n_dropout_layers} dropout layer(s) for MC "
                f"Dropout, {self.out_channels} output channel(s).")


def _head_channels(weights):
    """Output channels from a state_dict's segmentation head, or None."""
    import torch

    from .loader.weights import read_state_dict

    state = read_state_dict(Path(weights), torch)
    heads = [k for k in state if k.endswith(("segmentation_head.0.weight", "segmentation_head.weight"))]
    if len(heads) == 1 and state[heads[0]].dim() == 4:
        return int(state[heads[0]].shape[0])
    return None


def _program_channels(weights, n_bands, tile):
    """Output channels of a whole program (ONNX graph or a forward pass on a zero tile), or None."""
    suffix = Path(weights).suffix.lower()
    if suffix == ".onnx":
        from .loader.onnx_program import read_onnx_info

        return read_onnx_info(weights).out_channels
    import torch

    if suffix == ".pt2":
        from .loader.exported_program import load_exported_program

        module, _ = load_exported_program(weights)
    else:
        module = torch.jit.load(str(weights), map_location="cpu")
    with torch.no_grad():
        out = module(torch.zeros((2, n_bands) + tuple(tile)))
    return int(out.shape[1]) if isinstance(out, torch.Tensor) and out.dim() == 4 else None


def write_model_card(path, weights, *, bands, architecture=None, encoder_name=None, model_arguments=None,
                     dropout=None, scale=None, mean=None, std=None, class_names=None, class_colors=None,
                     tile=(512, 512), stride=None, device="cpu"):
    """Write the card at ``path`` for ``weights`` (see module); returns a :class:`CardReport`.

    ``architecture`` None means a whole program (TorchScript, ONNX, torch.export). ``model_arguments`` is a
    dict of further SMP keyword arguments. Raises :class:`ModelCardError` for contradictory choices and the
    loader's errors when the written card does not load (the file is then not written).
    """
    from .model_loading import load_model

    path = Path(path).expanduser().absolute()
    weights = Path(weights).expanduser().absolute()
    if not weights.is_file():
        raise ModelCardError(f"WEIGHTS: the file {weights} does not exist. Fix: choose the model's weights file.")
    bands = [int(b) for b in bands]
    tile = tuple(int(t) for t in tile)
    program = weights.suffix.lower() in PROGRAM_SUFFIXES and architecture is None
    names = [n.strip() for n in class_names] if class_names else None
    if program:
        out_channels = _program_channels(weights, len(bands), tile) or (len(names) if names else None)
    else:
        if architecture is None or resolve_architecture(architecture) is None:
            raise ModelCardError(
                f"ARCHITECTURE: {weights.name} holds weights only (a state_dict), so the SMP architecture that "
                f"built them is needed; got {architecture!r}. Fix: choose the architecture and encoder of the "
                "training run."
            )
        out_channels = _head_channels(weights) or (len(names) if names else None)
    if out_channels is None:
        raise ModelCardError("CLASS_NAMES: the output channel count cannot be read from the weights. Fix: give "
                             "one class name per output channel.")

    document = {}
    if not program:
        section = {"_target_": f"segmentation_models_pytorch.{resolve_architecture(architecture)}"}
        if encoder_name:
            section["encoder_name"] = encoder_name
        section.update({"encoder_weights": None, "in_channels": len(bands), "classes": out_channels})
        section.update(model_arguments or {})
        if dropout is not None:
            section["decoder_dropout"] = float(dropout)
        document["model"] = section
    try:
        document["weights"] = os.path.relpath(weights, path.parent)
    except ValueError:  # another drive on Windows
        document["weights"] = str(weights)
    inputs = {"bands": bands}
    if mean is not None or std is not None:
        inputs["mean"], inputs["std"] = [float(v) for v in mean], [float(v) for v in std]
    elif scale is not None:
        inputs["scale"] = float(scale)
    document["input"] = inputs
    if names:
        colors = list(class_colors or [])
        document["classes"] = [{"name": n, "color": colors[i] if i < len(colors) else
                                DEFAULT_PALETTE[i % len(DEFAULT_PALETTE)]} for i, n in enumerate(names)]
    if program:
        document["num_classes"] = out_channels
    step = tuple(int(s) for s in stride) if stride else (max(1, tile[0] // 2), max(1, tile[1] // 2))
    document["tiling"] = {"model_input_shape": list(tile), "step_shape": list(step)}

    text = ("# Written by uncertainty:create_model_card.\n"
            + yaml.safe_dump(document, sort_keys=False, default_flow_style=None, allow_unicode=True))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".yaml", dir=path.parent)
        with os.fdopen(handle, "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as e:
        raise OutputWriteError(f"OUTPUT: cannot write the card in {path.parent} ({e}). Fix: choose a writable "
                               "folder.") from e
    try:
        # The card is validated under its final name (weights resolve against the same folder).
        from .model_card import parse_model_card

        card = parse_model_card(yaml.safe_load(text), path)
        loaded = load_model(card, device)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise
    model = loaded.model
    n_params = None if hasattr(model, "onnx_stochastic") else sum(p.numel() for p in model.parameters())
    load_model_card(path)  # what is on disk is what was loaded
    return CardReport(path=path, n_parameters=n_params, n_dropout_layers=loaded.n_dropout_layers,
                      out_channels=card.out_channels, warnings=tuple(loaded.warnings))
