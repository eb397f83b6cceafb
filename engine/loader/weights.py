"""Weight files → checked state dicts: safetensors, torch.load(weights_only=True), Lightning and
``{"model_state_dict": ...}`` checkpoints; every key and shape checked before anything is copied.

No pickle that would build a Python object other than tensors and containers is ever run; OmegaConf objects
in a Lightning checkpoint's hyper-parameters are read as inert data (:mod:`engine.loader.lightning_checkpoint`).
"""

import zipfile
from pathlib import Path

from ..errors import DependencyMissingError, ModelLoadError
from .device import INSTALL_HINT

__all__ = ["read_state_dict", "load_state"]

def read_state_dict(path, torch):
    """The tensors of a weights file as ``{key: tensor}``; refuses pickled Python objects."""
    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as e:
            raise DependencyMissingError(INSTALL_HINT.format(package="safetensors", error=e)) from e
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
            from .lightning_checkpoint import read_checkpoint

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


def load_state(model, state, card, notes, torch):
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
