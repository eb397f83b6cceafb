"""Streaming calibration, error-detection and segmentation metrics in constant memory.

:class:`CalibrationAccumulator` takes a raster block by block (``update``) and keeps only sufficient statistics
whose size does not depend on the raster: per-bin sums for the reliability diagram, a confusion matrix, fine
histograms of confidence and uncertainty, and threshold counts. ``finalize()`` turns them into figures. Two
accumulators fed disjoint blocks can be merged (``merge``), so a raster may be split across workers.

Notation: block pixel i with mean probabilities :math:`p_{i,c}` (c = 0 … C-1) and reference class :math:`y_i`.

.. math::

    \\mathrm{conf}_i = \\max_c p_{i,c}, \\quad \\hat y_i = \\arg\\max_c p_{i,c}, \\quad
    \\mathrm{correct}_i = [\\hat y_i = y_i]

Binary models (C = 2) use the same top-label confidence :math:`\\max(p, 1 - p)`, not the positive-class one.

Exact figures (sums in float64, counts in int64; independent of block size up to float rounding):

- ECE (Guo et al. 2017) with M equal-width bins :math:`B_m = [m/M, (m+1)/M)` (edges ``np.arange(M + 1) / M``),
  conf = 1 in the last bin:
  :math:`\\mathrm{ECE} = \\sum_m \\frac{|B_m|}{n} |\\mathrm{acc}(B_m) - \\mathrm{conf}(B_m)|`;
  MCE = the largest :math:`|\\mathrm{acc} - \\mathrm{conf}|` over non-empty bins.
- Brier (multi-class, range [0, 2]): :math:`\\frac1N \\sum_i \\sum_c (p_{i,c} - [y_i = c])^2` (key ``brier``);
  for C = 2 also the binary form :math:`\\frac1N \\sum_i (p_{i,1} - y_i)^2` = half of it (key ``brier_binary``,
  what ``sklearn.metrics.brier_score_loss`` reports).
- NLL: :math:`\\frac1N \\sum_i -\\log \\max(p_{i,y_i}, \\varepsilon)` with :math:`\\varepsilon` = ``NLL_EPS`` =
  float64 machine epsilon, the clip ``sklearn.metrics.log_loss(eps="auto")`` applies to float64 input
  (sklearn also renormalises rows; we do not, the sum check keeps rows within 1e-3 of 1).
- Confusion matrix (rows reference, columns prediction, as sklearn), per-class
  Dice :math:`2TP/(2TP+FP+FN)`, IoU :math:`TP/(TP+FP+FN)`, precision :math:`TP/(TP+FP)`,
  recall :math:`TP/(TP+FN)` (NaN where the denominator is 0); ``mean_dice``/``mean_iou`` average over the
  classes present in the reference (support > 0); accuracy = trace / N.
- Binary threshold sweep: foreground where :math:`p_{i,1} > t` for t = 0.1 … 0.9 (t = 0.5 is the argmax map);
  Dice, precision, recall, IoU of class 1; ``best_threshold`` = the first t of largest Dice.

Histogram figures (K fine bins, ``n_hist_bins``):

- AUROC of the uncertainty score u (higher = more likely wrong) as a detector of wrong pixels:
  :math:`P(u_\\mathrm{wrong} > u_\\mathrm{correct}) + \\frac12 P(=)`, pairs in the same bin counting ½.
  u is the uncertainty raster, or 1 - conf when there is none; its bins span ``uncertainty_range``
  (default [0, log C] for a raster, [0, 1] for 1 - conf), values outside go to the end bins and are counted.
- AURC (Geifman et al. 2019): pixels sorted by confidence, most confident first, risk(k) = errors among the
  first k / k, :math:`\\mathrm{AURC} = \\frac1N \\sum_{k=1}^N \\mathrm{risk}(k)`; within a confidence bin errors
  are spread evenly (the expectation over tie orders), which the harmonic numbers give in closed form.
  E-AURC = AURC - AURC of a perfect ranking with the same errors.
- Uncertainty statistics (all, correct, wrong, predicted foreground = class != 0, background): count, mean,
  std, min, max exact; quantiles p5, p25, median, p75, p95 interpolated in the histogram: within one bin width
  (``uncertainty_bin_width``) of the empirical quantile, the smallest value u with F(u) ≥ q.

Example: four pixels, p_1 = 0.1, 0.8, 0.4, 0.7 against y = 0, 1, 1, 1; conf = 0.9, 0.8, 0.6, 0.7 and the third is
wrong. With M = 5, bin [0.6, 0.8) holds conf 0.6, 0.7 (acc 0.5) and [0.8, 1] holds 0.8, 0.9 (acc 1), so
ECE = ½·0.15 + ½·0.15; Brier = (0.01 + 0.04 + 0.36 + 0.09)·2 / 4.

>>> acc = CalibrationAccumulator(2, n_bins=5)
>>> acc.update(np.array([[[0.9, 0.2, 0.6, 0.3]], [[0.1, 0.8, 0.4, 0.7]]]), np.array([[0, 1, 1, 1]]))
>>> res = acc.finalize()
>>> [round(res[key], 4) for key in ("accuracy", "ece", "mce", "brier", "brier_binary", "nll")]
[0.75, 0.15, 0.15, 0.25, 0.125, 0.4004]
"""

import math

import numpy as np

from .accumulators import (
    NLL_EPS,
    ConfidenceHistogram,
    Confusion,
    Pixels,
    ProperScores,
    ReliabilityBins,
    ThresholdCounts,
    UncertaintyHistogram,
    _row_sum,
    top_label,
)
from .errors import InvalidOptionError, RasterInputError

__all__ = [
    "CalibrationAccumulator",
    "top_label",
    "NLL_EPS",
    "DEFAULT_THRESHOLDS",
    "PROBABILITY_TOLERANCE",
    "SUM_TOLERANCE",
]

DEFAULT_THRESHOLDS = tuple(np.arange(1, 10) / 10.0)
PROBABILITY_TOLERANCE = 1e-6
SUM_TOLERANCE = 1e-3


class CalibrationAccumulator:
    """Accumulate metrics of mean probabilities against a reference, block by block (see module docstring).

    :param n_classes: C ≥ 2, the number of probability bands.
    :param n_bins: M, equal-width reliability bins (default 15, as Guo et al.).
    :param n_hist_bins: K, fine bins of the confidence and uncertainty histograms (AUROC, AURC, quantiles).
    :param uncertainty_range: (lo, hi) spanned by the uncertainty bins; None = (0, log C) when ``update`` gets an
        uncertainty block, (0, 1) when it scores with 1 - conf. Fixed by the first block.
    :param ignore_value: reference value left out (counted in ``n_ignored``); None ignores nothing.
    :param thresholds: thresholds t of the binary sweep (foreground where p_1 > t).
    """

    def __init__(self, n_classes, n_bins=15, n_hist_bins=16384, uncertainty_range=None, ignore_value=255,
                 thresholds=DEFAULT_THRESHOLDS):
        self.n_classes = _check_int(n_classes, "n_classes", 2)
        self.n_bins = _check_int(n_bins, "n_bins", 1)
        self.n_hist_bins = _check_int(n_hist_bins, "n_hist_bins", 16)
        self.ignore_value = None if ignore_value is None else _check_int(ignore_value, "ignore_value", None)
        self.thresholds = np.asarray(sorted(float(t) for t in thresholds), dtype=np.float64)
        if self.thresholds.size and (self.thresholds.min() < 0.0 or self.thresholds.max() > 1.0):
            raise InvalidOptionError(f"thresholds: expected values in [0, 1]; got {list(self.thresholds)}.")
        self.uncertainty_range = None if uncertainty_range is None else _check_range(uncertainty_range)
        self.uncertainty_source = None
        c, m, k = self.n_classes, self.n_bins, self.n_hist_bins
        self.n_pixels = 0
        self.n_ignored = 0
        self.n_invalid = 0
        self.n_updates = 0
        self.reliability = ReliabilityBins(m)
        self.scores = ProperScores(c)
        self.confusion = Confusion(c)
        self.thresholds_counts = ThresholdCounts(c, self.thresholds)
        self.confidence = ConfidenceHistogram(k)
        self.uncertainty = UncertaintyHistogram(k)
        self._parts = (self.reliability, self.scores, self.confusion, self.thresholds_counts, self.confidence,
                       self.uncertainty)

    # ------------------------------------------------------------------ accumulate
    def update(self, prob, reference, uncertainty=None, valid=None, block=None):
        """Add one block.

        :param prob: float (C, h, w) mean probabilities; a pixel with any NaN band is invalid.
        :param reference: int (h, w) class ids in [0, C); ``ignore_value`` pixels are left out.
        :param uncertainty: float (h, w), higher = less certain, or None to score with 1 - conf; NaN = invalid.
            Every block must agree on whether it gives one.
        :param valid: bool (h, w), False leaves the pixel out; None = all valid.
        :param block: words naming the block in error messages (default "block <n>").
        :raises RasterInputError: probabilities outside [0, 1] (beyond 1e-6), bands not summing to 1 (within
            1e-3), reference ids outside [0, C), or shapes that disagree.
        """
        name = block if block is not None else f"block {self.n_updates}"
        prob = np.asarray(prob)
        reference = np.asarray(reference)
        c = self.n_classes
        if prob.ndim != 3 or prob.shape[0] != c:
            raise RasterInputError(f"{name}: prob must have shape (C={c}, h, w); got {prob.shape}.")
        if reference.shape != prob.shape[1:]:
            raise RasterInputError(f"{name}: reference must have shape {prob.shape[1:]}; got {reference.shape}.")
        p = prob.reshape(c, -1)
        keep = np.isfinite(p).all(axis=0)
        if valid is not None:
            keep &= _same_shape(valid, prob.shape[1:], "valid", name).reshape(-1).astype(bool)
        source = "1 - confidence" if uncertainty is None else "raster"
        if self.uncertainty_source is None:
            self.uncertainty_source = source
            if self.uncertainty_range is None:
                self.uncertainty_range = (0.0, 1.0) if uncertainty is None else (0.0, math.log(c))
        elif source != self.uncertainty_source:
            raise RasterInputError(
                f"{name}: uncertainty given as {source!r} but earlier blocks used {self.uncertainty_source!r}; "
                "pass an uncertainty block with every block or with none."
            )
        if uncertainty is not None:
            u = _same_shape(uncertainty, prob.shape[1:], "uncertainty", name).reshape(-1)
            keep &= np.isfinite(u)
        y = reference.reshape(-1)
        if y.dtype.kind == "f":
            keep &= np.isfinite(y)
        n_invalid = int(keep.size - np.count_nonzero(keep))
        n_ignored = 0
        if self.ignore_value is not None:
            ignored = keep & (y == self.ignore_value)
            n_ignored = int(np.count_nonzero(ignored))
            keep &= ~ignored
        everything = bool(keep.all())
        p = (p if everything else np.compress(keep, p, axis=1)).astype(np.float64)
        y = y if everything else y[keep]
        if y.size:
            self._check_block(p, y, name)  # raises before any statistic changes
        self.n_invalid += n_invalid
        self.n_ignored += n_ignored
        self.n_updates += 1
        if not y.size:
            return
        y = y.astype(np.int64)
        if uncertainty is not None:
            u = (u if everything else u[keep]).astype(np.float64)
        self._accumulate(p, y, u if uncertainty is not None else None)

    def _check_block(self, p, y, name):
        if p.min() < -PROBABILITY_TOLERANCE or p.max() > 1.0 + PROBABILITY_TOLERANCE:
            bad = ((p < -PROBABILITY_TOLERANCE) | (p > 1.0 + PROBABILITY_TOLERANCE)).any(axis=0)
            raise RasterInputError(
                f"{name}: {int(bad.sum())} of {bad.size} valid pixels have probabilities outside [0, 1] "
                f"(min {p.min():.6g}, max {p.max():.6g}). Expected mean softmax/sigmoid probabilities; apply "
                "softmax to logits first, or mark NoData pixels as NaN."
            )
        sums = _row_sum(p)
        off = np.abs(sums - 1.0) > SUM_TOLERANCE
        if off.any():
            sums = sums[off]
            raise RasterInputError(
                f"{name}: {int(off.sum())} of {off.size} valid pixels have bands summing to "
                f"{sums.min():.6g}…{sums.max():.6g}, not 1 (±{SUM_TOLERANCE}). Expected one band per class "
                f"({self.n_classes}) holding probabilities; pass the mean-probability raster, all classes."
            )
        if y.dtype.kind == "f" and np.any(y != np.round(y)):
            raise RasterInputError(f"{name}: reference holds non-integer values; expected class ids.")
        wrong_id = (y < 0) | (y >= self.n_classes)
        if wrong_id.any():
            found = np.unique(y[wrong_id])[:10]
            raise RasterInputError(
                f"{name}: {int(wrong_id.sum())} reference pixels have class ids {found.tolist()} outside "
                f"[0, {self.n_classes - 1}] (ignore value {self.ignore_value}). Fix the reference classes or set "
                "the ignore value to the id that marks unlabelled pixels."
            )

    def _accumulate(self, p, y, u):
        pred, conf = top_label(p)
        p_true = np.take_along_axis(p, y[None], axis=0)[0]
        wrong = (pred != y).astype(np.int64)
        self.n_pixels += y.size
        px = Pixels(p, y, pred, conf, p_true, wrong, 1.0 - conf if u is None else u, self.uncertainty_range)
        for part in self._parts:
            part.update(px)

    def merge(self, other):
        """Add the statistics of ``other`` (same options, disjoint pixels) to this accumulator; returns self."""
        same = (
            other.n_classes == self.n_classes and other.n_bins == self.n_bins
            and other.n_hist_bins == self.n_hist_bins and np.array_equal(other.thresholds, self.thresholds)
        )
        if not same:
            raise InvalidOptionError("merge: accumulators must share n_classes, n_bins, n_hist_bins, thresholds.")
        if other.uncertainty_source is not None:
            if self.uncertainty_source is None:
                self.uncertainty_source, self.uncertainty_range = other.uncertainty_source, other.uncertainty_range
            elif (other.uncertainty_source, other.uncertainty_range) != (self.uncertainty_source,
                                                                         self.uncertainty_range):
                raise InvalidOptionError("merge: accumulators must use the same uncertainty source and range.")
        for key in ("n_pixels", "n_ignored", "n_invalid", "n_updates"):
            setattr(self, key, getattr(self, key) + getattr(other, key))
        for mine, theirs in zip(self._parts, other._parts):
            mine.merge(theirs)
        return self

    # ------------------------------------------------------------------ finalise
    def finalize(self):
        """Return every figure as a dict (numpy arrays for per-bin/per-class values, NaN = undefined there;
        None for an undefined scalar). Does not change the state: more blocks may follow.

        :raises RasterInputError: when no valid, non-ignored pixel was seen.
        """
        n = self.n_pixels
        if n == 0:
            raise RasterInputError(
                f"No pixel to evaluate: {self.n_invalid} invalid (NoData) and {self.n_ignored} ignored "
                f"(reference = {self.ignore_value}). Check that the reference overlaps the probability raster "
                "and labels at least one valid pixel."
            )
        cm = self.confusion.confusion
        res = {
            "n_classes": self.n_classes,
            "n_pixels": n,
            "n_ignored": self.n_ignored,
            "n_invalid": self.n_invalid,
            "accuracy": float(np.trace(cm) / n),
            "n_errors": int(n - np.trace(cm)),
        }
        res.update(self.reliability.finalise(n))
        res.update(self.scores.finalise(n))
        res.update(self.confusion.finalise())
        res.update(self.thresholds_counts.finalise())
        res["auroc"] = self.uncertainty.auroc()
        res.update(self.confidence.finalise(n))
        lo, hi = self.uncertainty_range
        res.update({
            "uncertainty_source": self.uncertainty_source,
            "uncertainty_range": (float(lo), float(hi)),
            "uncertainty_bin_width": (hi - lo) / self.n_hist_bins,
            "uncertainty_out_of_range": self.uncertainty.unc_out_of_range,
        })
        res.update(self.uncertainty.finalise(self.uncertainty_range))
        return res


def _check_int(value, name, minimum):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or (
            minimum is not None and value < minimum):
        bound = "an integer" if minimum is None else f"an integer ≥ {minimum}"
        raise InvalidOptionError(f"{name}: expected {bound}; got {value!r}.")
    return int(value)


def _check_range(value):
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError) as e:
        raise InvalidOptionError(f"uncertainty_range: expected (lo, hi); got {value!r}.") from e
    if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
        raise InvalidOptionError(f"uncertainty_range: expected finite lo < hi; got {value!r}.")
    return lo, hi


def _same_shape(array, shape, name, block):
    array = np.asarray(array)
    if array.shape != shape:
        raise RasterInputError(f"{block}: {name} must have shape {shape}; got {array.shape}.")
    return array
