"""Build the network a :class:`~engine.model_card.ModelCard` describes, load its weights safely, ready MC Dropout.

``load_model(card, device)`` does, in order:

1. builds the SMP class named by ``model._target_`` (looked up by name in an allow-list, never imported from a
   dotted path) with the card's keyword arguments, except that ``encoder_weights`` is forced to ``None`` (the
   card's weights replace pretrained ones; nothing is downloaded), ``activation`` is dropped (the engine
   turns logits into probabilities itself: softmax, or sigmoid for one channel) and ``aux_params`` is dropped
   (the classification head's output is not used; its weights in the file are ignored);
2. routes the card's dropout rate ``p`` to the architecture's own argument, found with :func:`inspect.signature`
   (FPN ``decoder_dropout``, PSPNet ``psp_dropout``, DeepLabV3/V3+ ``decoder_aspp_dropout``); an architecture
   without one gets ``nn.Dropout2d(p)`` in front of its segmentation head, registered under the name
   ``mc_dropout`` so the head's ``0.weight``-style keys keep their names; a head that already holds dropout
   layers (DPT) has their rate set to ``p``;
3. loads the weights: ``torch.load(..., weights_only=True)`` (a pickle that would build any Python object
   other than tensors and containers is refused before anything in it runs), or ``safetensors``; accepts a
   plain state_dict, a Lightning checkpoint (``state_dict`` with a ``model.``/``net.``-style prefix) and
   ``{"model_state_dict": ...}``; checks every key and shape before copying anything;
4. cards without a ``model:`` section run a whole program instead, by the weights file's suffix: ``.onnx``
   through onnxruntime (:mod:`engine.onnx_model`), ``.pt2`` through ``torch.export.load``
   (:mod:`engine.exported_program`), anything else through ``torch.jit.load`` (TorchScript); a Lightning
   checkpoint whose hyper-parameters hold OmegaConf objects is read by :mod:`engine.checkpoint_reader`,
   which runs no code from the file;
5. runs one forward pass on a zero tile and checks the output is logits ``(1, out_channels, *tile_shape)``
   (this catches a wrong ``num_classes`` in a TorchScript card, and SMP settings such as FPN with
   ``encoder_depth`` < 5, whose output is larger than its input unless ``upsampling`` is lowered);
6. calls :func:`engine.dropout.prepare_mc_dropout` (eval mode, seeded dropout layers) and warns when the model
   has no dropout layer with ``p > 0``: MC samples would then all be equal.

torch and segmentation-models-pytorch are imported inside the functions, so importing this module (and the
QGIS plugin) works without them; using it without them raises :class:`DependencyMissingError`.
"""

import copy
import inspect
import reprlib
import warnings
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import (
    DependencyMissingError,
    InvalidOptionError,
    ModelCardError,
    ModelLoadError,
    RasterInputError,
)
from .model_card import ALLOWED_ARCHITECTURES, DROPOUT_KEYS, ModelCard, card_file_hash, load_model_card
from .options import DeviceChoice, look_up_option

__all__ = [
    "LoadedModel",
    "load_model",
    "resolve_device",
    "check_band_count",
    "NO_DROPOUT_WARNING",
]

#: Warning text for a model whose MC samples would all be identical.
NO_DROPOUT_WARNING = (
    "model has no dropout layer: all MC samples would be identical and uncertainty zero; use TTA instead"
)

_INSTALL_HINT = (
    "The Python package {package!r} is needed to run segmentation models but cannot be imported ({error}). "
    "Fix: install the plugin's requirements into the Python that QGIS uses, from the plugin folder: "
    "`python -m pip install -r requirements.txt` (on Windows in the OSGeo4W Shell), or run `make demo` in a "
    "development checkout; then restart QGIS."
)

_SCRIPTED_DROPOUT_NAMES = {
    "Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout", "FeatureAlphaDropout",
}


@dataclass
class LoadedModel:
    """A model ready for inference: eval mode, on ``device``, dropout layers seeded and inactive.

    ``n_classes`` is the number of probability channels (2 for a one-channel sigmoid model, ``binary``);
    ``n_dropout_layers`` counts the seeded dropout layers MC Dropout can switch on; ``weights_sha256`` is the
    hex SHA-256 of the weights file; ``warnings`` holds every warning raised while loading, as text.
    """

    model: Any
    card: ModelCard
    n_classes: int
    binary: bool
    n_dropout_layers: int
    weights_sha256: str
    device: Any = None
    warnings: list = field(default_factory=list)


def _import_torch():
    try:
        import torch
    except (ImportError, OSError) as e:
        raise DependencyMissingError(_INSTALL_HINT.format(package="torch", error=e)) from e
    return torch


def _import_smp():
    try:
        import segmentation_models_pytorch as smp
    except (ImportError, OSError) as e:
        raise DependencyMissingError(
            _INSTALL_HINT.format(package="segmentation-models-pytorch", error=e)
        ) from e
    return smp


def resolve_device(choice="auto"):
    """The ``torch.device`` for ``choice``: "auto", "cpu", "cuda", "cuda:N", a ``DeviceChoice`` or a device.

    "auto" is CUDA when ``torch.cuda.is_available()``, else the CPU. Asking for CUDA where torch sees none
    raises :class:`InvalidOptionError` naming the fix.
    """
    torch = _import_torch()
    if isinstance(choice, torch.device):
        device = choice
    elif isinstance(choice, str) and choice.strip().lower().startswith("cuda:"):
        try:
            device = torch.device(choice.strip().lower())
        except RuntimeError as e:
            raise InvalidOptionError(f"DEVICE: expected auto, cpu, cuda or cuda:N; got {choice!r}.") from e
    else:
        member = look_up_option(choice, DeviceChoice, "DEVICE")
        if member is DeviceChoice.AUTO:
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        device = torch.device(member.value)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InvalidOptionError(
                f"DEVICE: expected a device torch can use; got {str(device)!r}, but torch "
                f"{torch.__version__} sees no CUDA GPU (CUDA build: {torch.version.cuda or 'none'}). "
                "Fix: choose auto or cpu, or install a CUDA build of torch matching the GPU driver."
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InvalidOptionError(
                f"DEVICE: expected a GPU index below {torch.cuda.device_count()}; got {str(device)!r}. "
                "Fix: choose cuda (the first GPU) or an existing index."
            )
    return device


def check_band_count(card, raster_band_count):
    """Raise :class:`RasterInputError` when the card reads a band the raster does not have.

    ``raster_band_count`` is the raster's number of bands; card bands are 1-based, so bands (1, 2, 4) need a
    raster with at least 4 bands and fail on a 3-band one with a message naming both numbers.
    """
    count = int(raster_band_count)
    too_high = [b for b in card.bands if b > count]
    if too_high:
        raise RasterInputError(
            f"INPUT raster: the model card {card.path} reads bands {list(card.bands)}, but the raster has "
            f"{count} band(s) (band {too_high[0]} > {count}). Fix: choose a raster with at least "
            f"{max(card.bands)} bands, or edit input.bands in the card."
        )


def load_model(card, device="cpu"):
    """Build and load the model of ``card`` (a :class:`ModelCard` or a card path) on ``device``.

    Returns a :class:`LoadedModel`. Raises :class:`ModelCardError` when the card cannot describe a buildable
    model, :class:`ModelLoadError` when the weights are missing, corrupt, unsafe or for another
    architecture, :class:`DependencyMissingError` without torch/SMP, :class:`InvalidOptionError` for an
    unusable device. Warnings are returned in ``LoadedModel.warnings`` and also issued as ``UserWarning``.
    """
    if not isinstance(card, ModelCard):
        card = load_model_card(card)
    torch = _import_torch()
    from .dropout import dropout_modules, prepare_mc_dropout

    device = resolve_device(device)
    notes = []
    if card.is_torchscript:
        model = _load_program(card, device, torch, notes)
    else:
        model = _build_smp(card, notes)
        state = _read_state_dict(card.weights_path, torch)
        _load_state(model, state, card, notes, torch)
        _add_head_dropout(model, card)
        model.to(device)
    _check_output(model, card, device, torch)

    try:
        n_dropout = prepare_mc_dropout(model)
    except Exception as e:  # a scripted module may refuse the swap; MC Dropout is then unavailable
        if not card.is_torchscript:
            raise
        n_dropout = 0
        model.eval()
        notes.append(f"dropout layers could not be prepared for MC Dropout ({type(e).__name__}: {e})")
    if card.is_torchscript:
        scripted = [m for m in model.modules() if getattr(m, "original_name", None) in _SCRIPTED_DROPOUT_NAMES]
        if scripted and n_dropout == 0:
            notes.append(
                f"TorchScript model: its {len(scripted)} dropout layer(s) are compiled and cannot be replaced "
                "by seeded MC dropout layers"
            )
    active = [m for m in dropout_modules(model) if m.p > 0]
    if not active:
        notes.append(
            NO_DROPOUT_WARNING if n_dropout == 0 else NO_DROPOUT_WARNING.replace(
                "no dropout layer", f"no dropout layer with p > 0 ({n_dropout} with p = 0)"
            )
        )
    for note in notes:
        warnings.warn(f"{card.path.name}: {note}", UserWarning, stacklevel=2)

    return LoadedModel(
        model=model,
        card=card,
        n_classes=card.n_classes,
        binary=card.out_channels == 1,
        n_dropout_layers=n_dropout,
        weights_sha256=card_file_hash(card.weights_path),
        device=device,
        warnings=notes,
    )


# --- SMP models ------------------------------------------------------------------------------------------


def _dropout_argument(cls):
    """The name under which ``cls.__init__`` takes a dropout rate, or None."""
    params = inspect.signature(cls.__init__).parameters
    return next((name for name in DROPOUT_KEYS if name in params), None)


def _build_smp(card, notes):
    smp = _import_smp()
    if card.architecture not in ALLOWED_ARCHITECTURES or not hasattr(smp, card.architecture):
        raise ModelCardError(
            f"Model card {card.path}: `model._target_`: {card.architecture!r} is not an allowed SMP "
            f"architecture in segmentation-models-pytorch {getattr(smp, '__version__', '?')}; allowed: "
            f"{', '.join(a for a in ALLOWED_ARCHITECTURES if hasattr(smp, a))}. Fix: name one of them, or "
            "upgrade segmentation-models-pytorch."
        )
    cls = getattr(smp, card.architecture)
    kwargs = copy.deepcopy(card.model_kwargs)
    for key in DROPOUT_KEYS:
        kwargs.pop(key, None)
    argument = _dropout_argument(cls)
    if argument is not None and card.dropout_p is not None:
        kwargs[argument] = card.dropout_p
    kwargs["encoder_weights"] = None
    activation = kwargs.pop("activation", None)
    if activation is not None:
        notes.append(f"model.activation {activation!r} ignored: the engine applies softmax/sigmoid to logits")
    if kwargs.pop("aux_params", None) is not None:
        notes.append("model.aux_params ignored: the classification head is not used")
    try:
        model = cls(**kwargs)
    except Exception as e:  # SMP raises TypeError, KeyError, ValueError... for a bad argument
        params = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "kwargs")]
        raise ModelCardError(
            f"Model card {card.path}: `model:`: expected arguments that build smp.{card.architecture}; "
            f"got {reprlib.repr(kwargs)} and SMP failed with {type(e).__name__}: {e}. Fix: correct the "
            f"model: keys (smp.{card.architecture} takes {', '.join(params)}) and the encoder name."
        ) from e
    _check_tile_shape(model, card)
    return model


def _check_tile_shape(model, card):
    if not getattr(model, "requires_divisible_input_shape", False):
        return
    stride = getattr(getattr(model, "encoder", None), "output_stride", None)
    if not isinstance(stride, int) or stride <= 1:
        return
    h, w = card.tile_shape
    if h % stride or w % stride:
        fixed = [-(-h // stride) * stride, -(-w // stride) * stride]
        raise ModelCardError(
            f"Model card {card.path}: `tiling.model_input_shape`: expected a height and width divisible by "
            f"{stride} (the encoder's output stride); got {list(card.tile_shape)}. Fix: use e.g. {fixed}."
        )


def _add_head_dropout(model, card):
    """Give an architecture without a dropout argument a ``Dropout2d(p)`` in front of its head (see module)."""
    p = card.dropout_p
    if p is None or _dropout_argument(type(model)) is not None:
        return
    torch = _import_torch()
    from torch.nn.modules.dropout import _DropoutNd

    head = getattr(model, "segmentation_head", None)
    existing = [m for m in head.modules() if isinstance(m, _DropoutNd)] if head is not None else []
    if existing:
        for module in existing:
            module.p = p
    elif p == 0:
        return
    elif isinstance(head, torch.nn.Sequential):
        model.segmentation_head = torch.nn.Sequential(
            OrderedDict([("mc_dropout", torch.nn.Dropout2d(p))] + list(head.named_children()))
        )
    else:
        raise ModelCardError(
            f"Model card {card.path}: `model.decoder_dropout`: expected an architecture whose segmentation head "
            f"can take a dropout layer; got {card.architecture} with a {type(head).__name__}. Fix: remove "
            "decoder_dropout (use TTA instead) or choose another architecture."
        )


# --- weights ---------------------------------------------------------------------------------------------


def _read_state_dict(path, torch):
    """The tensors of a weights file as ``{key: tensor}``; refuses pickled Python objects."""
    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as e:
            raise DependencyMissingError(_INSTALL_HINT.format(package="safetensors", error=e)) from e
        try:
            return dict(load_file(str(path), device="cpu"))
        except Exception as e:  # SafetensorError, OSError
            raise ModelLoadError(
                f"Weights {path}: expected a complete .safetensors file; it cannot be read ({e}). "
                "Fix: copy or export the file again (it may be truncated or corrupt)."
            ) from e
    if _is_torchscript_archive(path):
        raise ModelLoadError(
            f"Weights {path}: is a TorchScript archive, but the card has a `model:` section, which is for "
            "state_dict weights. Fix: remove the model: section (and give num_classes:) to run the "
            "TorchScript model, or point weights: at a state_dict."
        )
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        text = str(e)
        if "Weights only load failed" in text:
            from .checkpoint_reader import read_checkpoint

            # A Lightning checkpoint whose hyper-parameters hold OmegaConf objects: read again with inert
            # stand-ins for those classes; anything else is refused there, naming the class.
            return _extract_state_dict(read_checkpoint(path), path, torch)
        raise ModelLoadError(
            f"Weights {path}: expected a PyTorch weights file (torch.save of a state_dict or a Lightning "
            f"checkpoint); it cannot be read ({type(e).__name__}: {text[:300]}). Fix: copy or save the file "
            "again (it may be truncated or corrupt) or check that it is the right file."
        ) from e
    return _extract_state_dict(obj, path, torch)


def _is_torchscript_archive(path):
    """True for a zip written by torch.jit.save (it holds compiled code and constants.pkl)."""
    try:
        if not zipfile.is_zipfile(path):
            return False
        with zipfile.ZipFile(path) as archive:
            return any(n.endswith("/constants.pkl") or "/code/" in n for n in archive.namelist())
    except (OSError, zipfile.BadZipFile, ValueError):
        return False


def _extract_state_dict(obj, path, torch):
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model", "net"):
            inner = obj.get(key)
            if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                return dict(inner)
        tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
        if tensors:
            return tensors
        keys = [str(k) for k in list(obj)[:8]]
        raise ModelLoadError(
            f"Weights {path}: expected a state_dict (names → tensors) or a checkpoint with a 'state_dict' "
            f"entry; got a dict with keys {keys}. Fix: save `model.state_dict()`."
        )
    raise ModelLoadError(
        f"Weights {path}: expected a state_dict (names → tensors); got a {type(obj).__name__}. "
        "Fix: save `model.state_dict()`."
    )


def _best_prefix(keys, model_keys):
    """The prefix (possibly "") whose removal makes the most file keys match the model's keys."""
    candidates = {""}
    for key in keys:
        parts = key.split(".")
        for depth in (1, 2):
            if len(parts) > depth:
                candidates.add(".".join(parts[:depth]) + ".")
    best, best_score = "", -1
    for prefix in sorted(candidates, key=len):
        score = sum(1 for k in keys if k.startswith(prefix) and k[len(prefix):] in model_keys)
        if score > best_score:
            best, best_score = prefix, score
    return best, best_score


def _load_state(model, state, card, notes, torch):
    """Check keys and shapes of ``state`` against ``model`` completely, then copy the tensors."""
    expected = model.state_dict()
    prefix, score = _best_prefix(list(state), set(expected))
    if score <= 0:
        raise ModelLoadError(
            f"Weights {card.weights_path}: none of the {len(state)} tensor names match "
            f"smp.{card.architecture} (file: {list(state)[:3]}; model: {list(expected)[:3]}). The weights are for "
            "another architecture. Fix: set model._target_ and encoder_name to the training configuration."
        )
    if prefix:
        outside = [k for k in state if not k.startswith(prefix)]
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if outside:
            notes.append(f"weights: used the entries under {prefix!r}, ignored {len(outside)} others "
                         f"(e.g. {outside[0]!r})")
    aux = [k for k in state if k.startswith("classification_head.") and k not in expected]
    if aux:
        notes.append(f"weights: ignored {len(aux)} classification head tensor(s)")
        state = {k: v for k, v in state.items() if k not in aux}
    for key in expected:  # older checkpoints lack BatchNorm counters, which inference never reads
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = expected[key]
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or mismatched:
        details = [f"{k}: {tuple(state[k].shape)} in the file, {tuple(expected[k].shape)} in the model"
                   for k in mismatched[:3]]
        if missing:
            details.append(f"{len(missing)} missing from the file (first {missing[:3]})")
        if unexpected:
            details.append(f"{len(unexpected)} not in the model (first {unexpected[:3]})")
        summary = ", ".join(f"{k}={card.model_kwargs[k]!r}" for k in ("encoder_name", "classes")
                            if k in card.model_kwargs)
        raise ModelLoadError(
            f"Weights {card.weights_path} do not fit smp.{card.architecture}({summary}): "
            f"{'; '.join(details)}. The weights are for another architecture, encoder or class count. "
            "Fix: make model: in the card match the training configuration (classes, encoder_name, "
            "encoder_depth, decoder settings)."
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ModelLoadError(f"Weights {card.weights_path} cannot be copied into the model: {e}") from e


# --- TorchScript -----------------------------------------------------------------------------------------


def _load_program(card, device, torch, notes):
    """The whole-program model of a card without ``model:``: ONNX, torch.export or TorchScript by suffix."""
    suffix = card.weights_path.suffix.lower()
    if suffix == ".onnx":
        from .onnx_model import load_onnx_module

        model, more = load_onnx_module(card.weights_path, card, device)
    elif suffix == ".pt2":
        from .exported_program import load_exported_program

        model, more = load_exported_program(card.weights_path, device)
    else:
        return _load_torchscript(card, device, torch)
    notes.extend(more)
    return model


def _program_kind(card):
    suffix = card.weights_path.suffix.lower()
    return {".onnx": "ONNX model", ".pt2": "torch.export program"}.get(suffix, "TorchScript model")


def _load_torchscript(card, device, torch):
    path = card.weights_path
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*torch.jit.load.*deprecated", category=FutureWarning)
            model = torch.jit.load(str(path), map_location=device)
    except Exception as e:
        raise ModelLoadError(
            f"Weights {path}: the card has no `model:` section, so a TorchScript file (torch.jit.save) is "
            f"expected; it cannot be loaded as one ({type(e).__name__}: {str(e)[:300]}). Fix: export the model "
            "with torch.jit.script/trace and torch.jit.save, or add a model: section for state_dict weights."
        ) from e
    return model


def _check_output(model, card, device, torch):
    """One forward pass on a small zero tile: the output must be logits ``(1, out_channels, *tile)``."""
    from .fx_guard import model_calls

    model.eval()
    kind = _program_kind(card) if card.is_torchscript else f"smp.{card.architecture} model"
    # A tile of at most 64 px a side costs little whatever the card's tile; a model that fails on it is
    # checked at the card's own tile size, whose failure is the one reported.
    full = tuple(int(t) for t in card.tile_shape)
    out, error = None, None
    for attempt in dict.fromkeys((tuple(min(t, 64) for t in full), full)):
        shape = (1, card.n_bands) + attempt
        try:
            with torch.no_grad(), model_calls():
                out = model(torch.zeros(shape, device=device))
            break
        except Exception as e:  # noqa: BLE001 - any failure of the model is reported
            error = e
    if out is None:
        raise ModelLoadError(
            f"Model card {card.path}: the {kind} fails on a zero tile of shape {shape} "
            f"({type(error).__name__}: {str(error)[:300]}). Fix: check input.bands, tiling.model_input_shape "
            "and the model: section."
        ) from error
    want = (1, card.out_channels) + attempt
    got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    if got != want:
        fix = (
            "set num_classes: to the output channel count (1 for a sigmoid model) or export a model that "
            "returns logits at input resolution"
            if card.is_torchscript
            else "make the model return logits at input resolution (e.g. FPN with encoder_depth < 5 needs "
            "`upsampling: 4 / 2**(5 - encoder_depth)`)"
        )
        raise ModelLoadError(
            f"Model card {card.path}: expected the {kind} to return one tensor of shape {want} "
            f"(batch, output channels, height, width); got {got}. Fix: {fix}."
        )
