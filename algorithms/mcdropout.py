"""``uncertainty:mcdropout`` — MC Dropout segmentation with uncertainty (optionally × TTA)."""

from .segmentation_base import SegmentationUncertaintyAlgorithm

__all__ = ["McDropoutAlgorithm"]


class McDropoutAlgorithm(SegmentationUncertaintyAlgorithm):
    STOCHASTIC = True
    TTA_DEFAULT = "none"
    UNCERTAINTY_SUFFIX = "_mc_uncertainty"

    NAME = "mcdropout"
    DISPLAY_NAME = "MC Dropout segmentation with uncertainty"

    HELP = (
        "Runs a segmentation model tile by tile with its dropout layers active (Monte Carlo Dropout, BatchNorm "
        "frozen), N_SAMPLES times per tile and per TTA view, and writes the class map (argmax of the mean "
        "probability), an uncertainty map and optionally the mean class probabilities.\n\n"
        "Uncertainty measures: entropy = H[p̄] (total, 0..log C); mutual_information = H[p̄] − mean H[p_t] "
        "(epistemic, BALD); variance = Var_t of the predicted class's probability (0..0.25); margin = "
        "1 − (p̄₁ − p̄₂), the gap of the top two classes (0..1); confidence = 1 − max p̄ (0..1 − 1/C).\n"
        "REJECT_ABOVE: pixels with uncertainty above it get the class value C, 'uncertain' (feed it "
        "REJECT_THRESHOLD of evaluate). OUTPUT_SAMPLES: SAMPLE_BANDS of the samples, evenly spaced, as bands of "
        "the arg-max class or of p(SAMPLE_CLASS) — the samples that made the statistics. A card's "
        "calibration: {temperature: T} divides every sample's logits.\n"
        "Overlapping tiles are merged with a Gaussian window on the statistics, not on the maps. The same SEED "
        "gives the same output; without one, the seed drawn is written in the output tags.\n"
        "Default file names: {stem}.tif and {stem}_mc_uncertainty.tif."
    )
