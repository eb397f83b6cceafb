"""Where tiles go on a raster, and how much each pixel of a tile counts when tiles overlap.

Placement follows MONAI / nnU-Net: per axis the starts are 0, s, 2s, ... and the last window is shifted back to
end exactly at the border, so no tile pads past the image unless the image is smaller than the tile. The starts
depend only on (size, tile, stride): every block of the raster sees the same global grid, which is what lets a
block be computed on its own (and seeded by its tile indices).

:func:`plan_block` turns a block (row, col, height, width) of that grid into a :class:`BlockPlan`: the tile rows
(strips) to run top to bottom, the tile columns each strip holds, the columns to read, and after each strip which
raster rows are final and which of them belong to the block. A wider job (a whole raster, or column panels so
that memory does not grow with the raster's width) is a list of such blocks over the same global grid: each plan
depends only on the grid and its block, so plans can run one after another, in threads or on other machines.
"""

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

from .errors import InvalidOptionError

__all__ = [
    "tile_starts",
    "TileGrid",
    "gaussian_window",
    "check_tiling",
    "check_block",
    "Block",
    "StripPlan",
    "BlockPlan",
    "plan_block",
    "pad_to",
]

#: (row, col, height, width) of a rectangle of raster pixels.
Block = Tuple[int, int, int, int]


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


def check_block(block: Optional[Sequence[int]], height: int, width: int) -> Block:
    """(row, col, height, width) of the block to compute: the whole ``height`` × ``width`` raster by default."""
    if block is None:
        return 0, 0, int(height), int(width)
    row, col, b_height, b_width = (int(v) for v in block)
    if row < 0 or col < 0 or b_height < 1 or b_width < 1 or row + b_height > height or col + b_width > width:
        raise InvalidOptionError(
            f"block {tuple(block)} (row, col, height, width) must lie inside the {height}×{width} raster."
        )
    return row, col, b_height, b_width


@dataclass(frozen=True)
class StripPlan:
    """One tile row of a :class:`BlockPlan`.

    ``index``: the tile row on the global grid; ``number``: its position in the plan (0-based); ``row``: the
    first raster row read; ``final_stop``: after this strip every raster row above it is final (no later tile
    reaches it); ``write``: ``(r0, r1)``, the final raster rows of the block this strip completes, or None.
    """

    index: int
    number: int
    row: int
    final_stop: int
    write: Optional[Tuple[int, int]]


@dataclass(frozen=True)
class BlockPlan:
    """The tiles of the global ``grid`` that touch ``block``, in the order they run, and where results go.

    Reads are strips of ``read_shape[0]`` rows and columns [``col_lo``, ``col_hi``); ``cols`` holds the (grid
    column index, raster column start) of the tiles in every strip.
    """

    grid: TileGrid
    block: Block
    strips: List[StripPlan]
    cols: List[Tuple[int, int]]

    @property
    def read_shape(self) -> Tuple[int, int]:
        return self.grid.read_shape

    @property
    def col_lo(self) -> int:
        return self.cols[0][1]

    @property
    def col_hi(self) -> int:
        return self.cols[-1][1] + self.read_shape[1]

    @property
    def read_width(self) -> int:
        return self.col_hi - self.col_lo

    @property
    def top(self) -> int:
        """First raster row the plan reads."""
        return self.strips[0].row

    @property
    def n_tiles(self) -> int:
        return len(self.strips) * len(self.cols)

    def tile_columns(self, col: int) -> slice:
        """Columns of a strip (which starts at ``col_lo``) that the tile starting at raster column ``col`` reads."""
        return slice(col - self.col_lo, col - self.col_lo + self.read_shape[1])

    def block_rows(self, strip: StripPlan) -> slice:
        """Rows of the merged rows [strip.row, strip.final_stop) that are the block's final rows ``strip.write``."""
        r0, r1 = strip.write
        return slice(r0 - strip.row, r1 - strip.row)

    def block_columns(self) -> slice:
        """Columns of a strip that are the block's columns."""
        b_col, b_width = self.block[1], self.block[3]
        return slice(b_col - self.col_lo, b_col - self.col_lo + b_width)


def plan_block(grid: TileGrid, block: Block) -> BlockPlan:
    """Plan ``block`` (row, col, height, width; see :func:`check_block`) on ``grid``.

    Tiles touching the block, with the strip of read height h = ``grid.read_shape[0]`` at row start r_i:
    strip i runs when r_i < row + height and r_i + h > row; after it rows [., r_{i+1}) are final (the raster's
    height after the last strip), and the block's share of them is [max(r_i, row), min(r_{i+1}, row + height)).
    """
    b_row, b_col, b_height, b_width = block
    read_h, read_w = grid.read_shape
    rows = grid.row_starts
    needed = [i for i, r in enumerate(rows) if r < b_row + b_height and r + read_h > b_row]
    cols = [(j, c) for j, c in enumerate(grid.col_starts) if c < b_col + b_width and c + read_w > b_col]
    strips = []
    for number, i in enumerate(needed):
        row = rows[i]
        stop = rows[i + 1] if i + 1 < len(rows) else grid.height
        r0, r1 = max(row, b_row), min(stop, b_row + b_height)
        strips.append(StripPlan(i, number, row, stop, (r0, r1) if r1 > r0 else None))
    return BlockPlan(grid, tuple(block), strips, cols)


def pad_to(array: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Reflect-pad the last two axes of ``array`` up to ``shape`` (edge-pad a 1-pixel axis); a tile of a raster
    smaller than the tile is padded this way and its result cropped back to ``grid.read_shape``."""
    ph, pw = shape[0] - array.shape[-2], shape[1] - array.shape[-1]
    if ph <= 0 and pw <= 0:
        return array
    pad = [(0, 0)] * (array.ndim - 2) + [(0, max(ph, 0)), (0, max(pw, 0))]
    mode = "reflect" if min(array.shape[-2:]) > 1 else "edge"
    return np.pad(array, pad, mode=mode)
