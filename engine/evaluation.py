"""Evaluate a mean-probability raster against reference masks, strip by strip, in bounded memory.

:func:`evaluate_rasters` reads the probability GeoTIFF in strips of whole block rows (rasterio windows), reads the
reference raster on the same window, or burns reference polygons onto it, and feeds a
:class:`~engine.metrics.CalibrationAccumulator`. Memory holds one strip (at most ``max_strip_values`` values of
the probability raster) plus constant-size statistics and a preview of at most 256 px on the long side.

Inputs on one grid: the reference and uncertainty rasters must have the probability raster's width, height,
transform (within 1e-6 of a pixel) and CRS; nothing is resampled. Left out of every figure: pixels where a
probability band is NaN or masked (NoData, internal mask), where the uncertainty is NaN or masked, and pixels
whose reference is ``ignore_value``, the reference raster's NoData, or (for polygons) not covered by any polygon.
A single-band probability raster is read as p(class 1) of a binary model: p = [1 - band, band].
"""

import math
from typing import Callable, Iterable, Optional, Tuple

import numpy as np
from rasterio import features, windows
from rasterio.errors import RasterioError

from .errors import InvalidOptionError, RasterInputError
from .evaluation_decisions import (
    DecisionFigures,
    calibrate_on_strips,
    class_names_of,
    default_score_range,
    range_of_mode,
)
from .hooks import FRACTION, RunHooks
from .metrics import CalibrationAccumulator, top_label
from .raster_io import block_row_strips, open_on_grid, open_raster, read_class_ids, read_masked

__all__ = ["evaluate_rasters", "PREVIEW_SIZE"]

PREVIEW_SIZE = 256
_strips = block_row_strips  # the name tests and older callers use


# 8 positional parameters: the public signature other code calls positionally; new options are keyword-only.
def evaluate_rasters(  # noqa: PLR0917
    probabilities_path: str,
    reference_path: Optional[str] = None,
    reference_shapes: Optional[Iterable] = None,
    uncertainty_path: Optional[str] = None,
    n_bins: int = 15,
    ignore_value: int = 255,
    progress: Optional[Callable[[float, str], None]] = None,
    is_cancelled: Optional[Callable[[], bool]] = None,
    *,
    uncertainty_range: Optional[Tuple[float, float]] = None,
    n_hist_bins: int = 16384,
    max_strip_values: int = 1 << 22,
    target_error: Optional[float] = None,
    calibrate: bool = False,
    checker_block: Optional[int] = None,
) -> dict:
    """Stream every valid pixel of ``probabilities_path`` through the metrics; return their dict.

    :param probabilities_path: GeoTIFF of C float bands of mean probabilities (one band = binary p(class 1)).
    :param reference_path: raster of class ids on the same grid (band 1). Exactly one of this and
        ``reference_shapes``.
    :param reference_shapes: iterable of (GeoJSON geometry dict or object with ``__geo_interface__``, class id)
        in the probability raster's CRS, burnt per strip with ``rasterio.features.rasterize``
        (``all_touched=False``: a pixel belongs to a polygon when its centre does; later shapes win where they
        overlap); uncovered pixels are ``ignore_value``.
    :param uncertainty_path: uncertainty raster on the same grid (band 1, higher = less certain), or None to
        score pixels with 1 - confidence.
    :param n_bins: reliability bins M of the ECE.
    :param ignore_value: reference id left out (default 255).
    :param progress: ``progress(fraction, message)`` after each strip, fraction in [0, 1].
    :param is_cancelled: ``is_cancelled() -> bool`` checked before each strip.
    :param uncertainty_range: (lo, hi) of the uncertainty histogram; default (0, log C), or (0, 1) for 1 - conf.
    :param n_hist_bins: fine histogram bins K (AUROC, AURC, quantiles).
    :param max_strip_values: upper bound of C × rows × width read at once (at least one block row is read).
    :param target_error: error rate ε for the abstention threshold (:mod:`engine.abstention`), or None.
    :param calibrate: (default False) fit temperature scaling on a checkerboard half of the labelled pixels and
        compare before/after on the other half (:mod:`engine.calibration_study`; reads the rasters again once
        per Newton pass, typically 5–8 times).
    :param checker_block: side of the checkerboard blocks in pixels; default 64, less on small rasters.
    :returns: :meth:`CalibrationAccumulator.finalize` plus ``inputs`` (paths, grid), ``class_names`` (from the
        probability bands' descriptions ``p(name)``, else ``class_<i>``), ``class_sweep`` (one-vs-rest threshold
        sensitivity, :mod:`engine.class_thresholds`), ``abstention`` (with ``target_error``: the risk–coverage
        threshold), ``calibration`` (with ``calibrate``) and ``preview``
        (``factor``, ``uncertainty``: mean score per preview cell over valid pixels, ``wrong``: fraction of
        evaluated pixels that are wrong, both float32 with NaN where empty).
    :raises RasterInputError: unreadable inputs, grids that differ, invalid probabilities or class ids.
    :raises InvalidOptionError: both or neither reference given, bad options.
    :raises InferenceCancelled: ``is_cancelled()`` returned True.
    """
    if (reference_path is None) == (reference_shapes is None):
        raise InvalidOptionError(
            "reference: expected exactly one of reference_path (a raster) and reference_shapes (polygons); "
            f"got {'both' if reference_path is not None else 'neither'}."
        )
    if isinstance(ignore_value, bool) or not isinstance(ignore_value, (int, np.integer)):
        raise InvalidOptionError(f"ignore_value: expected an integer class id; got {ignore_value!r}.")
    if isinstance(max_strip_values, bool) or not isinstance(max_strip_values, int) or max_strip_values < 1:
        raise InvalidOptionError(f"max_strip_values: expected a positive integer; got {max_strip_values!r}.")
    ignore_value = int(ignore_value)
    hooks = RunHooks(progress, is_cancelled, unit=FRACTION)
    with open_raster(probabilities_path, "probability raster") as src:
        bands = src.count
        if any(np.dtype(d).kind != "f" for d in src.dtypes):
            raise RasterInputError(
                f"probability raster {probabilities_path}: expected float bands of probabilities in [0, 1]; got "
                f"{', '.join(sorted(set(src.dtypes)))}. Use the mean-probability output of the inference."
            )
        n_classes = max(bands, 2)
        shapes = None if reference_shapes is None else _prepare_shapes(reference_shapes, n_classes, ignore_value)
        preview = _Preview(src.height, src.width)
        with open_on_grid(reference_path, "reference raster", src, probabilities_path) as ref, \
                open_on_grid(uncertainty_path, "uncertainty raster", src, probabilities_path) as unc:
            if uncertainty_range is None and unc is not None:
                uncertainty_range = range_of_mode(unc)  # margin, confidence, variance: their own ranges
            acc = CalibrationAccumulator(n_classes, n_bins=n_bins, n_hist_bins=n_hist_bins,
                                         uncertainty_range=uncertainty_range, ignore_value=ignore_value)
            decisions = DecisionFigures(
                n_classes, target_error=target_error, n_bins=n_hist_bins, ignore_value=ignore_value,
                score_range=default_score_range(uncertainty_range, unc is not None, n_classes),
            )

            def strips():
                for window, done in block_row_strips(src, max_strip_values):
                    hooks.check_cancel(
                        f"Evaluation cancelled at row {window.row_off} of {src.height}; no report was written."
                    )
                    prob, valid = read_masked(src, window)
                    if bands == 1:
                        prob = np.concatenate([1.0 - prob, prob], axis=0)
                    if ref is not None:
                        reference = read_class_ids(ref, window, ignore_value)
                    else:
                        reference = _burn(shapes, window, src.transform, ignore_value)
                    uncertainty = None
                    if unc is not None:
                        uncertainty, unc_valid = read_masked(unc, window, 1)
                        uncertainty = uncertainty.astype(np.float64)
                        uncertainty[~unc_valid] = np.nan
                    yield window, done, prob, reference, uncertainty, valid

            for window, done, prob, reference, uncertainty, valid in strips():
                label = f"rows {window.row_off}-{window.row_off + window.height - 1}"
                acc.update(prob, reference, uncertainty, valid, block=label)
                preview.add(window.row_off, prob, reference, uncertainty, valid, ignore_value)
                decisions.update(prob, reference, uncertainty, valid)
                hooks.advance(done, src.height, f"Evaluated {label} of {src.height}")
            calibration = None
            if calibrate:
                calibration = calibrate_on_strips(strips, n_classes, ignore_value=ignore_value, n_bins=n_bins,
                                                  shape=(src.height, src.width), checker_block=checker_block)
        class_names = class_names_of(src, n_classes)
        inputs = {
            "probabilities": str(probabilities_path),
            "reference": str(reference_path) if reference_path is not None else f"{len(shapes)} shapes",
            "uncertainty": None if uncertainty_path is None else str(uncertainty_path),
            "width": src.width,
            "height": src.height,
            "transform": list(src.transform)[:6],
            "crs": src.crs.to_string() if src.crs else None,
            "ignore_value": ignore_value,
            "probability_bands": bands,
        }
    results = acc.finalize()
    results["inputs"] = inputs
    results["class_names"] = class_names
    results.update(decisions.finalize(acc.uncertainty_source))
    results["calibration"] = calibration
    results["preview"] = preview.finalize()
    return results


class _Preview:
    """Block means of the score and of the wrong mask on a grid ≤ PREVIEW_SIZE px on its long side."""

    def __init__(self, height, width):
        self.factor = max(1, math.ceil(max(height, width) / PREVIEW_SIZE))
        self.shape = (math.ceil(height / self.factor), math.ceil(width / self.factor))
        size = self.shape[0] * self.shape[1]
        self.score_sum = np.zeros(size)
        self.score_count = np.zeros(size)
        self.wrong_sum = np.zeros(size)
        self.wrong_count = np.zeros(size)

    def add(self, row_off, prob, reference, uncertainty, valid, ignore_value):
        c, rows, cols = prob.shape
        f = self.factor
        cell = (((row_off + np.arange(rows)) // f) * self.shape[1])[:, None] + (np.arange(cols) // f)[None, :]
        cell = cell.ravel()
        pred, conf = top_label(prob.reshape(c, -1))  # conf is NaN where any band is
        score = 1.0 - conf if uncertainty is None else uncertainty.ravel()
        ok = valid.ravel() & np.isfinite(conf) & np.isfinite(score)
        labelled = ok & (reference.ravel() != ignore_value)
        size = self.score_sum.size
        self.score_sum += np.bincount(cell, weights=np.where(ok, score, 0.0), minlength=size)
        self.score_count += np.bincount(cell, weights=ok, minlength=size)
        self.wrong_sum += np.bincount(cell, weights=labelled & (pred != reference.ravel()), minlength=size)
        self.wrong_count += np.bincount(cell, weights=labelled, minlength=size)

    def finalize(self):
        with np.errstate(invalid="ignore", divide="ignore"):
            score = (self.score_sum / self.score_count).reshape(self.shape).astype(np.float32)
            wrong = (self.wrong_sum / self.wrong_count).reshape(self.shape).astype(np.float32)
        return {"factor": self.factor, "shape": self.shape, "uncertainty": score, "wrong": wrong}


def _prepare_shapes(reference_shapes, n_classes, ignore_value):
    prepared = []
    for i, item in enumerate(reference_shapes):
        try:
            geometry, value = item
        except (TypeError, ValueError) as e:
            raise InvalidOptionError(
                f"reference_shapes[{i}]: expected a (geometry, class id) pair; got {item!r}."
            ) from e
        geometry = getattr(geometry, "__geo_interface__", geometry)
        if not isinstance(geometry, dict) or "type" not in geometry:
            raise InvalidOptionError(f"reference_shapes[{i}]: expected a GeoJSON geometry dict; got {geometry!r}.")
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise InvalidOptionError(f"reference_shapes[{i}]: expected an integer class id; got {value!r}.")
        if not (0 <= value < n_classes or value == ignore_value):
            raise RasterInputError(
                f"reference_shapes[{i}]: class id {value} is outside [0, {n_classes - 1}] and is not the ignore "
                f"value {ignore_value}. Fix the class field of the polygons."
            )
        prepared.append((geometry, int(value), _geometry_bounds(geometry, i)))
    return prepared


def _geometry_bounds(geometry, index):
    xs, ys = [], []

    def walk(node):
        if isinstance(node, dict):
            for child in node.get("geometries", ()):
                walk(child)
            if "coordinates" in node:
                walk(node["coordinates"])
        elif len(node) and isinstance(node[0], (int, float, np.number)):
            xs.append(float(node[0]))
            ys.append(float(node[1]))
        else:
            for child in node:
                walk(child)

    try:
        walk(geometry)
    except (TypeError, IndexError, KeyError) as e:
        raise InvalidOptionError(f"reference_shapes[{index}]: malformed GeoJSON coordinates.") from e
    if not xs:
        return None
    return min(xs), min(ys), max(xs), max(ys)


def _burn(shapes, window, transform, ignore_value):
    left, bottom, right, top = windows.bounds(window, transform)
    lo_x, hi_x = min(left, right), max(left, right)
    lo_y, hi_y = min(bottom, top), max(bottom, top)
    chosen = [(g, v) for g, v, b in shapes
              if b is not None and b[0] <= hi_x and b[2] >= lo_x and b[1] <= hi_y and b[3] >= lo_y]
    out_shape = (int(window.height), int(window.width))
    if not chosen:
        return np.full(out_shape, ignore_value, dtype=np.int64)
    try:
        burnt = features.rasterize(chosen, out_shape=out_shape, transform=windows.transform(window, transform),
                                   fill=ignore_value, all_touched=False, dtype="int32")
    except (ValueError, RasterioError) as e:
        raise RasterInputError(f"reference_shapes: cannot rasterise the polygons ({e}).") from e
    return burnt.astype(np.int64)
