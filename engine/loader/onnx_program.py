"""ONNX segmentation models through onnxruntime: Deepness metadata, a torch-facing wrapper, MC Dropout if kept.

Deepness conventions (PUTvision/qgis-plugin-deepness, ``docs/source/creators/``): one input ``[B, C, S, S]``
(B 1 or dynamic), uint8 data scaled to 0–1 then ``(x − standardization_mean) / standardization_std``; the
output holds probabilities (softmax over C ≥ 2 channels, or one sigmoid channel); ``metadata_props`` carry
``model_type`` (``Segmentor``), ``class_names`` (JSON ``{"0": "name", ...}``), ``resolution`` (cm/px),
``tiles_size``, ``tiles_overlap`` (percent of the tile), ``standardization_mean``/``standardization_std``,
``seg_thresh``, ``seg_small_segment``.

In our card's raw units that is ``mean = 255 · standardization_mean``, ``std = 255 · standardization_std``
(example: 0.485 / 0.229 → 123.675 / 58.395), the tile ``S`` and the step ``S − round(S · overlap / 100)``
(example: 512 px at 15 % → step 435). :func:`deepness_card_document` writes exactly that card.

The engine turns logits into probabilities itself (softmax, or sigmoid for one channel). An ONNX model whose
output already is probabilities is wrapped so that it returns ``log p`` (C ≥ 2; ``softmax(log p) = p`` for
p summing to 1) or ``log p − log(1 − p)`` (one channel; ``σ`` of it is p); values are clamped to
[1e-30, 1 − 1e-7] first so that a hard 0 or 1 stays finite. Whether the output is probabilities is decided
once at load: Deepness metadata says so; otherwise a probe input shows it (non-negative channels that sum to
1 within 1e-3).

MC Dropout. ``torch.onnx.export`` of a model in eval mode drops every dropout. A graph keeps stochastic dropout
only if exported so (``Dropout`` nodes with ``training_mode`` true, or ``RandomUniformLike``-style ops), e.g.
by replacing each dropout module with ``lambda x: F.dropout(x, p, training=True)`` before an eval-mode
export (see README). Such a graph is found by running a probe input twice under two ``onnxruntime.set_seed``
values: different outputs mean stochastic. onnxruntime's graph optimiser would remove ``Dropout`` nodes
(``EliminateDropout``), so that pass is disabled for such a model. Sample t of a tile then runs alone after
``onnxruntime.set_seed(s)`` with ``s`` the sample's seed on the global tile grid (:mod:`engine.dropout`), so
runs repeat with the same SEED; the masks differ from torch's (another generator). Without stochastic dropout,
``mcdropout`` refuses (:data:`NO_STOCHASTIC_DROPOUT`).
"""

import json
import math
import threading
from pathlib import Path

from ..errors import DependencyMissingError, ModelCardError, ModelLoadError

__all__ = [
    "OnnxModelInfo",
    "read_onnx_info",
    "deepness_card_document",
    "load_onnx_module",
    "NO_STOCHASTIC_DROPOUT",
    "DEEPNESS_KEYS",
]

#: Deepness metadata keys read here; others are listed as unused.
DEEPNESS_KEYS = ("model_type", "class_names", "resolution", "tiles_size", "tiles_overlap",
                 "standardization_mean", "standardization_std", "seg_thresh", "seg_small_segment")
NO_STOCHASTIC_DROPOUT = (
    "MC Dropout needs a model that samples dropout at inference, but this ONNX graph is deterministic (an "
    "eval-mode export removes dropout). Fix: run uncertainty:tta with this model, or re-export it with "
    "dropout kept stochastic (see the README, \"Bring your model\")."
)
_SEED_LOCK = threading.Lock()  # onnxruntime.set_seed is process-wide
_PROBE_SEEDS = (11, 12)


def _import_ort():
    try:
        import onnxruntime
    except (ImportError, OSError) as e:
        raise DependencyMissingError(
            f"The Python package 'onnxruntime' is needed to run .onnx models but cannot be imported ({e}). Fix: "
            "install the plugin's requirements (`python -m pip install -r requirements.txt`) and restart QGIS."
        ) from e
    return onnxruntime


class OnnxModelInfo:
    """What the ONNX file says about itself: input name and shape ``(B, C, H, W)`` (ints or None when
    dynamic), output channel count (None if dynamic), and its ``metadata_props`` as text."""

    def __init__(self, path, input_name, input_shape, out_channels, metadata):
        self.path = Path(path)
        self.input_name = input_name
        self.input_shape = input_shape
        self.out_channels = out_channels
        self.metadata = metadata

    @property
    def is_deepness(self):
        return "model_type" in self.metadata or "standardization_mean" in self.metadata

    def number(self, key, default=None):
        text = self.metadata.get(key)
        if text is None:
            return default
        try:
            value = float(json.loads(text)) if not isinstance(text, (int, float)) else float(text)
        except (ValueError, TypeError) as e:
            raise ModelCardError(f"ONNX model {self.path}: metadata `{key}`: expected a number; got {text!r}. "
                                 "Fix: correct the metadata when exporting.") from e
        return value

    def number_list(self, key, length):
        text = self.metadata.get(key)
        if text is None:
            return None
        try:
            value = json.loads(text)
            if isinstance(value, (int, float)):
                value = [value] * length
            value = [float(v) for v in value]
        except (ValueError, TypeError) as e:
            raise ModelCardError(f"ONNX model {self.path}: metadata `{key}`: expected a JSON list of numbers; "
                                 f"got {text!r}. Fix: correct the metadata when exporting.") from e
        if len(value) != length:
            raise ModelCardError(f"ONNX model {self.path}: metadata `{key}`: expected {length} values (one per "
                                 f"input channel); got {len(value)}. Fix: correct the metadata.")
        return value


def _dim(value):
    return int(value) if isinstance(value, int) and value > 0 else None


def _session(path, providers=None, keep_dropout=False):
    ort = _import_ort()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    kwargs = {"disabled_optimizers": ["EliminateDropout"]} if keep_dropout else {}
    try:
        return ort.InferenceSession(str(path), options, providers=providers or ["CPUExecutionProvider"], **kwargs)
    except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph/... classes
        raise ModelLoadError(
            f"ONNX model {path}: onnxruntime cannot load it ({type(e).__name__}: {str(e)[:300]}). Fix: check that "
            "the file is a complete .onnx export (opset supported by onnxruntime "
            f"{getattr(ort, '__version__', '?')})."
        ) from e


def read_onnx_info(path):
    """An :class:`OnnxModelInfo` for the ``.onnx`` at ``path`` (one input, first output used)."""
    session = _session(path)
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1 or len(inputs[0].shape) != 4:
        raise ModelLoadError(
            f"ONNX model {path}: expected one input of shape [batch, channels, height, width]; got "
            f"{[(i.name, i.shape) for i in inputs]}. Fix: export the segmentation network with a single image input."
        )
    shape = tuple(_dim(v) for v in inputs[0].shape)
    out_shape = outputs[0].shape
    out_channels = _dim(out_shape[1]) if len(out_shape) == 4 else None
    metadata = dict(session.get_modelmeta().custom_metadata_map)
    return OnnxModelInfo(path, inputs[0].name, shape, out_channels, metadata)


def deepness_card_document(info, out_channels=None):
    """The card (as parsed YAML) that runs a Deepness ONNX model as Deepness does (see module)."""
    channels = info.input_shape[1]
    if channels is None:
        raise ModelCardError(f"ONNX model {info.path}: the input's channel count is dynamic. Fix: write a model "
                             "card with input.bands for it (uncertainty:create_model_card).")
    out_channels = out_channels or info.out_channels
    document = {"weights": str(info.path), "input": {"bands": list(range(1, channels + 1))}}
    mean = info.number_list("standardization_mean", channels)
    std = info.number_list("standardization_std", channels)
    if mean is not None or std is not None:
        mean = mean or [0.0] * channels
        std = std or [1.0] * channels
        document["input"]["mean"] = [255.0 * m for m in mean]
        document["input"]["std"] = [255.0 * s for s in std]
    else:
        document["input"]["scale"] = 255
    names = info.metadata.get("class_names")
    if names:
        try:
            parsed = json.loads(names)
            if isinstance(parsed, dict):
                parsed = [parsed[k] for k in sorted(parsed, key=lambda k: int(k))]
            if not isinstance(parsed, list) or not all(isinstance(n, str) for n in parsed):
                raise ValueError("not a list or mapping of names")
        except (ValueError, TypeError, KeyError) as e:
            raise ModelCardError(f"ONNX model {info.path}: metadata `class_names`: expected JSON like "
                                 f"{{\"0\": \"background\", \"1\": \"building\"}}; got {names!r} ({e}). "
                                 "Fix: correct the metadata.") from e
        document["classes"] = parsed
    if out_channels is None:
        out_channels = len(document.get("classes", [])) or None
    if out_channels is None:
        raise ModelCardError(f"ONNX model {info.path}: the output channel count is dynamic and no class_names "
                             "metadata gives it. Fix: add class_names metadata or write a model card.")
    document["num_classes"] = int(out_channels)
    if out_channels == 1 and len(document.get("classes", [])) > 2:
        document.pop("classes")
    side = info.number("tiles_size") or (info.input_shape[2] if info.input_shape[2] == info.input_shape[3] else None)
    if side:
        side = int(side)
        overlap = info.number("tiles_overlap", 0.0)
        step = max(1, side - int(round(side * overlap / 100.0)))
        document["tiling"] = {"model_input_shape": [side, side], "step_shape": [step, step]}
    return document


def _torch_module(session, info, probabilities, stochastic, device):
    import numpy as np
    import torch

    from ..dropout import SeededDropout

    ort = _import_ort()

    class _OnnxRandomness(SeededDropout):
        """Marks the model as MC-capable for the engine; holds the active flag and per-sample generators."""

    class OnnxSegmentationModel(torch.nn.Module):
        """``forward(x)`` runs the ONNX graph and returns logits as a torch tensor on ``x``'s device."""

        onnx_stochastic = stochastic

        def __init__(self):
            super().__init__()
            self.session = session
            self.info = info
            self.probabilities = probabilities
            if stochastic:
                self.mc = _OnnxRandomness(0.5)

        def _run(self, x):
            out = self.session.run(None, {info.input_name: x})[0]
            return np.asarray(out, dtype=np.float32)

        def forward(self, x):
            array = x.detach().to("cpu", torch.float32).numpy()
            mc = getattr(self, "mc", None)
            fixed_batch = info.input_shape[0]
            if mc is not None and mc.active:
                gens = mc.generators
                outs = []
                for i in range(array.shape[0]):
                    with _SEED_LOCK:
                        if gens is not None:
                            ort.set_seed(int(gens[i].initial_seed()) & 0x7FFFFFFFFFFFFFFF)
                        outs.append(self._run(array[i : i + 1]))
                out = np.concatenate(outs, axis=0)
            elif fixed_batch is not None and array.shape[0] != fixed_batch:
                out = np.concatenate([self._run(array[i : i + 1]) for i in range(array.shape[0])], axis=0)
            else:
                out = self._run(array)
            logits = torch.from_numpy(out)
            if self.probabilities:
                if logits.shape[1] == 1:
                    p = logits.clamp(1e-30, 1.0 - 1e-7)
                    logits = p.log() - (1.0 - p).log()
                else:
                    logits = logits.clamp_min(1e-30).log()
            return logits.to(x.device)

    return OnnxSegmentationModel()


def _providers(device):
    ort = _import_ort()
    available = ort.get_available_providers()
    if getattr(device, "type", str(device)) == "cuda" and "CUDAExecutionProvider" in available:
        index = getattr(device, "index", None) or 0
        return [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def load_onnx_module(path, card, device="cpu", info=None):
    """A torch module running the ONNX model at ``path`` for ``card`` (tile shape and band count), and notes.

    Returns ``(module, notes)``; ``module.onnx_stochastic`` says whether MC Dropout is possible. The session
    uses the CUDA execution provider when ``device`` is CUDA and onnxruntime has it, the CPU otherwise.
    """
    import numpy as np

    ort = _import_ort()
    info = info or read_onnx_info(path)
    providers = _providers(device)
    notes = []
    if getattr(device, "type", str(device)) == "cuda" and providers == ["CPUExecutionProvider"]:
        notes.append("onnxruntime has no CUDA execution provider here: the ONNX model runs on the CPU")
    probe_session = _session(path, providers, keep_dropout=True)
    h, w = card.tile_shape
    rng = np.random.default_rng(0)
    probe = rng.standard_normal((1, card.n_bands, h, w)).astype(np.float32)
    outs = []
    for seed in _PROBE_SEEDS:
        with _SEED_LOCK:
            ort.set_seed(seed)
            try:
                outs.append(np.asarray(probe_session.run(None, {info.input_name: probe})[0], dtype=np.float32))
            except Exception as e:  # onnxruntime's own error classes
                raise ModelLoadError(
                    f"ONNX model {path}: fails on a tile of shape {probe.shape} ({type(e).__name__}: "
                    f"{str(e)[:300]}). Fix: check input.bands and tiling.model_input_shape against the model's "
                    f"input {list(info.input_shape)}."
                ) from e
    stochastic = bool(np.abs(outs[0] - outs[1]).max() > 0)
    session = probe_session if stochastic else _session(path, providers)
    out = outs[0]
    if info.is_deepness:
        probabilities = True
    elif out.ndim == 4 and out.shape[1] >= 2:
        probabilities = bool(out.min() >= 0 and np.abs(out.sum(axis=1) - 1).max() < 1e-3)
    else:
        probabilities = bool(out.size and out.min() >= 0 and out.max() <= 1)
    if probabilities:
        notes.append("ONNX output read as probabilities" + (" (Deepness convention)" if info.is_deepness else
                                                            " (non-negative, summing to 1)"))
    if info.is_deepness:
        unused = sorted(k for k in info.metadata if k not in ("model_type", "class_names", "tiles_size",
                                                              "tiles_overlap", "standardization_mean",
                                                              "standardization_std"))
        if unused:
            notes.append(f"Deepness metadata not used here: {', '.join(unused)}")
    if not math.isfinite(float(np.abs(out).max() if out.size else 0.0)):
        raise ModelLoadError(f"ONNX model {path}: returns non-finite values on a probe tile. Fix: check the export.")
    return _torch_module(session, info, probabilities, stochastic, device), notes
