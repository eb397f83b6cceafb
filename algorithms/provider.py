"""The Processing provider ``uncertainty``: lists the plugin's algorithms by name."""

from qgis.core import QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

from .check_environment import CheckEnvironmentAlgorithm
from .create_model_card import CreateModelCardAlgorithm
from .evaluate import EvaluateUncertaintyAlgorithm
from .hotspots import HotspotsAlgorithm
from .install_dependencies import InstallDependenciesAlgorithm
from .mcdropout import McDropoutAlgorithm
from .plugin_algorithm import ICON_PATH
from .tta import TtaAlgorithm

__all__ = ["UncertaintyProvider"]



class UncertaintyProvider(QgsProcessingProvider):
    def id(self):
        return "uncertainty"

    def name(self):
        return "Segmentation uncertainty"

    def longName(self):  # noqa: N802 - QGIS's name
        return "Segmentation uncertainty (MC Dropout, TTA, calibration)"

    def icon(self):
        return QIcon(ICON_PATH)

    def svgIconPath(self):  # noqa: N802 - QGIS's name
        return ICON_PATH

    def loadAlgorithms(self):  # noqa: N802 - QGIS's name
        for algorithm in (McDropoutAlgorithm(), TtaAlgorithm(), EvaluateUncertaintyAlgorithm(), HotspotsAlgorithm(),
                          CreateModelCardAlgorithm(), InstallDependenciesAlgorithm(), CheckEnvironmentAlgorithm()):
            self.addAlgorithm(algorithm)
