"""Shared fixtures: the plugin importable as ``seg_uncertainty``, a headless QgsApplication, real data paths."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PLUGIN_DIR = ROOT / "build" / "plugins"
SHARED_DATA = ROOT.parent / "shared" / "data"
# Debian 12's qgis_process wrapper passes --noversioncheck, which qgis_process rejects: call the binary.
QGIS_PROCESS = "/usr/bin/qgis_process.bin"

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


def _link_plugin():
    PLUGIN_DIR.mkdir(parents=True, exist_ok=True)
    link = PLUGIN_DIR / "seg_uncertainty"
    if not link.exists():
        link.symlink_to(ROOT, target_is_directory=True)
    if str(PLUGIN_DIR) not in sys.path:
        sys.path.insert(0, str(PLUGIN_DIR))


_link_plugin()


#: The scene most tests share: a 150 × 130 px corner of the Landsat scene with NoData, water and land.
SCENE_WINDOW = (0, 250, 150, 130)  # column, row, width, height


def crop_raster(src_path, dst_path, window, **profile_changes):
    """Write ``window`` (a rasterio Window) of ``src_path`` to ``dst_path`` on the source's grid, as a plain
    GeoTIFF unless ``profile_changes`` say otherwise; returns ``dst_path``."""
    import rasterio

    with rasterio.open(src_path) as src:
        profile = src.profile.copy()
        profile.update(width=window.width, height=window.height, transform=src.window_transform(window))
        for key in ("blockxsize", "blockysize", "tiled"):
            profile.pop(key, None)
        profile.update(profile_changes)
        with rasterio.open(dst_path, "w", **profile) as dst:
            dst.write(src.read(window=window))
    return dst_path


def scene_crop(folder, name="crop.tif"):
    """The shared test scene (:data:`SCENE_WINDOW` of RGB.byte.tif) written to ``folder / name``."""
    from rasterio.windows import Window

    return crop_raster(shared_raster("RGB.byte.tif"), Path(folder) / name, Window(*SCENE_WINDOW))


def load_cpu_model(card):
    """``load_model(card, "cpu")`` with its warnings silenced (the "no dropout layer" and similar notes the test
    models are expected to raise)."""
    import warnings

    from seg_uncertainty.engine.model_loading import load_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return load_model(card, "cpu")


def run_algorithm(algorithm, parameters, feedback=None, context=None):
    """``processing.run`` with UserWarnings silenced (needs the ``qgis_app`` fixture)."""
    import warnings

    import processing

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return processing.run(algorithm, parameters, feedback=feedback, context=context)


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


@pytest.fixture(scope="module")
def one_torch_thread():
    """torch single-threaded for a module, then restored. On two cores shared with other jobs torch's second
    OpenMP thread waits for a time slice at every op (a 16×16 tile took 63 ms instead of 0.16 ms)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def qgis_process_env(profile, **extra):
    """Environment for qgis_process: this checkout as a plugin folder, its own profile, the venv's packages."""
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", QGIS_PLUGINPATH=str(PLUGIN_DIR),
               QGIS_CUSTOM_CONFIG_PATH=str(profile), **extra)
    site = next((ROOT / ".venv" / "lib").glob("python3*/site-packages"), None)
    if site is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    return env


def qgis_process_runner(profile, **extra_env):
    """Enable the plugin in ``profile`` and return ``run(algorithm, **parameters) -> (code, stdout, stderr)``."""
    if not Path(QGIS_PROCESS).exists():
        pytest.skip("qgis_process is not installed")
    env = qgis_process_env(profile, **extra_env)
    subprocess.run([QGIS_PROCESS, "plugins", "enable", "seg_uncertainty"], env=env, check=True,
                   capture_output=True, timeout=120)

    def run(algorithm, **parameters):
        args = [QGIS_PROCESS, "--json", "run", algorithm, "--"] + [f"{k}={v}" for k, v in parameters.items()]
        done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
        return done.returncode, done.stdout, done.stderr

    return run
