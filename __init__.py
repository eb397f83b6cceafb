"""QGIS entry point. Imports nothing heavy: torch is loaded only when an algorithm runs."""


def classFactory(iface):  # noqa: N802 - QGIS's name
    from .plugin import SegUncertaintyPlugin

    return SegUncertaintyPlugin(iface)
