"""Streaming uncertainty statistics over T samples (MC Dropout passes and/or TTA views).

For each pixel only sufficient statistics are kept, never the stack of samples (memory O(C·H·W), not O(T·C·H·W)):

    p̄ = mean_t p_t,   m2 = mean_t p_t²,   h̄ = mean_t H[p_t],   H[p] = -Σ_c p_c log p_c

Overlapping tiles are merged on these *statistics* (weighted means), and only then are the maps computed once per
pixel (:func:`uncertainty_from_moments`):

- predictive entropy (total)        H[p̄] ∈ [0, log C]
- mutual information / BALD          MI = max(H[p̄] - h̄, 0) ≤ H[p̄]; MI = 0 when T = 1
- variance of the predicted class    Var = m2_ĉ - p̄_ĉ², ĉ = argmax p̄, ∈ [0, 0.25]
- margin (top-two gap)                1 - (p̄₍₁₎ - p̄₍₂₎) ∈ [0, 1], p̄₍₁₎ ≥ p̄₍₂₎ the two largest of p̄;
                                      0 when one class holds all the mass, 1 when the top two tie
- confidence (least confidence)       1 - max_c p̄_c ∈ [0, 1 - 1/C]; 0 when certain, 1 - 1/C when p̄ is uniform

Margin and confidence are read from the merged p̄ alone (like entropy), so they need no per-sample statistic;
both are 1 minus a probability, so "higher = less certain" holds for every mode.

Probabilities, not logits, are averaged, so that entropy and MI keep their meaning. A 1-channel model is read
as a sigmoid binary model, p = [1 - σ(z), σ(z)].

Moments travel as one array of K channels: [p̄ (C), m2 (C), h̄ (1)] in full (K = 2C + 1), or only what the
chosen map needs (:func:`n_moment_channels` with a mode): entropy [p̄] (K = C), variance [p̄, m2] (K = 2C),
mutual information [p̄, h̄] (K = C + 1). m2, when present, is always channels C..2C and h̄ always the last, so
:func:`uncertainty_from_moments` reads either layout. Carrying only what is needed halves the sampler's and
the merger's work and memory for the default (entropy).
"""

import numpy as np

from .options import UncertaintyMode

__all__ = ["n_moment_channels", "uncertainty_from_moments", "entropy_np", "class_probabilities_np"]


def n_moment_channels(n_classes, mode=None):
    """K moment channels: 2C + 1 in full (no ``mode``); C, 2C or C + 1 for entropy, variance, mutual information.

    >>> [n_moment_channels(4)] + [n_moment_channels(4, m) for m in ("entropy", "variance", "mutual_information")]
    [9, 4, 8, 5]
    """
    if mode is None:
        return 2 * n_classes + 1
    mode = UncertaintyMode(mode)
    return n_classes * (2 if mode is UncertaintyMode.VARIANCE else 1) + (mode is UncertaintyMode.MUTUAL_INFORMATION)


def entropy_np(p, axis=0):
    """H[p] = -Σ_c p_c log p_c (natural log), with 0 log 0 = 0."""
    p = np.asarray(p, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    return -terms.sum(axis=axis)


def class_probabilities_np(logits, axis=0):
    """Softmax over ``axis``; one channel → sigmoid as the two classes [1 - σ, σ]. Reference for tests."""
    z = np.asarray(logits, dtype=np.float64)
    if z.shape[axis] == 1:
        s = 1.0 / (1.0 + np.exp(-z))
        return np.concatenate([1.0 - s, s], axis=axis)
    z = z - z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def uncertainty_from_moments(moments, n_classes, mode, samples_per_pixel=None):
    """Class map, mean probabilities and the chosen uncertainty map from merged moments.

    ``moments``: float array (K, h, w) of weighted means [p̄, m2, h̄], in full or the mode's layout (see the
    module docstring). Returns (classes uint8-able int array,
    p̄ float32 (C, h, w), uncertainty float32 (h, w)). With ``samples_per_pixel`` = 1 mutual information is
    exactly 0 (H[p̄] - h̄ would otherwise leave float rounding of about 1e-8).
    """
    c = n_classes
    mean_p = moments[:c]
    classes = np.argmax(mean_p, axis=0)
    mode = UncertaintyMode(mode)
    if mode in (UncertaintyMode.MARGIN, UncertaintyMode.CONFIDENCE):
        p64 = mean_p.astype(np.float64)
        if mode is UncertaintyMode.CONFIDENCE:
            unc = 1.0 - p64.max(axis=0)
        else:
            top_two = -np.partition(-p64, 1, axis=0)[:2]
            unc = 1.0 - (top_two[0] - top_two[1])
        unc = np.clip(unc, 0.0, 1.0)
    elif mode is UncertaintyMode.VARIANCE:
        m2 = np.take_along_axis(moments[c : 2 * c], classes[None], axis=0)[0]
        pc = np.take_along_axis(mean_p, classes[None], axis=0)[0]
        unc = np.maximum(m2.astype(np.float64) - pc.astype(np.float64) ** 2, 0.0)
    else:
        unc = entropy_np(mean_p, axis=0)
        if mode is UncertaintyMode.MUTUAL_INFORMATION and samples_per_pixel == 1:
            unc = np.zeros_like(unc)
        elif mode is UncertaintyMode.MUTUAL_INFORMATION:
            unc = np.maximum(unc - moments[-1].astype(np.float64), 0.0)
    return classes, mean_p.astype(np.float32), unc.astype(np.float32)
