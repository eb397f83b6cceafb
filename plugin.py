"""The plugin object: adds the Processing provider. Works with iface=None, as qgis_process loads it."""

from qgis.core import QgsApplication

__all__ = ["SegUncertaintyPlugin"]


class SegUncertaintyPlugin:
    def __init__(self, iface):
        self.iface = iface
        self.provider = None

    def initProcessing(self):  # noqa: N802 - QGIS's name
        from .algorithms.provider import UncertaintyProvider

        if self.provider is None:
            self.provider = UncertaintyProvider()
            QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self):  # noqa: N802 - QGIS's name
        self.initProcessing()

    def unload(self):
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
