"""YAML model cards: what network to build, which weights to load, how to feed it and how to name its classes.

A card is parsed with ``yaml.safe_load`` and validated completely before any torch code runs; every problem is
a :class:`~engine.errors.ModelCardError` whose message names the card, the key, what was expected, what was
found, and the fix. Nothing here imports torch or QGIS.

Why one module of ~550 lines: about half is the card format's documentation and the per-key validation
messages, which belong next to the one parser that reads them.

Format (``#`` starts a YAML comment, so colours must be quoted)::

    model:                                   # absent: `weights` is a TorchScript file (torch.jit.save)
      _target_: segmentation_models_pytorch.FPN   # also "smp.FPN" or "FPN"; see ALLOWED_ARCHITECTURES
      encoder_name: resnet18
      encoder_weights: null                  # ignored: the card's weights replace any pretrained ones
      in_channels: 3                         # must equal len(input.bands); SMP's default is 3
      classes: 4                             # required: output channels; 1 = sigmoid binary model
      decoder_dropout: 0.2                   # optional MC Dropout rate, 0 <= p < 1
    weights: model.pth                       # relative to the card's folder, or absolute
    input:
      bands: [1, 2, 3]                       # 1-based raster bands, in the model's channel order
      scale: 255                             # x / scale ...
      # mean: [..]  std: [..]                # ... or (x - mean) / std per band, in raw pixel units
      nodata_fill: 0                         # optional: raw value fed to the model at NoData pixels
                                             # (else 0 after scaling)
    classes:                                 # optional; entries are {name, color} mappings or plain names
      - {name: water, color: "#1f78b4"}
    num_classes: 4                           # TorchScript cards only (see below)
    tiling: {model_input_shape: [512, 512], step_shape: [256, 256]}   # optional; an int means square
    calibration: {temperature: 1.8}          # optional; T > 0 divides every sample's logits (default 1)

Rules the format leaves open, decided here:

- ``out_channels`` is what the network emits: ``model.classes`` for SMP. A TorchScript card has no
  ``model:`` section, so it gives ``num_classes:`` (output channels), or else ``classes:`` whose length is
  taken as the output channel count. ``num_classes`` in a card with a ``model:`` section is an error
  (``model.classes`` says it).
- A one-channel model is a sigmoid binary model: ``n_classes`` is 2 with probabilities ``[1 - p, p]``.
  Its ``classes:`` list has two entries (negative, positive) or one (the positive class; the negative one is
  then named ``background``).
- ``scale`` and ``mean``/``std`` exclude each other (``mean``/``std`` are in raw pixel units: multiply 0–1
  statistics by the scale). With neither, raw pixel values go to the model.
- ``decoder_dropout`` is the card's dropout rate whatever the architecture; SMP's own names ``psp_dropout``
  (PSPNet) and ``decoder_aspp_dropout`` (DeepLabV3/V3+) are accepted as aliases, never both.
  ``dropout_p`` is ``None`` when the card gives none (the architecture's default then applies).
- Without ``tiling.step_shape`` the step is half the tile (256 for the default 512 tile).
- ``calibration.temperature`` T (temperature scaling, fitted by ``uncertainty:evaluate`` and written by
  :func:`engine.card_calibration.write_calibrated_card`) divides the logits of every MC sample and TTA view
  before the softmax (a sigmoid model: its one logit), so p̄, entropy, MI and variance all describe the same
  calibrated samples. T = 1 (the default) changes nothing; one deterministic pass keeps its class map, a mean
  over samples may change its arg-max in a few pixels.
- Unknown keys are errors at the top level and in ``input:``, ``tiling:`` and class entries. Keys of
  ``model:`` other than ``_target_`` go to the SMP constructor, which checks them when the model is built.

Example:

>>> import pathlib, tempfile
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> _ = (folder / "w.pth").write_bytes(b"")
>>> _ = (folder / "card.yaml").write_text(
...     "model: {_target_: smp.Unet, encoder_name: resnet18, classes: 1}\\n"
...     "weights: w.pth\\ninput: {bands: [3, 2, 1], scale: 255}\\n")
>>> card = load_model_card(folder / "card.yaml")
>>> card.architecture, card.out_channels, card.n_classes, card.class_names, card.tile_shape, card.step_shape
('Unet', 1, 2, ('class_0', 'class_1'), (512, 512), (256, 256))
"""

import copy
import hashlib
import math
import re
import reprlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import yaml

from .errors import ModelCardError

__all__ = [
    "ModelCard",
    "load_model_card",
    "parse_model_card",
    "card_file_hash",
    "resolve_architecture",
    "ALLOWED_ARCHITECTURES",
    "DROPOUT_KEYS",
    "DEFAULT_PALETTE",
    "DEFAULT_TILE_SHAPE",
    "DEFAULT_STEP_SHAPE",
    "MAX_TILE_SIDE",
    "TEMPERATURE_RANGE",
]

#: SMP architecture classes a card may name; nothing outside this list is ever looked up.
ALLOWED_ARCHITECTURES = (
    "Unet",
    "UnetPlusPlus",
    "MAnet",
    "Linknet",
    "FPN",
    "PSPNet",
    "DeepLabV3",
    "DeepLabV3Plus",
    "PAN",
    "UPerNet",
    "Segformer",
    "DPT",
)

#: Keys of ``model:`` that give the dropout rate: the card's own name first, then SMP's per-architecture names.
DROPOUT_KEYS = ("decoder_dropout", "psp_dropout", "decoder_aspp_dropout")

#: Colours of classes the card leaves uncoloured, by class index (ColorBrewer "Paired", repeated past 12).
DEFAULT_PALETTE = (
    "#a6cee3", "#1f78b4", "#b2df8a", "#33a02c", "#fb9a99", "#e31a1c",
    "#fdbf6f", "#ff7f00", "#cab2d6", "#6a3d9a", "#ffff99", "#b15928",
)
_BACKGROUND_COLOR = "#cccccc"

DEFAULT_TILE_SHAPE = (512, 512)
#: Largest tile side accepted (pixels): one such tile of 3 float32 bands alone is 3 GiB.
MAX_TILE_SIDE = 16384
DEFAULT_STEP_SHAPE = (256, 256)

# The class map is uint8 with 255 as NoData: class ids 0..254.
MAX_CLASSES = 255
_TOP_KEYS = ("model", "weights", "input", "classes", "num_classes", "tiling", "calibration")
_CALIBRATION_KEYS = ("temperature",)
#: Temperatures a card may carry: outside this range the probabilities are all but one-hot or uniform.
TEMPERATURE_RANGE = (1e-3, 1e3)
_INPUT_KEYS = ("bands", "scale", "mean", "std", "nodata_fill")
_TILING_KEYS = ("model_input_shape", "step_shape")
_CLASS_KEYS = ("name", "color")
_ARCH_PREFIXES = ("segmentation_models_pytorch.", "smp.")
_COLOR_RE = re.compile(r"^#[0-9a-fA-F]{6}$")

_repr = reprlib.Repr()
_repr.maxstring = 60
_repr.maxother = 60
_repr.maxlist = _repr.maxdict = _repr.maxtuple = _repr.maxset = 6
_repr.maxlevel = 3


def _show(value):
    """A short repr for messages: bounded length and depth, safe on recursive or alias-heavy YAML."""
    return _repr.repr(value)


@dataclass(frozen=True)
class ModelCard:
    """A validated model card. Built by :func:`load_model_card`; nothing in it needs checking again.

    ``model_kwargs`` holds the card's ``model:`` section without ``_target_`` (a private copy: the loader
    copies it again before use, never mutates it). ``architecture`` is the canonical SMP class name, ``None``
    for a TorchScript card. ``out_channels`` is what the network emits; ``n_classes`` is the number of
    probability channels (2 when ``out_channels`` is 1, a sigmoid model). ``class_names``/``class_colors``
    have ``n_classes`` entries; colours are lower-case ``#rrggbb``. ``bands`` are 1-based. Shapes are
    ``(height, width)`` in pixels. ``dropout_p`` is the card's dropout rate or ``None``. ``temperature`` is
    the card's ``calibration.temperature`` (1.0 without one).
    """

    path: Path
    architecture: Optional[str]
    model_kwargs: dict
    weights_path: Path
    bands: tuple
    scale: Optional[float]
    mean: Optional[tuple]
    std: Optional[tuple]
    nodata_fill: Optional[float]
    class_names: tuple
    class_colors: tuple
    n_classes: int
    out_channels: int
    tile_shape: tuple
    step_shape: tuple
    dropout_p: Optional[float]
    temperature: float = 1.0

    @property
    def is_torchscript(self):
        """True when the card has no ``model:`` section and ``weights`` is a TorchScript file."""
        return self.architecture is None

    @property
    def binary(self):
        """True for a one-channel (sigmoid) model, read as the two classes ``[1 - p, p]``."""
        return self.out_channels == 1

    @property
    def n_bands(self):
        return len(self.bands)


def load_model_card(path):
    """Read, parse and validate the YAML model card at ``path``; return a :class:`ModelCard`.

    Raises :class:`ModelCardError` for a missing, unreadable, empty or invalid card (including a YAML syntax
    error, chained as the cause) and for a weights file that does not exist.
    """
    try:
        card_path = Path(path).expanduser().absolute()
    except (TypeError, ValueError, RuntimeError) as e:
        raise ModelCardError(
            f"MODEL_CARD: expected the path of a YAML model card; got {_show(path)}. Choose a .yaml file."
        ) from e
    try:
        raw = card_path.read_bytes()
    except FileNotFoundError as e:
        raise ModelCardError(
            f"MODEL_CARD: the model card {card_path} does not exist. Choose an existing .yaml model card."
        ) from e
    except (OSError, ValueError) as e:
        raise ModelCardError(
            f"MODEL_CARD: the model card {card_path} cannot be read ({e}). Choose a readable .yaml file."
        ) from e
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ModelCardError(
            f"Model card {card_path}: expected UTF-8 YAML text; got bytes that are not UTF-8 ({e}). "
            "Choose the .yaml card, not the weights file, and save it as UTF-8."
        ) from e
    if not text.strip():
        raise ModelCardError(
            f"Model card {card_path} is empty: expected a YAML mapping with at least `weights:` and `input:`. "
            "Fill in the card (see the format in the plugin's documentation)."
        )
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ModelCardError(
            f"Model card {card_path} is not valid YAML: {e}. Fix the syntax at the line shown "
            "(indent with spaces, quote values that start with # or contain ': ')."
        ) from e
    except (ValueError, TypeError, OverflowError, RecursionError) as e:
        # PyYAML's constructors raise these for values such as an impossible date (2021-13-45)
        # or a document nested deeper than the interpreter's recursion limit.
        raise ModelCardError(
            f"Model card {card_path} cannot be parsed as YAML ({type(e).__name__}: {e}). "
            "Fix or quote the offending value."
        ) from e
    return parse_model_card(document, card_path)


def parse_model_card(document, path):
    """Validate an already parsed card ``document`` (the result of ``yaml.safe_load``) read from ``path``.

    ``path`` is the card's own path: messages name it and ``weights`` is resolved against its folder.
    """
    card_path = Path(path).absolute()
    if document is None:
        raise ModelCardError(
            f"Model card {card_path} holds no data (only comments?): expected a YAML mapping with at least "
            "`weights:` and `input:`. Fill in the card."
        )
    _v = _Validator(card_path)
    if not isinstance(document, dict):
        _v.fail("(top level)", "a YAML mapping of keys such as model:, weights:, input:", document,
                "write the card as `key: value` lines, not a list or a single value")
    unknown = [k for k in document if k not in _TOP_KEYS]
    if unknown:
        _v.fail(_show(unknown[0]), f"only the keys {', '.join(_TOP_KEYS)}",
                _Text(f"unknown key(s) {_show(unknown)}"),
                "remove or rename the key (check its spelling and indentation)")

    bands, scale, mean, std, nodata_fill = _v.input_section(document.get("input", _MISSING))
    architecture, model_kwargs, dropout_p, out_channels = _v.model_section(document, len(bands))
    weights_path = _v.weights(document.get("weights", _MISSING), architecture is None)
    n_classes = 2 if out_channels == 1 else out_channels
    if n_classes > MAX_CLASSES:
        _v.fail("model.classes" if architecture else "num_classes", f"at most {MAX_CLASSES} classes", n_classes,
                f"the class map is 8-bit with 255 as NoData; use a model with at most {MAX_CLASSES} classes")
    class_names, class_colors = _v.classes(document.get("classes"), out_channels, n_classes)
    tile_shape, step_shape = _v.tiling(document.get("tiling"))
    temperature = _v.calibration(document.get("calibration"))
    return ModelCard(
        path=card_path,
        architecture=architecture,
        model_kwargs=model_kwargs,
        weights_path=weights_path,
        bands=bands,
        scale=scale,
        mean=mean,
        std=std,
        nodata_fill=nodata_fill,
        class_names=class_names,
        class_colors=class_colors,
        n_classes=n_classes,
        out_channels=out_channels,
        tile_shape=tile_shape,
        step_shape=step_shape,
        dropout_p=dropout_p,
        temperature=temperature,
    )


def resolve_architecture(target):
    """Canonical SMP class name for a card's ``_target_``, or ``None`` when it is not an allowed architecture.

    Accepts ``"segmentation_models_pytorch.FPN"``, ``"smp.FPN"`` and ``"FPN"`` (case-insensitive); nothing is
    imported.

    >>> resolve_architecture("smp.deeplabv3plus"), resolve_architecture("os.system")
    ('DeepLabV3Plus', None)
    """
    if not isinstance(target, str):
        return None
    name = target.strip()
    for prefix in _ARCH_PREFIXES:
        if name.startswith(prefix):
            name = name[len(prefix):]
            break
    by_lower = {a.lower(): a for a in ALLOWED_ARCHITECTURES}
    return by_lower.get(name.lower())


def card_file_hash(path, chunk_size=1 << 20):
    """SHA-256 (hex) of a file, read in chunks: the provenance tag of a model's weights.

    ``path`` is a file path, or a :class:`ModelCard`, whose weights file is hashed. Raises ``OSError`` when
    the file cannot be read.
    """
    if isinstance(path, ModelCard):
        path = path.weights_path
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


class _Text(str):
    """A "got" that is already worded for the message (shown as is, not repr'd)."""


class _Missing:
    def __repr__(self):
        return "nothing (key missing)"


_MISSING = _Missing()


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value):
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


class _Validator:
    """Checks one card's sections; every failure is a ModelCardError naming card, key, expected, got, fix."""

    def __init__(self, card_path):
        self.card_path = card_path

    def fail(self, key, expected, got, fix):
        got_text = got if isinstance(got, _Text) else _show(got)
        raise ModelCardError(
            f"Model card {self.card_path}: `{key}`: expected {expected}; got {got_text}. Fix: {fix}."
        )

    # --- scalars -------------------------------------------------------------------------------------

    def positive_int(self, key, value, fix):
        if not _is_int(value) or value < 1:
            self.fail(key, "a whole number >= 1", value, fix)
        return int(value)

    def number(self, key, value, fix, positive=False):
        if not _is_number(value) or (positive and value <= 0):
            self.fail(key, "a finite number > 0" if positive else "a finite number", value, fix)
        return float(value)

    def rate(self, key, value):
        if not _is_number(value) or not 0 <= value < 1:
            self.fail(key, "a dropout rate p with 0 <= p < 1", value, "give e.g. 0.2, or remove the key")
        return float(value)

    def mapping(self, key, value, valid_keys=None):
        if not isinstance(value, dict):
            self.fail(key, "a mapping (`name: value` entries)", value, "indent the entries below the key")
        if valid_keys is not None:
            unknown = [k for k in value if k not in valid_keys]
            if unknown:
                self.fail(f"{key}.{unknown[0]}", f"only the keys {', '.join(valid_keys)}",
                          _Text(f"unknown key(s) {_show(unknown)}"), "remove or rename the key")
        return value

    def number_list(self, key, value, length, positive=False):
        expected = f"a list of {length} finite number(s){' > 0' if positive else ''}, one per band"
        if not isinstance(value, list) or len(value) != length:
            self.fail(key, expected, value, f"give one value per entry of input.bands ({length})")
        for item in value:
            if not _is_number(item) or (positive and item <= 0):
                self.fail(key, expected, value, "replace the non-numeric, infinite or non-positive entries")
        return tuple(float(v) for v in value)

    def shape(self, key, value, default):
        if value is _MISSING or value is None:
            return default
        if _is_int(value):
            value = [value, value]
        if not (isinstance(value, list) and len(value) == 2
                and all(_is_int(v) and 1 <= v <= MAX_TILE_SIDE for v in value)):
            self.fail(key, f"[height, width] of two whole numbers from 1 to {MAX_TILE_SIDE} (or one number for "
                      "a square)", value, "give e.g. [512, 512]")
        return (int(value[0]), int(value[1]))

    # --- sections ------------------------------------------------------------------------------------

    def input_section(self, section):
        if section is _MISSING or section is None:
            self.fail("input", "a mapping with at least `bands:`", section,
                      "add e.g. `input: {bands: [1, 2, 3], scale: 255}`")
        self.mapping("input", section, _INPUT_KEYS)
        bands = section.get("bands", _MISSING)
        if not isinstance(bands, list) or not bands or not all(_is_int(b) and b >= 1 for b in bands):
            self.fail("input.bands", "a non-empty list of 1-based raster band numbers (1, 2, ...)", bands,
                      "list the bands in the model's channel order, e.g. [1, 2, 3]; band numbering starts at 1")
        bands = tuple(int(b) for b in bands)
        scale = section.get("scale")
        if scale is not None:
            scale = self.number("input.scale", scale, "give the divisor of raw pixel values, e.g. 255",
                                positive=True)
        mean, std = section.get("mean"), section.get("std")
        if (mean is None) != (std is None):
            self.fail("input.mean/input.std", "both mean and std, or neither",
                      _Text(f"only {'mean' if std is None else 'std'}"),
                      "add the missing list or remove the other")
        if mean is not None:
            if scale is not None:
                self.fail("input.scale", "either scale or mean/std, not both", scale,
                          "remove scale and give mean/std in raw pixel units (multiply 0-1 statistics by "
                          "the scale)")
            mean = self.number_list("input.mean", mean, len(bands))
            std = self.number_list("input.std", std, len(bands), positive=True)
        nodata_fill = section.get("nodata_fill")
        if nodata_fill is not None:
            nodata_fill = self.number("input.nodata_fill", nodata_fill,
                                      "give the raw pixel value nodata pixels are replaced with, e.g. 0")
        return bands, scale, mean, std, nodata_fill

    def model_section(self, document, n_bands):
        """(architecture, model_kwargs, dropout_p, out_channels) for an SMP card or a TorchScript card."""
        section = document.get("model", _MISSING)
        if section is None:  # `model:` with nothing under it reads as "no model section"
            section = _MISSING
        num_classes = document.get("num_classes", _MISSING)
        if section is _MISSING:
            if num_classes is not _MISSING:
                out_channels = self.positive_int("num_classes", num_classes,
                                                 "give the number of output channels of the TorchScript model")
            elif isinstance(document.get("classes"), list) and document["classes"]:
                out_channels = len(document["classes"])
            else:
                self.fail("num_classes", "for a TorchScript card (no `model:` section), `num_classes:` or a "
                          "`classes:` list", num_classes,
                          "add `num_classes: N` (the model's output channels; 1 = sigmoid binary), or add a "
                          "`model:` section if the weights are a state_dict")
            return None, {}, None, out_channels
        if num_classes is not _MISSING:
            self.fail("num_classes", "no `num_classes:` in a card with a `model:` section", num_classes,
                      "remove it; `model.classes` gives the number of output channels")
        self.mapping("model", section)
        bad_keys = [k for k in section if not isinstance(k, str) or not k.isidentifier()]
        if bad_keys:
            self.fail(f"model.{bad_keys[0]}", "keyword names of the SMP constructor",
                      _Text(f"unknown key(s) {_show(bad_keys)}"),
                      "use the argument names of the SMP class, e.g. encoder_name")
        target = section.get("_target_", _MISSING)
        architecture = resolve_architecture(target)
        if architecture is None:
            self.fail("model._target_", f"one of the allowed SMP architectures ({', '.join(ALLOWED_ARCHITECTURES)}), "
                      "written as segmentation_models_pytorch.NAME, smp.NAME or NAME",
                      _Text(f"{_show(target)}, which is not an allowed SMP architecture"),
                      "name one of the allowed architectures (other classes are never imported)")
        kwargs = {k: copy.deepcopy(v) for k, v in section.items() if k != "_target_"}
        out_channels = self.positive_int("model.classes", kwargs.get("classes", _MISSING),
                                         "give the number of output channels (classes; 1 = sigmoid binary)")
        in_channels = kwargs.get("in_channels", 3)
        if in_channels != n_bands or not _is_int(in_channels):
            where = "model.in_channels" if "in_channels" in kwargs else "model.in_channels (SMP default 3)"
            self.fail(where, f"the number of input.bands ({n_bands})", in_channels,
                      f"set `in_channels: {n_bands}` or list as many bands as the model was trained with")
        given = [k for k in DROPOUT_KEYS if k in kwargs]
        if len(given) > 1:
            self.fail(f"model.{given[1]}", "one dropout key (decoder_dropout)", _show(given),
                      "keep only `decoder_dropout`")
        dropout_p = self.rate(f"model.{given[0]}", kwargs[given[0]]) if given else None
        return architecture, kwargs, dropout_p, out_channels

    def weights(self, value, torchscript):
        what = "a TorchScript .pt file (torch.jit.save)" if torchscript else \
            "a state_dict .pth/.ckpt or a .safetensors file"
        if not isinstance(value, str) or not value.strip():
            self.fail("weights", f"the path of {what}, relative to the card's folder", value,
                      "add e.g. `weights: model.pth`")
        try:
            weights_path = (self.card_path.parent / Path(value.strip()).expanduser()).resolve()
            exists = weights_path.is_file()
        except (OSError, ValueError, RuntimeError) as e:
            self.fail("weights", f"the path of {what}", _Text(f"{_show(value)} ({e})"), "fix the file name")
        if not exists:
            state = "is a folder" if _safe_is_dir(weights_path) else "does not exist"
            self.fail("weights", f"an existing file ({what})", _Text(f"{weights_path}, which {state}"),
                      "put the weights file there or correct the path (relative paths start at the card's "
                      f"folder {self.card_path.parent})")
        return weights_path

    def classes(self, section, out_channels, n_classes):
        if section is None:
            names = tuple(f"class_{i}" for i in range(n_classes))
            return names, tuple(DEFAULT_PALETTE[i % len(DEFAULT_PALETTE)] for i in range(n_classes))
        allowed = (n_classes, 1) if out_channels == 1 else (n_classes,)
        if not isinstance(section, list) or len(section) not in allowed:
            lengths = " or ".join(str(n) for n in allowed)
            self.fail("classes", f"a list of {lengths} class entries (the model has {out_channels} output "
                      f"channel(s))", section, "give one entry per class, `{name: water, color: \"#1f78b4\"}` "
                      "or just a name")
        names, colors = [], []
        for i, entry in enumerate(section):
            if isinstance(entry, str):
                entry = {"name": entry}
            self.mapping(f"classes[{i}]", entry, _CLASS_KEYS)
            name = entry.get("name", _MISSING)
            if not isinstance(name, str) or not name.strip():
                self.fail(f"classes[{i}].name", "a non-empty text", name, "give the class a name")
            color = entry.get("color", DEFAULT_PALETTE[i % len(DEFAULT_PALETTE)])
            if not isinstance(color, str) or not _COLOR_RE.match(color):
                hint = " (an unquoted # starts a YAML comment)" if color is None else ""
                self.fail(f"classes[{i}].color", "a colour written #rrggbb", color,
                          f'quote the colour, e.g. color: "#1f78b4"{hint}')
            names.append(name.strip())
            colors.append(color.lower())
        if len(names) == 1:  # binary model, positive class only
            names.insert(0, "background")
            colors.insert(0, _BACKGROUND_COLOR)
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            self.fail("classes", "distinct class names", duplicates, "rename the repeated classes")
        return tuple(names), tuple(colors)

    def calibration(self, section):
        if section is None:
            return 1.0
        self.mapping("calibration", section, _CALIBRATION_KEYS)
        value = section.get("temperature", _MISSING)
        lo, hi = TEMPERATURE_RANGE
        if value is _MISSING or not _is_number(value) or not lo <= value <= hi:
            self.fail("calibration.temperature", f"a temperature T with {lo:g} <= T <= {hi:g}", value,
                      "give the TEMPERATURE that uncertainty:evaluate reported, or remove `calibration:`")
        return float(value)

    def tiling(self, section):
        if section is None:
            return DEFAULT_TILE_SHAPE, DEFAULT_STEP_SHAPE
        self.mapping("tiling", section, _TILING_KEYS)
        tile = self.shape("tiling.model_input_shape", section.get("model_input_shape", _MISSING),
                          DEFAULT_TILE_SHAPE)
        default_step = (max(1, tile[0] // 2), max(1, tile[1] // 2))
        step = self.shape("tiling.step_shape", section.get("step_shape", _MISSING), default_step)
        if step[0] > tile[0] or step[1] > tile[1]:
            self.fail("tiling.step_shape", f"at most the tile shape {list(tile)} on each axis (gaps otherwise)",
                      list(step), "use a step <= the tile, e.g. half of it for 50% overlap")
        return tile, step


def _safe_is_dir(path):
    try:
        return path.is_dir()
    except (OSError, ValueError):
        return False
