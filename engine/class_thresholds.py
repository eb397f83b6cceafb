"""Threshold sensitivity per class, one-vs-rest, streamed: Dice, precision and recall of "p̄_c > t" for every class.

For class c and threshold t, a pixel is called c when p̄_c > t (one-vs-rest: the other classes are "not c"),
whatever the other probabilities say; the reference says c when y = c. Then, over the evaluated pixels,

.. math::

    TP_c(t) = |\\{p̄_c > t,\\ y = c\\}|, \\quad FP_c(t) = |\\{p̄_c > t,\\ y \\ne c\\}|, \\quad
    FN_c(t) = |\\{p̄_c \\le t,\\ y = c\\}|

    \\mathrm{Dice} = \\frac{2TP}{2TP + FP + FN}, \\quad \\mathrm{precision} = \\frac{TP}{TP + FP}, \\quad
    \\mathrm{recall} = \\frac{TP}{TP + FN}

(NaN where a denominator is 0). For a binary model class 1 at t is the binary sweep of the report; for C > 2 it
shows how much each class's mask would gain or lose by a stricter or looser threshold than the arg-max. Counts
only: C × (|thresholds| + 1) × 2 integers, merged by addition.

Example: p̄_1 = 0.2, 0.6, 0.9 with y = 0, 1, 1 at t = 0.5: TP 2, FP 0, FN 0 → Dice 1; at t = 0.7: TP 1, FN 1 →
Dice 2/3.
"""

import numpy as np

from .errors import InvalidOptionError

__all__ = ["ClassThresholdSweep", "DEFAULT_SWEEP_THRESHOLDS"]

DEFAULT_SWEEP_THRESHOLDS = tuple(np.round(np.arange(0.05, 1.0, 0.05), 2))


class ClassThresholdSweep:
    """Accumulator of one-vs-rest counts; ``update(p (C, n), y (n,))`` / ``merge`` / ``finalize``."""

    def __init__(self, n_classes, thresholds=DEFAULT_SWEEP_THRESHOLDS):
        self.n_classes = int(n_classes)
        self.thresholds = np.asarray(sorted(float(t) for t in thresholds), dtype=np.float64)
        if not self.thresholds.size or self.thresholds.min() < 0 or self.thresholds.max() > 1:
            raise InvalidOptionError(f"thresholds: expected values in [0, 1]; got {thresholds!r}.")
        n_t = self.thresholds.size + 1
        # counts[c, is_c, j]: pixels with exactly j thresholds below p̄_c, split by whether y = c
        self.counts = np.zeros((self.n_classes, 2, n_t), np.int64)

    def update(self, p, y):
        """``p``: (C, n) probabilities of evaluated pixels, ``y``: (n,) their class ids in [0, C)."""
        p = np.asarray(p)
        y = np.asarray(y)
        n_t = self.thresholds.size + 1
        for c in range(self.n_classes):
            below = np.searchsorted(self.thresholds, p[c], side="left")  # how many t satisfy p_c > t
            index = (y == c) * n_t + below
            self.counts[c] += np.bincount(index, minlength=2 * n_t).reshape(2, n_t)

    def merge(self, other):
        if self.n_classes != other.n_classes or not np.array_equal(self.thresholds, other.thresholds):
            raise InvalidOptionError("class threshold sweep merge: classes and thresholds must agree.")
        self.counts += other.counts
        return self

    def finalize(self):
        """dict: ``thresholds`` (T,), and (C, T) arrays ``dice``, ``precision``, ``recall``, ``tp``, ``fp``, ``fn``."""
        above = np.cumsum(self.counts[:, :, ::-1], axis=2)[:, :, ::-1][:, :, 1:]  # (C, 2, T): p_c > t_j
        tp = above[:, 1].astype(np.float64)
        fp = above[:, 0].astype(np.float64)
        fn = self.counts[:, 1].sum(axis=1)[:, None] - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            dice = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), np.nan)
            precision = np.where(tp + fp > 0, tp / (tp + fp), np.nan)
            recall = np.where(tp + fn > 0, tp / (tp + fn), np.nan)
        return {"thresholds": self.thresholds.copy(), "dice": dice, "precision": precision, "recall": recall,
                "tp": tp.astype(np.int64), "fp": fp.astype(np.int64), "fn": fn.astype(np.int64)}
