"""Test-time augmentation views and their exact inverses, on tensors shaped (..., H, W).

flip: 4 views (identity, horizontal, vertical, both = rotation by 180°); any tile shape.
d4:   8 views, the dihedral group of the square: rot90^k and rot90^k ∘ transpose for k = 0..3; square tiles only.
Each view maps a tile to the model's input; ``inverse`` maps the model's output back onto the tile's pixels.
"""

from dataclasses import dataclass
from typing import Callable

import torch

from .errors import InvalidOptionError
from .options import TTAMode

__all__ = ["View", "tta_views"]


@dataclass(frozen=True)
class View:
    name: str
    forward: Callable
    inverse: Callable


def _identity(x):
    return x


def _flip(dims):
    return lambda x: torch.flip(x, dims)


def _rot(k):
    return lambda x: torch.rot90(x, k, dims=(-2, -1))


def _transpose(x):
    return x.transpose(-2, -1)


def _rot_after_transpose(k):
    return lambda x: torch.rot90(x.transpose(-2, -1), k, dims=(-2, -1))


def _transpose_after_unrot(k):
    return lambda x: torch.rot90(x, -k, dims=(-2, -1)).transpose(-2, -1)


def tta_views(mode, tile_shape):
    """The list of :class:`View` for ``mode``; ``d4`` on a non-square tile raises InvalidOptionError."""
    mode = TTAMode(mode)
    if mode is TTAMode.NONE:
        return [View("identity", _identity, _identity)]
    if mode is TTAMode.FLIP:
        return [
            View("identity", _identity, _identity),
            View("flip_w", _flip((-1,)), _flip((-1,))),
            View("flip_h", _flip((-2,)), _flip((-2,))),
            View("flip_hw", _flip((-2, -1)), _flip((-2, -1))),
        ]
    if tile_shape[0] != tile_shape[1]:
        raise InvalidOptionError(
            f"TTA_MODE d4 rotates tiles by 90°, which needs square tiles; got {tile_shape[0]}×{tile_shape[1]}. "
            "Use a square TILE_SIZE or TTA_MODE flip."
        )
    views = [View("identity", _identity, _identity)]
    views += [View(f"rot{90 * k}", _rot(k), _rot(-k)) for k in (1, 2, 3)]
    views.append(View("transpose", _transpose, _transpose))
    views += [View(f"transpose_rot{90 * k}", _rot_after_transpose(k), _transpose_after_unrot(k)) for k in (1, 2, 3)]
    return views
