"""Merge overlapping tile statistics strip by strip, in memory bounded by one tile row plus one stride.

Accumulate/finalise as in MONAI's merger: ``add`` folds w·values and w into running sums; ``take_rows`` hands
out the weighted means of rows that no later tile can touch and forgets them. Tile rows arrive top to bottom
(starts never decrease), so after tile row r every row above the next row start is final.

    merged(y, x) = Σ_tiles w_t(y, x) · v_t(y, x) / Σ_tiles w_t(y, x)

Rows no tile covered with positive weight (all-NoData tiles are skipped) come back with weight 0.
Memory: (K + 1) · 8 bytes · tile height · raster width (K = 2C + 1 moment channels).
"""

import numpy as np

__all__ = ["StripMerger"]


class StripMerger:
    """Running weighted sums for the rows [top, top + capacity) of a raster ``width`` pixels wide."""

    def __init__(self, width, n_channels, capacity, top=0):
        self.width = int(width)
        self.top = int(top)
        # float64 sums: with dense strides hundreds of windows overlap a pixel, and float32 sums would drift
        # by n·2^-24 (a constant 0.7 came back off by 7.6e-6 at stride 1); the means are handed out as float32.
        self._sum = np.zeros((n_channels, capacity, self.width), dtype=np.float64)
        self._weight = np.zeros((capacity, self.width), dtype=np.float64)

    @property
    def capacity(self):
        return self._weight.shape[0]

    def add(self, row, col, values, weight):
        """Fold one tile in: ``values`` (K, h, w) at raster offset (row, col) with weights ``weight`` (h, w)."""
        h, w = weight.shape
        r = row - self.top
        if r < 0 or r + h > self.capacity:
            raise RuntimeError(f"tile rows {row}..{row + h} fall outside the merge buffer {self.top}+{self.capacity}")
        self._sum[:, r : r + h, col : col + w] += values * weight
        self._weight[r : r + h, col : col + w] += weight

    def take_rows(self, stop):
        """Weighted means and weights of rows [top, stop); the buffer then starts at ``stop``."""
        n = stop - self.top
        weight = self._weight[:n].copy()
        with np.errstate(divide="ignore", invalid="ignore"):
            means = (self._sum[:, :n] / np.where(weight > 0, weight, 1.0)).astype(np.float32)
        self._sum[:, : self.capacity - n] = self._sum[:, n:]
        self._sum[:, self.capacity - n :] = 0.0
        self._weight[: self.capacity - n] = self._weight[n:]
        self._weight[self.capacity - n :] = 0.0
        self.top = stop
        return means, weight
