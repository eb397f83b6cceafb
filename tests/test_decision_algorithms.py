"""Decisions through real QGIS: hotspots after mcdropout via processing.run, qgis_process and a saved model."""

import json
import warnings

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

from conftest import qgis_process_runner, shared_raster
from models import save_smp


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("decisions")
    with rasterio.open(shared_raster("RGB.byte.tif")) as src:
        window = Window(0, 250, 150, 130)  # a corner with NoData, water and land
        profile = src.profile.copy()
        profile.update(width=150, height=130, transform=src.window_transform(window))
        with rasterio.open(folder / "crop.tif", "w", **profile) as dst:
            dst.write(src.read(window=window))
    smp_card = save_smp(folder, "FPN", classes=3, dropout=0.25, tile=(64, 64), stride=(48, 48))
    return {"folder": folder, "raster": folder / "crop.tif", "smp": smp_card}


@pytest.fixture(scope="module")
def qgis_process(tmp_path_factory):
    return qgis_process_runner(tmp_path_factory.mktemp("qgis_process_profile"))


def _read(path, band=None):
    with rasterio.open(path) as ds:
        return ds.read(band) if band else ds.read()


def _run(algorithm, parameters, feedback=None):
    import processing

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return processing.run(algorithm, parameters, feedback=feedback)


@pytest.fixture(scope="module")
def mc_run(qgis_app, data, tmp_path_factory):
    folder = tmp_path_factory.mktemp("mc")
    return _run("uncertainty:mcdropout", {
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
    result = _run("uncertainty:hotspots", {"INPUT": mc_run["OUTPUT_UNCERTAINTY"], "CLASSES": mc_run["OUTPUT"],
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
    top = _run("uncertainty:hotspots", {"INPUT": mc_run["OUTPUT_UNCERTAINTY"], "CELL_SIZE": 16, "TOP_N": 5,
                                        "OUTPUT": str(tmp_path / "top.gpkg")})
    assert [f["mean_unc"] for f in _features(top["OUTPUT"])[1]] == pytest.approx(means[:5])


def test_hotspots_graduated_style_on_loaded_layer(mc_run, tmp_path):
    from qgis.core import QgsGraduatedSymbolRenderer, QgsVectorLayer

    _run("uncertainty:hotspots", {"INPUT": mc_run["OUTPUT_UNCERTAINTY"], "CELL_SIZE": 32,
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
    model.addModelParameter(QgsProcessingParameterRasterLayer("raster", "raster"), QgsProcessingModelParameter("raster"))
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


def test_saved_model_chains_mcdropout_into_hotspots(qgis_app, data, mc_run, tmp_path):
    from qgis.core import QgsProcessingModelAlgorithm

    model = QgsProcessingModelAlgorithm()
    assert model.fromFile(str(_save_mc_then_hotspots(tmp_path / "chain.model3")))
    result = _run(model, {"raster": str(data["raster"]), "card": str(data["smp"]),
                          "hs:hotspots": str(tmp_path / "chain.gpkg")})
    _, features = _features(result["hs:hotspots"])
    # Same seed, same cells as the direct run.
    direct = _run("uncertainty:hotspots", {"INPUT": mc_run["OUTPUT_UNCERTAINTY"], "CLASSES": mc_run["OUTPUT"],
                                           "CELL_SIZE": 16, "OUTPUT": str(tmp_path / "direct.gpkg")})
    _, expected = _features(direct["OUTPUT"])
    assert [(f["rank"], f["majority_class"]) for f in features] == [(f["rank"], f["majority_class"]) for f in expected]
    assert [f["mean_unc"] for f in features] == pytest.approx([f["mean_unc"] for f in expected], rel=1e-6)
