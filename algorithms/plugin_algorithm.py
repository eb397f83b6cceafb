"""What every algorithm of the provider shares: its icon, how QGIS clones it, and the torch check."""

import importlib.util
import platform
from pathlib import Path

from qgis.core import QgsProcessingAlgorithm, QgsProcessingException
from qgis.PyQt.QtGui import QIcon

__all__ = ["PluginAlgorithm", "ICON_PATH", "TORCH_MISSING"]

ICON_PATH = str(Path(__file__).resolve().parent.parent / "resources" / "icon.svg")
TORCH_MISSING = (
    "torch is not installed in the Python that QGIS runs (Python {python}). Fix: run the algorithm "
    "uncertainty:install_dependencies (Processing toolbox > Segmentation uncertainty > Install dependencies, "
    "or: qgis_process run uncertainty:install_dependencies), then run this algorithm again; or, from a shell "
    "with that Python, in the plugin folder: python3 -m pip install -r requirements.txt -c constraints.txt."
)


class PluginAlgorithm(QgsProcessingAlgorithm):
    """Base of the plugin's algorithms: ungrouped in the provider, the plugin's icon, cloned by its class; the
    id, title and help come from the class constants ``NAME``, ``DISPLAY_NAME`` and ``HELP``.

    An algorithm that runs a model sets ``NEEDS_TORCH = True``: it then fails before it starts, with one message
    naming ``install_dependencies``, when torch cannot be found.
    """

    NAME = ""
    DISPLAY_NAME = ""
    HELP = ""
    NEEDS_TORCH = False

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

    def prepareAlgorithm(self, parameters, context, feedback):  # noqa: N802 - QGIS's name
        if self.NEEDS_TORCH:
            importlib.invalidate_caches()
            if importlib.util.find_spec("torch") is None:
                raise QgsProcessingException(TORCH_MISSING.format(python=platform.python_version()))
        return super().prepareAlgorithm(parameters, context, feedback)

    @staticmethod
    def report_unused_gpu(feedback):
        """Log, as a warning, the one sentence saying a GPU is present but torch cannot use it (if so)."""
        from ..dependencies.environment import gpu_unused_warning

        warning = gpu_unused_warning()
        if warning:
            feedback.reportError(f"Warning: {warning}", False)
