"""The small accumulators :class:`~engine.metrics.CalibrationAccumulator` composes, each with
``update`` / ``merge`` / ``finalise``, and the binning helpers they share.

Every accumulator declares the state it sums (``summed``), so :meth:`Accumulator.merge` is generic (as
torchmetrics' ``add_state``); one that keeps other state (minima, maxima) extends it. ``update`` takes the
:class:`Pixels` of one block, computed once by the composite. To add a statistic, write an accumulator here and
add it to the composite's list: nothing else changes. The maths is in :mod:`engine.metrics`.
(~420 lines: six accumulators of ~50 lines each and the binning helpers they share.)
"""

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

__all__ = [
    "Pixels",
    "Accumulator",
    "ReliabilityBins",
    "ProperScores",
    "Confusion",
    "ThresholdCounts",
    "ConfidenceHistogram",
    "UncertaintyHistogram",
    "top_label",
    "NLL_EPS",
]

NLL_EPS = float(np.finfo(np.float64).eps)
_GROUPS = ("all", "correct", "wrong", "foreground", "background")
_QUANTILES = {"p5": 0.05, "p25": 0.25, "median": 0.5, "p75": 0.75, "p95": 0.95}
_PLOT_BINS = 64
_CURVE_POINTS = 512
_EULER_GAMMA = 0.5772156649015329
_HARMONIC_TABLE = np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, 64))])


@dataclass
class Pixels:
    """The valid, non-ignored pixels of one block: probabilities ``p`` (C, n) float64, reference ``y`` (n,)
    int64, predicted class, top-label confidence, p of the reference class, wrong (0/1 int64), the uncertainty
    ``score`` (n,) and its range (lo, hi)."""

    p: np.ndarray
    y: np.ndarray
    pred: np.ndarray
    conf: np.ndarray
    p_true: np.ndarray
    wrong: np.ndarray
    score: Optional[np.ndarray] = None
    score_range: tuple = (0.0, 1.0)


class Accumulator:
    """Base: ``summed`` names the attributes (numbers or arrays) that :meth:`merge` adds."""

    summed: tuple = ()

    def update(self, px: Pixels) -> None:
        raise NotImplementedError

    def merge(self, other: "Accumulator") -> "Accumulator":
        """Add the state of ``other`` (same options, disjoint pixels); returns self."""
        for key in self.summed:
            mine = getattr(self, key)
            if isinstance(mine, np.ndarray):
                mine += getattr(other, key)
            else:
                setattr(self, key, mine + getattr(other, key))
        return self


class ReliabilityBins(Accumulator):
    """Per reliability bin [m/M, (m+1)/M): count, Σ confidence, Σ correct → ECE, MCE, the diagram."""

    summed = ("bin_count", "bin_sum_conf", "bin_sum_correct")

    def __init__(self, n_bins):
        self.n_bins = n_bins
        self.bin_edges = np.arange(n_bins + 1) / n_bins  # m/M correctly rounded
        self.bin_count = np.zeros(n_bins, np.int64)
        self.bin_sum_conf = np.zeros(n_bins, np.float64)
        self.bin_sum_correct = np.zeros(n_bins, np.float64)

    def update(self, px):
        m = self.n_bins
        b = _edge_bin(px.conf, self.bin_edges)  # conf = 1 in the last bin
        self.bin_count += np.bincount(b, minlength=m)
        self.bin_sum_conf += np.bincount(b, weights=px.conf, minlength=m)
        self.bin_sum_correct += np.bincount(b, weights=1.0 - px.wrong, minlength=m)

    def finalise(self, n):
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


class ProperScores(Accumulator):
    """Σ Brier (multi-class, and binary for C = 2) and Σ NLL → their means."""

    summed = ("sum_brier", "sum_brier_binary", "sum_nll")

    def __init__(self, n_classes):
        self.n_classes = n_classes
        self.sum_brier = 0.0
        self.sum_brier_binary = 0.0
        self.sum_nll = 0.0

    def update(self, px):
        p, y, n = px.p, px.y, px.y.size
        self.sum_brier += float(np.sum(_row_sum(p * p)) - 2.0 * np.sum(px.p_true) + n)
        if self.n_classes == 2:
            self.sum_brier_binary += float(np.sum((p[1] - y) ** 2))
        self.sum_nll += float(-np.sum(np.log(np.clip(px.p_true, NLL_EPS, 1.0))))

    def finalise(self, n):
        return {
            "brier": self.sum_brier / n,
            "brier_binary": self.sum_brier_binary / n if self.n_classes == 2 else None,
            "nll": self.sum_nll / n,
            "nll_eps": NLL_EPS,
        }


class Confusion(Accumulator):
    """Confusion matrix (rows reference, columns prediction) → accuracy, per-class Dice/IoU/precision/recall."""

    summed = ("confusion",)

    def __init__(self, n_classes):
        self.n_classes = n_classes
        self.confusion = np.zeros((n_classes, n_classes), np.int64)

    def update(self, px):
        c = self.n_classes
        self.confusion += np.bincount(px.y * c + px.pred, minlength=c * c).reshape(c, c)

    def finalise(self):
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


class ThresholdCounts(Accumulator):
    """Binary models: pixels by [reference is foreground, number of thresholds below p_1] → the sweep."""

    summed = ("threshold_counts",)

    def __init__(self, n_classes, thresholds):
        self.n_classes = n_classes
        self.thresholds = thresholds
        self.threshold_counts = np.zeros((2, thresholds.size + 1), np.int64)

    def update(self, px):
        if self.n_classes == 2 and self.thresholds.size:
            above = np.searchsorted(self.thresholds, px.p[1], side="left")  # how many t satisfy p_1 > t
            t = self.thresholds.size + 1
            self.threshold_counts += np.bincount((px.y == 1) * t + above, minlength=2 * t).reshape(2, t)

    def finalise(self):
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


class ConfidenceHistogram(Accumulator):
    """[wrong, K fine confidence bins over [0, 1]] → AURC, E-AURC and the risk-coverage curve."""

    summed = ("conf_hist",)

    def __init__(self, n_hist_bins):
        self.k = n_hist_bins
        self.conf_hist = np.zeros((2, n_hist_bins), np.int64)

    def update(self, px):
        k = self.k
        kc = _fine_bin(px.conf, 0.0, 1.0, k)
        self.conf_hist += np.bincount(px.wrong * k + kc, minlength=2 * k).reshape(2, k)

    def finalise(self, n):
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
        return {
            "aurc": aurc,
            "aurc_optimal": optimal,
            "eaurc": aurc - optimal,
            "risk_coverage": {"coverage": coverage, "risk": risk},
            "confidence_bin_width": 1.0 / self.k,
        }


class UncertaintyHistogram(Accumulator):
    """Uncertainty score per cell [wrong * 2 + predicted foreground]: K fine bins over ``score_range``, Σ, Σ²,
    exact min and max → AUROC of wrong-pixel detection and the uncertainty statistics and histogram."""

    summed = ("unc_hist", "unc_sum", "unc_sum_sq", "unc_out_of_range")

    def __init__(self, n_hist_bins):
        k = self.k = n_hist_bins
        self.unc_hist = np.zeros((4, k), np.int64)
        self.unc_sum = np.zeros(4, np.float64)
        self.unc_sum_sq = np.zeros(4, np.float64)
        self.unc_min = np.full(4, np.inf)
        self.unc_max = np.full(4, -np.inf)
        self.unc_out_of_range = 0

    def update(self, px):
        k, score = self.k, px.score
        lo, hi = px.score_range
        slack = 1e-6 * (hi - lo)
        self.unc_out_of_range += int(np.count_nonzero((score < lo - slack) | (score > hi + slack)))
        cell = px.wrong * 2 + (px.pred != 0)
        index = cell * k + _fine_bin(score, lo, hi, k)
        hist = np.bincount(index, minlength=4 * k)
        self.unc_hist += hist.reshape(4, k)
        self.unc_sum += np.bincount(cell, weights=score, minlength=4)
        self.unc_sum_sq += np.bincount(cell, weights=score * score, minlength=4)
        self._update_extremes(hist, index, cell, score)

    def _update_extremes(self, hist, index, cell, score):
        """Exact min/max per cell, looking only at pixels in each cell's lowest and highest non-empty bin."""
        k = self.k
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
        super().merge(other)
        np.minimum(self.unc_min, other.unc_min, out=self.unc_min)
        np.maximum(self.unc_max, other.unc_max, out=self.unc_max)
        return self

    def auroc(self):
        correct_u = self.unc_hist[0] + self.unc_hist[1]
        wrong_u = self.unc_hist[2] + self.unc_hist[3]
        n_wrong, n_correct = int(wrong_u.sum()), int(correct_u.sum())
        if not (n_wrong and n_correct):
            return None
        below = np.cumsum(correct_u) - correct_u  # correct pixels in lower bins
        pairs = np.sum(wrong_u * (below + 0.5 * correct_u), dtype=np.float64)
        return float(pairs / (float(n_wrong) * float(n_correct)))

    def finalise(self, score_range):
        k = self.k
        lo, hi = score_range
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
