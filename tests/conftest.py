"""Shared fixtures: the plugin importable as ``seg_uncertainty``, a headless QgsApplication, real data paths."""

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PLUGIN_DIR = ROOT / "build" / "plugins"
SHARED_DATA = ROOT.parent / "shared" / "data"

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


def _link_plugin():
    PLUGIN_DIR.mkdir(parents=True, exist_ok=True)
    link = PLUGIN_DIR / "seg_uncertainty"
    if not link.exists():
        link.symlink_to(ROOT, target_is_directory=True)
    if str(PLUGIN_DIR) not in sys.path:
        sys.path.insert(0, str(PLUGIN_DIR))


_link_plugin()


def shared_raster(name):
    """Path of a raster in ../shared/data, or skip the test saying why."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"{path} is missing: the shared test data lies beside the repository only in the project checkout")
    return path


@pytest.fixture(scope="session")
def qgis_app(tmp_path_factory):
    """One headless QgsApplication with Processing and the plugin's provider, for the whole session."""
    os.environ["QGIS_CUSTOM_CONFIG_PATH"] = str(tmp_path_factory.mktemp("qgis_profile"))
    from qgis.core import QgsApplication

    app = QgsApplication.instance()
    if app is None:
        QgsApplication.setPrefixPath("/usr", True)
        app = QgsApplication([], False)
        app.initQgis()
    sys.path.insert(0, "/usr/share/qgis/python/plugins")
    import processing  # noqa: F401
    from processing.core.Processing import Processing

    Processing.initialize()
    import seg_uncertainty

    plugin = seg_uncertainty.classFactory(None)
    plugin.initProcessing()
    yield app
    plugin.unload()
