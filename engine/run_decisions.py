"""What an inference run decides beyond the statistics: reject uncertain pixels, keep individual sample bands.

:class:`RunDecisions` holds one run's options (from ``predict_uncertainty(reject_above=..., samples=...)``) and
does the per-row work the block run asks of it:

- ``REJECT_ABOVE`` τ: pixels with uncertainty u > τ get the class value C, "uncertain" (its name appended to the
  ``CLASS_NAMES`` tag), counted in :attr:`RunDecisions.rejected` (:mod:`engine.abstention`).
- ``OUTPUT_SAMPLES``: the sampler keeps K evenly spaced samples as extra merged channels after the moments (in
  the mode's layout, :mod:`engine.samplers`); :meth:`RunDecisions.sample_bands` turns those extra channels into
  K bands of arg-max class or of one class's probability (:mod:`engine.sample_bands`).
"""

import numpy as np

from .abstention import UNCERTAIN_NAME, reject_uncertain, uncertain_class_value
from .constants import CLASS_NODATA
from .errors import InvalidOptionError
from .options import look_up_option
from .sample_bands import SampleBands, SampleContent, sample_indices

__all__ = ["RunDecisions"]


class RunDecisions:
    """One run's rejection threshold and sample bands (either may be off)."""

    def __init__(self, n_classes, class_names, *, reject_above=None, samples: SampleBands = None,
                 samples_path=None, n_total_samples=1):
        self.n_classes = int(n_classes)
        self.class_names = list(class_names)
        self.reject_above = None if reject_above is None else float(reject_above)
        if self.reject_above is not None and not np.isfinite(self.reject_above):
            raise InvalidOptionError(f"REJECT_ABOVE: expected a finite uncertainty threshold; got {reject_above!r}.")
        self.uncertain_value = None
        if self.reject_above is not None:
            self.uncertain_value = uncertain_class_value(self.n_classes)
            self.class_names.append(UNCERTAIN_NAME)
        self.rejected = 0
        self.samples = samples if (samples is not None and samples_path) else None
        self.sample_indices = ()
        self.kept_class = None
        if self.samples is not None:
            self.content = look_up_option(self.samples.content, SampleContent, "SAMPLE_CONTENT")
            self.sample_indices = tuple(int(i) for i in sample_indices(n_total_samples, self.samples.count))
            if self.content is SampleContent.PROBABILITY:
                index = self.samples.class_index
                if index is None or not 0 <= int(index) < self.n_classes:
                    raise InvalidOptionError(
                        f"SAMPLE_CLASS: expected a class id from 0 to {self.n_classes - 1}; got {index!r}."
                    )
                self.kept_class = int(index)
            self.sample_dtype = "uint8" if self.content is SampleContent.CLASS else "float32"
            self.sample_nodata = CLASS_NODATA if self.content is SampleContent.CLASS else float("nan")

    def tags(self):
        tags = {}
        if self.reject_above is not None:
            tags.update(REJECT_ABOVE=repr(self.reject_above), UNCERTAIN_VALUE=self.uncertain_value)
        if self.samples is not None:
            tags.update(SAMPLE_INDICES=",".join(str(i) for i in self.sample_indices),
                        SAMPLE_CONTENT=self.content.value)
        return tags

    def sample_descriptions(self):
        what = "class" if self.kept_class is None else f"p({self.class_names[self.kept_class]})"
        return [f"sample {i} {what}" for i in self.sample_indices]

    def classify(self, classes, unc, valid):
        """uint8 class map of rows: arg-max ``classes``, "uncertain" where ``unc`` > τ, NoData where not ``valid``."""
        class_map = classes.astype(np.uint8)
        if self.reject_above is not None:
            class_map = reject_uncertain(class_map, unc, self.reject_above, self.uncertain_value)
            self.rejected += int(np.count_nonzero(valid & (class_map == self.uncertain_value)))
        class_map[~valid] = CLASS_NODATA
        return class_map

    def sample_bands(self, extra, invalid):
        """The K bands of rows from ``extra``, the merged kept-sample channels (K·C, or K with one class, after
        the moments): arg-max class or one class's probability."""
        if self.kept_class is None:
            k = len(self.sample_indices)
            bands = extra.reshape(k, self.n_classes, *extra.shape[1:]).argmax(axis=1).astype(np.uint8)
            bands[:, invalid] = CLASS_NODATA
        else:
            bands = extra.astype(np.float32)
            bands[:, invalid] = np.nan
        return bands
