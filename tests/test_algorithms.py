"""The algorithms through real QGIS: processing.run, qgis_process, a saved modeler model, styling, cancel."""

import json
import os
import shutil
import subprocess
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

from conftest import PLUGIN_DIR, ROOT, shared_raster
from models import PointwiseNet, save_smp, save_torchscript, write_card

QGIS_PROCESS = "/usr/bin/qgis_process.bin"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("alg")
    with rasterio.open(shared_raster("RGB.byte.tif")) as src:
        window = Window(0, 250, 150, 130)  # a corner with NoData, water and land
        profile = src.profile.copy()
        profile.update(width=150, height=130, transform=src.window_transform(window))
        with rasterio.open(folder / "crop.tif", "w", **profile) as dst:
            dst.write(src.read(window=window))
    smp_card = save_smp(folder, "FPN", classes=3, dropout=0.25, tile=(64, 64), stride=(48, 48))
    pointwise = write_card(folder, save_torchscript(folder, PointwiseNet(3, 4, seed=7)), classes=4,
                           tile=(128, 128), stride=(96, 96), name="pointwise.yaml")
    return {"folder": folder, "raster": folder / "crop.tif", "smp": smp_card, "pointwise": pointwise}


def _read(path, band=None):
    with rasterio.open(path) as ds:
        return ds.read(band) if band else ds.read()


def _run(algorithm, parameters, feedback=None):
    import processing

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return processing.run(algorithm, parameters, feedback=feedback)


def test_mcdropout_processing_run_matches_engine_and_names_outputs(qgis_app, data, tmp_path):
    from seg_uncertainty.engine.inference import OutputPaths, predict_uncertainty
    from seg_uncertainty.engine.model_loading import load_model

    result = _run("uncertainty:mcdropout", {
        "INPUT": str(data["raster"]), "MODEL": str(data["smp"]), "N_SAMPLES": 4, "SEED": 21,
        "UNCERTAINTY_MODE": "mutual_information", "OUTPUT": str(tmp_path / "run.tif"),
        "OUTPUT_PROBABILITIES": str(tmp_path / "probs.tif"),
    })
    unc_path = tmp_path / "run_mc_uncertainty.tif"  # the naming convention for an uncertainty left at default
    unc = _read(unc_path, 1)
    expected = {
        "OUTPUT": str(tmp_path / "run.tif"), "OUTPUT_UNCERTAINTY": str(unc_path),
        "OUTPUT_PROBABILITIES": str(tmp_path / "probs.tif"), "N_TILES": 9, "SEED_USED": 21, "DEVICE_USED": "cpu",
        "UNCERTAINTY_MIN": pytest.approx(float(np.nanmin(unc)), rel=1e-6),
        "UNCERTAINTY_MEAN": pytest.approx(float(np.nanmean(unc.astype(np.float64))), rel=1e-6),
        "UNCERTAINTY_MAX": pytest.approx(float(np.nanmax(unc)), rel=1e-6),
    }
    assert result == expected
    # The same run straight through the engine gives the same rasters.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        loaded = load_model(data["smp"], "cpu")
    direct = OutputPaths(str(tmp_path / "d.tif"), str(tmp_path / "du.tif"), str(tmp_path / "dp.tif"))
    predict_uncertainty(str(data["raster"]), loaded, direct, n_samples=4, seed=21, mode="mutual_information")
    np.testing.assert_array_equal(_read(result["OUTPUT"]), _read(direct.classes))
    np.testing.assert_array_equal(unc, _read(direct.uncertainty, 1))
    np.testing.assert_array_equal(_read(result["OUTPUT_PROBABILITIES"]), _read(direct.probabilities))


def test_side_car_styles_and_post_processor_renderers(qgis_app, data, tmp_path):
    import processing
    from qgis.core import QgsProject, QgsRasterLayer

    result = _run("uncertainty:tta", {
        "INPUT": str(data["raster"]), "MODEL": str(data["pointwise"]), "TTA_MODE": "flip",
        "OUTPUT": str(tmp_path / "t.tif"),
    })
    classes = QgsRasterLayer(result["OUTPUT"], "c")
    assert classes.loadDefaultStyle()[1]  # t.qml beside t.tif
    assert classes.renderer().type() == "paletted"
    assert [c.label for c in classes.renderer().classes()] == ["c0", "c1", "c2", "c3"]
    assert [c.color.name() for c in classes.renderer().classes()] == ["#1f78b4", "#33a02c", "#e31a1c", "#ff7f00"]
    unc = QgsRasterLayer(result["OUTPUT_UNCERTAINTY"], "u")
    assert result["OUTPUT_UNCERTAINTY"].endswith("t_uncertainty.tif")
    assert unc.loadDefaultStyle()[1]
    assert unc.renderer().type() == "singlebandpseudocolor"
    assert unc.renderer().classificationMax() == pytest.approx(result["UNCERTAINTY_MAX"])
    assert unc.renderer().classificationMin() == 0.0
    # Loading results (toolbox "open output" / modeler) styles the layers through the post-processor.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        loaded = processing.runAndLoadResults("uncertainty:tta", {
            "INPUT": str(data["raster"]), "MODEL": str(data["pointwise"]), "TTA_MODE": "flip",
            "OUTPUT": "TEMPORARY_OUTPUT", "OUTPUT_UNCERTAINTY": "TEMPORARY_OUTPUT",
        })
    project = QgsProject.instance()
    layers = {layer.source(): layer for layer in project.mapLayers().values()}
    assert layers[loaded["OUTPUT"]].renderer().type() == "paletted"
    assert layers[loaded["OUTPUT_UNCERTAINTY"]].renderer().type() == "singlebandpseudocolor"
    assert layers[loaded["OUTPUT_UNCERTAINTY"]].renderer().classificationMax() == pytest.approx(
        loaded["UNCERTAINTY_MAX"])
    project.clear()


def test_tta_grid_and_nodata_on_the_landsat_scene(qgis_app, data, tmp_path):
    raster = shared_raster("RGB.byte.tif")
    result = _run("uncertainty:tta", {
        "INPUT": str(raster), "MODEL": str(data["pointwise"]), "TTA_MODE": "d4", "OUTPUT": str(tmp_path) + "/",
        "UNCERTAINTY_MODE": "mutual_information",
    })
    assert result["OUTPUT"] == str(tmp_path / "RGB.byte.tif")  # a folder output takes the input's name
    with rasterio.open(raster) as src, rasterio.open(result["OUTPUT"]) as c, \
            rasterio.open(result["OUTPUT_UNCERTAINTY"]) as u:
        valid = np.all(src.read_masks([1, 2, 3]) > 0, axis=0)
        for out in (c, u):
            assert (out.crs, out.transform, out.shape) == (src.crs, src.transform, src.shape)
        np.testing.assert_array_equal(c.read(1) == 255, ~valid)
        unc = u.read(1)
    np.testing.assert_array_equal(np.isnan(unc), ~valid)
    assert np.nanmax(unc) <= 1e-6  # a per-pixel model is D4-equivariant: the views agree, MI = 0


def _qgis_process_env(profile):
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", QGIS_PLUGINPATH=str(PLUGIN_DIR),
               QGIS_CUSTOM_CONFIG_PATH=str(profile))
    site = next((ROOT / ".venv" / "lib").glob("python3*/site-packages"), None)
    if site is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    return env


@pytest.fixture(scope="module")
def qgis_process(tmp_path_factory):
    if not Path(QGIS_PROCESS).exists():
        pytest.skip("qgis_process is not installed")
    env = _qgis_process_env(tmp_path_factory.mktemp("qgis_process_profile"))
    subprocess.run([QGIS_PROCESS, "plugins", "enable", "seg_uncertainty"], env=env, check=True,
                   capture_output=True, timeout=120)

    def run(algorithm, **parameters):
        args = [QGIS_PROCESS, "--json", "run", algorithm, "--"] + [f"{k}={v}" for k, v in parameters.items()]
        done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
        return done.returncode, done.stdout, done.stderr

    return run


def test_qgis_process_lists_and_runs_the_algorithms(qgis_app, qgis_process, data, tmp_path):
    code, out, err = qgis_process("uncertainty:mcdropout", INPUT=data["raster"], MODEL=data["smp"], N_SAMPLES=3,
                                  SEED=5, OUTPUT=tmp_path / "cli.tif", TTA_MODE="flip")
    assert code == 0, err
    results = json.loads(out[out.index("{"):])["results"]
    assert results["OUTPUT_UNCERTAINTY"] == str(tmp_path / "cli_mc_uncertainty.tif")
    assert (tmp_path / "cli_mc_uncertainty.qml").exists() and (tmp_path / "cli.qml").exists()
    # processing.run in this process gives the same pixels for the same seed.
    again = _run("uncertainty:mcdropout", {"INPUT": str(data["raster"]), "MODEL": str(data["smp"]), "N_SAMPLES": 3,
                                           "SEED": 5, "TTA_MODE": "flip", "OUTPUT": str(tmp_path / "py.tif")})
    np.testing.assert_array_equal(_read(results["OUTPUT"]), _read(again["OUTPUT"]))
    np.testing.assert_allclose(_read(results["OUTPUT_UNCERTAINTY"]), _read(again["OUTPUT_UNCERTAINTY"]), atol=1e-6)
    assert results["UNCERTAINTY_MAX"] == pytest.approx(again["UNCERTAINTY_MAX"], rel=1e-5)


def test_qgis_process_reports_a_bad_model_cleanly(qgis_process, data, tmp_path):
    code, out, err = qgis_process("uncertainty:tta", INPUT=data["raster"], MODEL=tmp_path / "missing.yaml",
                                  OUTPUT=tmp_path / "x.tif")
    assert code != 0
    assert "missing.yaml" in out + err
    assert not list(tmp_path.glob("*.tif"))


def _model_output(name, child, output):
    from qgis.core import QgsProcessingModelOutput

    out = QgsProcessingModelOutput(name, name)
    out.setChildId(child)
    out.setChildOutputName(output)
    return out


def _save_chained_model(path):
    """A .model3: mcdropout (probabilities) → evaluate against a reference raster."""
    from qgis.core import (
        QgsProcessingModelAlgorithm,
        QgsProcessingModelChildAlgorithm,
        QgsProcessingModelChildParameterSource as Source,
        QgsProcessingModelParameter,
        QgsProcessingParameterFile,
        QgsProcessingParameterRasterLayer,
    )

    model = QgsProcessingModelAlgorithm("mc_then_evaluate", "tests")
    for name, parameter in (("raster", QgsProcessingParameterRasterLayer("raster", "raster")),
                            ("card", QgsProcessingParameterFile("card", "card")),
                            ("reference", QgsProcessingParameterRasterLayer("reference", "reference"))):
        model.addModelParameter(parameter, QgsProcessingModelParameter(name))
    mc = QgsProcessingModelChildAlgorithm("uncertainty:mcdropout")
    mc.setChildId("mc")
    mc.addParameterSources("INPUT", [Source.fromModelParameter("raster")])
    mc.addParameterSources("MODEL", [Source.fromModelParameter("card")])
    mc.addParameterSources("N_SAMPLES", [Source.fromStaticValue(3)])
    mc.addParameterSources("SEED", [Source.fromStaticValue(8)])
    mc.addParameterSources("OUTPUT_PROBABILITIES", [Source.fromStaticValue("TEMPORARY_OUTPUT")])
    mc.setModelOutputs({"classes": _model_output("classes", "mc", "OUTPUT")})
    ev = QgsProcessingModelChildAlgorithm("uncertainty:evaluate")
    ev.setChildId("ev")
    ev.addParameterSources("PROBABILITIES", [Source.fromChildOutput("mc", "OUTPUT_PROBABILITIES")])
    ev.addParameterSources("UNCERTAINTY", [Source.fromChildOutput("mc", "OUTPUT_UNCERTAINTY")])
    ev.addParameterSources("REFERENCE", [Source.fromModelParameter("reference")])
    ev.setModelOutputs({"report": _model_output("report", "ev", "OUTPUT_HTML"),
                        "figures": _model_output("figures", "ev", "OUTPUT_JSON")})
    model.addChildAlgorithm(mc)
    model.addChildAlgorithm(ev)
    model.updateDestinationParameters()
    assert model.toFile(str(path))
    return path


def test_saved_modeler_model_chains_mcdropout_and_evaluate(qgis_app, data, tmp_path):
    from qgis.core import QgsProcessingModelAlgorithm

    reference = tmp_path / "reference.tif"
    with rasterio.open(data["raster"]) as src:  # a reference of class ids: dark water 0, bright 2, rest 1
        rgb = src.read().astype(float).mean(0)
        ref = np.where(rgb < 40, 0, np.where(rgb > 90, 2, 1)).astype(np.uint8)
        ref[~np.all(src.read_masks() > 0, axis=0)] = 255
        profile = src.profile.copy()
        profile.update(count=1, nodata=None)
        with rasterio.open(reference, "w", **profile) as dst:
            dst.write(ref, 1)
    model = QgsProcessingModelAlgorithm()
    assert model.fromFile(str(_save_chained_model(tmp_path / "chain.model3")))
    result = _run(model, {"raster": str(data["raster"]), "card": str(data["smp"]), "reference": str(reference),
                          "mc:classes": str(tmp_path / "classes.tif"), "ev:report": str(tmp_path / "r.html"),
                          "ev:figures": str(tmp_path / "r.json")})
    figures = json.loads(Path(result["ev:figures"]).read_text())
    classes = _read(tmp_path / "classes.tif", 1)
    evaluated = ref != 255
    assert figures["accuracy"] == pytest.approx(float(np.mean(classes[evaluated] == ref[evaluated])), abs=1e-9)
    assert figures["n_pixels"] == int(evaluated.sum())
    assert "<html" in Path(result["ev:report"]).read_text().lower()


def test_cancel_from_another_thread_leaves_no_output(qgis_app, data, tmp_path):
    from qgis.core import QgsProcessingException, QgsProcessingFeedback

    feedback = QgsProcessingFeedback()
    feedback.progressChanged.connect(lambda percent: percent > 0 and threading.Thread(target=feedback.cancel).start())
    with pytest.raises(QgsProcessingException, match="Cancelled"):
        _run("uncertainty:mcdropout", {"INPUT": str(data["raster"]), "MODEL": str(data["smp"]), "N_SAMPLES": 2,
                                       "OUTPUT": str(tmp_path / "c.tif")}, feedback=feedback)
    assert [p.name for p in tmp_path.iterdir()] == []
