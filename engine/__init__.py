"""The tiled inference engine: plain Python, no QGIS. torch is imported only by the modules that run models.

Entry points: :func:`engine.model_card.load_model_card`, :func:`engine.model_loading.load_model`,
:func:`engine.inference.predict_uncertainty` and :func:`engine.evaluation.evaluate_rasters`.
"""

from .threads import configure_openmp

configure_openmp()  # before any engine module imports torch (see engine.threads)

from .errors import (  # noqa: E402
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
from .options import DeviceChoice, TTAMode, UncertaintyMode  # noqa: E402

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
