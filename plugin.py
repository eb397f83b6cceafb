"""The plugin object: puts the plugin's dependency folder on sys.path, adds the Processing provider and, in the
GUI, a menu with the dependency installer and the environment report. Works with iface=None (qgis_process)."""

from qgis.core import QgsApplication

__all__ = ["SegUncertaintyPlugin"]

MENU = "&Segmentation Uncertainty"


def _activate_dependencies():
    """Append the installed dependency folder to sys.path, behind QGIS's own packages (see dependencies/)."""
    from .dependencies.installer import activate, dependency_root

    try:
        activate(dependency_root(QgsApplication.qgisSettingsDirPath()))
    except OSError as e:  # an unreadable profile folder must not stop QGIS from loading the plugin
        QgsApplication.messageLog().logMessage(f"Dependency folder not activated: {e}", "Segmentation Uncertainty")


class SegUncertaintyPlugin:
    def __init__(self, iface):
        self.iface = iface
        self.provider = None
        self.actions = []
        _activate_dependencies()

    def initProcessing(self):  # noqa: N802 - QGIS's name
        from .algorithms.provider import UncertaintyProvider

        if self.provider is None:
            self.provider = UncertaintyProvider()
            QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self):  # noqa: N802 - QGIS's name
        self.initProcessing()
        if self.iface is None:
            return
        from qgis.PyQt.QtGui import QIcon
        from qgis.PyQt.QtWidgets import QAction

        from .algorithms.plugin_algorithm import ICON_PATH

        for text, algorithm in (("Install dependencies…", "uncertainty:install_dependencies"),
                                ("Check environment…", "uncertainty:check_environment")):
            action = QAction(QIcon(ICON_PATH), text, self.iface.mainWindow())
            action.triggered.connect(lambda _checked=False, a=algorithm: self._open_dialog(a))
            self.iface.addPluginToMenu(MENU, action)
            self.actions.append(action)

    @staticmethod
    def _open_dialog(algorithm):
        import processing

        processing.execAlgorithmDialog(algorithm, {})

    def unload(self):
        for action in self.actions:
            self.iface.removePluginMenu(MENU, action)
        self.actions = []
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
