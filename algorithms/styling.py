"""Styles for the outputs: a paletted class map and a singleband pseudocolor uncertainty map.

Two routes, because QGIS has two: a ``.qml`` side-car beside each file (picked up when a user adds the layer,
and what ``qgis_process`` and script users get), and a layer post-processor that styles the layer QGIS loads
at the end of a toolbox or modeler run (Processing's own loader ignores side-car styles).
"""

from pathlib import Path

from qgis.core import (
    QgsColorRampShader,
    QgsPalettedRasterRenderer,
    QgsProcessingLayerPostProcessorInterface,
    QgsRasterLayer,
    QgsRasterShader,
    QgsSingleBandPseudoColorRenderer,
    QgsStyle,
)
from qgis.PyQt.QtGui import QColor

from .qgis_compat import SHADER_INTERPOLATION_LINEAR

__all__ = [
    "class_renderer",
    "uncertainty_renderer",
    "write_qml",
    "StylePostProcessor",
    "UNCERTAINTY_RAMP",
]

UNCERTAINTY_RAMP = "Viridis"


def class_renderer(layer, names, colors):
    """Paletted renderer: one entry per class id with the card's name and colour."""
    classes = [
        QgsPalettedRasterRenderer.Class(i, QColor(color), name) for i, (name, color) in enumerate(zip(names, colors))
    ]
    return QgsPalettedRasterRenderer(layer.dataProvider(), 1, classes)


def uncertainty_renderer(layer, maximum):
    """Singleband pseudocolor on band 1, a perceptual ramp (viridis) stretched linearly from 0 to ``maximum``."""
    maximum = float(maximum) if maximum and maximum > 0 else 1.0
    ramp = QgsStyle.defaultStyle().colorRamp(UNCERTAINTY_RAMP)
    shader_function = QgsColorRampShader(0.0, maximum, ramp, SHADER_INTERPOLATION_LINEAR)
    shader_function.classifyColorRamp(5, -1, layer.extent(), layer.dataProvider())
    shader = QgsRasterShader(0.0, maximum)
    shader.setRasterShaderFunction(shader_function)
    renderer = QgsSingleBandPseudoColorRenderer(layer.dataProvider(), 1, shader)
    renderer.setClassificationMin(0.0)
    renderer.setClassificationMax(maximum)
    return renderer


def write_qml(path, make_renderer):
    """Write ``<path stem>.qml`` beside the raster with the renderer ``make_renderer(layer)``; returns the qml path."""
    layer = QgsRasterLayer(str(path), Path(path).stem)
    if not layer.isValid():
        return None
    layer.setRenderer(make_renderer(layer))
    qml = str(Path(path).with_suffix(".qml"))
    message, ok = layer.saveNamedStyle(qml)
    return qml if ok else None


class StylePostProcessor(QgsProcessingLayerPostProcessorInterface):
    """Applies ``make_renderer`` to the layer QGIS loads; one instance per output, kept alive by ``keep``."""

    _alive = []

    def __init__(self, make_renderer, name=None):
        super().__init__()
        self.make_renderer = make_renderer
        self.name = name

    @classmethod
    def create(cls, make_renderer, name=None):
        instance = cls(make_renderer, name)
        cls._alive.append(instance)
        return instance

    def postProcessLayer(self, layer, context, feedback):  # noqa: N802 - QGIS's name
        if isinstance(layer, QgsRasterLayer):
            layer.setRenderer(self.make_renderer(layer))
            if self.name:
                layer.setName(self.name)
            layer.triggerRepaint()
