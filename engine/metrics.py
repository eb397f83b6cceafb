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

from .errors import InvalidOptionError, RasterInputError

__all__ = [
    "CalibrationAccumulator",
    "top_label",
    "NLL_EPS",
    "DEFAULT_THRESHOLDS",
    "PROBABILITY_TOLERANCE",
    "SUM_TOLERANCE",
]

NLL_EPS = float(np.finfo(np.float64).eps)
DEFAULT_THRESHOLDS = tuple(np.arange(1, 10) / 10.0)
PROBABILITY_TOLERANCE = 1e-6
SUM_TOLERANCE = 1e-3
_GROUPS = ("all", "correct", "wrong", "foreground", "background")
_QUANTILES = {"p5": 0.05, "p25": 0.25, "median": 0.5, "p75": 0.75, "p95": 0.95}
_PLOT_BINS = 64
_CURVE_POINTS = 512
_EULER_GAMMA = 0.5772156649015329
_HARMONIC_TABLE = np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, 64))])


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
        self.bin_edges = np.arange(self.n_bins + 1) / self.n_bins  # m/M correctly rounded
        c, m, k = self.n_classes, self.n_bins, self.n_hist_bins
        self.n_pixels = 0
        self.n_ignored = 0
        self.n_invalid = 0
        self.n_updates = 0
        self.bin_count = np.zeros(m, np.int64)
        self.bin_sum_conf = np.zeros(m, np.float64)
        self.bin_sum_correct = np.zeros(m, np.float64)
        self.sum_brier = 0.0
        self.sum_brier_binary = 0.0
        self.sum_nll = 0.0
        self.confusion = np.zeros((c, c), np.int64)
        # [wrong, k]: confidence histogram over [0, 1].
        self.conf_hist = np.zeros((2, k), np.int64)
        # [wrong * 2 + foreground, k]: uncertainty histogram; sums, squares, min, max per the same 4 cells.
        self.unc_hist = np.zeros((4, k), np.int64)
        self.unc_sum = np.zeros(4, np.float64)
        self.unc_sum_sq = np.zeros(4, np.float64)
        self.unc_min = np.full(4, np.inf)
        self.unc_max = np.full(4, -np.inf)
        self.unc_out_of_range = 0
        # [reference is foreground, number of thresholds below p_1].
        self.threshold_counts = np.zeros((2, self.thresholds.size + 1), np.int64)

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
        c, m, k = self.n_classes, self.n_bins, self.n_hist_bins
        n = y.size
        pred, conf = top_label(p)
        p_true = np.take_along_axis(p, y[None], axis=0)[0]
        wrong = (pred != y).astype(np.int64)
        self.n_pixels += n
        # Reliability bins [m/M, (m+1)/M), conf = 1 in the last one.
        b = _edge_bin(conf, self.bin_edges)
        self.bin_count += np.bincount(b, minlength=m)
        self.bin_sum_conf += np.bincount(b, weights=conf, minlength=m)
        self.bin_sum_correct += np.bincount(b, weights=1.0 - wrong, minlength=m)
        self.sum_brier += float(np.sum(_row_sum(p * p)) - 2.0 * np.sum(p_true) + n)
        if c == 2:
            self.sum_brier_binary += float(np.sum((p[1] - y) ** 2))
        self.sum_nll += float(-np.sum(np.log(np.clip(p_true, NLL_EPS, 1.0))))
        self.confusion += np.bincount(y * c + pred, minlength=c * c).reshape(c, c)
        kc = _fine_bin(conf, 0.0, 1.0, k)
        self.conf_hist += np.bincount(wrong * k + kc, minlength=2 * k).reshape(2, k)
        score = 1.0 - conf if u is None else u
        lo, hi = self.uncertainty_range
        slack = 1e-6 * (hi - lo)
        self.unc_out_of_range += int(np.count_nonzero((score < lo - slack) | (score > hi + slack)))
        cell = wrong * 2 + (pred != 0)
        index = cell * k + _fine_bin(score, lo, hi, k)
        hist = np.bincount(index, minlength=4 * k)
        self.unc_hist += hist.reshape(4, k)
        self.unc_sum += np.bincount(cell, weights=score, minlength=4)
        self.unc_sum_sq += np.bincount(cell, weights=score * score, minlength=4)
        self._update_extremes(hist, index, cell, score)
        if c == 2 and self.thresholds.size:
            above = np.searchsorted(self.thresholds, p[1], side="left")  # how many t satisfy p_1 > t
            t = self.thresholds.size + 1
            self.threshold_counts += np.bincount((y == 1) * t + above, minlength=2 * t).reshape(2, t)

    def _update_extremes(self, hist, index, cell, score):
        """Exact min/max per cell, looking only at pixels in each cell's lowest and highest non-empty bin."""
        k = self.n_hist_bins
        edge_bins = np.zeros(hist.size, bool)
        for j in range(4):
            filled = np.flatnonzero(hist[j * k:(j + 1) * k])
            if filled.size:
                edge_bins[j * k + filled[[0, -1]]] = True
        pick = np.flatnonzero(edge_bins[index])
        values, cells = score[pick], cell[pick]
        for j in range(4):
            mine = values[cells == j]
            if mine.size:
                self.unc_min[j] = min(self.unc_min[j], mine.min())
                self.unc_max[j] = max(self.unc_max[j], mine.max())

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
        for key in ("n_pixels", "n_ignored", "n_invalid", "n_updates", "sum_brier", "sum_brier_binary", "sum_nll",
                    "unc_out_of_range"):
            setattr(self, key, getattr(self, key) + getattr(other, key))
        for key in ("bin_count", "bin_sum_conf", "bin_sum_correct", "confusion", "conf_hist", "unc_hist",
                    "unc_sum", "unc_sum_sq", "threshold_counts"):
            getattr(self, key).__iadd__(getattr(other, key))
        np.minimum(self.unc_min, other.unc_min, out=self.unc_min)
        np.maximum(self.unc_max, other.unc_max, out=self.unc_max)
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
        c = self.n_classes
        res = {
            "n_classes": c,
            "n_pixels": n,
            "n_ignored": self.n_ignored,
            "n_invalid": self.n_invalid,
            "accuracy": float(np.trace(self.confusion) / n),
            "n_errors": int(n - np.trace(self.confusion)),
        }
        res.update(self._calibration(n))
        res["brier"] = self.sum_brier / n
        res["brier_binary"] = self.sum_brier_binary / n if c == 2 else None
        res["nll"] = self.sum_nll / n
        res["nll_eps"] = NLL_EPS
        res.update(self._segmentation())
        res.update(self._threshold_sweep())
        res.update(self._error_detection(n))
        res.update(self._uncertainty_statistics())
        return res

    def _calibration(self, n):
        count = self.bin_count
        with np.errstate(invalid="ignore", divide="ignore"):
            conf = np.where(count > 0, self.bin_sum_conf / count, np.nan)
            acc = np.where(count > 0, self.bin_sum_correct / count, np.nan)
        gap = np.abs(acc - conf)
        filled = count > 0
        return {
            "n_bins": self.n_bins,
            "ece": float(np.sum(count[filled] / n * gap[filled])),
            "mce": float(gap[filled].max()),
            "reliability": {
                "bin_edges": self.bin_edges.copy(),
                "count": count.copy(),
                "confidence": conf,
                "accuracy": acc,
                "gap": gap,
            },
        }

    def _segmentation(self):
        cm = self.confusion
        tp = np.diag(cm).astype(np.float64)
        support = cm.sum(axis=1)
        predicted = cm.sum(axis=0)
        fp = predicted - tp
        fn = support - tp
        present = support > 0
        dice = _ratio(2 * tp, 2 * tp + fp + fn)
        iou = _ratio(tp, tp + fp + fn)
        return {
            "confusion_matrix": cm.copy(),
            "per_class": {
                "dice": dice,
                "iou": iou,
                "precision": _ratio(tp, tp + fp),
                "recall": _ratio(tp, tp + fn),
                "support": support,
                "predicted": predicted,
            },
            "classes_present": np.flatnonzero(present),
            "mean_dice": float(np.mean(dice[present])),
            "mean_iou": float(np.mean(iou[present])),
        }

    def _threshold_sweep(self):
        if self.n_classes != 2 or not self.thresholds.size:
            return {"threshold_sweep": None, "best_threshold": None, "best_threshold_dice": None}
        # Pixels with p_1 > thresholds[j] are those whose count of thresholds below p_1 exceeds j.
        above = np.cumsum(self.threshold_counts[:, ::-1], axis=1)[:, ::-1][:, 1:]  # [fg, j]
        tp = above[1].astype(np.float64)
        fp = above[0].astype(np.float64)
        fn = self.threshold_counts[1].sum() - tp
        dice = _ratio(2 * tp, 2 * tp + fp + fn)
        best = None if np.all(np.isnan(dice)) else int(np.nanargmax(dice))
        return {
            "threshold_sweep": {
                "thresholds": self.thresholds.copy(),
                "dice": dice,
                "precision": _ratio(tp, tp + fp),
                "recall": _ratio(tp, tp + fn),
                "iou": _ratio(tp, tp + fp + fn),
                "tp": tp.astype(np.int64),
                "fp": fp.astype(np.int64),
                "fn": fn.astype(np.int64),
            },
            "best_threshold": None if best is None else float(self.thresholds[best]),
            "best_threshold_dice": None if best is None else float(dice[best]),
        }

    def _error_detection(self, n):
        k = self.n_hist_bins
        correct_u = self.unc_hist[0] + self.unc_hist[1]
        wrong_u = self.unc_hist[2] + self.unc_hist[3]
        n_wrong, n_correct = int(wrong_u.sum()), int(correct_u.sum())
        auroc = None
        if n_wrong and n_correct:
            below = np.cumsum(correct_u) - correct_u  # correct pixels in lower bins
            pairs = np.sum(wrong_u * (below + 0.5 * correct_u), dtype=np.float64)
            auroc = float(pairs / (float(n_wrong) * float(n_correct)))
        # Risk-coverage, most confident bin first.
        m = (self.conf_hist[0] + self.conf_hist[1])[::-1]
        e = self.conf_hist[1][::-1]
        cum_m, cum_e = np.cumsum(m), np.cumsum(e)
        n0, e0 = cum_m - m, cum_e - e
        filled = m > 0
        r = e[filled] / m[filled]
        total = np.sum(e[filled] + (e0[filled] - r * n0[filled])
                       * (_harmonic(cum_m[filled]) - _harmonic(n0[filled])))
        aurc = float(total / n)
        errors = int(e.sum())
        optimal = float((errors - (n - errors) * (_harmonic(n) - _harmonic(n - errors))) / n)
        coverage = cum_m[filled] / n
        risk = cum_e[filled] / cum_m[filled]
        if coverage.size > _CURVE_POINTS:
            pick = np.unique(np.searchsorted(coverage, np.linspace(0, 1, _CURVE_POINTS), side="left"))
            pick = pick[pick < coverage.size]
            coverage, risk = coverage[pick], risk[pick]
        lo, hi = self.uncertainty_range
        return {
            "auroc": auroc,
            "aurc": aurc,
            "aurc_optimal": optimal,
            "eaurc": aurc - optimal,
            "risk_coverage": {"coverage": coverage, "risk": risk},
            "confidence_bin_width": 1.0 / k,
            "uncertainty_source": self.uncertainty_source,
            "uncertainty_range": (float(lo), float(hi)),
            "uncertainty_bin_width": (hi - lo) / k,
            "uncertainty_out_of_range": self.unc_out_of_range,
        }

    def _uncertainty_statistics(self):
        k = self.n_hist_bins
        lo, hi = self.uncertainty_range
        cells = {"all": [0, 1, 2, 3], "correct": [0, 1], "wrong": [2, 3], "foreground": [1, 3],
                 "background": [0, 2]}
        stats = {}
        for group in _GROUPS:
            idx = cells[group]
            hist = self.unc_hist[idx].sum(axis=0)
            count = int(hist.sum())
            entry = {"count": count}
            if count == 0:
                entry.update({key: None for key in ("mean", "std", "min", "max", *_QUANTILES)})
            else:
                mean = self.unc_sum[idx].sum() / count
                var = max(self.unc_sum_sq[idx].sum() / count - mean * mean, 0.0)
                vmin, vmax = float(self.unc_min[idx].min()), float(self.unc_max[idx].max())
                entry.update({"mean": float(mean), "std": math.sqrt(var), "min": vmin, "max": vmax})
                for key, q in _QUANTILES.items():
                    entry[key] = _hist_quantile(hist, lo, (hi - lo) / k, q, vmin, vmax)
            stats[group] = entry
        step = max(1, k // _PLOT_BINS)
        starts = np.arange(0, k, step)
        edges = lo + np.append(starts, k) * (hi - lo) / k
        correct = self.unc_hist[0] + self.unc_hist[1]
        wrong = self.unc_hist[2] + self.unc_hist[3]
        return {
            "uncertainty_stats": stats,
            "uncertainty_histogram": {
                "edges": edges,
                "correct": np.add.reduceat(correct, starts),
                "wrong": np.add.reduceat(wrong, starts),
            },
        }


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


def _row_sum(p):
    """Σ over axis 0 of (C, n), adding whole contiguous rows."""
    total = p[0].copy()
    for row in p[1:]:
        total += row
    return total


def top_label(p):
    """(argmax, max) over axis 0 of (C, n): the first class on ties, max NaN where any band is NaN.

    Same as ``(p.argmax(0), p.max(0))`` on finite input, faster: one contiguous row at a time.
    """
    pred = np.zeros(p.shape[1], np.int64)
    conf = p[0].copy()
    for c in range(1, p.shape[0]):
        better = p[c] > conf
        pred[better] = c
        np.maximum(conf, p[c], out=conf)
    return pred, conf


def _edge_bin(values, edges):
    """Index m with edges[m] <= value < edges[m + 1] for values in [0, 1], the last bin closed; = searchsorted."""
    m = edges.size - 1
    b = np.clip(np.floor(values * m).astype(np.int64), 0, m - 1)
    b -= (values < edges[b]) & (b > 0)
    b += (values >= edges[np.minimum(b + 1, m)]) & (b < m - 1)
    return b


def _fine_bin(values, lo, hi, k):
    """Index of ``values`` in K equal bins over [lo, hi]; values outside go to the end bins."""
    scaled = np.floor((values - lo) * (k / (hi - lo)))
    return np.clip(scaled, 0, k - 1).astype(np.int64)


def _ratio(num, den):
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.full(num.shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _harmonic(n):
    """H(n) = Σ_{j=1}^n 1/j: a table below 64, the asymptotic series (error < 1e-16 relative) above."""
    n = np.asarray(n, dtype=np.float64)
    small = n < _HARMONIC_TABLE.size
    big = np.maximum(n, 1.0)
    series = np.log(big) + _EULER_GAMMA + 1 / (2 * big) - 1 / (12 * big**2) + 1 / (120 * big**4)
    table = _HARMONIC_TABLE[np.where(small, n, 0).astype(np.int64)]
    return np.where(small, table, series)


def _hist_quantile(hist, lo, width, q, vmin, vmax):
    """q-quantile of a histogram, linear within the bin, clamped to the exact [min, max]."""
    cum = np.cumsum(hist)
    target = q * cum[-1]
    k = int(np.searchsorted(cum, target, side="left"))
    before = cum[k - 1] if k else 0
    frac = (target - before) / hist[k] if hist[k] else 0.0
    return float(min(max(lo + (k + frac) * width, vmin), vmax))
