"""What the evaluator adds for decisions: per-class threshold sweep, abstention threshold, class names, the
uncertainty range a raster's mode implies, and the temperature fit over the labelled strips.

:class:`DecisionFigures` is one more accumulator the evaluator feeds with the same strips (``update`` /
``merge`` / ``finalize``), composed of :class:`engine.class_thresholds.ClassThresholdSweep` and, with a target
error rate, :class:`engine.abstention.RiskCoverage`. Both see exactly the pixels the calibration figures count
(valid, labelled, finite probabilities and uncertainty).
"""

import math

import numpy as np

from .abstention import RiskCoverage
from .calibration_study import checker_block_for, fit_and_compare
from .class_thresholds import ClassThresholdSweep
from .metrics import top_label

__all__ = ["DecisionFigures", "class_names_of", "range_of_mode", "calibrate_on_strips", "default_score_range"]

_CURVE_POINTS = 512


def class_names_of(src, n_classes):
    """Class names from band descriptions ``p(name)`` (written by the inference), else ``class_<i>``."""
    names = [f"class_{i}" for i in range(n_classes)]
    descriptions = list(src.descriptions or ())

    def strip(text):
        return text[2:-1] if text.startswith("p(") and text.endswith(")") else text

    if len(descriptions) == n_classes:
        for i, text in enumerate(descriptions):
            if text:
                names[i] = strip(text)
    elif len(descriptions) == 1 and n_classes == 2 and descriptions[0]:  # one band: p of the positive class
        names[1] = strip(descriptions[0])
    return names


def range_of_mode(unc):
    """Histogram range of an uncertainty raster from its UNCERTAINTY_MODE tag, or None for the default."""
    mode = unc.tags().get("UNCERTAINTY_MODE", "")
    if mode == "variance":
        return (0.0, 0.25)
    if mode in ("margin", "confidence"):
        return (0.0, 1.0)
    return None


class DecisionFigures:
    """Per-class one-vs-rest sweep, and with ``target_error`` the risk–coverage threshold."""

    def __init__(self, n_classes, *, target_error=None, score_range=(0.0, 1.0), n_bins=16384, ignore_value=255):
        self.sweep = ClassThresholdSweep(n_classes)
        self.target_error = target_error
        self.ignore_value = ignore_value
        self.risk = None if target_error is None else RiskCoverage(*score_range, n_bins=n_bins)

    def update(self, prob, reference, uncertainty, valid):
        c = prob.shape[0]
        p = prob.reshape(c, -1)
        y = reference.reshape(-1)
        keep = valid.reshape(-1) & np.isfinite(p).all(axis=0) & (y != self.ignore_value)
        if uncertainty is not None:
            keep &= np.isfinite(uncertainty.reshape(-1))
        if not keep.any():
            return
        p, y = p[:, keep].astype(np.float64), y[keep].astype(np.int64)
        self.sweep.update(p, y)
        if self.risk is not None:
            pred, conf = top_label(p)
            score = 1.0 - conf if uncertainty is None else uncertainty.reshape(-1)[keep]
            self.risk.update(score, pred != y)

    def merge(self, other):
        self.sweep.merge(other.sweep)
        if self.risk is not None:
            self.risk.merge(other.risk)
        return self

    def finalize(self, score_source=None):
        """{"class_sweep": ..., "abstention": None or the threshold dict with its thinned curve}."""
        abstention = None
        if self.risk is not None:
            abstention = dict(self.risk.finalize(self.target_error), score=score_source)
            threshold, coverage, risk = self.risk.curve()
            if coverage.size > _CURVE_POINTS:
                pick = np.unique(np.linspace(0, coverage.size - 1, _CURVE_POINTS).round().astype(int))
                threshold, coverage, risk = threshold[pick], coverage[pick], risk[pick]
            abstention["curve"] = {"threshold": threshold, "coverage": coverage, "risk": risk}
        return {"class_sweep": self.sweep.finalize(), "abstention": abstention}


def calibrate_on_strips(strips, n_classes, *, ignore_value, n_bins, shape, checker_block=None):
    """Temperature fit and before/after figures (:func:`engine.calibration_study.fit_and_compare`) over
    ``strips()``, a callable yielding (window, done, prob, reference, uncertainty, valid) as the evaluator reads
    them; pixels unusable for the other figures are left out here too."""

    def labelled_blocks():
        for window, _, prob, reference, uncertainty, valid in strips():
            usable = valid & np.isfinite(prob).all(axis=0) & (reference != ignore_value)
            if uncertainty is not None:
                usable &= np.isfinite(uncertainty)
            y = np.where(usable, reference, -1).astype(np.int64)
            yield np.where(usable[None], prob, 1.0 / n_classes), y, int(window.row_off), int(window.col_off)

    block = checker_block or checker_block_for(*shape)
    return fit_and_compare(labelled_blocks, n_classes, n_bins=n_bins, checker=block)


def default_score_range(uncertainty_range, has_uncertainty, n_classes):
    """The risk–coverage range: the given one, else [0, log C] for an uncertainty raster, [0, 1] for 1 − conf."""
    if uncertainty_range is not None:
        return tuple(uncertainty_range)
    return (0.0, math.log(n_classes)) if has_uncertainty else (0.0, 1.0)
