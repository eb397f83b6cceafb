"""What every algorithm of the provider shares: its icon and how QGIS clones it."""

from pathlib import Path

from qgis.core import QgsProcessingAlgorithm
from qgis.PyQt.QtGui import QIcon

__all__ = ["PluginAlgorithm", "ICON_PATH"]

ICON_PATH = str(Path(__file__).resolve().parent.parent / "resources" / "icon.svg")


class PluginAlgorithm(QgsProcessingAlgorithm):
    """Base of the plugin's algorithms: ungrouped in the provider, the plugin's icon, cloned by its class."""

    def createInstance(self):  # noqa: N802 - QGIS's name
        return type(self)()

    def group(self):
        return ""

    def groupId(self):  # noqa: N802 - QGIS's name
        return ""

    def icon(self):
        return QIcon(ICON_PATH)
