"""Abstention: the uncertainty threshold that meets a target error rate, from the risk–coverage curve.

Rejecting every pixel whose uncertainty u exceeds a threshold τ keeps the pixels with u ≤ τ. Their share of all
evaluated pixels is the *coverage*, the error rate among them the *risk*:

.. math::

    \\mathrm{coverage}(\\tau) = \\frac{|\\{i: u_i \\le \\tau\\}|}{N}, \\qquad
    \\mathrm{risk}(\\tau) = \\frac{|\\{i: u_i \\le \\tau,\\ \\hat y_i \\ne y_i\\}|}{|\\{i: u_i \\le \\tau\\}|}

For a target error rate ε, :meth:`RiskCoverage.finalize` returns the *largest* τ with risk(τ) ≤ ε (risk is not
monotone in τ, so every candidate is looked at, not only the first crossing), and the coverage it keeps.

Streaming, in constant memory: K equal bins over [lo, hi] count pixels and wrong pixels, and each bin remembers
the largest u it received. Candidates are the bin boundaries; the returned τ is the largest uncertainty actually
seen in the bins kept, so "u ≤ τ" keeps exactly those bins' pixels (binning is monotone in u) and the reported
coverage and risk are exact recounts, not estimates. The only approximation is that τ moves in steps of one bin
((hi − lo)/K; 16384 bins: 4e-5 of log 3 for entropy): a threshold inside a bin that would also meet ε may be
missed. Values outside [lo, hi] go to the end bins (and still count exactly).

Example: u = 0.1, 0.2, 0.3, 0.4 with the third pixel wrong and ε = 0.25: τ = 0.2 keeps 2 (risk 0), τ = 0.3
keeps 3 (risk 1/3), τ = 0.4 keeps 4 (risk 1/4 ≤ ε) → τ = 0.4, coverage 1.

>>> rc = RiskCoverage(0.0, 1.0, n_bins=100)
>>> rc.update(np.array([0.1, 0.2, 0.3, 0.4]), np.array([False, False, True, False]))
>>> [round(v, 6) for v in (rc.finalize(0.25)["threshold"], rc.finalize(0.2)["threshold"])]
[0.4, 0.2]
"""

import math

import numpy as np

from .constants import CLASS_NODATA
from .errors import InvalidOptionError

__all__ = [
    "RiskCoverage",
    "DEFAULT_RISK_BINS",
    "reject_uncertain",
    "uncertain_class_value",
    "UNCERTAIN_NAME",
    "UNCERTAIN_COLOR",
]

DEFAULT_RISK_BINS = 16384
#: Name and palette colour of the "uncertain" value of a class map written with REJECT_ABOVE.
UNCERTAIN_NAME = "uncertain"
UNCERTAIN_COLOR = "#ff00ff"



def uncertain_class_value(n_classes):
    """The class-map value of rejected pixels: C, the first id after the model's classes (C ≤ 254: the map is
    uint8 with 255 as NoData)."""
    c = int(n_classes)
    if c >= CLASS_NODATA:
        raise InvalidOptionError(
            f"REJECT_ABOVE: a model with {c} classes leaves no uint8 value for 'uncertain' (255 is NoData). "
            "Leave REJECT_ABOVE empty for this model."
        )
    return c


def reject_uncertain(classes, uncertainty, threshold, value):
    """Copy of ``classes`` with ``value`` where ``uncertainty`` > ``threshold`` (NaN uncertainty: unchanged).

    The kept pixels are exactly those with uncertainty ≤ threshold, the same rule as :class:`RiskCoverage`, so
    the REJECT_THRESHOLD of ``evaluate`` keeps on this map the coverage it reported.
    """
    out = np.array(classes, copy=True)
    with np.errstate(invalid="ignore"):
        out[np.asarray(uncertainty) > float(threshold)] = value
    return out


class RiskCoverage:
    """Accumulator of (uncertainty, wrong) pairs; ``update`` / ``merge`` / ``finalize(target_error)``.

    :param lo, hi: range spanned by the bins (entropy: (0, log C); margin, confidence: (0, 1)).
    :param n_bins: K bins.
    """

    def __init__(self, lo, hi, n_bins=DEFAULT_RISK_BINS):
        lo, hi = float(lo), float(hi)
        if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
            raise InvalidOptionError(f"risk-coverage range: expected finite lo < hi; got ({lo}, {hi}).")
        if int(n_bins) < 1:
            raise InvalidOptionError(f"risk-coverage bins: expected a positive integer; got {n_bins!r}.")
        self.lo, self.hi, self.n_bins = lo, hi, int(n_bins)
        self.count = np.zeros(self.n_bins, np.int64)
        self.wrong = np.zeros(self.n_bins, np.int64)
        self.bin_max = np.full(self.n_bins, -np.inf)

    def _bin(self, u):
        scaled = np.floor((u - self.lo) * (self.n_bins / (self.hi - self.lo)))
        return np.clip(scaled, 0, self.n_bins - 1).astype(np.int64)

    def update(self, uncertainty, wrong):
        """Add pixels: ``uncertainty`` (any shape, NaN left out) and ``wrong`` (bool, same shape)."""
        u = np.asarray(uncertainty, dtype=np.float64).reshape(-1)
        w = np.asarray(wrong, dtype=bool).reshape(-1)
        if u.shape != w.shape:
            raise InvalidOptionError(f"risk-coverage update: {u.shape[0]} uncertainties but {w.shape[0]} flags.")
        keep = np.isfinite(u)
        u, w = u[keep], w[keep]
        if not u.size:
            return
        b = self._bin(u)
        self.count += np.bincount(b, minlength=self.n_bins)
        self.wrong += np.bincount(b, weights=w, minlength=self.n_bins).astype(np.int64)
        np.maximum.at(self.bin_max, b, u)

    def merge(self, other):
        """Fold in ``other`` (same range and bins, disjoint pixels); returns self."""
        if (other.lo, other.hi, other.n_bins) != (self.lo, self.hi, self.n_bins):
            raise InvalidOptionError("risk-coverage merge: accumulators must share range and bins.")
        self.count += other.count
        self.wrong += other.wrong
        np.maximum(self.bin_max, other.bin_max, out=self.bin_max)
        return self

    @property
    def n_pixels(self):
        return int(self.count.sum())

    def curve(self):
        """(threshold, coverage, risk) at every non-empty bin, uncertainty increasing (for plots)."""
        filled = self.count > 0
        kept = np.cumsum(self.count)[filled]
        errors = np.cumsum(self.wrong)[filled]
        n = max(self.n_pixels, 1)
        return np.maximum.accumulate(self.bin_max[filled]), kept / n, errors / np.maximum(kept, 1)

    def finalize(self, target_error):
        """The largest threshold with error rate ≤ ``target_error`` among kept pixels (u ≤ threshold).

        Returns a dict: ``threshold`` (NaN when even the most certain bin errs more than the target),
        ``coverage`` (kept / N), ``error_rate`` (among kept; NaN when nothing is kept), ``kept``, ``n``,
        ``error_rate_all`` (without abstention), ``target_error``.
        """
        target = float(target_error)
        if not 0.0 <= target <= 1.0:
            raise InvalidOptionError(f"TARGET_ERROR: expected an error rate in [0, 1]; got {target_error!r}.")
        n = self.n_pixels
        kept = np.cumsum(self.count)
        errors = np.cumsum(self.wrong)
        ok = (kept > 0) & (errors <= target * kept)  # exact in integers: errors / kept <= target
        result = {"target_error": target, "n": n,
                  "error_rate_all": float(errors[-1] / n) if n else math.nan}
        if not ok.any():
            return dict(result, threshold=math.nan, coverage=0.0, error_rate=math.nan, kept=0)
        k = int(np.flatnonzero(ok)[-1])
        threshold = float(np.max(self.bin_max[: k + 1]))
        return dict(result, threshold=threshold, coverage=float(kept[k] / n), error_rate=float(errors[k] / kept[k]),
                    kept=int(kept[k]))
