"""Styles for the outputs: a paletted class map, a singleband pseudocolor uncertainty map, graduated hotspots.

Two routes, because QGIS has two: a ``.qml`` side-car beside each file (picked up when a user adds the layer,
and what ``qgis_process`` and script users get), and a layer post-processor that styles the layer QGIS loads
at the end of a toolbox or modeler run (Processing's own loader ignores side-car styles).
"""

from pathlib import Path

from qgis.core import (
    QgsColorRampShader,
    QgsFillSymbol,
    QgsGraduatedSymbolRenderer,
    QgsPalettedRasterRenderer,
    QgsProcessingLayerPostProcessorInterface,
    QgsRasterLayer,
    QgsRasterShader,
    QgsRendererRange,
    QgsSingleBandPseudoColorRenderer,
    QgsStyle,
    QgsVectorLayer,
)
from qgis.PyQt.QtGui import QColor

from .qgis_compat import SHADER_INTERPOLATION_LINEAR

__all__ = [
    "class_renderer",
    "uncertainty_renderer",
    "write_qml",
    "graduated_renderer",
    "write_vector_qml",
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


def _save_style_beside(layer, path, make_renderer):
    """Give ``layer`` the renderer ``make_renderer(layer)`` and save it as ``<path stem>.qml``; the qml path."""
    if not layer.isValid():
        return None
    layer.setRenderer(make_renderer(layer))
    qml = str(Path(path).with_suffix(".qml"))
    message, ok = layer.saveNamedStyle(qml)
    return qml if ok else None


def write_qml(path, make_renderer):
    """Write ``<path stem>.qml`` beside the raster with the renderer ``make_renderer(layer)``; returns the qml path."""
    return _save_style_beside(QgsRasterLayer(str(path), Path(path).stem), path, make_renderer)


def graduated_renderer(field, values, n_classes=5, opacity=0.6):
    """Graduated fill renderer on ``field``: ``n_classes`` equal-interval ranges over [min, max] of ``values``,
    coloured along the uncertainty ramp, half-transparent so the image stays visible under the polygons."""
    finite = [float(v) for v in values if v == v]
    lo, hi = (min(finite), max(finite)) if finite else (0.0, 1.0)
    if hi <= lo:
        hi = lo + 1e-9
    ramp = QgsStyle.defaultStyle().colorRamp(UNCERTAINTY_RAMP)
    ranges = []
    for i in range(n_classes):
        lower, upper = lo + (hi - lo) * i / n_classes, lo + (hi - lo) * (i + 1) / n_classes
        symbol = QgsFillSymbol.createSimple({"color": ramp.color(i / max(n_classes - 1, 1)).name(),
                                              "outline_color": "#202020", "outline_width": "0.2"})
        symbol.setOpacity(opacity)
        ranges.append(QgsRendererRange(lower, upper, symbol, f"{lower:.4g} – {upper:.4g}"))
    return QgsGraduatedSymbolRenderer(field, ranges)


def write_vector_qml(source, make_renderer):
    """Write ``<file stem>.qml`` beside a vector file (``source`` may carry ``|layername=``); the qml path."""
    path = str(source).split("|")[0]
    return _save_style_beside(QgsVectorLayer(str(source), Path(path).stem, "ogr"), path, make_renderer)


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
        if isinstance(layer, (QgsRasterLayer, QgsVectorLayer)):
            layer.setRenderer(self.make_renderer(layer))
            if self.name:
                layer.setName(self.name)
            layer.triggerRepaint()
