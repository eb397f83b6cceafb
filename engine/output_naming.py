"""Output file names, as pure functions of the destination the user gave and the input raster.

The convention: a class-map destination that is a folder (or whose name without extension is an existing folder)
becomes ``<folder>/<input stem>.tif``; the optional outputs sit beside the class map as
``<class stem><suffix>.tif`` (``_mc_uncertainty`` or ``_uncertainty``, and ``_probabilities``). The QGIS
algorithms add only what QGIS needs on top (temporary outputs, the load-on-completion list).

>>> companion_path("/data/out/scene.tif", "_probabilities")
'/data/out/scene_probabilities.tif'
"""

import os
from pathlib import Path

__all__ = ["class_map_path", "companion_path", "PROBABILITIES_SUFFIX"]

PROBABILITIES_SUFFIX = "_probabilities"


def class_map_path(destination: str, input_path: str) -> str:
    """Where the class map goes: ``destination``, or ``<folder>/<input stem>.tif`` when it names a folder."""
    folder = destination if os.path.isdir(destination) else os.path.splitext(destination)[0]
    if os.path.isdir(folder):
        return os.path.join(folder, Path(input_path).stem + ".tif")
    return destination


def companion_path(classes: str, suffix: str) -> str:
    """An optional output's conventional name beside the class map ``classes``: ``<class stem><suffix>.tif``."""
    return os.path.splitext(classes)[0] + suffix + ".tif"
