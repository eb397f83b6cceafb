"""What every algorithm of the provider shares: its icon and how QGIS clones it."""

from pathlib import Path

from qgis.core import QgsProcessingAlgorithm
from qgis.PyQt.QtGui import QIcon

__all__ = ["PluginAlgorithm", "ICON_PATH"]

ICON_PATH = str(Path(__file__).resolve().parent.parent / "resources" / "icon.svg")


class PluginAlgorithm(QgsProcessingAlgorithm):
    """Base of the plugin's algorithms: ungrouped in the provider, the plugin's icon, cloned by its class; the
    id, title and help come from the class constants ``NAME``, ``DISPLAY_NAME`` and ``HELP``."""

    NAME = ""
    DISPLAY_NAME = ""
    HELP = ""

    def name(self):
        return self.NAME

    def displayName(self):  # noqa: N802 - QGIS's name
        return self.DISPLAY_NAME

    def shortHelpString(self):  # noqa: N802 - QGIS's name
        return self.HELP

    def createInstance(self):  # noqa: N802 - QGIS's name
        return type(self)()

    def group(self):
        """Ungrouped (also as the group id): the provider lists its algorithms directly."""
        return ""

    groupId = group  # noqa: N815 - QGIS's name

    def icon(self):
        return QIcon(ICON_PATH)
