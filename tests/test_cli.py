"""The command line (``python -m seg_uncertainty run``) against processing.run: same files, pixels, tags, styles,
results and error messages; ``--workers 2`` gives the same files; Ctrl-C leaves nothing behind."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import pytest
import rasterio

from conftest import PLUGIN_DIR, ROOT, scene_crop
from models import save_smp


def _cli_env():
    site = next((ROOT / ".venv" / "lib").glob("python3*/site-packages"), None)
    paths = [str(PLUGIN_DIR)] + ([str(site)] if site else []) + [os.environ.get("PYTHONPATH", "")]
    return dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in paths if p), OMP_NUM_THREADS="1")


def _cli(*args, **popen):
    return [sys.executable, "-m", "seg_uncertainty", "run", *map(str, args)]


def run_cli(*args, timeout=600):
    done = subprocess.run(_cli(*args), env=_cli_env(), capture_output=True, text=True, timeout=timeout,
                          cwd=str(ROOT / "tests"))
    return done.returncode, done.stdout, done.stderr


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    scene_crop(folder, "scene.tif")
    card = save_smp(folder, "Unet", classes=3, dropout=0.3, tile=(64, 64), stride=(32, 32))
    return folder / "scene.tif", card


def _files(folder):
    """{name: (pixels, tags, descriptions)} for rasters, {name: text} for styles, in ``folder``."""
    found = {}
    for path in sorted(Path(folder).iterdir()):
        if path.suffix == ".tif":
            with rasterio.open(path) as ds:
                found[path.name] = (ds.read(), ds.tags(), ds.descriptions, ds.transform, ds.crs)
        else:
            # Qt writes XML attributes in a per-process hash order: compare the canonical form (C14N).
            # QGIS 3.40 and later also save each layer's elevation-profile settings, whose line and fill symbols
            # get a random colour (and random symbol-layer ids) when the layer is created: not the style this
            # plugin writes, so left out of the comparison.
            text = path.read_text()
            if text.startswith("<!DOCTYPE"):
                text = text.split("\n", 1)[1]
            tree = ElementTree.fromstring(text)
            for elevation in tree.findall("elevation"):
                tree.remove(elevation)
            text = re.sub(r' id="\{[0-9a-f-]{36}\}"', "", ElementTree.tostring(tree, encoding="unicode"))
            found[path.name] = ElementTree.canonicalize(text)
    return found


def _names(folder):
    """File names in ``folder``, less the statistics caches (.aux.xml) QGIS writes when it styles a raster."""
    return sorted(name for name in os.listdir(folder) if not name.endswith(".aux.xml"))


def _assert_same_folders(a, b):
    fa, fb = _files(a), _files(b)
    assert sorted(fa) == sorted(fb)
    for name in fa:
        if name.endswith(".tif"):
            np.testing.assert_array_equal(fa[name][0], fb[name][0])  # bit for bit
            assert fa[name][1:] == fb[name][1:]
        else:
            assert fa[name] == fb[name], name


def test_cli_writes_what_processing_run_writes(tmp_path, qgis_app, one_torch_thread, scene):
    """mcdropout × flip TTA through processing.run, the CLI in this process's manner and the CLI on 2 workers."""
    import processing

    raster, card = scene
    for name in ("toolbox", "cli", "cli_workers"):
        (tmp_path / name).mkdir()
    parameters = {"INPUT": str(raster), "MODEL": str(card), "N_SAMPLES": 3, "TTA_MODE": "flip",
                  "UNCERTAINTY_MODE": "mutual_information", "SEED": 7, "DEVICE": "cpu",
                  "OUTPUT": str(tmp_path / "toolbox" / "classes.tif"),
                  "OUTPUT_PROBABILITIES": str(tmp_path / "toolbox" / "classes_probabilities.tif")}
    expected = processing.run("uncertainty:mcdropout", parameters)
    common = ["--input", raster, "--model", card, "--n-samples", 3, "--tta-mode", "flip", "--uncertainty-mode",
              "mutual_information", "--seed", 7, "--device", "cpu", "--output-probabilities", "auto", "--json"]
    code, out, err = run_cli("mcdropout", *common, "--output", tmp_path / "cli" / "classes.tif")
    assert code == 0, err
    results = json.loads(out)["results"]
    _assert_same_folders(tmp_path / "toolbox", tmp_path / "cli")
    assert _names(tmp_path / "cli") == ["classes.qml", "classes.tif", "classes_mc_uncertainty.qml",
                                                    "classes_mc_uncertainty.tif", "classes_probabilities.tif"]
    for key in ("UNCERTAINTY_MIN", "UNCERTAINTY_MEAN", "UNCERTAINTY_MAX", "N_TILES", "SEED_USED", "DEVICE_USED"):
        assert results[key] == expected[key], key
    assert Path(results["OUTPUT"]) == tmp_path / "cli" / "classes.tif"

    code, out, err = run_cli("mcdropout", *common, "--output", tmp_path / "cli_workers" / "classes.tif",
                             "--workers", 2, "--block-size", 64)
    assert code == 0, err
    _assert_same_folders(tmp_path / "toolbox", tmp_path / "cli_workers")
    results = json.loads(out)["results"]
    assert results["UNCERTAINTY_MAX"] == expected["UNCERTAINTY_MAX"]
    assert results["UNCERTAINTY_MEAN"] == pytest.approx(expected["UNCERTAINTY_MEAN"], rel=1e-12)


def test_cli_tta_defaults_and_folder_output_name_like_the_toolbox(tmp_path, qgis_app, one_torch_thread, scene):
    """uncertainty:tta with its defaults (d4, entropy) and a folder as OUTPUT: {input stem}.tif, _uncertainty."""
    import processing

    raster, card = scene
    (tmp_path / "toolbox").mkdir()
    (tmp_path / "cli").mkdir()
    processing.run("uncertainty:tta", {"INPUT": str(raster), "MODEL": str(card), "SEED": 1, "DEVICE": "cpu",
                                       "OUTPUT": str(tmp_path / "toolbox")})
    code, out, err = run_cli("tta", "--input", raster, "--model", card, "--seed", 1, "--device", "cpu",
                             "--output", tmp_path / "cli")
    assert code == 0, err
    assert _names(tmp_path / "cli") == ["scene.qml", "scene.tif", "scene_uncertainty.qml",
                                                    "scene_uncertainty.tif"]
    _assert_same_folders(tmp_path / "toolbox", tmp_path / "cli")
    with rasterio.open(tmp_path / "cli" / "scene.tif") as ds:
        assert ds.tags()["TTA_MODE"] == "d4" and ds.tags()["MC_DROPOUT"] == "no"


def test_cli_errors_carry_the_algorithms_message_and_exit_status(tmp_path, qgis_app, scene):
    import processing
    from qgis.core import QgsProcessingException

    raster, card = scene
    two_bands = tmp_path / "two_bands.tif"
    with rasterio.open(raster) as src:
        with rasterio.open(two_bands, "w", **dict(src.profile, count=2)) as dst:
            dst.write(src.read([1, 2]))
    with pytest.raises(QgsProcessingException) as toolbox_error:
        processing.run("uncertainty:mcdropout", {"INPUT": str(two_bands), "MODEL": str(card), "DEVICE": "cpu",
                                                 "OUTPUT": str(tmp_path / "a.tif")})
    code, out, err = run_cli("mcdropout", "--input", two_bands, "--model", card, "--device", "cpu",
                             "--output", tmp_path / "b.tif")
    assert code == 1 and out == ""
    message = str(toolbox_error.value).strip().splitlines()[-1]
    assert "has 2 band(s)" in message and f"Error: {message}" in err
    code, _, err = run_cli("mcdropout", "--input", raster, "--model", card, "--output", tmp_path / "c.tif",
                           "--n-samples", 1001)
    assert code == 2 and "N_SAMPLES: expected a whole number from 1 to 1000; got 1001." in err
    code, _, err = run_cli("tta", "--input", raster, "--model", card, "--output", tmp_path / "c.tif",
                           "--tta-mode", "none")
    assert code == 2 and "TTA_MODE: expected one of d4, flip for tta" in err
    assert [p.name for p in tmp_path.glob("*.tif")] == ["two_bands.tif"]


def _sigint_as_in_a_terminal():
    """SIGINT back to its default in the child, as a terminal's foreground job has it. The suite may run under a
    shell that started it in the background: bash then ignores SIGINT in what it starts, the child inherits that,
    and Python keeps an inherited "ignore" (a CI run once saw the CLI finish with exit 0 after Ctrl-C)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_on_workers_cancels_and_leaves_no_file(tmp_path, scene):
    """Ctrl-C as a terminal sends it (SIGINT to the whole process group: CLI, nannies, workers)."""
    raster, card = scene
    out = tmp_path / "out"
    out.mkdir()
    process = subprocess.Popen(
        # 200 samples: the run must still be going when the first block file appears (at T = 20 the whole run
        # had finished before the signal arrived once the engine got faster).
        _cli("mcdropout", "--input", raster, "--model", card, "--n-samples", 200, "--device", "cpu",
             "--output", out / "classes.tif", "--workers", 2, "--block-size", 32),
        env=_cli_env(), cwd=str(ROOT / "tests"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True, preexec_fn=_sigint_as_in_a_terminal,
    )
    deadline = time.monotonic() + 300
    while not any(p.name.startswith(".classes.staging-") and any(p.glob("block*.tif")) for p in out.iterdir()):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGINT)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 130, stderr
    assert "Cancelled" in stderr
    assert list(out.iterdir()) == []


def test_cli_algorithms_table_matches_the_toolbox_classes(qgis_app):
    """The CLI cannot import the QGIS algorithm classes (it runs without QGIS): its table must say what they say."""
    from seg_uncertainty.algorithms.mcdropout import McDropoutAlgorithm
    from seg_uncertainty.algorithms.tta import TtaAlgorithm
    from seg_uncertainty.cli import _ALGORITHMS

    for cls in (McDropoutAlgorithm, TtaAlgorithm):
        stochastic, tta_choices, tta_default, suffix = _ALGORITHMS[cls.NAME]
        assert (stochastic, tta_choices, tta_default, suffix) == \
            (cls.STOCHASTIC, list(cls.TTA_OPTIONS), cls.TTA_DEFAULT, cls.UNCERTAINTY_SUFFIX)
