"""``uncertainty:evaluate`` — calibration, error detection and threshold sensitivity against reference masks."""

import json

from qgis.core import (
    QgsCoordinateTransform,
    QgsFeatureRequest,
    QgsProcessingException,
    QgsProcessingOutputNumber,
    QgsProcessingOutputFile,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterField,
    QgsProcessingParameterFile,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterMapLayer,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterLayer,
    QgsProperty,
    QgsRasterLayer,
    QgsVectorLayer,
)

from .engine_bridge import call_engine, feedback_callbacks
from .plugin_algorithm import PluginAlgorithm
from .qgis_compat import FIELD_TYPE_NUMERIC, NUMBER_DOUBLE, NUMBER_INTEGER, SOURCE_RASTER, SOURCE_VECTOR_POLYGON

__all__ = ["EvaluateUncertaintyAlgorithm"]

class EvaluateUncertaintyAlgorithm(PluginAlgorithm):
    PROBABILITIES = "PROBABILITIES"
    UNCERTAINTY = "UNCERTAINTY"
    REFERENCE = "REFERENCE"
    REFERENCE_FIELD = "REFERENCE_FIELD"
    N_BINS = "N_BINS"
    IGNORE_VALUE = "IGNORE_VALUE"
    TARGET_ERROR = "TARGET_ERROR"
    CALIBRATE = "CALIBRATE"
    MODEL = "MODEL"
    SAMPLES = "SAMPLES"
    OUTPUT_HTML = "OUTPUT_HTML"
    OUTPUT_JSON = "OUTPUT_JSON"
    CALIBRATED_MODEL = "CALIBRATED_MODEL"
    # decision outputs: output key -> (section of the engine's results, key in it)
    DECISIONS = {
        "TEMPERATURE": ("calibration", "temperature"),
        "ECE_CALIBRATED": ("calibration", "after", "ece"),
        "REJECT_THRESHOLD": ("abstention", "threshold"),
        "COVERAGE": ("abstention", "coverage"),
        "KEPT_ERROR_RATE": ("abstention", "error_rate"),
    }
    # numeric outputs: output key -> key of the engine's results
    FIGURES = {
        "ECE": "ece",
        "MCE": "mce",
        "BRIER": "brier",
        "NLL": "nll",
        "AUROC": "auroc",
        "AURC": "aurc",
        "DICE": "mean_dice",
        "ACCURACY": "accuracy",
        "BEST_THRESHOLD": "best_threshold",
    }

    NAME = "evaluate"
    DISPLAY_NAME = "Evaluate uncertainty and calibration"

    HELP = (
        "Compares mean class probabilities (and optionally an uncertainty map) with reference class ids over "
        "every valid pixel, in constant memory, and writes an HTML report and a JSON file.\n\n"
        "ECE/MCE: N_BINS equal-width bins of top-label confidence max p̄ (binary models: max(p, 1−p)) against "
        "correctness. Brier: multi-class Σ_c (p_c − y_c)² averaged over pixels, range [0, 2] (the JSON also "
        "gives the binary (p − y)², half of it). NLL: mean −log p̄_y. AUROC: the uncertainty as a detector of "
        "wrong pixels (0.5 = random, 1 = perfect). AURC: area under the risk–coverage curve. DICE: mean over "
        "classes present. BEST_THRESHOLD (binary): threshold in 0.1…0.9 of largest Dice.\n"
        "REFERENCE is a raster of class ids on the probability grid, or a polygon layer whose REFERENCE_FIELD "
        "holds the class id; pixels whose reference is IGNORE_VALUE are left out.\n\n"
        "Calibration (CALIBRATE): temperature scaling T fitted (minimum NLL) on a checkerboard half of the "
        "labelled pixels; ECE/NLL/Brier before and after on the other half. TEMPERATURE is T; with MODEL, a "
        "copy of the card with calibration: {temperature: T} is written beside it (CALIBRATED_MODEL), which "
        "mcdropout/tta apply to every sample.\n"
        "Abstention (TARGET_ERROR, e.g. 0.02): REJECT_THRESHOLD is the largest uncertainty threshold whose kept "
        "pixels (uncertainty ≤ threshold) have at most that error rate, COVERAGE the share they keep, "
        "KEPT_ERROR_RATE their error rate; feed REJECT_THRESHOLD to REJECT_ABOVE of mcdropout/tta with the same "
        "UNCERTAINTY_MODE. Without UNCERTAINTY the score is 1 − max p̄ (UNCERTAINTY_MODE confidence)."
    )

    def initAlgorithm(self, config=None):  # noqa: N802 - QGIS's name
        self.addParameter(QgsProcessingParameterRasterLayer(self.PROBABILITIES, "Mean class probabilities"))
        self.addParameter(QgsProcessingParameterRasterLayer(self.UNCERTAINTY, "Uncertainty map", optional=True))
        self.addParameter(
            QgsProcessingParameterMapLayer(
                self.REFERENCE, "Reference (raster of class ids or polygons)",
                types=[SOURCE_RASTER, SOURCE_VECTOR_POLYGON],
            )
        )
        self.addParameter(
            QgsProcessingParameterField(
                self.REFERENCE_FIELD, "Class id field (polygon reference)", parentLayerParameterName=self.REFERENCE,
                type=FIELD_TYPE_NUMERIC, optional=True,
            )
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                self.N_BINS, "Reliability bins", NUMBER_INTEGER, defaultValue=15, minValue=2,
                maxValue=1000,
            )
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                self.IGNORE_VALUE, "Reference value to ignore", NUMBER_INTEGER,
                defaultValue=255,
            )
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                self.TARGET_ERROR, "Target error rate among kept pixels (empty = no abstention threshold)",
                NUMBER_DOUBLE, optional=True, minValue=0.0, maxValue=1.0,
            )
        )
        self.addParameter(QgsProcessingParameterBoolean(self.CALIBRATE, "Fit temperature scaling", defaultValue=True))
        self.addParameter(
            QgsProcessingParameterFile(
                self.MODEL, "Model card to write a calibrated copy of (optional)",
                QgsProcessingParameterFile.Behavior.File, fileFilter="Model card (*.yaml *.yml)", optional=True,
            )
        )
        self.addParameter(
            QgsProcessingParameterRasterLayer(
                self.SAMPLES, "Individual samples (OUTPUT_SAMPLES of mcdropout, for the report)", optional=True
            )
        )
        self.addParameter(
            QgsProcessingParameterFileDestination(self.OUTPUT_HTML, "Report", fileFilter="HTML files (*.html)")
        )
        self.addParameter(
            QgsProcessingParameterFileDestination(self.OUTPUT_JSON, "Figures (JSON)", fileFilter="JSON files (*.json)")
        )
        for key in list(self.FIGURES) + list(self.DECISIONS):
            self.addOutput(QgsProcessingOutputNumber(key, key.replace("_", " ").title()))
        self.addOutput(QgsProcessingOutputFile(self.CALIBRATED_MODEL, "Calibrated model card"))

    def _raster_path(self, parameters, name, context):
        layer = self.parameterAsRasterLayer(parameters, name, context)
        if layer is None:
            return None
        if not layer.isValid() or layer.providerType() != "gdal":
            raise QgsProcessingException(f"{name}: {parameters.get(name)!r} is not a readable GDAL raster.")
        return layer.source()

    def _reference(self, parameters, context, probabilities_layer):
        """(reference raster path, None) or (None, [(geojson dict, class id), ...]) on the probability CRS."""
        layer = self.parameterAsLayer(parameters, self.REFERENCE, context)
        if layer is None or not layer.isValid():
            raise QgsProcessingException(f"REFERENCE: cannot open {parameters.get(self.REFERENCE)!r}.")
        if isinstance(layer, QgsRasterLayer):
            return layer.source(), None
        if not isinstance(layer, QgsVectorLayer):
            raise QgsProcessingException("REFERENCE must be a raster of class ids or a polygon layer.")
        field = self.parameterAsString(parameters, self.REFERENCE_FIELD, context)
        if not field or layer.fields().indexOf(field) < 0:
            raise QgsProcessingException(
                "REFERENCE_FIELD: a polygon reference needs the name of its numeric class id field."
            )
        transform = QgsCoordinateTransform(layer.crs(), probabilities_layer.crs(), context.transformContext())
        shapes = []
        for feature in layer.getFeatures(QgsFeatureRequest().setSubsetOfAttributes([field], layer.fields())):
            geometry = feature.geometry()
            value = feature[field]
            if geometry.isEmpty() or value is None:
                continue
            if layer.crs() != probabilities_layer.crs():
                geometry.transform(transform)
            shapes.append((json.loads(geometry.asJson()), int(value)))
        return None, shapes

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802 - QGIS's name
        from ..engine.evaluation import evaluate_rasters
        from ..engine.report import write_report

        probabilities = self._raster_path(parameters, self.PROBABILITIES, context)
        probabilities_layer = self.parameterAsRasterLayer(parameters, self.PROBABILITIES, context)
        uncertainty = self._raster_path(parameters, self.UNCERTAINTY, context)
        reference_path, shapes = self._reference(parameters, context, probabilities_layer)
        target = parameters.get(self.TARGET_ERROR)
        target = target.staticValue() if isinstance(target, QgsProperty) else target
        target = None if target in (None, "") else self.parameterAsDouble(parameters, self.TARGET_ERROR, context)
        calibrate = self.parameterAsBoolean(parameters, self.CALIBRATE, context)
        card = self.parameterAsFile(parameters, self.MODEL, context) or None
        samples = self._raster_path(parameters, self.SAMPLES, context)
        html = self.parameterAsFileOutput(parameters, self.OUTPUT_HTML, context)
        json_path = self.parameterAsFileOutput(parameters, self.OUTPUT_JSON, context)
        progress, is_cancelled, _ = feedback_callbacks(feedback)
        results = call_engine(
            evaluate_rasters,
            probabilities,
            reference_path=reference_path,
            reference_shapes=shapes,
            uncertainty_path=uncertainty,
            n_bins=self.parameterAsInt(parameters, self.N_BINS, context),
            ignore_value=self.parameterAsInt(parameters, self.IGNORE_VALUE, context),
            progress=lambda fraction, text: progress(100.0 * fraction, text),
            is_cancelled=is_cancelled,
            target_error=target,
            calibrate=calibrate or card is not None,
        )
        if samples:
            from ..engine.report_decisions import sample_window

            results["sample_window"] = call_engine(sample_window, samples, results)
        calibrated_card = None
        if card is not None:
            from ..engine.card_calibration import write_calibrated_card

            calibration = results["calibration"]
            if calibration["temperature_at_bound"]:
                feedback.reportError(
                    f"Warning: the temperature fit ended at T = {calibration['temperature']:.4g}, the edge of its "
                    "range: the reference does not pin T down; the calibrated card is written anyway.", False)
            calibrated_card = str(call_engine(write_calibrated_card, card, calibration["temperature"]).path)
            feedback.pushInfo(f"Calibrated model card: {calibrated_card}")
        call_engine(write_report, results, html, json_path)
        outputs = {self.OUTPUT_HTML: html, self.OUTPUT_JSON: json_path, self.CALIBRATED_MODEL: calibrated_card}
        for key, path in self.DECISIONS.items():
            value = results
            for part in path:
                value = value.get(part) if isinstance(value, dict) else None
            outputs[key] = None if value is None or value != value else float(value)
            feedback.pushInfo(f"{key}: {outputs[key]}")
        for key, figure in self.FIGURES.items():
            value = results.get(figure)
            outputs[key] = float(value) if value is not None else None
            feedback.pushInfo(f"{key}: {outputs[key]}")
        return outputs
