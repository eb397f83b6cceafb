"""Where tiles go on a raster, and how much each pixel of a tile counts when tiles overlap.

Placement follows MONAI / nnU-Net: per axis the starts are 0, s, 2s, ... and the last window is shifted back to
end exactly at the border, so no tile pads past the image unless the image is smaller than the tile. The starts
depend only on (size, tile, stride): every block of the raster sees the same global grid, which is what lets a
block be computed on its own (and seeded by its tile indices).
"""

import math
from dataclasses import dataclass

import numpy as np

from .errors import InvalidOptionError

__all__ = ["tile_starts", "TileGrid", "gaussian_window", "check_tiling"]


def check_tiling(tile, stride):
    """Validate a (height, width) tile and stride; stride must be in [1, tile] so tiles overlap or touch."""
    for name, value in (("TILE_SIZE", tile), ("STRIDE", stride)):
        if any(int(v) < 1 for v in value):
            raise InvalidOptionError(f"{name} must be at least 1 pixel; got {tuple(value)}.")
    if any(s > t for s, t in zip(stride, tile)):
        raise InvalidOptionError(
            f"STRIDE {tuple(stride)} is larger than TILE_SIZE {tuple(tile)}: pixels between tiles would get no "
            "prediction. Use a stride at most the tile size (half the tile is a good default)."
        )


def tile_starts(size, tile, stride):
    """Start offsets of the windows along one axis.

    n = ceil((size - tile) / stride) + 1 windows at i·stride, the last clamped to size - tile.

    >>> tile_starts(10, 4, 3)
    [0, 3, 6]
    >>> tile_starts(11, 4, 3)
    [0, 3, 6, 7]
    >>> tile_starts(3, 4, 2)
    [0]
    """
    if size <= tile:
        return [0]
    n = math.ceil((size - tile) / stride) + 1
    return [min(i * stride, size - tile) for i in range(n)]


@dataclass(frozen=True)
class TileGrid:
    """The global tile grid of a raster: row and column starts, tile and stride in pixels."""

    height: int
    width: int
    tile: tuple
    stride: tuple

    @property
    def row_starts(self):
        return tile_starts(self.height, self.tile[0], self.stride[0])

    @property
    def col_starts(self):
        return tile_starts(self.width, self.tile[1], self.stride[1])

    @property
    def n_tiles(self):
        return len(self.row_starts) * len(self.col_starts)

    @property
    def read_shape(self):
        """Pixels actually read per tile: the tile, cut to the raster where the raster is smaller."""
        return min(self.tile[0], self.height), min(self.tile[1], self.width)


def gaussian_window(shape, sigma_scale=0.125, floor=1e-3):
    """Gaussian importance map for merging overlapping tiles (nnU-Net / MONAI).

    w(y, x) = g_h(y) · g_w(x), g_n(i) = exp(-(i - (n-1)/2)² / (2 σ²)), σ = sigma_scale · n, normalised to a peak
    of 1 and floored at ``floor`` so that tile borders at the image edge still count. float32, shape ``shape``.

    >>> w = gaussian_window((8, 8)); float(w.max()), float(w.min()) >= 1e-3
    (1.0, True)
    """
    axes = []
    for n in shape:
        i = np.arange(n, dtype=np.float64)
        sigma = sigma_scale * n
        axes.append(np.exp(-((i - (n - 1) / 2.0) ** 2) / (2.0 * sigma**2)))
    window = np.outer(axes[0], axes[1])
    window /= window.max()
    return np.maximum(window, floor).astype(np.float32)
