"""Which of the T samples to write as bands, and what each band holds (``OUTPUT_SAMPLES``).

K of the S = V × T samples of every pixel (V TTA views × T dropout passes; sample s = v·T + t) are chosen evenly
spaced, s_k = round(k · (S − 1) / (K − 1)) (K = 1: the first sample), distinct whenever K ≤ S. A band holds, for
its sample, either the arg-max class (``class``) or the probability of one chosen class (``probability``).

The bands are *the samples the statistics used*: the sampler folds p_s into Σp and, for the chosen s, also keeps
p_s as extra channels that the tile merge averages with the same Gaussian weights as p̄. So the merged mean of
all S sample bands is p̄ itself (up to float32 rounding), and the same seed gives the same bands. Across
overlapping tiles sample s of one tile and sample s of its neighbour are different dropout draws: a sample band
is their weighted mean, like p̄ is.
"""

from dataclasses import dataclass
from enum import Enum
from typing import Optional

import numpy as np

from .errors import InvalidOptionError
from .options import look_up_option

__all__ = ["SampleBands", "SampleContent", "sample_indices", "sample_band_values", "MAX_SAMPLE_BANDS"]

MAX_SAMPLE_BANDS = 256


class SampleContent(str, Enum):
    """``class``: arg-max class id of each sample (uint8, 255 NoData); ``probability``: p_s of one class."""

    CLASS = "class"
    PROBABILITY = "probability"


@dataclass
class SampleBands:
    """``OUTPUT_SAMPLES``: ``count`` of the V × T samples, evenly spaced, as bands of the arg-max class
    (``content="class"``, uint8, NoData 255) or of p_s(``class_index``) (``"probability"``, float32, NoData NaN)."""

    count: int
    content: str = "class"
    class_index: Optional[int] = None


def sample_indices(n_total, k):
    """K evenly spaced indices in [0, n_total): round(i·(S−1)/(K−1)); K = 1 → [0].

    >>> sample_indices(10, 4).tolist(), sample_indices(5, 5).tolist(), sample_indices(7, 1).tolist()
    ([0, 3, 6, 9], [0, 1, 2, 3, 4], [0])
    """
    s, k = int(n_total), int(k)
    if not 1 <= k <= min(s, MAX_SAMPLE_BANDS):
        raise InvalidOptionError(
            f"SAMPLE_BANDS: expected 1 to {min(s, MAX_SAMPLE_BANDS)} bands (at most the {s} samples per pixel, "
            f"at most {MAX_SAMPLE_BANDS}); got {k}."
        )
    if k == 1:
        return np.zeros(1, np.int64)
    return np.round(np.arange(k) * (s - 1) / (k - 1)).astype(np.int64)


def sample_band_values(sample_probs, content, class_index=None):
    """Bands from merged per-sample probabilities ``sample_probs`` (K, C, h, w).

    ``class``: arg-max over C (K, h, w) int; ``probability``: ``sample_probs[:, class_index]`` float32.
    """
    content = look_up_option(content, SampleContent, "SAMPLE_CONTENT")
    if content is SampleContent.CLASS:
        return np.argmax(sample_probs, axis=1)
    if class_index is None or not 0 <= int(class_index) < sample_probs.shape[1]:
        raise InvalidOptionError(
            f"SAMPLE_CLASS: expected a class id from 0 to {sample_probs.shape[1] - 1}; got {class_index!r}."
        )
    return sample_probs[:, int(class_index)].astype(np.float32)
