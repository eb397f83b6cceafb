"""The tiled inference engine: plain Python, no QGIS. torch is imported only by the modules that run models.

Entry points: :func:`engine.model_card.load_model_card`, :func:`engine.model_loading.load_model`,
:func:`engine.model_sources.open_model` (any file MODEL accepts), :func:`engine.card_writer.write_model_card`,
:func:`engine.inference.predict_uncertainty` and :func:`engine.evaluation.evaluate_rasters`.
"""

from .errors import (
    DependencyMissingError,
    InferenceCancelled,
    InvalidOptionError,
    ModelCardError,
    ModelLoadError,
    OutputWriteError,
    RasterInputError,
    TileInferenceError,
    UncertaintyError,
)
from .options import DeviceChoice, TTAMode, UncertaintyMode

__all__ = [
    "UncertaintyError",
    "DependencyMissingError",
    "ModelCardError",
    "ModelLoadError",
    "RasterInputError",
    "OutputWriteError",
    "InvalidOptionError",
    "InferenceCancelled",
    "TileInferenceError",
    "UncertaintyMode",
    "TTAMode",
    "DeviceChoice",
]
