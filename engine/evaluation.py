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

import numpy as np
import rasterio
from rasterio import features, windows
from rasterio.errors import RasterioError

from .abstention import RiskCoverage
from .calibration_study import checker_block_for, fit_and_compare
from .class_thresholds import ClassThresholdSweep
from .errors import InferenceCancelled, InvalidOptionError, RasterInputError
from .metrics import CalibrationAccumulator, top_label

__all__ = ["evaluate_rasters", "PREVIEW_SIZE"]

PREVIEW_SIZE = 256
_TRANSFORM_TOLERANCE = 1e-6  # of a pixel


def evaluate_rasters(probabilities_path, reference_path=None, reference_shapes=None, uncertainty_path=None,
                     n_bins=15, ignore_value=255, progress=None, is_cancelled=None, *, uncertainty_range=None,
                     n_hist_bins=16384, max_strip_values=1 << 22, target_error=None, calibrate=False,
                     checker_block=None):
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
    :param calibrate: (default False) fit temperature scaling on a checkerboard half of the labelled pixels and compare
        before/after on the other half (:mod:`engine.calibration_study`; reads the rasters again once per Newton
        pass, typically 5–8 times).
    :param checker_block: side of the checkerboard blocks in pixels; default 64, less on small rasters.
    :returns: :meth:`CalibrationAccumulator.finalize` plus ``inputs`` (paths, grid), ``class_names`` (from the
        probability bands' descriptions ``p(name)``, else ``class_<i>``), ``class_sweep`` (one-vs-rest threshold
        sensitivity, :mod:`engine.class_thresholds`), ``abstention`` (with ``target_error``; the risk–coverage
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
    with _open(probabilities_path, "probability raster") as src:
        bands = src.count
        if any(np.dtype(d).kind != "f" for d in src.dtypes):
            raise RasterInputError(
                f"probability raster {probabilities_path}: expected float bands of probabilities in [0, 1]; got "
                f"{', '.join(sorted(set(src.dtypes)))}. Use the mean-probability output of the inference."
            )
        n_classes = max(bands, 2)
        shapes = None if reference_shapes is None else _prepare_shapes(reference_shapes, n_classes, ignore_value)
        class_names = _class_names(src, n_classes)
        preview = _Preview(src.height, src.width)
        sweep = ClassThresholdSweep(n_classes)
        with _open_on_grid(reference_path, "reference raster", src, probabilities_path) as ref, \
                _open_on_grid(uncertainty_path, "uncertainty raster", src, probabilities_path) as unc:
            if uncertainty_range is None and unc is not None:
                uncertainty_range = _mode_range(unc, n_classes)
            acc = CalibrationAccumulator(n_classes, n_bins=n_bins, n_hist_bins=n_hist_bins,
                                         uncertainty_range=uncertainty_range, ignore_value=ignore_value)
            risk = None
            if target_error is not None:
                lo, hi = uncertainty_range or ((0.0, 1.0) if unc is None else (0.0, math.log(n_classes)))
                risk = RiskCoverage(lo, hi, n_bins=n_hist_bins)

            def strips():
                for window, done in _strips(src, max_strip_values):
                    if is_cancelled is not None and is_cancelled():
                        raise InferenceCancelled(
                            f"Evaluation cancelled at row {window.row_off} of {src.height}; no report was written."
                        )
                    prob, valid = _read_probabilities(src, window, bands)
                    if ref is not None:
                        reference = _read_reference(ref, window, ignore_value)
                    else:
                        reference = _burn(shapes, window, src.transform, ignore_value)
                    uncertainty = None
                    if unc is not None:
                        uncertainty = unc.read(1, window=window).astype(np.float64)
                        uncertainty[unc.read_masks(1, window=window) == 0] = np.nan
                    yield window, done, prob, reference, uncertainty, valid

            for window, done, prob, reference, uncertainty, valid in strips():
                label = f"rows {window.row_off}-{window.row_off + window.height - 1}"
                acc.update(prob, reference, uncertainty, valid, block=label)
                preview.add(window.row_off, prob, reference, uncertainty, valid, ignore_value)
                _add_decisions(prob, reference, uncertainty, valid, ignore_value=ignore_value, sweep=sweep, risk=risk)
                if progress is not None:
                    progress(done / src.height, f"Evaluated rows {window.row_off}-"
                             f"{window.row_off + window.height - 1} of {src.height}")
            calibration = None
            if calibrate:

                def labelled_blocks():
                    for window, _, prob, reference, uncertainty, valid in strips():
                        usable = valid & np.isfinite(prob).all(axis=0) & (reference != ignore_value)
                        if uncertainty is not None:
                            usable &= np.isfinite(uncertainty)  # the pixels the other figures count
                        y = np.where(usable, reference, -1).astype(np.int64)
                        yield np.where(usable[None], prob, 1.0 / n_classes), y, int(window.row_off), 0

                block = checker_block or checker_block_for(src.height, src.width)
                calibration = fit_and_compare(labelled_blocks, n_classes, n_bins=n_bins, checker=block)
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
    results["class_sweep"] = sweep.finalize()
    results["abstention"] = None if risk is None else dict(risk.finalize(target_error),
                                                           score=acc.uncertainty_source)
    if risk is not None:
        threshold, coverage, curve_risk = risk.curve()
        results["abstention"]["curve"] = _thin_curve(threshold, coverage, curve_risk)
    results["calibration"] = calibration
    results["preview"] = preview.finalize()
    return results


def _thin_curve(threshold, coverage, risk, points=512):
    if coverage.size > points:
        pick = np.unique(np.linspace(0, coverage.size - 1, points).round().astype(int))
        threshold, coverage, risk = threshold[pick], coverage[pick], risk[pick]
    return {"threshold": threshold, "coverage": coverage, "risk": risk}


def _add_decisions(prob, reference, uncertainty, valid, *, ignore_value, sweep, risk):
    """Feed the per-class threshold sweep and the risk–coverage accumulator with the evaluated pixels."""
    c = prob.shape[0]
    p = prob.reshape(c, -1)
    y = reference.reshape(-1)
    keep = valid.reshape(-1) & np.isfinite(p).all(axis=0) & (y != ignore_value)
    if uncertainty is not None:
        keep &= np.isfinite(uncertainty.reshape(-1))
    if not keep.any():
        return
    p, y = p[:, keep].astype(np.float64), y[keep].astype(np.int64)
    sweep.update(p, y)
    if risk is not None:
        pred, conf = top_label(p)
        score = 1.0 - conf if uncertainty is None else uncertainty.reshape(-1)[keep]
        risk.update(score, pred != y)


def _class_names(src, n_classes):
    """Class names from band descriptions ``p(name)`` (written by the inference), else ``class_<i>``."""
    names = [f"class_{i}" for i in range(n_classes)]
    descriptions = list(src.descriptions or ())
    if len(descriptions) == n_classes:
        for i, text in enumerate(descriptions):
            if text and text.startswith("p(") and text.endswith(")"):
                names[i] = text[2:-1]
            elif text:
                names[i] = text
    elif len(descriptions) == 1 and n_classes == 2 and descriptions[0]:  # one band: p of the positive class
        names[1] = descriptions[0][2:-1] if descriptions[0].startswith("p(") else descriptions[0]
    return names


def _mode_range(unc, n_classes):
    """Histogram range of an uncertainty raster from its UNCERTAINTY_MODE tag (written by the inference)."""
    mode = unc.tags().get("UNCERTAINTY_MODE", "")
    if mode == "variance":
        return (0.0, 0.25)
    if mode in ("margin", "confidence"):
        return (0.0, 1.0)
    return None


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


class _NoDataset:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _open(path, what):
    try:
        return rasterio.open(path)
    except (RasterioError, OSError) as e:
        raise RasterInputError(f"{what} {path}: cannot be opened ({e}). Check the path and that it is a raster.") \
            from e


def _open_on_grid(path, what, src, src_path):
    if path is None:
        return _NoDataset()
    other = _open(path, what)
    if not _same_grid(src, other):
        other.close()
        raise RasterInputError(
            f"{what} {path} is not on the probability raster's grid: probability raster {src_path}: "
            f"{_describe_grid(src)}; {what}: {_describe_grid(other)}. Resample it onto the probability grid "
            "(e.g. gdalwarp with -te/-tr/-t_srs of the probability raster, or QGIS Align Rasters)."
        )
    return other


def _same_grid(a, b):
    if (a.width, a.height) != (b.width, b.height) or a.crs != b.crs:
        return False
    pixel = max(abs(a.transform.a), abs(a.transform.e), abs(a.transform.b), abs(a.transform.d))
    return all(abs(x - y) <= _TRANSFORM_TOLERANCE * pixel for x, y in zip(a.transform[:6], b.transform[:6]))


def _describe_grid(ds):
    t = ds.transform
    crs = ds.crs.to_string() if ds.crs else "no CRS"
    return f"{ds.width}×{ds.height} px, origin ({t.c:.6g}, {t.f:.6g}), pixel ({t.a:.6g}, {t.e:.6g}), {crs}"


def _strips(src, max_values):
    """Yield (window, last row + 1): full-width strips of whole block rows."""
    block_rows = src.block_shapes[0][0] if src.block_shapes else 1
    per_block_row = max(1, block_rows * src.width * src.count)
    rows = block_rows * max(1, max_values // per_block_row)
    for row in range(0, src.height, rows):
        height = min(rows, src.height - row)
        yield windows.Window(0, row, src.width, height), row + height


def _read_probabilities(src, window, bands):
    prob = src.read(window=window)
    valid = (src.read_masks(window=window) != 0).all(axis=0)
    if bands == 1:
        prob = np.concatenate([1.0 - prob, prob], axis=0)
    return prob, valid


def _read_reference(ref, window, ignore_value):
    data = ref.read(1, window=window)
    missing = ref.read_masks(1, window=window) == 0
    if data.dtype.kind == "f":
        data = data.astype(np.float64)
        missing |= ~np.isfinite(data)
    else:
        data = data.astype(np.int64)
    data[missing] = ignore_value
    return data


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
