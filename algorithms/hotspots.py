"""``uncertainty:hotspots`` — an uncertainty raster as ranked review polygons (grid cells or regions)."""

from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsFeature,
    QgsFeatureSink,
    QgsField,
    QgsFields,
    QgsGeometry,
    QgsProcessing,
    QgsProcessingException,
    QgsProcessingOutputNumber,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFeatureSink,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
    QgsWkbTypes,
)
from qgis.PyQt.QtCore import QVariant

from ..engine.options import HotspotMethod
from .engine_bridge import call_engine, feedback_callbacks
from .plugin_algorithm import PluginAlgorithm
from .qgis_compat import NUMBER_DOUBLE, NUMBER_INTEGER, PARAMETER_FLAG_ADVANCED
from .styling import StylePostProcessor, graduated_renderer, write_vector_qml

__all__ = ["HotspotsAlgorithm"]

# (field name, QVariant type, attribute of engine.hotspots.Hotspot)
_FIELDS = (
    ("rank", QVariant.Type.Int, "rank"),
    ("mean_unc", QVariant.Type.Double, "mean"),
    ("max_unc", QVariant.Type.Double, "max"),
    ("frac_above", QVariant.Type.Double, "frac_above"),
    ("n_pixels", QVariant.Type.Int, "n_pixels"),
    ("area", QVariant.Type.Double, "area"),
    ("sum_unc", QVariant.Type.Double, "unc_sum"),
    ("majority_class", QVariant.Type.Int, "majority_class"),
    ("class_name", QVariant.Type.String, "class_name"),
)


class HotspotsAlgorithm(PluginAlgorithm):
    INPUT = "INPUT"
    CLASSES = "CLASSES"
    METHOD = "METHOD"
    CELL_SIZE = "CELL_SIZE"
    THRESHOLD = "THRESHOLD"
    TOP_N = "TOP_N"
    IGNORE_CLASSES = "IGNORE_CLASSES"
    OUTPUT = "OUTPUT"
    N_HOTSPOTS = "N_HOTSPOTS"

    NAME = "hotspots"
    DISPLAY_NAME = "Review hotspots from an uncertainty map"
    HELP = (
        "Turns an uncertainty raster into polygons to review, most uncertain first.\n\n"
        "METHOD grid: square cells of CELL_SIZE × CELL_SIZE pixels, ranked by mean uncertainty. METHOD regions: "
        "connected areas (pixels sharing an edge) whose uncertainty is above THRESHOLD, ranked by their "
        "uncertainty mass (mean × pixels).\n"
        "Fields: rank (1 = review first), mean_unc, max_unc, frac_above (share of the unit's pixels above "
        "THRESHOLD), n_pixels, area (map units²), sum_unc, majority_class and class_name (from the optional "
        "CLASSES raster of the same run; -1 when none). TOP_N > 0 keeps the first N. NoData pixels are left "
        "out; units with none left are dropped. Output in the raster's CRS, styled by mean_unc."
    )

    def initAlgorithm(self, config=None):  # noqa: N802 - QGIS's name
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, "Uncertainty raster"))
        self.addParameter(QgsProcessingParameterRasterLayer(self.CLASSES, "Class map (optional)", optional=True))
        self.addParameter(
            QgsProcessingParameterEnum(
                self.METHOD, "Units", options=[m.value for m in HotspotMethod], defaultValue="grid",
                usesStaticStrings=True,
            )
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                self.CELL_SIZE, "Cell size in pixels (grid)", NUMBER_INTEGER,
                defaultValue=32, minValue=1,
            )
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                self.THRESHOLD, "Uncertainty threshold (required for regions)",
                NUMBER_DOUBLE, optional=True,
            )
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                self.TOP_N, "Keep the N most uncertain (0 = all)", NUMBER_INTEGER,
                defaultValue=0, minValue=0,
            )
        )
        ignore = QgsProcessingParameterString(
            self.IGNORE_CLASSES, "Class values not counted for the majority (comma-separated)", optional=True,
        )
        ignore.setFlags(ignore.flags() | PARAMETER_FLAG_ADVANCED)
        self.addParameter(ignore)
        self.addParameter(
            QgsProcessingParameterFeatureSink(
                self.OUTPUT, "Review hotspots", QgsProcessing.SourceType.TypeVectorPolygon, defaultValue=None
            )
        )
        self.addOutput(QgsProcessingOutputNumber(self.N_HOTSPOTS, "Number of hotspots written"))

    def _raster(self, parameters, name, context):
        layer = self.parameterAsRasterLayer(parameters, name, context)
        if layer is None:
            return None
        if not layer.isValid() or layer.providerType() != "gdal":
            raise QgsProcessingException(
                f"{name}: {parameters.get(name)!r} is not a readable GDAL raster. Choose a raster file."
            )
        return layer

    def _threshold(self, parameters, context):
        value = parameters.get(self.THRESHOLD)
        if value is None or value == "":
            return None
        return self.parameterAsDouble(parameters, self.THRESHOLD, context)

    def _ignore_classes(self, parameters, context):
        text = self.parameterAsString(parameters, self.IGNORE_CLASSES, context) or ""
        try:
            return tuple(int(v) for v in text.replace(";", ",").split(",") if v.strip())
        except ValueError as e:
            raise QgsProcessingException(
                f"IGNORE_CLASSES: expected whole numbers separated by commas (e.g. 254); got {text!r}."
            ) from e

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802 - QGIS's name
        from ..engine.hotspots import find_hotspots

        layer = self._raster(parameters, self.INPUT, context)
        classes = self._raster(parameters, self.CLASSES, context)
        progress, is_cancelled, _ = feedback_callbacks(feedback)
        result = call_engine(
            find_hotspots,
            layer.source(),
            classes_path=classes.source() if classes is not None else None,
            method=self.parameterAsEnumString(parameters, self.METHOD, context),
            cell_size=self.parameterAsInt(parameters, self.CELL_SIZE, context),
            threshold=self._threshold(parameters, context),
            top_n=self.parameterAsInt(parameters, self.TOP_N, context),
            ignore_classes=self._ignore_classes(parameters, context),
            progress=lambda fraction, text: progress(100.0 * fraction, text),
            is_cancelled=is_cancelled,
        )
        fields = QgsFields()
        for name, kind, _ in _FIELDS:
            fields.append(QgsField(name, kind))
        crs = QgsCoordinateReferenceSystem.fromWkt(result.crs_wkt) if result.crs_wkt else layer.crs()
        sink, dest = self.parameterAsSink(parameters, self.OUTPUT, context, fields, QgsWkbTypes.Type.MultiPolygon, crs)
        if sink is None:
            raise QgsProcessingException("OUTPUT: the hotspot layer cannot be created. Choose a writable file.")
        for unit in result.hotspots:
            geometry = QgsGeometry.fromWkt(unit.wkt)
            if not geometry.isGeosValid():
                geometry = geometry.makeValid()
            geometry.convertToMultiType()
            feature = QgsFeature(fields)
            feature.setGeometry(geometry)
            feature.setAttributes([getattr(unit, attribute) for _, _, attribute in _FIELDS])
            if not sink.addFeature(feature, QgsFeatureSink.Flag.FastInsert):
                raise QgsProcessingException(f"OUTPUT: cannot write hotspot {unit.rank} ({sink.lastError()}).")
        del sink  # flush before the side-car style reads the file
        feedback.pushInfo(
            f"{len(result.hotspots)} of {result.n_units} {result.method} units written"
            + (f" (threshold {result.threshold:g})" if result.threshold is not None else "")
        )
        values = [unit.mean for unit in result.hotspots]
        make_renderer = lambda vector_layer: graduated_renderer("mean_unc", values)  # noqa: E731
        self._style = (dest, make_renderer)
        write_vector_qml(dest, make_renderer)
        return {self.OUTPUT: dest, self.N_HOTSPOTS: len(result.hotspots)}

    def postProcessAlgorithm(self, context, feedback):  # noqa: N802 - QGIS's name
        dest, make_renderer = getattr(self, "_style", (None, None))
        if dest and context.willLoadLayerOnCompletion(dest):
            details = context.layerToLoadOnCompletionDetails(dest)
            details.setPostProcessor(StylePostProcessor.create(make_renderer, "Review hotspots"))
        return {}
