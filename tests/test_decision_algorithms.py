"""Decisions through real QGIS: hotspots after mcdropout via processing.run, qgis_process and a saved model."""

import json

import numpy as np
import pytest
import rasterio

from conftest import qgis_process_runner, run_algorithm, scene_crop
from models import save_smp


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("decisions")
    scene_crop(folder)
    smp_card = save_smp(folder, "FPN", classes=3, dropout=0.25, tile=(64, 64), stride=(48, 48))
    return {"folder": folder, "raster": folder / "crop.tif", "smp": smp_card}


@pytest.fixture(scope="module")
def qgis_process(tmp_path_factory):
    return qgis_process_runner(tmp_path_factory.mktemp("qgis_process_profile"))


def _read(path, band=None):
    with rasterio.open(path) as ds:
        return ds.read(band) if band else ds.read()


@pytest.fixture(scope="module")
def mc_run(qgis_app, data, tmp_path_factory):
    folder = tmp_path_factory.mktemp("mc")
    return run_algorithm("uncertainty:mcdropout", {
        "INPUT": str(data["raster"]), "MODEL": str(data["smp"]), "N_SAMPLES": 4, "SEED": 3,
        "OUTPUT": str(folder / "classes.tif"), "OUTPUT_PROBABILITIES": str(folder / "probs.tif"),
    })


def _features(path):
    from qgis.core import QgsVectorLayer

    layer = QgsVectorLayer(str(path), "hotspots", "ogr")
    assert layer.isValid()
    return layer, [f for f in layer.getFeatures()]


def _numpy_cells(u, classes, size, threshold):
    """{(x of the cell's left edge, y of its top): (mean, max, frac above, count, majority)} by numpy loops."""
    out = {}
    for r in range(0, u.shape[0], size):
        for c in range(0, u.shape[1], size):
            b, k = u[r:r + size, c:c + size], classes[r:r + size, c:c + size]
            ok = np.isfinite(b)
            if ok.any():
                votes = np.bincount(k[ok & (k != 255)], minlength=1)
                out[(r, c)] = (b[ok].mean(), b[ok].max(), np.mean(b[ok] > threshold), ok.sum(), int(votes.argmax()))
    return out


def test_hotspots_processing_run_after_mcdropout(mc_run, tmp_path):
    from qgis.core import QgsCoordinateReferenceSystem, QgsPointXY

    out = tmp_path / "hotspots.gpkg"
    result = run_algorithm("uncertainty:hotspots", {"INPUT": mc_run["OUTPUT_UNCERTAINTY"], "CLASSES": mc_run["OUTPUT"],
                                           "CELL_SIZE": 16, "THRESHOLD": 0.6, "OUTPUT": str(out)})
    layer, features = _features(result["OUTPUT"])
    u = _read(mc_run["OUTPUT_UNCERTAINTY"], 1).astype(np.float64)
    classes = _read(mc_run["OUTPUT"], 1)
    want = _numpy_cells(u, classes, 16, 0.6)
    assert result["N_HOTSPOTS"] == len(features) == len(want)
    with rasterio.open(mc_run["OUTPUT_UNCERTAINTY"]) as src:
        assert layer.crs() == QgsCoordinateReferenceSystem.fromWkt(src.crs.to_wkt())
        inverse = ~src.transform
    means = [f["mean_unc"] for f in features]
    assert [f["rank"] for f in features] == list(range(1, len(features) + 1)) and means == sorted(means, reverse=True)
    with rasterio.open(mc_run["OUTPUT"]) as src:
        names = src.tags()["CLASS_NAMES"].split(",")  # written by the inference from the card
    for f in features:
        geometry = f.geometry()
        assert geometry.isGeosValid() and not geometry.isEmpty()
        top_left = QgsPointXY(geometry.boundingBox().xMinimum(), geometry.boundingBox().yMaximum())
        col, row = (round(v) for v in inverse * (top_left.x(), top_left.y()))
        mean, peak, frac, n, majority = want[(row, col)]
        assert f["mean_unc"] == pytest.approx(mean, rel=1e-9) and f["max_unc"] == pytest.approx(peak, rel=1e-6)
        assert f["frac_above"] == pytest.approx(frac) and f["n_pixels"] == n and f["majority_class"] == majority
        assert f["class_name"] == names[majority]
    assert (tmp_path / "hotspots.qml").exists()
    top = run_algorithm("uncertainty:hotspots", {"INPUT": mc_run["OUTPUT_UNCERTAINTY"], "CELL_SIZE": 16, "TOP_N": 5,
                                        "OUTPUT": str(tmp_path / "top.gpkg")})
    assert [f["mean_unc"] for f in _features(top["OUTPUT"])[1]] == pytest.approx(means[:5])


def test_hotspots_graduated_style_on_loaded_layer(mc_run, tmp_path):
    from qgis.core import QgsGraduatedSymbolRenderer, QgsVectorLayer

    run_algorithm("uncertainty:hotspots", {"INPUT": mc_run["OUTPUT_UNCERTAINTY"], "CELL_SIZE": 32,
                                  "OUTPUT": str(tmp_path / "styled.gpkg")})
    layer = QgsVectorLayer(str(tmp_path / "styled.gpkg"), "styled", "ogr")
    message, ok = layer.loadNamedStyle(str(tmp_path / "styled.qml"))
    assert ok, message
    renderer = layer.renderer()
    assert isinstance(renderer, QgsGraduatedSymbolRenderer) and renderer.classAttribute() == "mean_unc"
    values = [f["mean_unc"] for f in layer.getFeatures()]
    assert renderer.ranges()[0].lowerValue() == pytest.approx(min(values))
    assert renderer.ranges()[-1].upperValue() == pytest.approx(max(values))


def test_qgis_process_runs_hotspots_regions(mc_run, qgis_process, tmp_path):
    u = _read(mc_run["OUTPUT_UNCERTAINTY"], 1)
    threshold = float(np.nanquantile(u, 0.9))
    code, out, err = qgis_process("uncertainty:hotspots", INPUT=mc_run["OUTPUT_UNCERTAINTY"],
                                  CLASSES=mc_run["OUTPUT"], METHOD="regions", THRESHOLD=threshold, TOP_N=10,
                                  OUTPUT=tmp_path / "regions.gpkg")
    assert code == 0, err
    results = json.loads(out[out.index("{"):])["results"]
    layer, features = _features(results["OUTPUT"])
    assert 0 < len(features) == results["N_HOTSPOTS"] <= 10
    sums = [f["sum_unc"] for f in features]
    assert sums == sorted(sums, reverse=True)
    above = np.isfinite(u) & (u > threshold)
    assert sum(f["n_pixels"] for f in features) <= above.sum()
    for f in features:
        assert f.geometry().isGeosValid()
        assert f["sum_unc"] == pytest.approx(f["mean_unc"] * f["n_pixels"], rel=1e-9)
        assert f["area"] == pytest.approx(f.geometry().area(), rel=1e-9)  # region polygons are the pixels


def _save_mc_then_hotspots(path):
    from qgis.core import (
        QgsProcessingModelAlgorithm,
        QgsProcessingModelChildAlgorithm,
        QgsProcessingModelChildParameterSource as Source,
        QgsProcessingModelOutput,
        QgsProcessingModelParameter,
        QgsProcessingParameterFile,
        QgsProcessingParameterRasterLayer,
    )

    model = QgsProcessingModelAlgorithm("mc_then_hotspots", "tests")
    model.addModelParameter(QgsProcessingParameterRasterLayer("raster", "raster"),
                            QgsProcessingModelParameter("raster"))
    model.addModelParameter(QgsProcessingParameterFile("card", "card"), QgsProcessingModelParameter("card"))
    mc = QgsProcessingModelChildAlgorithm("uncertainty:mcdropout")
    mc.setChildId("mc")
    mc.addParameterSources("INPUT", [Source.fromModelParameter("raster")])
    mc.addParameterSources("MODEL", [Source.fromModelParameter("card")])
    mc.addParameterSources("N_SAMPLES", [Source.fromStaticValue(4)])
    mc.addParameterSources("SEED", [Source.fromStaticValue(3)])
    hs = QgsProcessingModelChildAlgorithm("uncertainty:hotspots")
    hs.setChildId("hs")
    hs.addParameterSources("INPUT", [Source.fromChildOutput("mc", "OUTPUT_UNCERTAINTY")])
    hs.addParameterSources("CLASSES", [Source.fromChildOutput("mc", "OUTPUT")])
    hs.addParameterSources("CELL_SIZE", [Source.fromStaticValue(16)])
    output = QgsProcessingModelOutput("hotspots", "hotspots")
    output.setChildId("hs")
    output.setChildOutputName("OUTPUT")
    hs.setModelOutputs({"hotspots": output})
    model.addChildAlgorithm(mc)
    model.addChildAlgorithm(hs)
    model.updateDestinationParameters()
    assert model.toFile(str(path))
    return path


def _destination(model, output):
    """The model's destination parameter for ``output``: "child:output" on some QGIS versions, "output" on newer
    ones (3.40 and later); ask the model rather than spelling either."""
    names = {d.name().split(":")[-1]: d.name() for d in model.destinationParameterDefinitions()}
    return names[output]


def test_saved_model_chains_mcdropout_into_hotspots(qgis_app, data, mc_run, tmp_path):
    from qgis.core import QgsProcessingModelAlgorithm

    model = QgsProcessingModelAlgorithm()
    assert model.fromFile(str(_save_mc_then_hotspots(tmp_path / "chain.model3")))
    hotspots = _destination(model, "hotspots")
    result = run_algorithm(model, {"raster": str(data["raster"]), "card": str(data["smp"]),
                          hotspots: str(tmp_path / "chain.gpkg")})
    _, features = _features(result[hotspots])
    # Same seed, same cells as the direct run.
    direct = run_algorithm("uncertainty:hotspots", {"INPUT": mc_run["OUTPUT_UNCERTAINTY"], "CLASSES": mc_run["OUTPUT"],
                                           "CELL_SIZE": 16, "OUTPUT": str(tmp_path / "direct.gpkg")})
    _, expected = _features(direct["OUTPUT"])
    assert [(f["rank"], f["majority_class"]) for f in features] == [(f["rank"], f["majority_class"]) for f in expected]
    assert [f["mean_unc"] for f in features] == pytest.approx([f["mean_unc"] for f in expected], rel=1e-6)


@pytest.fixture(scope="module")
def reference(mc_run):
    """Reference ids: the model's own class, changed on a pattern of pixels and in proportion to uncertainty."""
    classes = _read(mc_run["OUTPUT"], 1)
    unc = _read(mc_run["OUTPUT_UNCERTAINTY"], 1)
    rng = np.random.default_rng(4)
    lo, hi = np.nanmin(unc), np.nanmax(unc)
    flip = rng.random(classes.shape) < 0.4 * np.nan_to_num((unc - lo) / (hi - lo)) ** 4
    ref = np.where(flip, (classes + 1) % 3, classes).astype(np.uint8)
    ref[classes == 255] = 255
    path = mc_run["OUTPUT"].replace("classes.tif", "reference.tif")
    with rasterio.open(mc_run["OUTPUT"]) as src:
        profile = dict(src.profile, nodata=None)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(ref, 1)
    return path, ref


def _numpy_abstention(probabilities, uncertainty, ref, threshold):
    p = _read(probabilities)
    u = _read(uncertainty, 1).astype(np.float64)
    evaluated = (ref != 255) & np.isfinite(u) & np.isfinite(p).all(0)
    wrong = p.argmax(0) != ref
    kept = evaluated & (u <= threshold)
    return kept.sum() / evaluated.sum(), wrong[kept].mean(), u, evaluated, wrong


def test_evaluate_outputs_temperature_threshold_and_calibrated_card(mc_run, reference, data, tmp_path):
    from seg_uncertainty.engine.calibration_study import checker_block_for
    from seg_uncertainty.engine.model_card import load_model_card
    from seg_uncertainty.engine.temperature import checkerboard
    from test_decisions import _brute_force_temperature, _numpy_ece

    ref_path, ref = reference
    result = run_algorithm("uncertainty:evaluate", {
        "PROBABILITIES": mc_run["OUTPUT_PROBABILITIES"], "UNCERTAINTY": mc_run["OUTPUT_UNCERTAINTY"],
        "REFERENCE": ref_path, "TARGET_ERROR": 0.05, "MODEL": str(data["smp"]),
        "OUTPUT_HTML": str(tmp_path / "r.html"), "OUTPUT_JSON": str(tmp_path / "r.json")})
    coverage, kept_error, u, evaluated, wrong = _numpy_abstention(
        mc_run["OUTPUT_PROBABILITIES"], mc_run["OUTPUT_UNCERTAINTY"], ref, result["REJECT_THRESHOLD"])
    assert result["COVERAGE"] == pytest.approx(coverage, abs=1e-12) and 0.3 < coverage < 1
    assert result["KEPT_ERROR_RATE"] == pytest.approx(kept_error, abs=1e-12) and kept_error <= 0.05
    above = np.sort(u[evaluated & (u > result["REJECT_THRESHOLD"])])
    if above.size:  # keeping the next pixel up would break the target (to within one histogram bin)
        nxt = evaluated & (u <= above[0] + np.log(3) / 16384)
        assert wrong[nxt].mean() > 0.05
    # Temperature: brute force over the checkerboard's fitting pixels.
    p = _read(mc_run["OUTPUT_PROBABILITIES"]).astype(np.float64)
    block = checker_block_for(*ref.shape)
    fit = evaluated & checkerboard(0, 0, *ref.shape, block=block)
    t_ref, _ = _brute_force_temperature(np.log(np.maximum(p[:, fit].T, 1e-12)), ref[fit].astype(int))
    assert result["TEMPERATURE"] == pytest.approx(t_ref, abs=1e-3)
    held = evaluated & ~checkerboard(0, 0, *ref.shape, block=block)
    q = p[:, held] ** (1 / result["TEMPERATURE"])
    assert result["ECE_CALIBRATED"] == pytest.approx(_numpy_ece(q / q.sum(0), ref[held].astype(int)), abs=1e-6)
    card = load_model_card(result["CALIBRATED_MODEL"])
    assert card.temperature == pytest.approx(result["TEMPERATURE"], rel=1e-12)
    assert result["CALIBRATED_MODEL"] == str(data["smp"]).replace(".yaml", "_calibrated.yaml")
    figures = json.loads((tmp_path / "r.json").read_text())
    assert figures["class_names"] == ["c0", "c1", "c2"]  # from the probability bands' descriptions
    page = (tmp_path / "r.html").read_text()
    for fig_id in ("fig-calibration", "fig-abstention", "fig-class-thresholds", "tbl-calibration"):
        assert f'id="{fig_id}"' in page


def test_qgis_process_evaluate_decisions_equal_processing_run(mc_run, reference, qgis_process, tmp_path):
    ref_path, _ = reference
    common = {"PROBABILITIES": mc_run["OUTPUT_PROBABILITIES"], "UNCERTAINTY": mc_run["OUTPUT_UNCERTAINTY"],
              "REFERENCE": ref_path, "TARGET_ERROR": 0.02}
    code, out, err = qgis_process("uncertainty:evaluate", **common, OUTPUT_HTML=tmp_path / "a.html",
                                  OUTPUT_JSON=tmp_path / "a.json")
    assert code == 0, err
    cli = json.loads(out[out.index("{"):])["results"]
    here = run_algorithm("uncertainty:evaluate", dict(common, OUTPUT_HTML=str(tmp_path / "b.html"),
                                             OUTPUT_JSON=str(tmp_path / "b.json")))
    for key in ("TEMPERATURE", "ECE_CALIBRATED", "REJECT_THRESHOLD", "COVERAGE", "KEPT_ERROR_RATE"):
        assert cli[key] == pytest.approx(here[key], rel=1e-9), key
    assert cli["CALIBRATED_MODEL"] in (None, "")


def test_mcdropout_reject_above_and_sample_bands_through_processing(mc_run, data, tmp_path):
    unc = _read(mc_run["OUTPUT_UNCERTAINTY"], 1)
    classes = _read(mc_run["OUTPUT"], 1)
    threshold = float(np.nanquantile(unc, 0.8))
    result = run_algorithm("uncertainty:mcdropout", {
        "INPUT": str(data["raster"]), "MODEL": str(data["smp"]), "N_SAMPLES": 4, "SEED": 3,
        "REJECT_ABOVE": threshold, "OUTPUT": str(tmp_path / "rej.tif"),
        "OUTPUT_PROBABILITIES": str(tmp_path / "p.tif"), "OUTPUT_SAMPLES": str(tmp_path / "s.tif"),
        "SAMPLE_BANDS": 4, "SAMPLE_CONTENT": "probability", "SAMPLE_CLASS": 2})
    got = _read(result["OUTPUT"], 1)
    want = np.where(unc > threshold, 3, classes)
    want[classes == 255] = 255
    np.testing.assert_array_equal(got, want)
    assert result["REJECTED_PIXELS"] == int(np.sum(unc > threshold))
    samples = _read(result["OUTPUT_SAMPLES"])
    np.testing.assert_allclose(samples.mean(0), _read(tmp_path / "p.tif", 3), atol=1e-6, equal_nan=True)
    qml = (tmp_path / "rej.qml").read_text()
    assert 'label="uncertain"' in qml and "#ff00ff" in qml.lower()


def _save_evaluate_then_mcdropout(path):
    from qgis.core import (
        QgsProcessingModelAlgorithm,
        QgsProcessingModelChildAlgorithm,
        QgsProcessingModelChildParameterSource as Source,
        QgsProcessingModelOutput,
        QgsProcessingModelParameter,
        QgsProcessingParameterFile,
        QgsProcessingParameterRasterLayer,
    )

    model = QgsProcessingModelAlgorithm("evaluate_then_mcdropout", "tests")
    for name, parameter in (("raster", QgsProcessingParameterRasterLayer("raster", "raster")),
                            ("card", QgsProcessingParameterFile("card", "card")),
                            ("probabilities", QgsProcessingParameterRasterLayer("probabilities", "probabilities")),
                            ("uncertainty", QgsProcessingParameterRasterLayer("uncertainty", "uncertainty")),
                            ("reference", QgsProcessingParameterRasterLayer("reference", "reference"))):
        model.addModelParameter(parameter, QgsProcessingModelParameter(name))
    ev = QgsProcessingModelChildAlgorithm("uncertainty:evaluate")
    ev.setChildId("ev")
    for key, source in (("PROBABILITIES", "probabilities"), ("UNCERTAINTY", "uncertainty"),
                        ("REFERENCE", "reference")):
        ev.addParameterSources(key, [Source.fromModelParameter(source)])
    ev.addParameterSources("TARGET_ERROR", [Source.fromStaticValue(0.05)])
    ev.addParameterSources("OUTPUT_HTML", [Source.fromStaticValue("TEMPORARY_OUTPUT")])
    ev.addParameterSources("OUTPUT_JSON", [Source.fromStaticValue("TEMPORARY_OUTPUT")])
    mc = QgsProcessingModelChildAlgorithm("uncertainty:mcdropout")
    mc.setChildId("mc")
    mc.addParameterSources("INPUT", [Source.fromModelParameter("raster")])
    mc.addParameterSources("MODEL", [Source.fromModelParameter("card")])
    mc.addParameterSources("N_SAMPLES", [Source.fromStaticValue(4)])
    mc.addParameterSources("SEED", [Source.fromStaticValue(3)])
    mc.addParameterSources("REJECT_ABOVE", [Source.fromChildOutput("ev", "REJECT_THRESHOLD")])
    output = QgsProcessingModelOutput("decided", "decided")
    output.setChildId("mc")
    output.setChildOutputName("OUTPUT")
    mc.setModelOutputs({"decided": output})
    model.addChildAlgorithm(ev)
    model.addChildAlgorithm(mc)
    model.updateDestinationParameters()
    assert model.toFile(str(path))
    return path


def test_saved_model_feeds_reject_threshold_into_mcdropout(mc_run, reference, data, tmp_path):
    """evaluate → mcdropout (same seed): the decided map keeps exactly the COVERAGE evaluate reported, and the
    kept pixels' error rate is KEPT_ERROR_RATE."""
    from qgis.core import QgsProcessingModelAlgorithm

    ref_path, ref = reference
    model = QgsProcessingModelAlgorithm()
    assert model.fromFile(str(_save_evaluate_then_mcdropout(tmp_path / "decide.model3")))
    decided_output = _destination(model, "decided")
    result = run_algorithm(model, {"raster": str(data["raster"]), "card": str(data["smp"]),
                          "probabilities": mc_run["OUTPUT_PROBABILITIES"],
                          "uncertainty": mc_run["OUTPUT_UNCERTAINTY"], "reference": ref_path,
                          decided_output: str(tmp_path / "decided.tif")})
    direct = run_algorithm("uncertainty:evaluate", {
        "PROBABILITIES": mc_run["OUTPUT_PROBABILITIES"], "UNCERTAINTY": mc_run["OUTPUT_UNCERTAINTY"],
        "REFERENCE": ref_path, "TARGET_ERROR": 0.05, "CALIBRATE": False,
        "OUTPUT_HTML": str(tmp_path / "d.html"), "OUTPUT_JSON": str(tmp_path / "d.json")})
    decided = _read(result[decided_output], 1)
    evaluated = (ref != 255) & (decided != 255)
    kept = evaluated & (decided != 3)
    assert kept.sum() / evaluated.sum() == pytest.approx(direct["COVERAGE"], abs=1e-12)
    assert np.mean(decided[kept] != ref[kept]) == pytest.approx(direct["KEPT_ERROR_RATE"], abs=1e-12)
    assert direct["KEPT_ERROR_RATE"] <= 0.05 and 0 < direct["COVERAGE"] < 1


def test_report_shows_individual_passes_on_the_most_uncertain_window(mc_run, reference, data, tmp_path):
    ref_path, _ = reference
    mc = run_algorithm("uncertainty:mcdropout", {
        "INPUT": str(data["raster"]), "MODEL": str(data["smp"]), "N_SAMPLES": 4, "SEED": 3,
        "OUTPUT": str(tmp_path / "c.tif"), "OUTPUT_SAMPLES": str(tmp_path / "s.tif"), "SAMPLE_BANDS": 3})
    run_algorithm("uncertainty:evaluate", {
        "PROBABILITIES": mc_run["OUTPUT_PROBABILITIES"], "UNCERTAINTY": mc_run["OUTPUT_UNCERTAINTY"],
        "REFERENCE": ref_path, "SAMPLES": mc["OUTPUT_SAMPLES"], "CALIBRATE": False,
        "OUTPUT_HTML": str(tmp_path / "r.html"), "OUTPUT_JSON": str(tmp_path / "r.json")})
    window = json.loads((tmp_path / "r.json").read_text())["sample_window"]
    assert window["indices"] == [0, 2, 3] and window["content"] == "class"  # round(0, 1.5, 3) of S = 4
    figures = json.loads((tmp_path / "r.json").read_text())
    assert figures["calibration"] is None and figures["abstention"] is None
    # The window (128 px, clamped inside the 150 × 130 raster) holds the most uncertain preview cell.
    assert 0 <= window["row"] <= 130 - 128 and 0 <= window["col"] <= 150 - 128
    assert 'id="fig-samples"' in (tmp_path / "r.html").read_text()


def test_qgis_process_mcdropout_rejects_and_writes_samples_like_processing_run(mc_run, data, qgis_process, tmp_path):
    # A threshold in a gap of the values: the CLI and this process agree on uncertainties to ~1e-7, not bit for bit.
    values = np.unique(_read(mc_run["OUTPUT_UNCERTAINTY"], 1))
    values = values[np.isfinite(values)].astype(np.float64)
    start = int(0.7 * values.size)
    gap = start + int(np.argmax(np.diff(values[start:]) > 1e-5))
    threshold = float((values[gap] + values[gap + 1]) / 2)
    common = {"INPUT": data["raster"], "MODEL": data["smp"], "N_SAMPLES": 4, "SEED": 3, "REJECT_ABOVE": threshold,
              "SAMPLE_BANDS": 2}
    code, out, err = qgis_process("uncertainty:mcdropout", **common, OUTPUT=tmp_path / "cli.tif",
                                  OUTPUT_SAMPLES=tmp_path / "cli_s.tif")
    assert code == 0, err
    cli = json.loads(out[out.index("{"):])["results"]
    in_process = {k: v if isinstance(v, (int, float)) else str(v) for k, v in common.items()}
    here = run_algorithm("uncertainty:mcdropout", dict(in_process, OUTPUT=str(tmp_path / "py.tif"),
                                              OUTPUT_SAMPLES=str(tmp_path / "py_s.tif")))
    assert cli["REJECTED_PIXELS"] == here["REJECTED_PIXELS"] > 0
    np.testing.assert_array_equal(_read(cli["OUTPUT"]), _read(here["OUTPUT"]))
    np.testing.assert_array_equal(_read(cli["OUTPUT_SAMPLES"]), _read(here["OUTPUT_SAMPLES"]))
    assert np.sum(_read(cli["OUTPUT"], 1) == 3) == cli["REJECTED_PIXELS"]


def test_tta_reject_above_uses_its_own_uncertainty(qgis_app, data, tmp_path):
    plain = run_algorithm("uncertainty:tta", {
        "INPUT": str(data["raster"]), "MODEL": str(data["smp"]), "TTA_MODE": "flip",
        "UNCERTAINTY_MODE": "margin", "OUTPUT": str(tmp_path / "t.tif")})
    margin = _read(plain["OUTPUT_UNCERTAINTY"], 1)
    assert np.nanmin(margin) >= 0 and np.nanmax(margin) <= 1
    threshold = float(np.nanmedian(margin))
    decided = run_algorithm("uncertainty:tta", {
        "INPUT": str(data["raster"]), "MODEL": str(data["smp"]), "TTA_MODE": "flip",
        "UNCERTAINTY_MODE": "margin", "REJECT_ABOVE": threshold, "OUTPUT": str(tmp_path / "d.tif")})
    classes = _read(plain["OUTPUT"], 1)
    want = np.where(margin > threshold, 3, classes)
    want[classes == 255] = 255
    np.testing.assert_array_equal(_read(decided["OUTPUT"], 1), want)
    assert decided["REJECTED_PIXELS"] == int(np.sum(margin > threshold))
