"""``uncertainty:tta`` — test-time augmentation segmentation with uncertainty (model in eval mode)."""

from .segmentation_base import SegmentationUncertaintyAlgorithm

__all__ = ["TtaAlgorithm"]


class TtaAlgorithm(SegmentationUncertaintyAlgorithm):
    STOCHASTIC = False
    TTA_OPTIONS = ["d4", "flip"]
    TTA_DEFAULT = "d4"
    UNCERTAINTY_SUFFIX = "_uncertainty"

    NAME = "tta"
    DISPLAY_NAME = "TTA segmentation with uncertainty"

    HELP = (
        "Runs a segmentation model (eval mode, deterministic) on several views of every tile — d4: 8 rotations "
        "and flips (square tiles only); flip: identity, horizontal, vertical, both — maps each prediction back "
        "with the exact inverse transform and treats the views as samples: the class map is the argmax of the "
        "mean probability, the uncertainty map the entropy, mutual information or variance over the views, or "
        "the margin or confidence of the mean.\n"
        "REJECT_ABOVE: pixels with uncertainty above it get the class value C, 'uncertain'. A card's "
        "calibration: {temperature: T} divides every view's logits.\n"
        "Default file names: {stem}.tif and {stem}_uncertainty.tif."
    )
