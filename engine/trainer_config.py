"""pytorch-segmentation-models-trainer Hydra configs read as model cards, with their run defaults.

A trainer user has a config like the trainer's ``conf/examples/mc_dropout_inference.yaml`` (1.4.0)::

    defaults: [_self_]
    model: {_target_: segmentation_models_pytorch.Unet, encoder_name: resnet50, in_channels: 3, classes: 5,
            decoder_dropout: 0.2}
    inference_processor: {_target_: ...MCDropoutInferenceProcessor, n_samples: 10, uncertainty_mode: entropy,
                          num_classes: 5, model_input_shape: [512, 512], step_shape: [256, 256], tta_mode: d4}
    normalize_mean: [0.485, 0.456, 0.406]
    normalize_std: [0.229, 0.224, 0.225]
    model_path: ???

:func:`read_trainer_config` turns it into the document of one of our cards (then validated by
:func:`engine.model_card.parse_model_card`) plus the run defaults the file gives, each with where it came from:

- ``model:`` becomes the card's ``model:`` section as it is (same SMP ``_target_`` and keyword arguments);
- bands ``1..in_channels``; normalisation: the trainer feeds ``x / normalize_max_value`` (default 255) minus
  ``normalize_mean`` over ``normalize_std``, ImageNet values when the keys are absent. In our raw-unit card
  that is ``mean = normalize_mean · max``, ``std = normalize_std · max``. Example: mean 0.485, std 0.229,
  max 255 → mean 123.675, std 58.395 for band 1;
- ``inference_processor.model_input_shape``/``step_shape`` → ``tiling:``; ``n_samples`` → N_SAMPLES;
  ``uncertainty_mode`` → UNCERTAINTY_MODE; ``tta_mode`` (``d4``/``flip``) → TTA_MODE;
  ``inference_processor.num_classes`` must equal ``model.classes``;
- the weights: ``checkpoint_path`` or ``model_path`` when set, relative to the config's folder; else a
  checkpoint of the same stem beside the config (``.ckpt``, ``.pth``, ``.pt``, ``.safetensors``); else the
  caller's ``weights`` (the WEIGHTS parameter); else an error that names the ``???`` key and the fix.

Values ``???`` and ``${...}`` interpolations are errors only where a value is needed, naming the key:
interpolations of plain keys of the same file (``${a.b}``, also inside text: ``${run_dir}/best.ckpt``) are
resolved; resolvers (``${oc.env:X}``) are not.
Keys we don't use (``pl_model``, ``hyperparameters``, ``pl_trainer``, ``device``, ``export_uncertainty_map``,
...) are returned in :attr:`TrainerConfig.unused` for one log line, never an error.
"""

import re
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ModelCardError

__all__ = [
    "TrainerConfig",
    "RunDefault",
    "is_trainer_config",
    "read_trainer_config",
    "CHECKPOINT_SUFFIXES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Weights files looked for beside a config of the same stem, in this order.
CHECKPOINT_SUFFIXES = (".ckpt", ".pth", ".pt", ".safetensors")

_MISSING_VALUE = "???"
_INTERPOLATION = re.compile(r"\$\{([^}]*)\}")
_USED_TOP = ("model", "inference_processor", "normalize_mean", "normalize_std", "normalize_max_value",
             "checkpoint_path", "model_path", "defaults")
_USED_PROCESSOR = ("_target_", "n_samples", "uncertainty_mode", "num_classes", "model_input_shape",
                   "step_shape", "tta_mode")
_UNCERTAINTY_MODES = {"entropy": "entropy", "mutual_information": "mutual_information",
                      "mutual-information": "mutual_information", "bald": "mutual_information",
                      "variance": "variance"}
_TTA_MODES = {"d4": "d4", "flip": "flip", "none": "none"}


@dataclass(frozen=True)
class RunDefault:
    """A run option the file gives: its value and where it came from (``"trainer config key X"``)."""

    value: object
    source: str


@dataclass
class TrainerConfig:
    """``card_document`` is a card (as parsed YAML) for :func:`parse_model_card`; ``defaults`` maps
    ``n_samples``, ``uncertainty_mode``, ``tta_mode``, ``tile``, ``stride``, ``normalisation`` to a
    :class:`RunDefault`; ``weights_source`` says how the weights were found; ``unused`` lists the keys we
    ignore; ``stochastic`` is True for an MC Dropout processor, False for another, None without one."""

    path: Path
    card_document: dict
    defaults: dict = field(default_factory=dict)
    weights_source: str = ""
    unused: list = field(default_factory=list)
    stochastic: object = None


def is_trainer_config(document):
    """True for a parsed YAML that is a trainer config, not our card: a ``model:`` with ``_target_`` and
    neither ``input:`` nor ``weights:`` (our cards always have both; a card missing one is still reported as a
    card)."""
    return (isinstance(document, dict) and "input" not in document and "weights" not in document
            and isinstance(document.get("model"), dict) and "_target_" in document["model"])


class _Values:
    """Looks up dotted keys in the config and resolves ``???`` and ``${...}`` only when asked."""

    def __init__(self, document, path):
        self.document = document
        self.path = path

    def fail(self, key, problem, fix):
        raise ModelCardError(f"Trainer config {self.path}: `{key}`: {problem}. Fix: {fix}.")

    def raw(self, key, default=None):
        node = self.document
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node

    def get(self, key, default=None, _seen=()):
        value = self.raw(key, default)
        return self.resolve(key, value, _seen)

    def resolve(self, key, value, _seen=()):
        if isinstance(value, str):
            if value.strip() == _MISSING_VALUE:
                self.fail(key, "is ??? (left for the command line), but this value is needed",
                          f"give `{key}` a value in the config")
            whole = _INTERPOLATION.fullmatch(value.strip())
            if whole:
                return self._target(key, value, whole.group(1).strip(), _seen)
            if _INTERPOLATION.search(value):
                return _INTERPOLATION.sub(
                    lambda m: str(self._target(key, value, m.group(1).strip(), _seen)), value)
        elif isinstance(value, list):
            return [self.resolve(f"{key}[{i}]", v, _seen) for i, v in enumerate(value)]
        elif isinstance(value, dict):
            return {k: self.resolve(f"{key}.{k}", v, _seen) for k, v in value.items()}
        return value

    def _target(self, key, value, target, _seen):
        """The resolved value of the key ``target`` that ``value`` (of ``key``) interpolates."""
        if ":" in target or target in _seen or self.raw(target, _MISSING) is _MISSING:
            why = ("a resolver, which is not evaluated" if ":" in target else
                   "a circular reference" if target in _seen else "a key that does not exist")
            self.fail(key, f"the interpolation {value!r} refers to {why}",
                      f"write the value of `{key}` itself into the config")
        return self.get(target, None, _seen + (key,))

    def is_set(self, key):
        value = self.raw(key, _MISSING)
        return value is not _MISSING and value is not None and not (
            isinstance(value, str) and value.strip() == _MISSING_VALUE)


_MISSING = object()


def _shape(values, key):
    value = values.get(key)
    if isinstance(value, int) and not isinstance(value, bool):
        return [value, value]
    if not (isinstance(value, list) and len(value) == 2):
        values.fail(key, f"expected [height, width]; got {value!r}", "give e.g. [512, 512]")
    return [int(v) for v in value]


def _find_weights(values, config_path, weights):
    """(path, how it was found) of the checkpoint; raises naming the ``???`` key when there is none."""
    folder = config_path.parent
    for key in ("checkpoint_path", "model_path"):
        if values.is_set(key):
            text = values.get(key)
            path = (folder / Path(str(text)).expanduser()).resolve()
            if not path.is_file():
                values.fail(key, f"the checkpoint {path} does not exist",
                            "correct the path (relative paths start at the config's folder) or set the "
                            "WEIGHTS parameter")
            return path, f"trainer config key {key}"
    for suffix in CHECKPOINT_SUFFIXES:
        beside = config_path.with_suffix(suffix)
        if beside.is_file():
            return beside, f"same stem as the config ({beside.name})"
    if weights:
        path = Path(weights).expanduser().resolve()
        if not path.is_file():
            raise ModelCardError(f"WEIGHTS: the file {path} does not exist. Fix: choose the trainer checkpoint.")
        return path, "WEIGHTS parameter"
    left = [k for k in ("checkpoint_path", "model_path") if values.raw(k, _MISSING) is not _MISSING]
    key = left[0] if left else "checkpoint_path"
    values.fail(key, "no checkpoint: the key is ??? or absent, and no "
                f"{'/'.join(s for s in CHECKPOINT_SUFFIXES)} file named {config_path.stem} lies beside the config",
                "choose the checkpoint in the WEIGHTS parameter, put it beside the config under the same name, "
                f"or set `{key}:` in the config")


def read_trainer_config(document, path, weights=None):
    """A :class:`TrainerConfig` from the parsed YAML ``document`` of the trainer config at ``path``.

    ``weights``: the checkpoint to use when the config names none (its ``checkpoint_path``/``model_path`` are
    ``???``) and none of the same stem lies beside it. Raises :class:`ModelCardError` naming the key.
    """
    path = Path(path).absolute()
    values = _Values(document, path)
    model = values.raw("model")
    defaults = {}

    model_section = {k: values.resolve(f"model.{k}", v) for k, v in model.items()}
    in_channels = model_section.get("in_channels", 3)
    if not isinstance(in_channels, int) or isinstance(in_channels, bool) or in_channels < 1:
        values.fail("model.in_channels", f"expected a whole number >= 1; got {in_channels!r}",
                    "give the number of input bands")

    max_value = values.get("normalize_max_value", 255) if values.raw("normalize_max_value") is not None else 255
    if values.raw("normalize_mean") is not None or values.raw("normalize_std") is not None:
        mean, std = values.get("normalize_mean"), values.get("normalize_std")
        source = "trainer config keys normalize_mean/normalize_std"
    else:
        mean, std = list(IMAGENET_MEAN), list(IMAGENET_STD)
        source = "trainer default (ImageNet mean/std on 0-1 data)"
    for key, stats in (("normalize_mean", mean), ("normalize_std", std)):
        if not isinstance(stats, list) or len(stats) != in_channels:
            values.fail(key, f"expected {in_channels} values (model.in_channels); got {stats!r}",
                        "give one value per input band")
    input_section = {"bands": list(range(1, in_channels + 1)),
                     "mean": [float(m) * float(max_value) for m in mean],
                     "std": [float(s) * float(max_value) for s in std]}
    defaults["normalisation"] = RunDefault(
        f"(x - {input_section['mean']}) / {input_section['std']}", f"{source}, x in 0-{max_value:g}")

    processor = values.raw("inference_processor") or {}
    card = {"model": model_section, "input": input_section}
    stochastic = None
    unused = [k for k in document if k not in _USED_TOP]
    if isinstance(processor, dict) and processor:
        unused += [f"inference_processor.{k}" for k in processor if k not in _USED_PROCESSOR]
        target = str(processor.get("_target_", ""))
        stochastic = "MCDropout" in target if target else None
        where = "trainer config key inference_processor."
        if processor.get("num_classes") is not None:
            n = values.get("inference_processor.num_classes")
            if n != model_section.get("classes"):
                values.fail("inference_processor.num_classes",
                            f"{n!r} differs from model.classes {model_section.get('classes')!r}",
                            "make both the model's output channel count")
        if processor.get("model_input_shape") is not None:
            tile = _shape(values, "inference_processor.model_input_shape")
            tiling = {"model_input_shape": tile}
            defaults["tile"] = RunDefault(tuple(tile), where + "model_input_shape")
            if processor.get("step_shape") is not None:
                tiling["step_shape"] = _shape(values, "inference_processor.step_shape")
                defaults["stride"] = RunDefault(tuple(tiling["step_shape"]), where + "step_shape")
            card["tiling"] = tiling
        if processor.get("n_samples") is not None:
            n_samples = values.get("inference_processor.n_samples")
            if not isinstance(n_samples, int) or isinstance(n_samples, bool) or n_samples < 1:
                values.fail("inference_processor.n_samples", f"expected a whole number >= 1; got {n_samples!r}",
                            "give e.g. 10")
            defaults["n_samples"] = RunDefault(n_samples, where + "n_samples")
        if processor.get("uncertainty_mode") is not None:
            mode = str(values.get("inference_processor.uncertainty_mode")).strip().lower()
            if mode not in _UNCERTAINTY_MODES:
                values.fail("inference_processor.uncertainty_mode", f"expected entropy or mutual_information; "
                            f"got {mode!r}", "use one of them")
            defaults["uncertainty_mode"] = RunDefault(_UNCERTAINTY_MODES[mode], where + "uncertainty_mode")
        if processor.get("tta_mode") is not None:
            tta = str(values.get("inference_processor.tta_mode")).strip().lower()
            if tta not in _TTA_MODES:
                values.fail("inference_processor.tta_mode", f"expected d4 or flip; got {tta!r}", "use one of them")
            defaults["tta_mode"] = RunDefault(_TTA_MODES[tta], where + "tta_mode")
    weights_path, weights_source = _find_weights(values, path, weights)
    card["weights"] = str(weights_path)
    return TrainerConfig(path=path, card_document=card, defaults=defaults, weights_source=weights_source,
                         unused=unused, stochastic=stochastic)
