"""Temperature scaling (Guo et al. 2017) fitted by streaming over the reference pixels.

One scalar T > 0 divides every logit: p_T = softmax(z / T). T > 1 softens over-confident probabilities, T < 1
sharpens under-confident ones; the arg-max (the class map) never changes. T minimises the negative
log-likelihood of the reference classes over the fitting pixels:

.. math::

    \\mathrm{NLL}(\\beta) = \\frac1N \\sum_i \\Big[-\\beta z_{i,y_i} + \\log \\sum_c e^{\\beta z_{i,c}}\\Big],
    \\qquad \\beta = 1/T

NLL is convex in β (a log-sum-exp of a linear function of β minus a linear term), with

.. math::

    \\mathrm{NLL}'(\\beta) = \\frac1N \\sum_i \\big(\\mathbb E_{q_i}[z_i] - z_{i,y_i}\\big), \\qquad
    \\mathrm{NLL}''(\\beta) = \\frac1N \\sum_i \\mathrm{Var}_{q_i}[z_i] \\ge 0, \\qquad
    q_i = \\mathrm{softmax}(\\beta z_i)

so :func:`fit_temperature` runs safeguarded Newton steps on β, one streamed pass over the pixels per step, each
pass summing only three numbers (NLL, NLL', NLL''); memory does not depend on the raster. It keeps a bracket
[β_lo, β_hi] with NLL'(β_lo) < 0 < NLL'(β_hi) and bisects (in log β) when a Newton step leaves it. Typically
5–8 passes.

Where only probabilities are stored (the mean-probability raster p̄), the logits are z = log p̄ (clipped at
``LOG_FLOOR``): softmax(log p̄ / T) ∝ p̄^{1/T}, and T = 1 gives p̄ back. The inference applies a card's T to the
logits of every sample before averaging (:mod:`engine.samplers`), which is what T means for a single pass; for a
mean over T samples, T fitted on log p̄ is the calibration of the averaged prediction, the closest a raster of
p̄ can tell (see README, *Calibration*).

Honest before/after figures need pixels the fit did not see: :func:`checkerboard` splits the raster into square
blocks of ``block`` pixels in a checkerboard; the fit uses the "black" blocks, the figures the "white" ones.
Spatially blocked, because neighbouring pixels are strongly correlated and a random pixel split would leak.

Example: two pixels with logits (2, 0), one labelled 0 and one 1: NLL(β) = log(1 + e^{-2β})/2 +
log(1 + e^{2β})/2 is smallest at β = 0, so T runs to the top of ``T_RANGE`` (``at_bound``): a model right half
the time at any confidence should say ½. Three labelled 0 and one 1: σ(2β) = ¾ at the optimum, β = log(3)/2,
T ≈ 1.820.
"""

import math

import numpy as np

from .errors import InvalidOptionError

__all__ = [
    "TemperatureFit",
    "fit_temperature",
    "nll_terms",
    "apply_temperature",
    "log_probabilities",
    "checkerboard",
    "LOG_FLOOR",
    "T_RANGE",
    "CHECKERBOARD_BLOCK",
]

LOG_FLOOR = math.log(1e-12)  # logits of probabilities at or below 1e-12; keeps log 0 finite
T_RANGE = (0.01, 100.0)  # the fit looks for T in this range and reports hitting an end
CHECKERBOARD_BLOCK = 64


def log_probabilities(p, axis=0):
    """Pseudo-logits z = log max(p, 1e-12) of probabilities ``p`` (float64)."""
    p = np.asarray(p, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.maximum(np.log(np.maximum(p, 0.0)), LOG_FLOOR)


def apply_temperature(p, temperature, axis=0):
    """Calibrated probabilities softmax(log p / T) along ``axis`` (float64); T = 1 returns p renormalised."""
    z = log_probabilities(p) / float(temperature)
    z = z - z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def nll_terms(logits, labels, beta):
    """Sums over pixels of (NLL, NLL', NLL'') at β for ``logits`` (N, C) and ``labels`` (N,) in [0, C).

    Returns three floats (sums, not means) so that blocks add up; divide by N.
    """
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    if z.shape[0] == 0:
        return 0.0, 0.0, 0.0
    s = beta * z
    top = s.max(axis=1, keepdims=True)
    e = np.exp(s - top)
    total = e.sum(axis=1, keepdims=True)
    q = e / total
    lse = (top + np.log(total))[:, 0]
    zy = np.take_along_axis(z, y[:, None], axis=1)[:, 0]
    mean_z = (q * z).sum(axis=1)
    var_z = np.maximum((q * z * z).sum(axis=1) - mean_z**2, 0.0)
    return float((lse - beta * zy).sum()), float((mean_z - zy).sum()), float(var_z.sum())


class TemperatureFit:
    """Result of :func:`fit_temperature`: T, the fitting NLL at T and at T = 1, passes, pixels, and whether T
    hit an end of ``T_RANGE`` (then the data do not pin T down, e.g. every pixel right)."""

    def __init__(self, temperature, nll, nll_at_one, passes, n_pixels, at_bound):
        self.temperature = float(temperature)
        self.nll = float(nll)
        self.nll_at_one = float(nll_at_one)
        self.passes = int(passes)
        self.n_pixels = int(n_pixels)
        self.at_bound = bool(at_bound)

    def as_dict(self):
        return {
            "temperature": self.temperature,
            "fit_nll": self.nll,
            "fit_nll_at_1": self.nll_at_one,
            "fit_passes": self.passes,
            "fit_pixels": self.n_pixels,
            "temperature_at_bound": self.at_bound,
        }

    def __repr__(self):
        return f"TemperatureFit(T={self.temperature:.6g}, nll={self.nll:.6g}, passes={self.passes})"


def _pass(batches, beta):
    f = g = h = 0.0
    n = 0
    for logits, labels in batches():
        a, b, c = nll_terms(logits, labels, beta)
        f, g, h, n = f + a, g + b, h + c, n + len(labels)
    return f, g, h, n


def fit_temperature(batches, *, t_range=T_RANGE, tol=1e-9, max_passes=60):
    """Fit T by streamed safeguarded Newton on β = 1/T (see the module docstring).

    :param batches: zero-argument callable returning a fresh iterable of (logits (N, C), labels (N,)) blocks; it
        is called once per pass, so a raster is read again each pass rather than held.
    :param t_range: (T_min, T_max) searched.
    :param tol: stop when a step changes β by less than ``tol``·β.
    :returns: :class:`TemperatureFit`.
    :raises InvalidOptionError: no pixel to fit on, or a bad range.
    """
    t_min, t_max = (float(v) for v in t_range)
    if not 0 < t_min < 1 < t_max:
        raise InvalidOptionError(f"t_range: expected 0 < T_min < 1 < T_max; got {t_range!r}.")
    lo, hi = 1.0 / t_max, 1.0 / t_min
    beta = 1.0
    f, g, h, n = _pass(batches, beta)
    passes = 1
    if n == 0:
        raise InvalidOptionError(
            "temperature fit: no reference pixel to fit on. Check that the reference overlaps valid pixels."
        )
    nll_at_one = f / n
    while passes < max_passes and g != 0:
        if g > 0:
            hi = beta
        else:
            lo = beta
        newton = beta - g / h if h > 0 else math.nan
        new = newton if lo < newton < hi else math.sqrt(lo * hi)
        if abs(new - beta) <= tol * beta or hi / lo - 1.0 <= tol:
            break
        beta = new
        f, g, h, _ = _pass(batches, beta)
        passes += 1
    f_final, beta_final = f / n, beta
    # T pinned at an end of the range, or a flat NLL (every pixel certain and right: NLL underflows to 0)
    at_bound = (beta_final <= (1 + 1e-6) / t_max or beta_final >= (1 - 1e-6) / t_min or (g == 0 and h == 0))
    return TemperatureFit(1.0 / beta_final, f_final, nll_at_one, passes, n, at_bound)


def checkerboard(row_off, col_off, height, width, block=CHECKERBOARD_BLOCK):
    """Boolean (height, width) mask of the fitting pixels of a window: True where (row // block + col // block)
    is even (the "black" blocks, which hold the pixel (0, 0)); the others are held out for the figures."""
    if int(block) < 1:
        raise InvalidOptionError(f"checkerboard block: expected a positive number of pixels; got {block!r}.")
    rows = (np.arange(row_off, row_off + height) // int(block))[:, None]
    cols = (np.arange(col_off, col_off + width) // int(block))[None, :]
    return (rows + cols) % 2 == 0
