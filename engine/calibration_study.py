"""Fit temperature scaling on half of the labelled pixels, and compare before/after on the other half.

The split is a spatial checkerboard of square blocks (:func:`engine.temperature.checkerboard`): T is fitted on
the "black" blocks (streamed Newton, :func:`engine.temperature.fit_temperature`), and ECE, MCE, NLL, Brier and the
reliability diagram are computed on the "white" blocks before (p̄) and after (softmax(log p̄ / T)) — figures on
pixels the fit never saw. The figures come from :class:`engine.metrics.CalibrationAccumulator`, so they follow
the same conventions as the rest of the report.

Input is a zero-argument callable ``blocks()`` returning a fresh iterable of
``(prob (C, h, w), reference (h, w), row_off, col_off)``: mean probabilities and class ids of a window at
(row_off, col_off) of the raster, with every pixel not to be used (NoData, ignored, unlabelled) given the
reference -1. It is called once per Newton pass and once more for the figures.
"""

import numpy as np

from .metrics import CalibrationAccumulator
from .temperature import CHECKERBOARD_BLOCK, apply_temperature, checkerboard, fit_temperature, log_probabilities

__all__ = ["fit_and_compare", "checker_block_for"]

_FIGURES = ("ece", "mce", "nll", "brier", "accuracy", "n_pixels")


def checker_block_for(height, width, preferred=CHECKERBOARD_BLOCK):
    """Checkerboard block side: ``preferred`` pixels, smaller on small rasters (at least 4 blocks a side)."""
    return int(max(1, min(preferred, min(height, width) // 4)))


def _pixels(prob, reference, keep):
    c = prob.shape[0]
    p = prob.reshape(c, -1)[:, keep.reshape(-1)]
    return p, reference.reshape(-1)[keep.reshape(-1)]


def fit_and_compare(blocks, n_classes, *, n_bins=15, checker=CHECKERBOARD_BLOCK):
    """Fit T on the checkerboard's fitting blocks; figures before/after on the held-out blocks.

    :returns: dict with the keys of :meth:`engine.temperature.TemperatureFit.as_dict`, ``checker_block``,
        ``held_out_pixels`` and ``before`` / ``after`` (each: ece, mce, nll, brier, accuracy, n_pixels,
        reliability), or ``before`` / ``after`` None when no labelled pixel is held out.
    """

    def fitting():
        for prob, reference, row, col in blocks():
            keep = (reference >= 0) & checkerboard(row, col, *reference.shape, block=checker)
            if keep.any():
                p, y = _pixels(prob, reference, keep)
                yield log_probabilities(p).T, y.astype(np.int64)

    fit = fit_temperature(fitting)
    before = CalibrationAccumulator(n_classes, n_bins=n_bins, ignore_value=None)
    after = CalibrationAccumulator(n_classes, n_bins=n_bins, ignore_value=None)
    held_out = 0
    for prob, reference, row, col in blocks():
        keep = (reference >= 0) & ~checkerboard(row, col, *reference.shape, block=checker)
        if not keep.any():
            continue
        p, y = _pixels(prob, reference, keep)
        held_out += y.size
        before.update(p[:, None, :], y[None, :])
        after.update(apply_temperature(p, fit.temperature)[:, None, :], y[None, :])
    result = dict(fit.as_dict(), checker_block=int(checker), held_out_pixels=held_out, before=None, after=None)
    if held_out:
        for key, acc in (("before", before), ("after", after)):
            figures = acc.finalize()
            result[key] = {name: figures[name] for name in _FIGURES}
            result[key]["reliability"] = figures["reliability"]
    return result
