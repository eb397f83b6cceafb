"""The plugin ZIP installs as one folder and qgis_process then lists the algorithms; metadata is complete."""

import configparser
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import ROOT

REQUIRED_METADATA = ["name", "qgisMinimumVersion", "description", "about", "version", "author", "email",
                     "repository", "tracker", "homepage", "tags", "icon", "hasProcessingProvider"]


def test_metadata_has_the_fields_the_plugin_repository_requires():
    meta = configparser.ConfigParser()
    meta.read(ROOT / "metadata.txt")
    general = meta["general"]
    assert [key for key in REQUIRED_METADATA if not general.get(key)] == []
    assert general["hasProcessingProvider"] == "yes"
    assert general["qgisMinimumVersion"] == "3.22"
    # QGIS 4 lists and loads the plugin only when the maximum is 4.x (without it, 3.99 is assumed).
    assert general["qgisMaximumVersion"] == "4.99"
    assert (ROOT / general["icon"]).exists()


def test_package_zip_installs_and_lists_algorithms(tmp_path):
    """Installed from the ZIP into a QGIS whose Python has no torch (no venv on PYTHONPATH): the algorithms are
    listed, and running one fails with the install instructions."""
    archive = tmp_path / "seg_uncertainty.zip"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "package.py"), str(archive)], check=True,
                   capture_output=True)
    names = zipfile.ZipFile(archive).namelist()
    assert {name.split("/")[0] for name in names} == {"seg_uncertainty"}
    assert "seg_uncertainty/metadata.txt" in names and "seg_uncertainty/engine/inference.py" in names
    assert not [n for n in names if n.split("/")[1] in ("tests", "benchmarks", "build", ".ci", "Makefile")]
    plugins = tmp_path / "plugins"
    zipfile.ZipFile(archive).extractall(plugins)
    if not Path("/usr/bin/qgis_process.bin").exists():
        pytest.skip("qgis_process is not installed")
    env = dict({k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, QT_QPA_PLATFORM="offscreen",
               QGIS_PLUGINPATH=str(plugins),
               QGIS_CUSTOM_CONFIG_PATH=str(tmp_path / "profile"))
    subprocess.run(["/usr/bin/qgis_process.bin", "plugins", "enable", "seg_uncertainty"], env=env, check=True,
                   capture_output=True, timeout=120)
    listed = subprocess.run(["/usr/bin/qgis_process.bin", "list"], env=env, capture_output=True, text=True,
                            timeout=120).stdout
    for algorithm in ("uncertainty:mcdropout", "uncertainty:tta", "uncertainty:evaluate",
                      "uncertainty:install_dependencies", "uncertainty:check_environment"):
        assert algorithm in listed
    card = tmp_path / "card.yaml"
    (tmp_path / "w.pth").write_bytes(b"")
    card.write_text("model: {_target_: smp.FPN, encoder_name: resnet18, classes: 2}\nweights: w.pth\n"
                    "input: {bands: [1, 2, 3], scale: 255}\n")
    raster = ROOT / "resources" / "demo" / "demo_scene.tif"
    run = subprocess.run(["/usr/bin/qgis_process.bin", "run", "uncertainty:tta", "--", f"INPUT={raster}",
                          f"MODEL={card}", f"OUTPUT={tmp_path / 'out.tif'}"], env=env, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode != 0
    assert "pip install -r requirements.txt" in run.stdout + run.stderr
    assert "uncertainty:install_dependencies" in run.stdout + run.stderr
    assert not (tmp_path / "out.tif").exists()


def test_package_zip_passes_bandit(tmp_path):
    """Bandit (pinned in requirements-dev.txt) finds nothing in the plugin ZIP's code, at any severity."""
    archive = tmp_path / "seg_uncertainty.zip"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "package.py"), str(archive)], check=True,
                   capture_output=True)
    zipfile.ZipFile(archive).extractall(tmp_path / "unzipped")
    report = tmp_path / "bandit.json"
    run = subprocess.run([sys.executable, "-m", "bandit", "-r", "-q", "-f", "json", "-o", str(report),
                          str(tmp_path / "unzipped")], capture_output=True, text=True, timeout=300)
    result = json.loads(report.read_text())
    assert result["errors"] == [], result["errors"]
    assert [(r["test_id"], r["filename"], r["line_number"], r["issue_text"]) for r in result["results"]] == []
    assert result["metrics"]["_totals"]["loc"] > 1000  # it did read the plugin's code
    assert run.returncode == 0, run.stderr
