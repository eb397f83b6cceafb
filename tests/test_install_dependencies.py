"""install_dependencies end to end: a fresh QGIS profile whose Python has no torch, the real pip, the real wheels.

qgis_process runs with PYTHONPATH emptied, so it sees only Debian's packages (no torch); pip takes torch 2.14.1
and torchvision 0.29.1 from this machine's local wheel store through pip's own configuration. The installed
plugin must then give exactly the pixels of the reference run made with the development virtual environment.
Installing takes minutes and about 5 GB: the installation is made once for the module.
"""

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio

from conftest import PLUGIN_DIR, QGIS_PROCESS, ROOT, qgis_process_runner, scene_crop
from models import save_smp
from seg_uncertainty.dependencies.installer import CHECKED_MODULES, active_environment, probe_python

SYSTEM_PYTHON = "/usr/bin/python3"


def _clean_env(profile):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    venv_bin = str(ROOT / ".venv" / "bin")
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p and not p.startswith(
        (venv_bin, str(Path(venv_bin).resolve()))))
    env.update(QT_QPA_PLATFORM="offscreen", QGIS_PLUGINPATH=str(PLUGIN_DIR), QGIS_CUSTOM_CONFIG_PATH=str(profile))
    return env


def _qgis_process(env, algorithm, timeout=600, **parameters):
    args = [QGIS_PROCESS, "--json", "run", algorithm, "--"] + [f"{k}={v}" for k, v in parameters.items()]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout)
    results = None
    if done.returncode == 0:
        results = json.loads(done.stdout[done.stdout.index("{"):])["results"]
    return done.returncode, results, done.stdout + done.stderr


def _system_python_facts(fingerprint):
    """numpy/GDAL/rasterio/PyQt as QGIS's Python (Debian's) imports them, with the files of ``fingerprint``."""
    path = json.loads(subprocess.run([SYSTEM_PYTHON, "-I", "-c", "import sys, json; print(json.dumps(sys.path))"],
                                     capture_output=True, text=True, check=True).stdout)
    facts = probe_python(SYSTEM_PYTHON, [p for p in path if p], fingerprint=fingerprint, modules=CHECKED_MODULES)
    return {"dists": {k: facts["dists"][k] for k in fingerprint}, "modules": facts["modules"]}


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    folder = tmp_path_factory.mktemp("install_scene")
    scene_crop(folder)
    card = save_smp(folder, "FPN", classes=3, dropout=0.25, tile=(64, 64), stride=(48, 48))
    return {"folder": folder, "raster": folder / "crop.tif", "card": card}


@pytest.fixture(scope="module")
def installed(tmp_path_factory, scene):
    """A fresh profile, checked to have no torch, then install_dependencies through qgis_process."""
    profile = tmp_path_factory.mktemp("fresh_profile")
    env = _clean_env(profile)
    subprocess.run([QGIS_PROCESS, "plugins", "enable", "seg_uncertainty"], env=env, check=True, capture_output=True,
                   timeout=120)
    protected = ["numpy", "gdal", "rasterio", "pyqt5"]
    before = _system_python_facts(protected)
    code, results, text = _qgis_process(env, "uncertainty:check_environment", OUTPUT_HTML=profile / "before.html")
    assert code == 0, text
    assert results["TORCH_VERSION"] == "missing" and results["AUTO_DEVICE"] == "none"
    # Without torch every model algorithm fails with one message naming the installer.
    code, _, text = _qgis_process(env, "uncertainty:mcdropout", INPUT=scene["raster"], MODEL=scene["card"],
                                  OUTPUT=scene["folder"] / "no_torch.tif")
    assert code != 0 and "uncertainty:install_dependencies" in text and not (scene["folder"] / "no_torch.tif").exists()
    started = time.monotonic()
    code, results, text = _qgis_process(env, "uncertainty:install_dependencies", timeout=3000, VARIANT="auto")
    seconds = time.monotonic() - started
    assert code == 0, text[-4000:]
    print(f"\ninstall_dependencies: {seconds:.0f} s wall, {results['SIZE_MB']:.0f} MB, {results['PACKAGES']}")
    yield {"profile": profile, "env": env, "before": before, "protected": protected, "results": results,
           "root": profile / "profiles" / "default" / "seg_uncertainty" / "python"}
    # About 5.5 GB: pytest keeps the temporary folders of its last three runs, and three of these most likely
    # filled a CI machine's disk once (the install then failed).
    shutil.rmtree(profile, ignore_errors=True)


def test_install_leaves_qgis_packages_unchanged(installed):
    results, root = installed["results"], installed["root"]
    assert results["STATUS"] == "installed" and results["VARIANT_USED"] == "cpu"  # no NVIDIA GPU here
    env_dir, manifest = active_environment(root)
    assert env_dir == Path(results["FOLDER"]) and env_dir.is_dir()
    assert [p for p in manifest["packages"] if p.startswith("torch==")] == ["torch==2.14.1"]
    # Same versions and same files (fingerprints of every owned file) as before installing.
    assert _system_python_facts(installed["protected"]) == installed["before"]
    # Nothing QGIS provides was put into the plugin's folders.
    names = {p.name.split("-")[0].lower() for p in env_dir.glob("*/*.dist-info")}
    assert "torch" in names and not names & {"numpy", "gdal", "rasterio", "pyqt5", "pyqt5_sip"}
    assert manifest["protected"]["numpy"] == installed["before"]["dists"]["numpy"]["version"]


def test_installed_plugin_reproduces_the_reference_run(installed, scene, tmp_path_factory):
    params = dict(INPUT=scene["raster"], MODEL=scene["card"], N_SAMPLES=3, SEED=11)
    out = tmp_path_factory.mktemp("installed_run")
    code, got, text = _qgis_process(installed["env"], "uncertainty:mcdropout", OUTPUT=out / "classes.tif",
                                    OUTPUT_PROBABILITIES=out / "p.tif", **params)
    assert code == 0, text[-3000:]
    reference_run = qgis_process_runner(tmp_path_factory.mktemp("reference_profile"))  # the dev venv's torch
    ref = tmp_path_factory.mktemp("reference_run")
    code, stdout, stderr = reference_run("uncertainty:mcdropout", OUTPUT=ref / "classes.tif",
                                         OUTPUT_PROBABILITIES=ref / "p.tif", **params)
    assert code == 0, stderr
    expected = json.loads(stdout[stdout.index("{"):])["results"]
    for key in ("OUTPUT", "OUTPUT_UNCERTAINTY", "OUTPUT_PROBABILITIES"):
        with rasterio.open(got[key]) as a, rasterio.open(expected[key]) as b:
            np.testing.assert_array_equal(a.read(), b.read())
    # check_environment in the installed profile: torch from the plugin's folder, auto picks the CPU.
    code, facts, text = _qgis_process(installed["env"], "uncertainty:check_environment", OUTPUT_HTML=out / "env.html")
    assert code == 0, text
    assert facts["TORCH_VERSION"].startswith("2.14.1") and facts["SMP_VERSION"] == "0.6.0"
    assert facts["TORCH_LOCATION"].startswith(str(installed["root"]))
    assert facts["NUMPY_VERSION"] == installed["before"]["modules"]["numpy"]["version"]
    assert (facts["AUTO_DEVICE"], facts["CUDA_AVAILABLE"], facts["GPU_WARNING"]) == ("cpu", False, "")
    assert facts["TORCH_VERSION"] in (out / "env.html").read_text()


def test_second_install_says_already_installed(installed):
    code, results, text = _qgis_process(installed["env"], "uncertainty:install_dependencies")
    assert code == 0, text
    assert results["STATUS"] == "already" and results["FOLDER"] == installed["results"]["FOLDER"]
    assert "Already installed and matching" in text


def _mcdropout(installed, scene, folder):
    code, got, text = _qgis_process(installed["env"], "uncertainty:mcdropout", INPUT=scene["raster"],
                                    MODEL=scene["card"], N_SAMPLES=3, SEED=11, OUTPUT=folder / "classes.tif")
    assert code == 0, text[-3000:]
    with rasterio.open(got["OUTPUT"]) as classes, rasterio.open(got["OUTPUT_UNCERTAINTY"]) as uncertainty:
        return classes.read(), uncertainty.read()


def test_cancelled_reinstall_keeps_the_previous_installation(installed, scene, tmp_path_factory):
    root = installed["root"]
    before_classes, before_uncertainty = _mcdropout(installed, scene, tmp_path_factory.mktemp("before_cancel"))
    pointer = (root / "active.json").read_text()
    done = subprocess.run([SYSTEM_PYTHON, str(ROOT / "tests" / "install_cancel_driver.py"), str(PLUGIN_DIR), "5"],
                          env=installed["env"], capture_output=True, text=True, timeout=1800)
    assert "@@RESULT@@" in done.stdout, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads(done.stdout[done.stdout.index("@@RESULT@@") + 10:])
    assert result["pip_pids"] and result["alive"] == [], result  # pip was installing, and was killed
    assert result["outcome"] != "finished"
    assert (root / "active.json").read_text() == pointer
    assert not list(root.glob(".staging-*"))
    assert [p.name for p in root.glob("env-*")] == [Path(installed["results"]["FOLDER"]).name]
    classes, uncertainty = _mcdropout(installed, scene, tmp_path_factory.mktemp("after_cancel"))
    np.testing.assert_array_equal(classes, before_classes)
    np.testing.assert_array_equal(uncertainty, before_uncertainty)
    assert np.nanmax(uncertainty) > 0  # a real uncertainty map (NaN is NoData)
