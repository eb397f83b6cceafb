"""Exceptions of the engine: one root, specific subclasses.

Every message names the argument, what was expected, what was received and the fix. The QGIS algorithms turn
any :class:`UncertaintyError` into a ``QgsProcessingException`` at their boundary; nothing below them knows Qt.
"""

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
    "ClusterError",
    "is_out_of_memory",
]


class UncertaintyError(Exception):
    """Root of every error the engine raises on purpose."""


class DependencyMissingError(UncertaintyError, ImportError):
    """A Python package the engine needs (torch, segmentation-models-pytorch) cannot be imported."""


class ModelCardError(UncertaintyError, ValueError):
    """The YAML model card is missing, unreadable or does not describe a model we can build."""


class ModelLoadError(UncertaintyError, ValueError):
    """The weights file is missing, corrupt, unsafe or does not fit the architecture of the card."""


class RasterInputError(UncertaintyError, ValueError):
    """The input raster cannot be read or does not fit the model (band count, data)."""


class OutputWriteError(UncertaintyError, OSError):
    """An output file cannot be written (missing or read-only folder, full disk)."""


class InvalidOptionError(UncertaintyError, ValueError):
    """A numeric or enumerated option is out of its valid range."""


class InferenceCancelled(UncertaintyError):
    """The caller asked to stop; outputs were removed."""


class TileInferenceError(UncertaintyError, RuntimeError):
    """The model raised while predicting one tile; the message names the tile."""


class ClusterError(UncertaintyError, RuntimeError):
    """The Dask cluster cannot be reached, has no worker, or lost a block for a reason other than its data."""


def is_out_of_memory(error: BaseException) -> bool:
    """True for a host ``MemoryError`` or a torch / CUDA out-of-memory error (recognised by its message, the
    only thing torch's CPU and CUDA allocators have in common)."""
    return isinstance(error, MemoryError) or "out of memory" in str(error).lower()
