"""What ``uncertainty:mcdropout`` and ``uncertainty:tta`` share: parameters, output naming, the engine call.

Subclasses say whether dropout is sampled (``STOCHASTIC``), their TTA default and the suffix of the default
uncertainty file name. Output naming: with a folder as OUTPUT the class map is ``{input stem}.tif``; an
uncertainty (or probability) output left at its default next to a saved class map becomes
``{class stem}{UNCERTAINTY_SUFFIX}.tif`` (``{class stem}_probabilities.tif``) in the same folder.
"""

import json
import os

from qgis.core import (
    QgsFeatureRequest,
    QgsProcessing,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingOutputLayerDefinition,
    QgsProcessingOutputNumber,
    QgsProcessingOutputString,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterEnum,
    QgsProcessingParameterExtent,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterFile,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
    QgsProcessingUtils,
    QgsProperty,
)

from ..engine.constants import MAX_SAMPLES
from ..engine.model_sources import MODEL_FILE_FILTER
from ..engine.options import DeviceChoice, Precision, TTAMode, UncertaintyMode
from ..engine.output_naming import PROBABILITIES_SUFFIX, class_map_path, companion_path
from ..engine.panels import DEFAULT_PANEL_MEMORY_MB
from ..engine.sample_bands import SampleContent
from .engine_bridge import call_engine, explain_invalid_parameters, feedback_callbacks
from .plugin_algorithm import PluginAlgorithm
from .qgis_compat import (FILE_BEHAVIOR_FILE, NUMBER_DOUBLE, NUMBER_INTEGER, PARAMETER_FLAG_ADVANCED,
                          SOURCE_VECTOR_POLYGON)
from .styling import StylePostProcessor, class_renderer, uncertainty_renderer, write_qml

__all__ = ["SegmentationUncertaintyAlgorithm"]

_MISSING = object()


def _raw_destination(value):
    """The user's text for a destination parameter value (None for skipped)."""
    if isinstance(value, QgsProcessingOutputLayerDefinition):
        value = value.sink
    if isinstance(value, QgsProperty):
        value = value.staticValue()
    if value is None:
        return None
    return str(value)


def _redirect_loading(context, registered, path):
    """Make QGIS load ``path`` at the end of the run instead of ``registered`` (an output we renamed)."""
    if registered and context.willLoadLayerOnCompletion(registered):
        details = context.layerToLoadOnCompletionDetails(registered)
        layers = context.layersToLoadOnCompletion()
        layers.pop(registered, None)
        context.setLayersToLoadOnCompletion(layers)
        context.addLayerToLoadOnCompletion(
            path, QgsProcessingContext.LayerDetails(details.name, details.project, details.outputName)
        )


def _enum_values(enum_type):
    return [m.value for m in enum_type]


class SegmentationUncertaintyAlgorithm(PluginAlgorithm):
    INPUT = "INPUT"
    MODEL = "MODEL"
    WEIGHTS = "WEIGHTS"
    N_SAMPLES = "N_SAMPLES"
    UNCERTAINTY_MODE = "UNCERTAINTY_MODE"
    TTA_MODE = "TTA_MODE"
    TILE_SIZE = "TILE_SIZE"
    STRIDE = "STRIDE"
    BATCH_SIZE = "BATCH_SIZE"
    DEVICE = "DEVICE"
    SEED = "SEED"
    EXTENT = "EXTENT"
    MASK = "MASK"
    PRECISION = "PRECISION"
    PANEL_MEMORY = "PANEL_MEMORY"
    COG = "COG"
    SCHEDULER = "SCHEDULER"
    OUTPUT = "OUTPUT"
    OUTPUT_UNCERTAINTY = "OUTPUT_UNCERTAINTY"
    OUTPUT_PROBABILITIES = "OUTPUT_PROBABILITIES"
    REJECT_ABOVE = "REJECT_ABOVE"
    OUTPUT_SAMPLES = "OUTPUT_SAMPLES"
    SAMPLE_BANDS = "SAMPLE_BANDS"
    SAMPLE_CONTENT = "SAMPLE_CONTENT"
    SAMPLE_CLASS = "SAMPLE_CLASS"
    REJECTED_PIXELS = "REJECTED_PIXELS"
    UNCERTAINTY_MIN = "UNCERTAINTY_MIN"
    UNCERTAINTY_MEAN = "UNCERTAINTY_MEAN"
    UNCERTAINTY_MAX = "UNCERTAINTY_MAX"
    N_TILES = "N_TILES"
    SEED_USED = "SEED_USED"
    DEVICE_USED = "DEVICE_USED"

    STOCHASTIC = True
    NEEDS_TORCH = True
    TTA_OPTIONS = _enum_values(TTAMode)
    TTA_DEFAULT = "none"
    UNCERTAINTY_SUFFIX = "_mc_uncertainty"

    def initAlgorithm(self, config=None):  # noqa: N802 - QGIS's name
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, "Input raster"))
        self.addParameter(
            QgsProcessingParameterFile(
                self.MODEL, "Model: card, trainer config or Deepness ONNX", FILE_BEHAVIOR_FILE,
                fileFilter=MODEL_FILE_FILTER,
            )
        )
        self.addParameter(
            QgsProcessingParameterFile(
                self.WEIGHTS, "Checkpoint for a trainer config that leaves it ??? (optional)",
                FILE_BEHAVIOR_FILE, fileFilter="Checkpoint (*.ckpt *.pth *.pt *.safetensors)",
                optional=True,
            )
        )
        if self.STOCHASTIC:
            self.addParameter(
                QgsProcessingParameterNumber(
                    self.N_SAMPLES, "Number of MC Dropout samples (T)", NUMBER_INTEGER,
                    defaultValue=10, minValue=1, maxValue=MAX_SAMPLES,
                )
            )
        self.addParameter(
            QgsProcessingParameterEnum(
                self.UNCERTAINTY_MODE, "Uncertainty measure", options=_enum_values(UncertaintyMode),
                defaultValue="entropy", usesStaticStrings=True,
            )
        )
        self.addParameter(
            QgsProcessingParameterEnum(
                self.TTA_MODE, "Test-time augmentation", options=self.TTA_OPTIONS, defaultValue=self.TTA_DEFAULT,
                usesStaticStrings=True,
            )
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                self.TILE_SIZE, "Tile size in pixels (0 = from the model card)", NUMBER_INTEGER,
                defaultValue=0, minValue=0,
            )
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                self.STRIDE, "Stride between tiles in pixels (0 = from the model card)",
                NUMBER_INTEGER, defaultValue=0, minValue=0,
            )
        )
        self.addParameter(
            QgsProcessingParameterExtent(
                self.EXTENT, "Extent to compute (any CRS; empty = the whole raster, or the MASK's extent)",
                optional=True,
            )
        )
        self.addParameter(
            QgsProcessingParameterFeatureSource(
                self.MASK, "Area of interest: polygons (outputs are NoData outside them)",
                [SOURCE_VECTOR_POLYGON], optional=True,
            )
        )
        advanced = [
            QgsProcessingParameterEnum(
                self.PRECISION, "Model precision (float16: CUDA only; bfloat16: CUDA or CPUs with bfloat16)",
                options=_enum_values(Precision), defaultValue="float32", usesStaticStrings=True,
            ),
            QgsProcessingParameterNumber(
                self.PANEL_MEMORY, "Memory for one column panel of the run, MiB (bounds peak memory on wide rasters)",
                NUMBER_INTEGER, defaultValue=DEFAULT_PANEL_MEMORY_MB, minValue=16,
            ),
            QgsProcessingParameterBoolean(
                self.COG, "Write Cloud Optimized GeoTIFFs (otherwise GeoTIFFs with internal overviews)",
                defaultValue=False,
            ),
            QgsProcessingParameterNumber(
                self.BATCH_SIZE, "Tiles per batch", NUMBER_INTEGER, defaultValue=1, minValue=1
            ),
            QgsProcessingParameterEnum(
                self.DEVICE, "Device", options=_enum_values(DeviceChoice), defaultValue="auto", usesStaticStrings=True
            ),
            QgsProcessingParameterNumber(
                self.SEED, "Random seed (empty = draw one; it is written in the output tags)",
                NUMBER_INTEGER, optional=True, minValue=0,
            ),
            QgsProcessingParameterString(
                self.SCHEDULER, "Dask scheduler address, e.g. tcp://10.0.0.1:8786 (empty = run on this computer; "
                "input and outputs must be at the same paths on every worker)", defaultValue="", optional=True,
            ),
        ]
        self.addParameter(
            QgsProcessingParameterNumber(
                self.REJECT_ABOVE, "Mark pixels with uncertainty above this as 'uncertain' (empty = never)",
                NUMBER_DOUBLE, optional=True, minValue=0.0,
            )
        )
        if self.STOCHASTIC:
            advanced += [
                QgsProcessingParameterNumber(
                    self.SAMPLE_BANDS, "Sample bands K (of the V × T samples, evenly spaced)",
                    NUMBER_INTEGER, defaultValue=4, minValue=1, maxValue=256,
                ),
                QgsProcessingParameterEnum(
                    self.SAMPLE_CONTENT, "Sample bands hold", options=[m.value for m in SampleContent],
                    defaultValue="class", usesStaticStrings=True,
                ),
                QgsProcessingParameterNumber(
                    self.SAMPLE_CLASS, "Class id of the sample probabilities (SAMPLE_CONTENT probability)",
                    NUMBER_INTEGER, defaultValue=1, minValue=0, maxValue=254,
                ),
            ]
        for parameter in advanced:
            parameter.setFlags(parameter.flags() | PARAMETER_FLAG_ADVANCED)
            self.addParameter(parameter)
        self.addParameter(QgsProcessingParameterRasterDestination(self.OUTPUT, "Class map"))
        self.addParameter(
            QgsProcessingParameterRasterDestination(
                self.OUTPUT_UNCERTAINTY, "Uncertainty map", optional=True, createByDefault=True
            )
        )
        self.addParameter(
            QgsProcessingParameterRasterDestination(
                self.OUTPUT_PROBABILITIES, "Mean class probabilities", optional=True, createByDefault=False
            )
        )
        if self.STOCHASTIC:
            self.addParameter(
                QgsProcessingParameterRasterDestination(
                    self.OUTPUT_SAMPLES, "Individual samples (K bands)", optional=True, createByDefault=False
                )
            )
        self.addOutput(QgsProcessingOutputNumber(self.REJECTED_PIXELS, "Pixels marked uncertain"))
        self.addOutput(QgsProcessingOutputNumber(self.UNCERTAINTY_MIN, "Uncertainty minimum"))
        self.addOutput(QgsProcessingOutputNumber(self.UNCERTAINTY_MEAN, "Uncertainty mean"))
        self.addOutput(QgsProcessingOutputNumber(self.UNCERTAINTY_MAX, "Uncertainty maximum"))
        self.addOutput(QgsProcessingOutputNumber(self.N_TILES, "Number of tiles"))
        self.addOutput(QgsProcessingOutputNumber(self.SEED_USED, "Seed used"))
        self.addOutput(QgsProcessingOutputString(self.DEVICE_USED, "Device used"))

    def checkParameterValues(self, parameters, context):  # noqa: N802 - QGIS's name
        ok, message = super().checkParameterValues(parameters, context)
        return ok, (message if ok else explain_invalid_parameters(self, parameters, context, message))

    # --- parameters -> engine -------------------------------------------------------------------------------

    def _input_path(self, parameters, context):
        layer = self.parameterAsRasterLayer(parameters, self.INPUT, context)
        if layer is None or not layer.isValid():
            raise QgsProcessingException(
                f"INPUT: cannot open raster {parameters.get(self.INPUT)!r}. Choose an existing, readable raster."
            )
        if layer.providerType() != "gdal":
            raise QgsProcessingException(
                f"INPUT: layer {layer.name()} comes from the {layer.providerType()} provider; only GDAL rasters "
                "(files) can be read. Save it as a GeoTIFF first."
            )
        return layer.source()

    def _output_paths(self, parameters, context, input_path):
        """(classes, uncertainty or None, probabilities or None) following the naming convention."""
        classes = self.parameterAsOutputLayer(parameters, self.OUTPUT, context)
        if not classes:
            raise QgsProcessingException("OUTPUT: a class map destination is required.")
        named = class_map_path(classes, input_path)
        if named != classes:
            _redirect_loading(context, classes, named)
            classes = named
        classes_is_temporary = _raw_destination(parameters.get(self.OUTPUT)) in (None, QgsProcessing.TEMPORARY_OUTPUT)
        uncertainty = self._optional_output(
            parameters, context, self.OUTPUT_UNCERTAINTY, companion_path(classes, self.UNCERTAINTY_SUFFIX),
            classes_is_temporary, create_when_missing=True, classes=classes,
        )
        probabilities = self._optional_output(
            parameters, context, self.OUTPUT_PROBABILITIES, companion_path(classes, PROBABILITIES_SUFFIX),
            classes_is_temporary, create_when_missing=False,
        )
        return classes, uncertainty, probabilities

    def _optional_output(self, parameters, context, name, conventional, classes_is_temporary, *,
                         create_when_missing, classes=None):
        """Path of an optional output: skipped (None/""), the user's path, or the conventional name; an output
        created although the caller did not name it is loaded whenever the class map is."""
        raw = parameters.get(name, _MISSING)
        if raw is not _MISSING:
            raw = _raw_destination(raw)
            if raw in (None, ""):
                return None
            if raw != QgsProcessing.TEMPORARY_OUTPUT:
                return self.parameterAsOutputLayer(parameters, name, context)
        elif not create_when_missing:
            return None
        registered = self.parameterAsOutputLayer(parameters, name, context) if raw is not _MISSING else ""
        path = conventional
        if classes_is_temporary:
            path = registered or QgsProcessingUtils.generateTempFilename(os.path.basename(conventional))
        _redirect_loading(context, registered, path)
        if not registered and classes and context.willLoadLayerOnCompletion(classes):
            label = self.parameterDefinition(name).description()
            context.addLayerToLoadOnCompletion(path, QgsProcessingContext.LayerDetails(label, context.project(), name))
        return path

    def _tiling(self, parameters, context):
        tile = self.parameterAsInt(parameters, self.TILE_SIZE, context)
        stride = self.parameterAsInt(parameters, self.STRIDE, context)
        return ((tile, tile) if tile > 0 else None), ((stride, stride) if stride > 0 else None)

    def _area(self, parameters, context):
        """(extent in the input's CRS as (xmin, ymin, xmax, ymax) or None, polygons as GeoJSON mappings in the
        input's CRS or None). QGIS reprojects both (the extent's bounding box is densified)."""
        layer = self.parameterAsRasterLayer(parameters, self.INPUT, context)
        extent = None
        if parameters.get(self.EXTENT) not in (None, ""):
            rect = self.parameterAsExtent(parameters, self.EXTENT, context, layer.crs())
            if rect is not None and not rect.isNull() and not rect.isEmpty():
                extent = (rect.xMinimum(), rect.yMinimum(), rect.xMaximum(), rect.yMaximum())
        polygons = None
        if parameters.get(self.MASK) not in (None, ""):
            source = self.parameterAsSource(parameters, self.MASK, context)
            if source is None:
                raise QgsProcessingException(
                    f"MASK: cannot open {parameters.get(self.MASK)!r}. Choose a polygon layer."
                )
            request = QgsFeatureRequest().setDestinationCrs(layer.crs(), context.transformContext())
            polygons = [json.loads(f.geometry().asJson()) for f in source.getFeatures(request)
                        if f.hasGeometry() and not f.geometry().isEmpty()]
            if not polygons:
                raise QgsProcessingException("MASK: the layer holds no polygon. Choose a layer with polygons.")
        return extent, polygons

    def _seed(self, parameters, context):
        value = parameters.get(self.SEED)
        if value is None or value == "" or (isinstance(value, QgsProperty) and value.staticValue() in (None, "")):
            return None
        return self.parameterAsInt(parameters, self.SEED, context)

    def _left_at_default(self, parameters, name, default):
        value = parameters.get(name)
        if isinstance(value, QgsProperty):
            value = value.staticValue()
        return value is None or value == "" or str(value) == str(default)

    def _options_from_model(self, parameters, opened, n_samples, mode, tta, feedback):
        """N_SAMPLES, UNCERTAINTY_MODE and TTA_MODE: the file's values where the user left the defaults; every
        choice and tile/stride logged with where it came from."""
        from ..engine.model_sources import choose_option

        lines = []
        if self.STOCHASTIC:
            n_samples, line = choose_option(self.N_SAMPLES, n_samples, self._left_at_default(
                parameters, self.N_SAMPLES, 10), opened, "n_samples")
            lines.append(line)
        mode, line = choose_option(self.UNCERTAINTY_MODE, mode, self._left_at_default(
            parameters, self.UNCERTAINTY_MODE, "entropy"), opened, "uncertainty_mode")
        lines.append(line)
        file_tta = opened.defaults.get("tta_mode")
        if file_tta is None or file_tta.value in self.TTA_OPTIONS:
            tta, line = choose_option(self.TTA_MODE, tta, self._left_at_default(
                parameters, self.TTA_MODE, self.TTA_DEFAULT), opened, "tta_mode")
            lines.append(line)
        for name, key in ((self.TILE_SIZE, "tile"), (self.STRIDE, "stride")):
            if self._left_at_default(parameters, name, 0) and key in opened.defaults:
                lines.append(choose_option(name, None, True, opened, key)[1])
        for line in lines:
            feedback.pushInfo(line)
        return n_samples, mode, tta

    def _reject_above(self, parameters, context):
        value = parameters.get(self.REJECT_ABOVE)
        if isinstance(value, QgsProperty):
            value = value.staticValue()
        if value is None or value == "":
            return None
        return self.parameterAsDouble(parameters, self.REJECT_ABOVE, context)

    def _samples(self, parameters, context):
        """(path, SampleBands) of OUTPUT_SAMPLES, or (None, None) when skipped."""
        from ..engine.inference import SampleBands

        if not self.STOCHASTIC:
            return None, None
        raw = _raw_destination(parameters.get(self.OUTPUT_SAMPLES))
        if raw in (None, ""):
            return None, None
        path = self.parameterAsOutputLayer(parameters, self.OUTPUT_SAMPLES, context)
        content = self.parameterAsEnumString(parameters, self.SAMPLE_CONTENT, context)
        spec = SampleBands(self.parameterAsInt(parameters, self.SAMPLE_BANDS, context), content,
                           self.parameterAsInt(parameters, self.SAMPLE_CLASS, context))
        return path, spec

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802 - QGIS's name
        from ..engine.inference import OutputPaths, predict_uncertainty
        from ..engine.model_loading import resolve_device
        from ..engine.model_sources import check_mc_capable, open_model

        input_path = self._input_path(parameters, context)
        card_path = self.parameterAsFile(parameters, self.MODEL, context)
        mode = self.parameterAsEnumString(parameters, self.UNCERTAINTY_MODE, context)
        tta = self.parameterAsEnumString(parameters, self.TTA_MODE, context)
        device_choice = self.parameterAsEnumString(parameters, self.DEVICE, context)
        n_samples = self.parameterAsInt(parameters, self.N_SAMPLES, context) if self.STOCHASTIC else 1
        tile, stride = self._tiling(parameters, context)
        batch_size = self.parameterAsInt(parameters, self.BATCH_SIZE, context)
        seed = self._seed(parameters, context)
        classes, uncertainty, probabilities = self._output_paths(parameters, context, input_path)
        extent, polygons = self._area(parameters, context)
        precision = self.parameterAsEnumString(parameters, self.PRECISION, context)
        panel_memory = self.parameterAsInt(parameters, self.PANEL_MEMORY, context)
        cog = self.parameterAsBoolean(parameters, self.COG, context)
        reject_above = self._reject_above(parameters, context)
        samples_path, samples = self._samples(parameters, context)

        scheduler = (self.parameterAsString(parameters, self.SCHEDULER, context) or "").strip()

        feedback.setProgressText("Loading the model")
        weights = self.parameterAsFile(parameters, self.WEIGHTS, context) or None
        # On a cluster the workers load the model; here it is opened once on the CPU to check it and to read the
        # run defaults its file carries.
        device = call_engine(resolve_device, "cpu" if scheduler else device_choice)
        if not scheduler:
            self.report_unused_gpu(feedback)
        opened = call_engine(open_model, card_path, device, weights)
        loaded, card = opened.loaded, opened.card
        if self.STOCHASTIC:
            call_engine(check_mc_capable, loaded)
        for line in opened.describe():
            feedback.pushInfo(line)
        n_samples, mode, tta = self._options_from_model(parameters, opened, n_samples, mode, tta, feedback)
        for warning in loaded.warnings:
            if self.STOCHASTIC or "no dropout layer" not in warning:  # TTA needs no dropout
                feedback.reportError(f"Warning: {warning}", False)
        progress, is_cancelled, log = feedback_callbacks(feedback)
        options = dict(n_samples=n_samples, mode=mode, tta=tta, stochastic=self.STOCHASTIC, tile=tile, stride=stride,
                       batch_size=batch_size, seed=seed, progress=progress, is_cancelled=is_cancelled, log=log,
                       reject_above=reject_above)
        if scheduler:
            if opened.kind != "model card":
                raise QgsProcessingException(
                    f"SCHEDULER: a Dask cluster runs models given by a model card (YAML); MODEL is a {opened.kind}. "
                    "Fix: write a card for it with uncertainty:create_model_card, or leave SCHEDULER empty."
                )
            if samples_path:
                raise QgsProcessingException(
                    "OUTPUT_SAMPLES is not written on a Dask cluster yet. Fix: leave SCHEDULER empty to write the "
                    "sample bands on this computer, or skip OUTPUT_SAMPLES."
                )
            local_only = [name for name, used in ((self.EXTENT, extent is not None), (self.MASK, polygons is not None),
                                                  (self.PRECISION, precision != "float32"), (self.COG, cog)) if used]
            if local_only:
                raise QgsProcessingException(
                    f"{', '.join(local_only)}: not available on a Dask cluster yet. Fix: leave SCHEDULER empty to "
                    "run on this computer, or leave these parameters at their defaults."
                )
            summary = self._run_on_cluster(scheduler, input_path, card, OutputPaths(classes, uncertainty,
                                           probabilities), device_choice, options)
        else:
            summary = call_engine(predict_uncertainty, input_path, loaded,
                                  OutputPaths(classes, uncertainty, probabilities, samples_path), samples=samples,
                                  extent=extent, mask=polygons, precision=precision, panel_memory_mb=panel_memory,
                                  cog=cog, **options)
        if reject_above is not None:
            share = summary.rejected_pixels / max(summary.valid_pixels, 1)
            feedback.pushInfo(f"{summary.rejected_pixels} pixels ({100 * share:.2f} % of valid) have uncertainty "
                              f"above {reject_above:g}: class value {card.n_classes} ('uncertain').")
        feedback.pushInfo(
            f"Done in {summary.seconds:.1f} s ({summary.seconds / max(summary.megapixels, 1e-9):.2f} s/Mpx) on "
            f"{summary.device}; {summary.n_tiles} tiles, {summary.n_skipped} skipped as NoData; uncertainty "
            f"min {summary.uncertainty_min:.4g}, mean {summary.uncertainty_mean:.4g}, "
            f"max {summary.uncertainty_max:.4g}."
        )
        self._style_outputs(card, mode, summary, classes, uncertainty, probabilities,
                            rejecting=reject_above is not None)
        return {
            self.REJECTED_PIXELS: summary.rejected_pixels,
            self.OUTPUT: classes,
            self.OUTPUT_UNCERTAINTY: uncertainty,
            self.OUTPUT_PROBABILITIES: probabilities,
            **({self.OUTPUT_SAMPLES: samples_path} if self.STOCHASTIC else {}),
            self.UNCERTAINTY_MIN: summary.uncertainty_min,
            self.UNCERTAINTY_MEAN: summary.uncertainty_mean,
            self.UNCERTAINTY_MAX: summary.uncertainty_max,
            self.N_TILES: summary.n_tiles,
            self.SEED_USED: summary.seed,
            self.DEVICE_USED: summary.device,
        }

    @staticmethod
    def _run_on_cluster(scheduler, input_path, card, outputs, device_choice, options):
        """The run on the Dask cluster whose scheduler already runs at ``scheduler``; QGIS starts no process.

        Each worker loads the model itself; QGIS's cancel cancels the pending blocks and stops the running ones.
        Without dask installed this fails with how to install it (the local run needs no dask).
        """
        from ..engine.distributed import connect_scheduler, predict_uncertainty_distributed

        client = call_engine(connect_scheduler, scheduler)
        try:
            return call_engine(predict_uncertainty_distributed, client, input_path, card.path, outputs,
                               device=device_choice, **options)
        finally:
            client.close()

    # --- styling --------------------------------------------------------------------------------------------

    def _style_outputs(self, card, mode, summary, classes, uncertainty, probabilities, *, rejecting=False):
        from ..engine.abstention import UNCERTAIN_COLOR, UNCERTAIN_NAME

        names, colors = list(card.class_names), list(card.class_colors)
        if rejecting:  # the "uncertain" value C gets its own palette entry, after the classes
            names.append(UNCERTAIN_NAME)
            colors.append(UNCERTAIN_COLOR)
        self._styles = {classes: (lambda layer: class_renderer(layer, names, colors), "Classes")}
        if uncertainty:
            top = summary.uncertainty_max
            label = f"Uncertainty ({mode}{', ' + self.name() if not self.STOCHASTIC else ''})"
            self._styles[uncertainty] = (lambda layer: uncertainty_renderer(layer, top), label)
        for path, (make_renderer, _) in self._styles.items():
            write_qml(path, make_renderer)

    def postProcessAlgorithm(self, context, feedback):  # noqa: N802 - QGIS's name
        for path, (make_renderer, name) in getattr(self, "_styles", {}).items():
            if context.willLoadLayerOnCompletion(path):
                details = context.layerToLoadOnCompletionDetails(path)
                details.setPostProcessor(StylePostProcessor.create(make_renderer, name))
        return {}
