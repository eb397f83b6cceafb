"""The algorithms through real QGIS: processing.run, qgis_process, a saved modeler model, styling, cancel."""

import json
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio

from conftest import qgis_process_runner, run_algorithm, scene_crop, shared_raster
from models import PointwiseNet, save_smp, save_torchscript, write_card


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("alg")
    scene_crop(folder)
    smp_card = save_smp(folder, "FPN", classes=3, dropout=0.25, tile=(64, 64), stride=(48, 48))
    pointwise = write_card(folder, save_torchscript(folder, PointwiseNet(3, 4, seed=7)), classes=4,
                           tile=(128, 128), stride=(96, 96), name="pointwise.yaml")
    return {"folder": folder, "raster": folder / "crop.tif", "smp": smp_card, "pointwise": pointwise}


def _read(path, band=None):
    with rasterio.open(path) as ds:
        return ds.read(band) if band else ds.read()


def test_mcdropout_processing_run_matches_engine_and_names_outputs(qgis_app, data, tmp_path):
    from seg_uncertainty.engine.inference import OutputPaths, predict_uncertainty
    from seg_uncertainty.engine.model_loading import load_model

    result = run_algorithm("uncertainty:mcdropout", {
        "INPUT": str(data["raster"]), "MODEL": str(data["smp"]), "N_SAMPLES": 4, "SEED": 21,
        "UNCERTAINTY_MODE": "mutual_information", "OUTPUT": str(tmp_path / "run.tif"),
        "OUTPUT_PROBABILITIES": str(tmp_path / "probs.tif"),
    })
    unc_path = tmp_path / "run_mc_uncertainty.tif"  # the naming convention for an uncertainty left at default
    unc = _read(unc_path, 1)
    expected = {
        "OUTPUT": str(tmp_path / "run.tif"), "OUTPUT_UNCERTAINTY": str(unc_path),
        "OUTPUT_PROBABILITIES": str(tmp_path / "probs.tif"), "N_TILES": 9, "SEED_USED": 21, "DEVICE_USED": "cpu",
        "OUTPUT_SAMPLES": None, "REJECTED_PIXELS": 0,
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

    result = run_algorithm("uncertainty:tta", {
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
    # A folder as OUTPUT: QGIS loads the files under the names they were written with, styled.
    folder = tmp_path / "folder"
    folder.mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        processing.runAndLoadResults("uncertainty:tta", {
            "INPUT": str(data["raster"]), "MODEL": str(data["pointwise"]), "TTA_MODE": "flip",
            "OUTPUT": str(folder),
        })
    layers = {layer.source(): layer for layer in project.mapLayers().values()}
    assert sorted(layers) == [str(folder / "crop.tif"), str(folder / "crop_uncertainty.tif")]
    assert layers[str(folder / "crop.tif")].renderer().type() == "paletted"
    assert layers[str(folder / "crop_uncertainty.tif")].renderer().type() == "singlebandpseudocolor"
    project.clear()


def test_tta_grid_and_nodata_on_the_landsat_scene(qgis_app, data, tmp_path):
    raster = shared_raster("RGB.byte.tif")
    result = run_algorithm("uncertainty:tta", {
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


@pytest.fixture(scope="module")
def qgis_process(tmp_path_factory):
    return qgis_process_runner(tmp_path_factory.mktemp("qgis_process_profile"))


def test_qgis_process_lists_and_runs_the_algorithms(qgis_app, qgis_process, data, tmp_path):
    code, out, err = qgis_process("uncertainty:mcdropout", INPUT=data["raster"], MODEL=data["smp"], N_SAMPLES=3,
                                  SEED=5, OUTPUT=tmp_path / "cli.tif", TTA_MODE="flip")
    assert code == 0, err
    results = json.loads(out[out.index("{"):])["results"]
    assert results["OUTPUT_UNCERTAINTY"] == str(tmp_path / "cli_mc_uncertainty.tif")
    assert (tmp_path / "cli_mc_uncertainty.qml").exists() and (tmp_path / "cli.qml").exists()
    # processing.run in this process gives the same pixels for the same seed.
    again = run_algorithm("uncertainty:mcdropout", {
        "INPUT": str(data["raster"]), "MODEL": str(data["smp"]), "N_SAMPLES": 3,
        "SEED": 5, "TTA_MODE": "flip", "OUTPUT": str(tmp_path / "py.tif")})
    np.testing.assert_array_equal(_read(results["OUTPUT"]), _read(again["OUTPUT"]))
    # Same classes exactly; the float32 entropy to a few float32 steps: the two processes may run torch with
    # different thread counts, hence another summation order (seen on QGIS 3.44 / Python 3.14: 1.1e-6 at 0.64).
    np.testing.assert_allclose(_read(results["OUTPUT_UNCERTAINTY"]), _read(again["OUTPUT_UNCERTAINTY"]), rtol=1e-5,
                               atol=1e-6)
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
    tta = QgsProcessingModelChildAlgorithm("uncertainty:tta")
    tta.setChildId("tta")
    tta.addParameterSources("INPUT", [Source.fromModelParameter("raster")])
    tta.addParameterSources("MODEL", [Source.fromModelParameter("card")])
    tta.addParameterSources("TTA_MODE", [Source.fromStaticValue("flip")])
    tta.addParameterSources("UNCERTAINTY_MODE", [Source.fromStaticValue("variance")])
    tta.setModelOutputs({"tta_uncertainty": _model_output("tta_uncertainty", "tta", "OUTPUT_UNCERTAINTY")})
    model.addChildAlgorithm(mc)
    model.addChildAlgorithm(ev)
    model.addChildAlgorithm(tta)
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
    # The model's destination parameters are named "child:output" up to QGIS 3.40 and "output" from 3.44 on: ask
    # the model rather than spelling either.
    out = {d.name().split(":")[-1]: d.name() for d in model.destinationParameterDefinitions()}
    assert set(out) == {"classes", "report", "figures", "tta_uncertainty"}
    result = run_algorithm(model, {"raster": str(data["raster"]), "card": str(data["smp"]), "reference": str(reference),
                          out["classes"]: str(tmp_path / "classes.tif"), out["report"]: str(tmp_path / "r.html"),
                          out["figures"]: str(tmp_path / "r.json"), out["tta_uncertainty"]: str(tmp_path / "tta.tif")})
    assert result[out["figures"]] == str(tmp_path / "r.json")
    figures = json.loads(Path(result[out["figures"]]).read_text())
    classes = _read(tmp_path / "classes.tif", 1)
    evaluated = ref != 255
    assert figures["accuracy"] == pytest.approx(float(np.mean(classes[evaluated] == ref[evaluated])), abs=1e-9)
    assert figures["n_pixels"] == int(evaluated.sum())
    assert "<html" in Path(result[out["report"]]).read_text().lower()
    tta_variance = _read(tmp_path / "tta.tif", 1)  # TTA child of the same model: views disagree somewhere
    assert np.nanmax(tta_variance) > 0 and np.nanmax(tta_variance) <= 0.25
    np.testing.assert_array_equal(np.isnan(tta_variance), classes == 255)


def test_cancel_from_another_thread_leaves_no_output(qgis_app, data, tmp_path):
    from qgis.core import QgsProcessingException, QgsProcessingFeedback

    feedback = QgsProcessingFeedback()
    feedback.progressChanged.connect(lambda percent: percent > 0 and threading.Thread(target=feedback.cancel).start())
    with pytest.raises(QgsProcessingException, match="Cancelled"):
        run_algorithm("uncertainty:mcdropout", {"INPUT": str(data["raster"]), "MODEL": str(data["smp"]), "N_SAMPLES": 2,
                                       "OUTPUT": str(tmp_path / "c.tif")}, feedback=feedback)
    assert [p.name for p in tmp_path.iterdir()] == []


def test_tta_tile_shape_rules(qgis_app, data, tmp_path):
    from qgis.core import QgsProcessingException

    card = write_card(data["folder"], data["folder"] / "scripted.pt", classes=4, tile=(64, 96), stride=(48, 80),
                      name="nonsquare.yaml")
    result = run_algorithm("uncertainty:tta", {"INPUT": str(data["raster"]), "MODEL": str(card), "TTA_MODE": "flip",
                                      "UNCERTAINTY_MODE": "mutual_information", "OUTPUT": str(tmp_path / "f.tif")})
    assert np.nanmax(_read(result["OUTPUT_UNCERTAINTY"], 1)) <= 1e-6  # pointwise model: flips agree
    with pytest.raises(QgsProcessingException, match="square"):
        run_algorithm("uncertainty:tta", {"INPUT": str(data["raster"]), "MODEL": str(card), "TTA_MODE": "d4",
                                 "OUTPUT": str(tmp_path / "d4.tif")})
    assert not list(tmp_path.glob("d4*"))


def test_qgis_process_runs_tta(qgis_process, data, tmp_path):
    code, out, err = qgis_process("uncertainty:tta", INPUT=data["raster"], MODEL=data["pointwise"], TTA_MODE="d4",
                                  UNCERTAINTY_MODE="variance", OUTPUT=tmp_path / "t.tif")
    assert code == 0, err
    results = json.loads(out[out.index("{"):])["results"]
    assert results["OUTPUT_UNCERTAINTY"] == str(tmp_path / "t_uncertainty.tif")
    assert results["UNCERTAINTY_MAX"] <= 1e-6  # D4-equivariant model: no disagreement between views


def test_evaluate_polygon_reference_equals_raster_reference(qgis_app, data, tmp_path):
    """Rectangles on pixel edges, as a polygon layer and as the equivalent raster, give the same figures."""
    from qgis.core import QgsVectorLayer

    probs = run_algorithm("uncertainty:tta", {"INPUT": str(data["raster"]), "MODEL": str(data["pointwise"]),
                                     "TTA_MODE": "flip", "OUTPUT": str(tmp_path / "c.tif"),
                                     "OUTPUT_PROBABILITIES": str(tmp_path / "p.tif")})["OUTPUT_PROBABILITIES"]
    with rasterio.open(probs) as src:
        transform, crs, shape = src.transform, src.crs, src.shape
    boxes = [((10, 5, 70, 40), 1), ((60, 50, 140, 120), 3), ((0, 80, 50, 129), 0), ((100, 10, 149, 45), 2)]
    reference = np.full(shape, 255, np.uint8)
    features = []
    for (c0, r0, c1, r1), cls in boxes:
        reference[r0:r1, c0:c1] = cls
        x0, y0 = transform * (c0, r0)
        x1, y1 = transform * (c1, r1)
        ring = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
        features.append({"type": "Feature", "properties": {"cls": cls},
                         "geometry": {"type": "Polygon", "coordinates": [ring]}})
    geojson = tmp_path / "ref.geojson"
    geojson.write_text(json.dumps({"type": "FeatureCollection", "features": features,
                                   "crs": {"type": "name", "properties": {"name": crs.to_string()}}}))
    profile = dict(driver="GTiff", width=shape[1], height=shape[0], count=1, dtype="uint8", crs=crs,
                   transform=transform)
    with rasterio.open(tmp_path / "ref.tif", "w", **profile) as dst:
        dst.write(reference, 1)
    assert QgsVectorLayer(str(geojson), "ref", "ogr").featureCount() == 4
    common = {"PROBABILITIES": probs, "N_BINS": 10}
    from_raster = run_algorithm("uncertainty:evaluate", dict(common, REFERENCE=str(tmp_path / "ref.tif"),
                                                    OUTPUT_HTML=str(tmp_path / "a.html"),
                                                    OUTPUT_JSON=str(tmp_path / "a.json")))
    from_polygons = run_algorithm("uncertainty:evaluate", dict(common, REFERENCE=str(geojson), REFERENCE_FIELD="cls",
                                                      OUTPUT_HTML=str(tmp_path / "b.html"),
                                                      OUTPUT_JSON=str(tmp_path / "b.json")))
    figures = ["ECE", "MCE", "BRIER", "NLL", "AUROC", "AURC", "DICE", "ACCURACY"]
    assert [from_polygons[k] for k in figures] == pytest.approx([from_raster[k] for k in figures], abs=1e-12)
    # And the accuracy is the one numpy finds on the labelled pixels.
    labelled = reference != 255
    classes = _read(tmp_path / "c.tif", 1)
    labelled &= classes != 255
    assert from_raster["ACCURACY"] == pytest.approx(float(np.mean(classes[labelled] == reference[labelled])))


def test_qgis_process_runs_evaluate_after_mcdropout(qgis_app, qgis_process, data, tmp_path):
    """The evaluate algorithm from the command line gives the figures processing.run gives in this process."""
    mc = run_algorithm("uncertainty:mcdropout", {
        "INPUT": str(data["raster"]), "MODEL": str(data["smp"]), "N_SAMPLES": 3,
        "SEED": 2, "OUTPUT": str(tmp_path / "c.tif"),
                                        "OUTPUT_PROBABILITIES": str(tmp_path / "p.tif")})
    classes = _read(mc["OUTPUT"], 1)
    reference = np.where(classes == 255, 255, (classes + 1) % 3).astype(np.uint8)  # wrong where the model...
    reference[::3] = np.where(classes[::3] == 255, 255, classes[::3])  # ...except every third row
    with rasterio.open(mc["OUTPUT"]) as src:
        profile = dict(src.profile, nodata=None)
    with rasterio.open(tmp_path / "ref.tif", "w", **profile) as dst:
        dst.write(reference, 1)
    code, out, err = qgis_process("uncertainty:evaluate", PROBABILITIES=mc["OUTPUT_PROBABILITIES"],
                                  UNCERTAINTY=mc["OUTPUT_UNCERTAINTY"], REFERENCE=tmp_path / "ref.tif",
                                  OUTPUT_HTML=tmp_path / "r.html", OUTPUT_JSON=tmp_path / "r.json")
    assert code == 0, err
    results = json.loads(out[out.index("{"):])["results"]
    labelled = reference != 255
    assert results["ACCURACY"] == pytest.approx(float(np.mean(classes[labelled] == reference[labelled])))
    in_process = run_algorithm("uncertainty:evaluate", {"PROBABILITIES": mc["OUTPUT_PROBABILITIES"],
                                               "UNCERTAINTY": mc["OUTPUT_UNCERTAINTY"],
                                               "REFERENCE": str(tmp_path / "ref.tif"),
                                               "OUTPUT_HTML": str(tmp_path / "r2.html"),
                                               "OUTPUT_JSON": str(tmp_path / "r2.json")})
    for key in ("ECE", "MCE", "BRIER", "NLL", "AUROC", "AURC", "DICE", "ACCURACY"):
        assert results[key] == pytest.approx(in_process[key], rel=1e-12), key
    assert json.loads((tmp_path / "r.json").read_text())["n_pixels"] == int(labelled.sum())
