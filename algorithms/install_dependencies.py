"""``uncertainty:install_dependencies``: torch, torchvision, SMP (requirements.txt) into the plugin's folder."""

from pathlib import Path

from qgis.core import (
    QgsApplication,
    QgsProcessingException,
    QgsProcessingOutputNumber,
    QgsProcessingOutputString,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterEnum,
    QgsProcessingParameterString,
)

from .plugin_algorithm import PluginAlgorithm
from .qgis_compat import PARAMETER_FLAG_ADVANCED

__all__ = ["InstallDependenciesAlgorithm", "REQUIREMENTS", "plugin_dependency_root"]

REQUIREMENTS = Path(__file__).resolve().parent.parent / "requirements.txt"


def plugin_dependency_root():
    """The plugin's dependency folder in the current QGIS profile."""
    from ..dependencies.installer import dependency_root

    return dependency_root(QgsApplication.qgisSettingsDirPath())


class InstallDependenciesAlgorithm(PluginAlgorithm):
    VARIANT = "VARIANT"
    TORCH_INDEX_URL = "TORCH_INDEX_URL"
    FORCE = "FORCE"
    STATUS = "STATUS"
    FOLDER = "FOLDER"
    VARIANT_USED = "VARIANT_USED"
    SECONDS = "SECONDS"
    SIZE_MB = "SIZE_MB"
    PACKAGES = "PACKAGES"
    NEEDS_TORCH = False
    NAME = "install_dependencies"
    DISPLAY_NAME = "Install dependencies (torch, torchvision, SMP)"
    HELP = (
        "Installs the packages pinned in the plugin's requirements.txt into a folder of the current QGIS "
        "profile, with the Python that QGIS runs. numpy, GDAL, rasterio, PyQt and every package QGIS "
        "provides are never installed, upgraded or shadowed; this is checked after installing (same versions, "
        "same files) before the new folder is switched on. Cancel stops pip and keeps the previous "
        "installation. VARIANT auto picks a CUDA build when an NVIDIA driver can run it. TORCH_INDEX_URL is "
        "PyTorch's wheel index, needed for CUDA builds on Windows, older drivers on Linux and CPU-only Linux "
        "wheels. Restart QGIS if torch was already loaded."
    )

    def initAlgorithm(self, config=None):  # noqa: N802 - QGIS's name
        from ..dependencies.variants import VARIANTS

        self.addParameter(QgsProcessingParameterEnum(self.VARIANT, "Build of torch", options=list(VARIANTS),
                                                     defaultValue="auto", usesStaticStrings=True))
        advanced = [
            QgsProcessingParameterString(self.TORCH_INDEX_URL, "PyTorch wheel index (the channel such as cu128 "
                                         "is appended)", defaultValue="", optional=True),
            QgsProcessingParameterBoolean(self.FORCE, "Reinstall even when installed and matching",
                                          defaultValue=False),
        ]
        for parameter in advanced:
            parameter.setFlags(parameter.flags() | PARAMETER_FLAG_ADVANCED)
            self.addParameter(parameter)
        self.addOutput(QgsProcessingOutputString(self.STATUS, "Status (installed or already)"))
        self.addOutput(QgsProcessingOutputString(self.FOLDER, "Installation folder"))
        self.addOutput(QgsProcessingOutputString(self.VARIANT_USED, "Build installed (cpu or cuda)"))
        self.addOutput(QgsProcessingOutputNumber(self.SECONDS, "Seconds"))
        self.addOutput(QgsProcessingOutputNumber(self.SIZE_MB, "Size of the installation in MB"))
        self.addOutput(QgsProcessingOutputString(self.PACKAGES, "Packages installed"))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802 - QGIS's name
        from ..dependencies.errors import InstallCancelled
        from ..dependencies.installer import InstallRequest, activate, install
        from .engine_bridge import call_engine

        root = plugin_dependency_root()
        request = InstallRequest(
            REQUIREMENTS, self.parameterAsEnumString(parameters, self.VARIANT, context),
            self.parameterAsString(parameters, self.TORCH_INDEX_URL, context),
            self.parameterAsBool(parameters, self.FORCE, context),
        )

        def progress(percent, text):
            feedback.setProgress(percent)
            feedback.setProgressText(text)

        try:
            result = call_engine(install, root, request, log=feedback.pushConsoleInfo, progress=progress,
                                 is_cancelled=feedback.isCanceled)
        except QgsProcessingException as e:
            if isinstance(e.__cause__, InstallCancelled):
                feedback.reportError(str(e), False)
            raise
        if result.warning:
            feedback.reportError(result.warning, False)
        feedback.pushInfo(result.message)
        if result.overrides:
            feedback.pushInfo("Packages newer than QGIS's copies, loaded first for torch: "
                              + ", ".join(result.overrides))
        activate(root)
        import sys

        if "torch" in sys.modules and result.status == "installed":
            feedback.reportError("torch was already loaded in this QGIS session: restart QGIS to use the new "
                                 "installation.", False)
        return {
            self.STATUS: result.status,
            self.FOLDER: str(result.environment or ""),
            self.VARIANT_USED: result.variant,
            self.SECONDS: round(result.seconds, 1),
            self.SIZE_MB: round(result.size_bytes / 1e6, 1),
            self.PACKAGES: ", ".join(result.packages + result.overrides),
        }
