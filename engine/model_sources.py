"""What ``MODEL`` accepts, as the user has it, and the run defaults each kind of file gives.

:func:`open_model` takes any of:

==========================  ==========================================================  =====================
file                        how it is read                                              defaults it gives
==========================  ==========================================================  =====================
our card (``.yaml``)        :func:`engine.model_card.load_model_card`; weights a        tile, stride
                            state_dict/``.ckpt``/``.safetensors`` (with ``model:``),
                            TorchScript, ``.onnx`` or ``.pt2`` (without)
trainer config (``.yaml``)  :mod:`engine.trainer_config` (a ``model:`` with             N_SAMPLES,
                            ``_target_`` and no ``input:``); checkpoint from            UNCERTAINTY_MODE,
                            ``checkpoint_path``/``model_path``, the same stem beside    TTA_MODE, tile,
                            it, or ``weights``; read by :mod:`engine.loader.lightning_checkpoint` stride, normalisation
Deepness ``.onnx``          its metadata (:func:`engine.loader.onnx_program.deepness_card_document`)  tile, stride,
                                                                                        normalisation
==========================  ==========================================================  =====================

and returns an :class:`OpenedModel`: the :class:`~engine.model_loading.LoadedModel`, a
:class:`~engine.trainer_config.RunDefault` per option the file sets, the keys it ignores, and ``describe()``
lines for the log. :func:`choose_option` picks, per option, the user's value or, when the user left the
parameter at its default, the file's, and says where it came from.
"""

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .errors import InvalidOptionError, ModelCardError
from .model_card import load_model_card, parse_model_card
from .trainer_config import RunDefault, is_trainer_config, read_trainer_config

__all__ = [
    "OpenedModel",
    "open_model",
    "choose_option",
    "check_mc_capable",
    "MODEL_FILE_FILTER",
    "MODEL_SUFFIXES",
]

#: Suffixes MODEL accepts and the toolbox file filter offering them.
MODEL_SUFFIXES = (".yaml", ".yml", ".onnx")
MODEL_FILE_FILTER = ("Model card (*.yaml *.yml);;pytorch-segmentation-models-trainer config (*.yaml *.yml);;"
                     "Deepness ONNX model (*.onnx);;All accepted models (*.yaml *.yml *.onnx)")


@dataclass
class OpenedModel:
    """A loaded model with what its file says about running it."""

    loaded: object
    kind: str
    defaults: dict = field(default_factory=dict)
    unused: list = field(default_factory=list)
    source_notes: list = field(default_factory=list)

    @property
    def card(self):
        return self.loaded.card

    def describe(self):
        """Log lines: kind, where the weights came from, normalisation, ignored keys (one line)."""
        lines = [f"Model: {self.kind} {self.card.path}"] + list(self.source_notes)
        if "normalisation" in self.defaults:
            d = self.defaults["normalisation"]
            lines.append(f"Normalisation: {d.value} (from {d.source})")
        if self.unused:
            lines.append(f"Keys not used by this plugin: {', '.join(self.unused)}")
        return lines


def _read_yaml(path):
    try:
        return yaml.safe_load(Path(path).read_text(encoding="utf-8-sig"))
    except Exception:  # noqa: BLE001 - load_model_card reports every reading problem properly
        return None


def open_model(path, device="cpu", weights=None):
    """Load the model at ``path`` (see module) on ``device``; ``weights`` is the WEIGHTS parameter (optional).

    Raises the errors of :func:`engine.model_loading.load_model`, and :class:`ModelCardError` for a file of
    another kind.
    """
    from .model_loading import load_model

    path = Path(path).expanduser().absolute()
    suffix = path.suffix.lower()
    defaults, unused, notes = {}, [], []
    if suffix == ".onnx":
        from .loader.onnx_program import deepness_card_document, read_onnx_info

        if not path.is_file():
            raise ModelCardError(f"MODEL: the file {path} does not exist. Choose an existing .onnx model.")
        info = read_onnx_info(path)
        card = parse_model_card(deepness_card_document(info), path)
        kind = "Deepness ONNX model" if info.is_deepness else "ONNX model (no Deepness metadata: scale 1/255)"
        where = "Deepness metadata" if info.is_deepness else "ONNX input shape"
        if card.tile_shape and ("tiles_size" in info.metadata or info.input_shape[2]):
            defaults["tile"] = RunDefault(card.tile_shape, f"{where} tiles_size" if "tiles_size" in info.metadata
                                          else "ONNX input shape")
            defaults["stride"] = RunDefault(card.step_shape, f"{where} tiles_overlap" if "tiles_overlap" in
                                            info.metadata else "half the tile")
        if card.mean is not None:
            defaults["normalisation"] = RunDefault(f"(x - {list(card.mean)}) / {list(card.std)}",
                                                   "Deepness metadata standardization_mean/std, x in 0-255")
        if weights:
            notes.append("WEIGHTS ignored: an ONNX file holds its own weights")
    elif suffix in (".ckpt", ".pth", ".pt", ".safetensors", ".pt2"):
        raise ModelCardError(
            f"MODEL: {path.name} is a weights file; a model card or trainer config must say how to build and "
            "feed the network. Fix: run uncertainty:create_model_card on it, or choose the trainer config and "
            "give this file as WEIGHTS."
        )
    else:
        document = _read_yaml(path) if path.is_file() else None
        if is_trainer_config(document):
            config = read_trainer_config(document, path, weights)
            card = parse_model_card(config.card_document, path)
            kind = "pytorch-segmentation-models-trainer config"
            defaults, unused = dict(config.defaults), list(config.unused)
            notes.append(f"Weights: {card.weights_path} (from {config.weights_source})")
        else:
            card = load_model_card(path)
            kind = "model card"
            if weights:
                notes.append("WEIGHTS ignored: the model card names its weights")
        if card.tile_shape:
            defaults.setdefault("tile", RunDefault(card.tile_shape, f"{kind} tiling"))
            defaults.setdefault("stride", RunDefault(card.step_shape, f"{kind} tiling"))
    loaded = load_model(card, device)
    return OpenedModel(loaded=loaded, kind=kind, defaults=defaults, unused=unused, source_notes=notes)


def choose_option(name, user_value, user_left_default, opened, key):
    """``(value, text)``: the user's value, or the file's ``opened.defaults[key]`` when the user left
    ``name`` at its default (``user_left_default``); ``text`` says where the value came from."""
    default = opened.defaults.get(key)
    if user_left_default and default is not None:
        return default.value, f"{name} = {_show(default.value)} (from {default.source})"
    origin = "plugin default" if user_left_default else "parameter"
    return user_value, f"{name} = {_show(user_value)} ({origin})"


def _show(value):
    if isinstance(value, tuple) and len(value) == 2:
        return f"{value[0]}×{value[1]}"
    return str(value)


def check_mc_capable(loaded):
    """Raise :class:`InvalidOptionError` when MC Dropout cannot sample ``loaded`` at all (a deterministic
    ONNX graph), with the message that says to use ``uncertainty:tta`` or to re-export."""
    stochastic = getattr(loaded.model, "onnx_stochastic", None)
    if stochastic is False:
        from .loader.onnx_program import NO_STOCHASTIC_DROPOUT

        raise InvalidOptionError(f"MODEL {loaded.card.path}: {NO_STOCHASTIC_DROPOUT}")
