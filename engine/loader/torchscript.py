"""TorchScript cards (no ``model:`` section): ``torch.jit.load`` onto the device.
"""

import warnings

from ..errors import ModelLoadError

__all__ = ["load_torchscript", "SCRIPTED_DROPOUT_NAMES"]

#: Class names of dropout modules compiled into a TorchScript model (they cannot be seeded).
SCRIPTED_DROPOUT_NAMES = {
    "Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout", "FeatureAlphaDropout",
}


def load_torchscript(card, device, torch):
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
