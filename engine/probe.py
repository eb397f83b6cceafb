"""The one "does this input shape work" probe: a forward pass on a zero tile, small first.

A tile of at most 64 px a side costs about 1/64 of a 512-px tile pass whatever the tile; a model that fails on
it (fixed-size TorchScript exports, architectures with a minimum input) is tried at the full tile. Model loading
uses the probe to check the output shape; inference uses its input to verify the cached MC forward once.
"""

from typing import Any, Optional, Sequence, Tuple

__all__ = ["probe_shapes", "run_probe"]

#: Largest side of the small probe tile.
PROBE_SIDE = 64


def probe_shapes(tile: Sequence[int]) -> list:
    """(height, width) shapes to try, small first, without repeats: ``[min(tile, 64), tile]``."""
    full = tuple(int(t) for t in tile)
    return list(dict.fromkeys((tuple(min(t, PROBE_SIDE) for t in full), full)))


def run_probe(model, n_bands: int, tile: Sequence[int], device) -> Tuple[Any, Any, Optional[BaseException]]:
    """``(input, output, error)`` of the first zero input (1, n_bands, h, w) the model accepts.

    ``output`` is None and ``error`` the last exception when every shape failed; ``input`` is then the full tile.
    Runs without autograd and under :func:`engine.fx_guard.model_calls`.
    """
    import torch

    from .fx_guard import model_calls

    x, error = None, None
    for shape in probe_shapes(tile):
        x = torch.zeros((1, int(n_bands)) + shape, device=device)
        try:
            with torch.no_grad(), model_calls():
                return x, model(x), None
        except Exception as e:  # noqa: BLE001 - any failure of the model is reported by the caller
            error = e
    return x, None, error
