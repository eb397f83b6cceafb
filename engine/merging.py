"""Merge overlapping tile statistics strip by strip, in memory bounded by one tile row plus one stride.

Accumulate/finalise as in MONAI's merger: ``add`` folds w·values and w into running sums; ``take_rows`` hands
out the weighted means of rows that no later tile can touch and forgets them. Tile rows arrive top to bottom
(starts never decrease), so after tile row r every row above the next row start is final.

    merged(y, x) = Σ_tiles w_t(y, x) · v_t(y, x) / Σ_tiles w_t(y, x)

Rows no tile covered with positive weight (all-NoData tiles are skipped) come back with weight 0.
Memory: (K + 1) · 8 bytes · tile height · raster width (K moment channels, :mod:`engine.statistics`).
"""

import numpy as np

__all__ = ["StripMerger"]


class StripMerger:
    """Running weighted sums for the rows [top, top + capacity) of a raster ``width`` pixels wide.

    The rows live in a ring: raster row y is buffer row y mod capacity, so handing out finished rows moves
    nothing (the sums of the rows still open stay where they are); only the handed-out rows are zeroed.
    """

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

    def _ring(self, row, n):
        """Buffer row slices holding raster rows [row, row + n), with the matching slices of those n rows."""
        start = row % self.capacity
        first = min(n, self.capacity - start)
        parts = [(slice(start, start + first), slice(0, first))]
        if first < n:
            parts.append((slice(0, n - first), slice(first, n)))
        return parts

    def add(self, row, col, values, weight):
        """Fold one tile in: ``values`` (K, h, w) at raster offset (row, col) with weights ``weight`` (h, w)."""
        h, w = weight.shape
        if row < self.top or row + h > self.top + self.capacity:
            raise RuntimeError(f"tile rows {row}..{row + h} fall outside the merge buffer {self.top}+{self.capacity}")
        weighted = values * weight
        for buf, part in self._ring(row, h):
            self._sum[:, buf, col : col + w] += weighted[:, part]
            self._weight[buf, col : col + w] += weight[part]

    def take_rows(self, stop):
        """Weighted means (float32) and weights (float64) of rows [top, stop); the buffer then starts at ``stop``."""
        n = stop - self.top
        means = np.empty((self._sum.shape[0], n, self.width), dtype=np.float32)
        weight = np.empty((n, self.width), dtype=np.float64)
        for buf, part in self._ring(self.top, n):
            w = self._weight[buf]
            weight[part] = w
            with np.errstate(divide="ignore", invalid="ignore"):
                means[:, part] = self._sum[:, buf] / np.where(w > 0, w, 1.0)
            self._sum[:, buf] = 0.0
            w[...] = 0.0
        self.top = stop
        return means, weight
