"""The tiled inference engine: plain Python, no QGIS. torch is imported only by the modules that run models.

Entry points: :func:`engine.model_card.load_model_card`, :func:`engine.model_loading.load_model`,
:func:`engine.model_sources.open_model` (any file MODEL accepts), :func:`engine.card_writer.write_model_card`,
:func:`engine.inference.predict_uncertainty` and :func:`engine.evaluation.evaluate_rasters`.
"""

from . import errors as _errors
from .errors import (DependencyMissingError, InferenceCancelled, InvalidOptionError, ModelCardError,  # noqa: F401
                     ModelLoadError, OutputWriteError, RasterInputError, TileInferenceError, UncertaintyError,
                     is_out_of_memory)
from .options import DeviceChoice, TTAMode, UncertaintyMode
from .threads import configure_openmp

# Before any engine module imports torch (see engine.threads); the modules above do not import it.
configure_openmp()

__all__ = [*_errors.__all__, "UncertaintyMode", "TTAMode", "DeviceChoice"]
