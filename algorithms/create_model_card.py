"""``uncertainty:create_model_card`` — write a model card from a weights file and a few choices."""

from qgis.core import (
    QgsProcessingException,
    QgsProcessingOutputNumber,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFile,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterString,
)

from ..engine.model_card import ALLOWED_ARCHITECTURES
from .engine_bridge import call_engine
from .plugin_algorithm import PluginAlgorithm
from .qgis_compat import FILE_BEHAVIOR_FILE, NUMBER_DOUBLE, NUMBER_INTEGER

__all__ = ["CreateModelCardAlgorithm"]

_PROGRAM = "whole program (TorchScript .pt / ONNX / torch.export .pt2)"
_SCALINGS = ["divide by 255", "none (raw values)", "mean/std per band (raw units)"]


def _numbers(text, name, kind=float):
    try:
        return [kind(v) for v in str(text).replace(";", ",").split(",") if v.strip()]
    except ValueError as e:
        raise QgsProcessingException(f"{name}: expected comma-separated numbers; got {text!r}. Fix: e.g. 1,2,3.") from e


class CreateModelCardAlgorithm(PluginAlgorithm):
    WEIGHTS = "WEIGHTS"
    ARCHITECTURE = "ARCHITECTURE"
    ENCODER = "ENCODER"
    MODEL_ARGUMENTS = "MODEL_ARGUMENTS"
    DROPOUT = "DROPOUT"
    BANDS = "BANDS"
    SCALING = "SCALING"
    MEAN = "MEAN"
    STD = "STD"
    CLASS_NAMES = "CLASS_NAMES"
    CLASS_COLORS = "CLASS_COLORS"
    TILE_SIZE = "TILE_SIZE"
    STRIDE = "STRIDE"
    OUTPUT = "OUTPUT"
    N_PARAMETERS = "N_PARAMETERS"
    N_DROPOUT_LAYERS = "N_DROPOUT_LAYERS"
    OUTPUT_CHANNELS = "OUTPUT_CHANNELS"

    NAME = "create_model_card"
    DISPLAY_NAME = "Create model card"
    HELP = (
        "Writes a YAML model card for a weights file: a state_dict (.pth/.ckpt/.safetensors, with the SMP "
        "architecture and encoder it was trained with), or a whole program (TorchScript .pt, ONNX, "
        "torch.export .pt2). The card is loaded once before it is saved (keys, shapes, a forward pass); the "
        "log reports the parameter count, the dropout layers MC Dropout can sample and the output channels.\n"
        "MODEL_ARGUMENTS: further SMP arguments as YAML, e.g. {decoder_channels: [128, 64, 32, 16, 8]}. "
        "Stride 0: half the tile."
    )

    def initAlgorithm(self, config=None):  # noqa: N802 - QGIS's name
        self.addParameter(QgsProcessingParameterFile(
            self.WEIGHTS, "Weights file", FILE_BEHAVIOR_FILE,
            fileFilter="Weights (*.pth *.pt *.ckpt *.safetensors *.onnx *.pt2 *.ts)"))
        self.addParameter(QgsProcessingParameterEnum(
            self.ARCHITECTURE, "SMP architecture", options=[_PROGRAM, *ALLOWED_ARCHITECTURES], defaultValue=_PROGRAM,
            usesStaticStrings=True))
        self.addParameter(QgsProcessingParameterString(self.ENCODER, "SMP encoder", defaultValue="resnet34",
                                                       optional=True))
        self.addParameter(QgsProcessingParameterString(self.MODEL_ARGUMENTS, "Further SMP arguments (YAML mapping)",
                                                       optional=True))
        self.addParameter(QgsProcessingParameterNumber(
            self.DROPOUT, "Dropout rate for MC Dropout (empty = the architecture's own)",
            NUMBER_DOUBLE, optional=True, minValue=0.0, maxValue=0.99))
        self.addParameter(QgsProcessingParameterString(self.BANDS, "Bands (1-based, model order)",
                                                       defaultValue="1,2,3"))
        self.addParameter(QgsProcessingParameterEnum(self.SCALING, "Scaling", options=_SCALINGS,
                                                     defaultValue=_SCALINGS[0], usesStaticStrings=True))
        self.addParameter(QgsProcessingParameterString(self.MEAN, "Mean per band (raw units)", optional=True))
        self.addParameter(QgsProcessingParameterString(self.STD, "Std per band (raw units)", optional=True))
        self.addParameter(QgsProcessingParameterString(self.CLASS_NAMES, "Class names (comma-separated)",
                                                       optional=True))
        self.addParameter(QgsProcessingParameterString(self.CLASS_COLORS, "Class colours (#rrggbb, comma-separated)",
                                                       optional=True))
        self.addParameter(QgsProcessingParameterNumber(self.TILE_SIZE, "Tile size in pixels",
                                                       NUMBER_INTEGER, defaultValue=512,
                                                       minValue=1))
        self.addParameter(QgsProcessingParameterNumber(self.STRIDE, "Stride in pixels (0 = half the tile)",
                                                       NUMBER_INTEGER, defaultValue=0,
                                                       minValue=0))
        self.addParameter(QgsProcessingParameterFileDestination(self.OUTPUT, "Model card", "Model card (*.yaml)"))
        self.addOutput(QgsProcessingOutputNumber(self.N_PARAMETERS, "Parameters"))
        self.addOutput(QgsProcessingOutputNumber(self.N_DROPOUT_LAYERS, "Dropout layers"))
        self.addOutput(QgsProcessingOutputNumber(self.OUTPUT_CHANNELS, "Output channels"))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802 - QGIS's name
        import yaml

        from ..engine.card_writer import write_model_card

        architecture = self.parameterAsEnumString(parameters, self.ARCHITECTURE, context)
        scaling = self.parameterAsEnumString(parameters, self.SCALING, context)
        arguments_text = self.parameterAsString(parameters, self.MODEL_ARGUMENTS, context)
        try:
            arguments = yaml.safe_load(arguments_text) if arguments_text.strip() else None
        except yaml.YAMLError as e:
            raise QgsProcessingException(f"MODEL_ARGUMENTS: expected a YAML mapping; {e}") from e
        if arguments is not None and not isinstance(arguments, dict):
            raise QgsProcessingException(f"MODEL_ARGUMENTS: expected a YAML mapping such as {{decoder_channels: "
                                         f"[128, 64, 32, 16, 8]}}; got {arguments_text!r}.")
        dropout = parameters.get(self.DROPOUT)
        dropout = None if dropout in (None, "") else self.parameterAsDouble(parameters, self.DROPOUT, context)
        mean = std = scale = None
        if scaling == _SCALINGS[0]:
            scale = 255
        elif scaling == _SCALINGS[2]:
            mean = _numbers(self.parameterAsString(parameters, self.MEAN, context), self.MEAN)
            std = _numbers(self.parameterAsString(parameters, self.STD, context), self.STD)
        names = [n for n in self.parameterAsString(parameters, self.CLASS_NAMES, context).split(",") if n.strip()]
        colors = [c.strip() for c in self.parameterAsString(parameters, self.CLASS_COLORS, context).split(",")
                  if c.strip()]
        tile = self.parameterAsInt(parameters, self.TILE_SIZE, context)
        stride = self.parameterAsInt(parameters, self.STRIDE, context)
        report = call_engine(
            write_model_card,
            self.parameterAsFileOutput(parameters, self.OUTPUT, context),
            self.parameterAsFile(parameters, self.WEIGHTS, context),
            bands=_numbers(self.parameterAsString(parameters, self.BANDS, context), self.BANDS, int),
            architecture=None if architecture == _PROGRAM else architecture,
            encoder_name=self.parameterAsString(parameters, self.ENCODER, context).strip() or None,
            model_arguments=arguments,
            dropout=dropout,
            scale=scale,
            mean=mean,
            std=std,
            class_names=names or None,
            class_colors=colors or None,
            tile=(tile, tile),
            stride=(stride, stride) if stride > 0 else None,
        )
        for warning in report.warnings:
            feedback.reportError(f"Warning: {warning}", False)
        feedback.pushInfo(report.summary())
        return {
            self.OUTPUT: str(report.path),
            self.N_PARAMETERS: report.n_parameters if report.n_parameters is not None else -1,
            self.N_DROPOUT_LAYERS: report.n_dropout_layers,
            self.OUTPUT_CHANNELS: report.out_channels,
        }
