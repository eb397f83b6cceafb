"""Review hotspots: where an uncertainty raster says to look first, as ranked polygons.

Two ways to cut the raster into units of review:

- ``grid``: square cells of ``cell_size`` × ``cell_size`` pixels on the raster's own grid (cells at the right and
  bottom edges are smaller). Cells hold the same area, so they are ranked by their **mean** uncertainty.
  Streamed: one strip of ``cell_size`` rows at a time, memory O(cell_size · width).
- ``regions``: connected regions (4-connected: pixels sharing an edge) of pixels whose uncertainty is above
  ``threshold``. Regions differ in size, so they are ranked by their **uncertainty mass** Σu = mean × pixels: a
  large, fairly uncertain field ranks before one very uncertain pixel. Labelling needs the whole raster in memory
  (8 bytes a pixel: the values and the labels).

For each unit, over its valid pixels (finite, not NoData/masked):
``mean`` = Σu / n, ``max``, ``frac_above`` = |{u > threshold}| / n (NaN without a threshold; 1 for regions),
``n_pixels`` = n, ``area`` = n × |pixel area| in the CRS's map units², ``unc_sum`` = Σu, and, with a class raster on
the same grid, ``majority_class`` = the most frequent class id among the unit's pixels that have a class (the
smallest id on ties; NoData and the values in ``ignore_classes`` are not counted; -1 when none is left).
Units without a valid pixel are dropped. Units are sorted (score descending, then top-to-bottom, left-to-right),
``rank`` 1 is the first, and ``top_n`` > 0 keeps only the first ``top_n``.

Example: a 4 × 4 raster of u = row index (0, 1, 2, 3), ``cell_size`` 2: the bottom two cells have mean 2.5,
max 3 and rank 1 (left) and 2 (right); the top two mean 0.5.
"""

import math
from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np
from rasterio.windows import Window

from .errors import InferenceCancelled, InvalidOptionError, RasterInputError
from .options import HotspotMethod, look_up_option
from .raster_io import describe_grid, open_raster, read_class_ids, read_masked, same_grid

__all__ = ["Hotspot", "HotspotResult", "HotspotMethod", "find_hotspots", "MAX_REGION_PIXELS"]

MAX_REGION_PIXELS = 400_000_000  # 'regions' holds the raster and its labels: 3.2 GB at this size


@dataclass
class Hotspot:
    """One unit of review. ``wkt``: its polygon in the raster's CRS; ``row``, ``col``: its top-left pixel."""

    rank: int
    wkt: str
    mean: float
    max: float
    frac_above: float
    n_pixels: int
    area: float
    unc_sum: float
    majority_class: int
    class_name: str
    row: int
    col: int


@dataclass
class HotspotResult:
    hotspots: List[Hotspot]
    crs_wkt: Optional[str]
    method: str
    n_units: int  # before top_n
    threshold: Optional[float]
    cell_size: int
    class_names: List[str] = field(default_factory=list)


def _check_same_grid(unc, cls, unc_path, cls_path):
    if not same_grid(unc, cls):
        raise RasterInputError(
            f"class raster {cls_path} ({describe_grid(cls)}) is not on the grid of the uncertainty raster "
            f"{unc_path} ({describe_grid(unc)}). Use the class map written by the same run."
        )


def _class_names(ds):
    names = ds.tags().get("CLASS_NAMES", "")
    return [n for n in names.split(",")] if names else []


def _read_uncertainty(ds, window):
    u, valid = read_masked(ds, window, 1)
    u = u.astype(np.float64)
    u[~valid | ~np.isfinite(u)] = np.nan
    return u


def _read_classes(ds, window, ignore_classes):
    c = read_class_ids(ds, window, -1).astype(np.int64)  # NoData -> -1
    for value in ignore_classes:
        c[c == int(value)] = -1
    c[c < 0] = -1
    return c


def _polygon_wkt(rings):
    """WKT of a polygon given as rings of (x, y) tuples (first ring the shell)."""
    parts = ["(" + ", ".join(f"{float(x)!r} {float(y)!r}" for x, y in ring) + ")" for ring in rings]
    return "POLYGON (" + ", ".join(parts) + ")"


def _cell_wkt(transform, row, col, height, width):
    corners = [(col, row), (col + width, row), (col + width, row + height), (col, row + height), (col, row)]
    return _polygon_wkt([[tuple(transform * (c, r)) for c, r in corners]])


def _majority(counts):
    """Class id of the largest count per row of ``counts`` (units × classes), smallest id on ties; -1 if empty."""
    if counts.shape[1] == 0:
        return np.full(counts.shape[0], -1)
    best = counts.argmax(axis=1)
    return np.where(counts.max(axis=1) > 0, best, -1)


def find_hotspots(uncertainty_path, *, classes_path=None, method=HotspotMethod.GRID, cell_size=32, threshold=None,
                  top_n=0, ignore_classes=(), progress=None, is_cancelled=None):
    """Rank the units of ``uncertainty_path`` (band 1, higher = less certain); see the module docstring.

    :param classes_path: optional class raster on the same grid (band 1) for ``majority_class``; its
        ``CLASS_NAMES`` tag (written by the inference) names the classes.
    :param method: ``grid`` or ``regions`` (:class:`HotspotMethod`).
    :param cell_size: pixels per cell side (grid).
    :param threshold: uncertainty above which a pixel counts in ``frac_above`` (grid, optional) or belongs to a
        region (regions, required).
    :param top_n: keep the first ``top_n`` units; 0 keeps all.
    :param ignore_classes: class values not counted for the majority (e.g. the "uncertain" value).
    :returns: :class:`HotspotResult`.
    :raises InvalidOptionError, RasterInputError, InferenceCancelled.
    """
    method = look_up_option(method, HotspotMethod, "METHOD")
    cell_size = int(cell_size)
    if cell_size < 1:
        raise InvalidOptionError(f"CELL_SIZE: expected a whole number of pixels ≥ 1; got {cell_size}.")
    if int(top_n) < 0:
        raise InvalidOptionError(f"TOP_N: expected 0 (all) or a positive number; got {top_n}.")
    if threshold is not None and not math.isfinite(float(threshold)):
        raise InvalidOptionError(f"THRESHOLD: expected a finite number; got {threshold!r}.")
    if method is HotspotMethod.REGIONS and threshold is None:
        raise InvalidOptionError("THRESHOLD: the regions method needs an uncertainty threshold (e.g. the "
                                 "REJECT_THRESHOLD of uncertainty:evaluate, or a value from the map's legend).")
    progress = progress or (lambda fraction, text: None)
    with open_raster(uncertainty_path, "uncertainty raster") as unc:
        cls = open_raster(classes_path, "class raster") if classes_path else None
        try:
            names = []
            if cls is not None:
                _check_same_grid(unc, cls, uncertainty_path, classes_path)
                names = _class_names(cls)
            run = _grid if method is HotspotMethod.GRID else _regions
            units = run(unc, cls, cell_size=cell_size, threshold=None if threshold is None else float(threshold),
                        ignore_classes=ignore_classes, progress=progress, is_cancelled=is_cancelled)
        finally:
            if cls is not None:
                cls.close()
        crs_wkt = unc.crs.to_wkt() if unc.crs else None
    units.sort(key=lambda h: (-h.unc_sum if method is HotspotMethod.REGIONS else -h.mean, h.row, h.col))
    n_units = len(units)
    if int(top_n) > 0:
        units = units[: int(top_n)]
    for rank, unit in enumerate(units, start=1):
        unit.rank = rank
        if 0 <= unit.majority_class < len(names):
            unit.class_name = names[unit.majority_class]
    return HotspotResult(units, crs_wkt, method.value, n_units, None if threshold is None else float(threshold),
                         cell_size, names)


def _check_cancel(is_cancelled):
    if is_cancelled is not None and is_cancelled():
        raise InferenceCancelled("Hotspots cancelled by the user; nothing was written.")


def _grid(unc, cls, *, cell_size, threshold, ignore_classes, progress, is_cancelled):
    pixel_area = abs(unc.transform.a * unc.transform.e - unc.transform.b * unc.transform.d)
    n_cols = math.ceil(unc.width / cell_size)
    col_cell = np.arange(unc.width) // cell_size
    units = []
    for row in range(0, unc.height, cell_size):
        _check_cancel(is_cancelled)
        height = min(cell_size, unc.height - row)
        window = Window(0, row, unc.width, height)
        u = _read_uncertainty(unc, window)
        ok = np.isfinite(u)
        cell = np.broadcast_to(col_cell, u.shape)[ok]
        values = u[ok]
        n = np.bincount(cell, minlength=n_cols)
        total = np.bincount(cell, weights=values, minlength=n_cols)
        peak = np.full(n_cols, -np.inf)
        np.maximum.at(peak, cell, values)
        above = (np.bincount(cell, weights=values > threshold, minlength=n_cols) if threshold is not None
                 else np.full(n_cols, np.nan))
        majority = np.full(n_cols, -1)
        if cls is not None:
            c = _read_classes(cls, window, ignore_classes)[ok]
            has = c >= 0
            n_class = int(c.max()) + 1 if has.any() else 0
            counts = np.bincount(cell[has] * max(n_class, 1) + c[has], minlength=n_cols * max(n_class, 1))
            majority = _majority(counts.reshape(n_cols, max(n_class, 1))[:, :n_class])
        for j in np.flatnonzero(n):
            width = min(cell_size, unc.width - j * cell_size)
            units.append(Hotspot(
                rank=0, wkt=_cell_wkt(unc.transform, row, j * cell_size, height, width),
                mean=float(total[j] / n[j]), max=float(peak[j]), frac_above=float(above[j] / n[j]),
                n_pixels=int(n[j]), area=float(n[j] * pixel_area), unc_sum=float(total[j]),
                majority_class=int(majority[j]), class_name="", row=row, col=int(j * cell_size),
            ))
        progress((row + height) / unc.height, f"Hotspot cells: rows {row}-{row + height - 1} of {unc.height}")
    return units


def _regions(unc, cls, *, cell_size, threshold, ignore_classes, progress, is_cancelled):
    from rasterio import features
    from scipy import ndimage

    if unc.width * unc.height > MAX_REGION_PIXELS:
        raise InvalidOptionError(
            f"METHOD regions holds the whole raster in memory; {unc.width}×{unc.height} px is more than "
            f"{MAX_REGION_PIXELS:,}. Use METHOD grid (streamed), or clip the raster first."
        )
    _check_cancel(is_cancelled)
    whole = Window(0, 0, unc.width, unc.height)
    u = _read_uncertainty(unc, whole)
    mask = np.isfinite(u) & (u > threshold)
    labels, n_regions = ndimage.label(mask)  # 4-connectivity (the default structure)
    progress(0.5, f"{n_regions} regions above {threshold:g}")
    _check_cancel(is_cancelled)
    if n_regions == 0:
        return []
    index = labels[mask]
    values = u[mask]
    n = np.bincount(index, minlength=n_regions + 1)
    total = np.bincount(index, weights=values, minlength=n_regions + 1)
    peak = np.full(n_regions + 1, -np.inf)
    np.maximum.at(peak, index, values)
    majority = np.full(n_regions + 1, -1)
    if cls is not None:
        c = _read_classes(cls, whole, ignore_classes)[mask]
        has = c >= 0
        if has.any():
            n_class = int(c.max()) + 1
            counts = np.bincount(index[has] * n_class + c[has], minlength=(n_regions + 1) * n_class)
            majority = _majority(counts.reshape(n_regions + 1, n_class))
    rows, cols = np.nonzero(mask)
    first = np.full(n_regions + 1, -1)
    order = np.arange(index.size)[::-1]  # nonzero is row-major: the last write per label is its first pixel
    first[index[order]] = order
    pixel_area = abs(unc.transform.a * unc.transform.e - unc.transform.b * unc.transform.d)
    polygons = {}
    for geometry, value in features.shapes(labels.astype(np.int32), mask=mask, connectivity=4,
                                           transform=unc.transform):
        polygons.setdefault(int(value), []).append(geometry["coordinates"])
    units = []
    for r in range(1, n_regions + 1):
        parts = polygons[r]
        if len(parts) == 1:
            wkt = _polygon_wkt(parts[0])
        else:
            wkt = "MULTIPOLYGON (" + ", ".join(_polygon_wkt(p)[len("POLYGON "):] for p in parts) + ")"
        units.append(Hotspot(
            rank=0, wkt=wkt, mean=float(total[r] / n[r]), max=float(peak[r]), frac_above=1.0, n_pixels=int(n[r]),
            area=float(n[r] * pixel_area), unc_sum=float(total[r]), majority_class=int(majority[r]), class_name="",
            row=int(rows[first[r]]), col=int(cols[first[r]]),
        ))
    progress(1.0, f"{n_regions} regions")
    return units
