"""``uncertainty:check_environment``: versions, locations, GPU and the device ``auto`` picks, as HTML."""

from qgis.core import (
    Qgis,
    QgsProcessingOutputBoolean,
    QgsProcessingOutputNumber,
    QgsProcessingOutputString,
    QgsProcessingParameterFileDestination,
)

from .install_dependencies import plugin_dependency_root
from .plugin_algorithm import PluginAlgorithm

__all__ = ["CheckEnvironmentAlgorithm"]


class CheckEnvironmentAlgorithm(PluginAlgorithm):
    OUTPUT_HTML = "OUTPUT_HTML"
    QGIS_VERSION = "QGIS_VERSION"
    PYTHON_VERSION = "PYTHON_VERSION"
    NUMPY_VERSION = "NUMPY_VERSION"
    GDAL_VERSION = "GDAL_VERSION"
    RASTERIO_VERSION = "RASTERIO_VERSION"
    TORCH_VERSION = "TORCH_VERSION"
    TORCHVISION_VERSION = "TORCHVISION_VERSION"
    SMP_VERSION = "SMP_VERSION"
    TORCH_LOCATION = "TORCH_LOCATION"
    CUDA_AVAILABLE = "CUDA_AVAILABLE"
    MPS_AVAILABLE = "MPS_AVAILABLE"
    CUDA_DEVICE_COUNT = "CUDA_DEVICE_COUNT"
    AUTO_DEVICE = "AUTO_DEVICE"
    AUTO_REASON = "AUTO_REASON"
    GPU_WARNING = "GPU_WARNING"
    NEEDS_TORCH = False
    NAME = "check_environment"
    DISPLAY_NAME = "Check environment (packages, GPU, device)"
    HELP = ("Reports QGIS, Python, numpy, GDAL, rasterio, torch, torchvision and segmentation-models-pytorch "
            "versions (or missing) and where each is loaded from, CUDA and MPS availability, GPU names and "
            "memory, and which device 'auto' picks and why. Warns in one sentence, with the fix, when an "
            "NVIDIA GPU is present but the installed torch cannot use it.")

    _VERSIONS = {NUMPY_VERSION: "numpy", GDAL_VERSION: "GDAL", RASTERIO_VERSION: "rasterio",
                 TORCH_VERSION: "torch", TORCHVISION_VERSION: "torchvision",
                 SMP_VERSION: "segmentation-models-pytorch"}

    def initAlgorithm(self, config=None):  # noqa: N802 - QGIS's name
        self.addParameter(QgsProcessingParameterFileDestination(self.OUTPUT_HTML, "Environment report",
                                                                "HTML files (*.html)"))
        self.addOutput(QgsProcessingOutputString(self.QGIS_VERSION, "QGIS version"))
        self.addOutput(QgsProcessingOutputString(self.PYTHON_VERSION, "Python version"))
        for key, label in self._VERSIONS.items():
            self.addOutput(QgsProcessingOutputString(key, f"{label} version (or missing)"))
        self.addOutput(QgsProcessingOutputString(self.TORCH_LOCATION, "torch loaded from"))
        self.addOutput(QgsProcessingOutputBoolean(self.CUDA_AVAILABLE, "CUDA available to torch"))
        self.addOutput(QgsProcessingOutputBoolean(self.MPS_AVAILABLE, "MPS available to torch"))
        self.addOutput(QgsProcessingOutputNumber(self.CUDA_DEVICE_COUNT, "CUDA devices"))
        self.addOutput(QgsProcessingOutputString(self.AUTO_DEVICE, "Device picked by auto"))
        self.addOutput(QgsProcessingOutputString(self.AUTO_REASON, "Why auto picks it"))
        self.addOutput(QgsProcessingOutputString(self.GPU_WARNING, "GPU warning (empty when none)"))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802 - QGIS's name
        from ..dependencies.environment import environment_report, report_html
        from ..dependencies.installer import active_environment

        env, _ = active_environment(plugin_dependency_root())
        report = environment_report(Qgis.QGIS_VERSION, env)
        path = self.parameterAsFileOutput(parameters, self.OUTPUT_HTML, context)
        with open(path, "w", encoding="utf-8") as f:
            f.write(report_html(report))
        for label, facts in report["packages"].items():
            feedback.pushInfo(f"{label}: {facts['version']} {facts['location']} {facts.get('error', '')}".rstrip())
        feedback.pushInfo(f"auto picks {report['auto_device']}: {report['auto_reason']}")
        if report["gpu_warning"]:
            feedback.reportError(report["gpu_warning"], False)
        torch = report["torch"]
        out = {key: report["packages"][label]["version"] for key, label in self._VERSIONS.items()}
        out.update({
            self.OUTPUT_HTML: path,
            self.QGIS_VERSION: report["qgis"],
            self.PYTHON_VERSION: report["python"]["version"],
            self.TORCH_LOCATION: report["packages"]["torch"]["location"],
            self.CUDA_AVAILABLE: bool(torch.get("cuda_available", False)),
            self.MPS_AVAILABLE: bool(torch.get("mps_available", False)),
            self.CUDA_DEVICE_COUNT: len(torch.get("devices", [])),
            self.AUTO_DEVICE: report["auto_device"],
            self.AUTO_REASON: report["auto_reason"],
            self.GPU_WARNING: report["gpu_warning"],
        })
        return out
