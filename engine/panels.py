"""Column panels: peak memory that depends on a setting, not on the raster's width or height.

A run walks its block strip by strip (one tile row at a time), so memory never grows with the raster's height;
but a strip spans the block's width: input, merge sums (float64) and finished rows of a 65,536-pixel-wide
raster took 9 GB. The block is therefore cut into **column panels** of at most ``panel_width`` output columns,
run one after the other, left to right, each from the tiles of the global grid that touch it (a halo of up to
one tile on either side), each writing its columns of the same output files.

Why the pixels do not change: a panel is exactly a ``block=`` run of its columns, full height. Every output
pixel receives the contributions of every tile of the global grid that covers it, in the same order (tile rows
top to bottom, tile columns left to right), with the same seeds (keyed by global tile indices), so the float64
sums are bit-identical to a single-panel run and to any ``block=`` run.

What it costs: the tile columns that straddle a panel boundary run in both panels. With stride = tile / 2 that
is one extra tile column per boundary: (panel tile columns + 1) / (panel tile columns) of the model time, e.g.
+16.7 % for the default 2,048-px reads of 512-px tiles (1,536-px inner panels: 6 tile columns). Rasters no
wider than one read cost nothing.

The budget bounds the **read width** (panel plus its halo), not the panel: memory per panel is proportional to
the columns read, and a panel at the raster's edge has no halo on that side. :func:`panel_blocks_for_reads`
therefore makes each panel as wide as its own halo allows, so every panel reads at most ``max_read_width``
columns whatever the raster's width: a raster of 2,048 px runs as one panel of 2,048 columns, and the inner
panels of a 65,536-px raster read 2,048 columns too; peak memory is then the same.

Memory per panel, for read height h (the tile height), b input bands, K moment channels, C classes and a read
width W: about h · W · (2 · (4b + 1) + 8 (K + 1)) bytes for two input strips in flight and the float64 merge
sums, plus the finished rows in flight (stride · W · (12K + 40 + 16C) bytes, two at a time).
:func:`read_width_for_memory` inverts this for a budget in MiB; boundaries are rounded down to multiples of
256 px (the outputs' block size) so that no output block is written by two panels.
"""

from .errors import InvalidOptionError

__all__ = ["DEFAULT_PANEL_MEMORY_MB", "OUTPUT_BLOCK", "panel_blocks", "panel_blocks_for_reads", "read_width_for_memory",
           "panel_bytes"]

#: Default memory budget of one panel's buffers (MiB): reads of 2,048 px for 512-px tiles, 3 bands, 4 classes,
#: entropy (the estimate is deliberately generous: measured peaks stay below it).
DEFAULT_PANEL_MEMORY_MB = 224
#: Output GeoTIFF block size (px): panel boundaries fall on multiples of it.
OUTPUT_BLOCK = 256


def panel_bytes(read_width, read_height, stride_height, n_bands, n_channels, n_classes):
    """Estimated bytes of one panel's buffers (see the module docstring)."""
    per_column = read_height * (2 * (4 * n_bands + 1) + 8 * (n_channels + 1))
    per_column += 2 * stride_height * (12 * n_channels + 40 + 16 * n_classes)
    return read_width * per_column


def read_width_for_memory(memory_mb, tile, stride, n_bands, n_channels, n_classes):
    """Columns one panel may read (panel plus halo) so that :func:`panel_bytes` stays within ``memory_mb`` MiB:
    at least one tile's width, a multiple of :data:`OUTPUT_BLOCK` when wider than one block."""
    if memory_mb is None:
        memory_mb = DEFAULT_PANEL_MEMORY_MB
    if not float(memory_mb) > 0:
        raise InvalidOptionError(f"panel memory must be a positive number of MiB; got {memory_mb}.")
    per_column = panel_bytes(1, tile[0], stride[0], n_bands, n_channels, n_classes)
    width = int(float(memory_mb) * 2**20 // per_column)
    if width >= OUTPUT_BLOCK:
        width -= width % OUTPUT_BLOCK
    return max(int(tile[1]), width)


def _read_span(col_starts, tile_width, c0, c1):
    """Columns [lo, hi) that the tiles touching output columns [c0, c1) read."""
    touching = [c for c in col_starts if c < c1 and c + tile_width > c0]
    return touching[0], touching[-1] + tile_width


def panel_blocks_for_reads(block, col_starts, tile_width, max_read_width):
    """Split ``block`` (row, col, height, width) into column panels, left to right, each as wide as possible
    (inner boundaries on multiples of :data:`OUTPUT_BLOCK` in the block's columns) while the tiles that touch it
    read at most ``max_read_width`` columns; a panel is never narrower than one output block (or the rest).

    ``col_starts``: the tile grid's column starts; ``tile_width``: the columns one tile reads.

    >>> narrow = list(range(0, 2048 - 511, 256))  # the tile columns of a 2,048-px raster: one panel, no halo
    >>> [p[3] for p in panel_blocks_for_reads((0, 0, 8, 2048), narrow, 512, 2048)]
    [2048]
    >>> wide = list(range(0, 65536 - 511, 256))  # the first 6,144 columns of a 65,536-px raster
    >>> [p[3] for p in panel_blocks_for_reads((0, 0, 8, 6144), wide, 512, 2048)]
    [1792, 1536, 1536, 1280]
    """
    row, col, height, width = (int(v) for v in block)
    end = col + width
    panels, c0 = [], col
    while c0 < end:
        best = min(end, c0 + OUTPUT_BLOCK)  # one block is the narrowest panel, whatever it reads
        while best < end:
            nxt = min(end, best + OUTPUT_BLOCK)
            lo, hi = _read_span(col_starts, tile_width, c0, nxt)
            if hi - lo > max_read_width:
                break
            best = nxt
        panels.append((row, c0, height, best - c0))
        c0 = best
    return panels


def panel_blocks(block, panel_width):
    """Split ``block`` (row, col, height, width) into column panels of at most ``panel_width`` columns.

    Inner boundaries fall on multiples of :data:`OUTPUT_BLOCK` in the block's own columns when ``panel_width``
    allows, so each output block is written by one panel. Returns [(row, col, height, width), ...] left to right.

    >>> panel_blocks((0, 0, 10, 1000), 512)
    [(0, 0, 10, 512), (0, 512, 10, 488)]
    >>> panel_blocks((5, 100, 10, 300), 4096)
    [(5, 100, 10, 300)]
    """
    row, col, height, width = (int(v) for v in block)
    panel_width = int(panel_width)
    if panel_width < 1:
        raise InvalidOptionError(f"panel width must be at least 1 pixel; got {panel_width}.")
    if panel_width >= OUTPUT_BLOCK:
        panel_width -= panel_width % OUTPUT_BLOCK
    panels = []
    for c0 in range(0, width, panel_width):
        panels.append((row, col + c0, height, min(panel_width, width - c0)))
    return panels
