"""Large rasters: column panels, EXTENT and MASK, overviews and Cloud Optimized GeoTIFFs, reduced precision."""

import json
import warnings

import numpy as np
import pytest
import rasterio
import torch
from osgeo import gdal, ogr, osr
from rasterio.features import rasterize
from rasterio.warp import transform_bounds, transform_geom
from rasterio.windows import Window

from seg_uncertainty.engine.errors import InvalidOptionError
from seg_uncertainty.engine.inference import OutputPaths, predict_uncertainty
from seg_uncertainty.engine.panels import panel_blocks, panel_blocks_for_reads, read_width_for_memory
from seg_uncertainty.engine.tiling import tile_starts

from conftest import crop_raster, load_cpu_model, qgis_process_runner, run_algorithm, shared_raster
from models import PointwiseNet, save_smp, save_torchscript, write_card

# A 300 × 260 crop from the middle of the Landsat scene (EPSG:32618, 300.04 m pixels): valid pixels and some
# NoData along the scene's edge.
CROP = Window(250, 200, 300, 260)
# A polygon in EPSG:4326 inside the crop (an irregular pentagon, so its edges cut pixels at many places).
POLYGON_4326 = {"type": "Polygon", "coordinates": [[(-78.10, 24.35), (-77.55, 24.40), (-77.40, 24.80),
                                                    (-77.80, 24.93), (-78.12, 24.70), (-78.10, 24.35)]]}


def _read(path):
    with rasterio.open(path) as ds:
        return ds.read()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("large")
    raster = crop_raster(shared_raster("RGB.byte.tif"), folder / "crop.tif", CROP)
    mc_card = save_smp(folder, "Unet", classes=3, dropout=0.3, tile=(64, 64), stride=(32, 32))
    pointwise = write_card(folder, save_torchscript(folder, PointwiseNet(3, 4, seed=7)), classes=4,
                           tile=(64, 64), stride=(40, 40), name="pointwise.yaml")
    return {"folder": folder, "raster": raster, "mc": mc_card, "pointwise": pointwise}


def _run(folder, raster, loaded, **options):
    folder.mkdir(parents=True, exist_ok=True)
    outputs = OutputPaths(str(folder / "c.tif"), str(folder / "u.tif"), str(folder / "p.tif"))
    summary = predict_uncertainty(str(raster), loaded, outputs, **options)
    return [_read(p) for p in (outputs.classes, outputs.uncertainty, outputs.probabilities)], summary, outputs


# --------------------------------------------------------------------------------------------------- panels
def test_panel_plan_covers_the_block_on_output_block_boundaries():
    assert panel_blocks((3, 10, 5, 1000), 600) == [(3, 10, 5, 512), (3, 522, 5, 488)]  # 600 → 512 (2 blocks)
    assert panel_blocks((0, 0, 5, 100), 33) == [(0, 0, 5, 33), (0, 33, 5, 33), (0, 66, 5, 33), (0, 99, 5, 1)]
    with pytest.raises(InvalidOptionError):
        panel_blocks((0, 0, 5, 100), 0)
    # A bigger budget never gives narrower reads; a tiny one still gives a tile's width; the default reads 2,048 px
    # for 512-px tiles, 3 bands, 4 classes, entropy (4 moment channels).
    widths = [read_width_for_memory(mb, (512, 512), (256, 256), 3, 4, 4) for mb in (1, 64, 320, 1024)]
    assert widths == sorted(widths) and widths[0] == 512 and widths[-1] % 256 == 0
    assert read_width_for_memory(None, (512, 512), (256, 256), 3, 4, 4) == 2048


@pytest.mark.parametrize("width", [300, 2048, 5000, 65536])
@pytest.mark.parametrize("max_read", [512, 1000, 2048])
def test_panels_never_read_more_than_the_budget_and_tile_the_block(width, max_read):
    """Every panel's tiles read at most max_read columns (brute force over the grid's tiles), panels cover the
    block left to right without gaps, inner boundaries on 256-px blocks, and no narrower panel could be wider."""
    tile, stride = 512, 256
    starts = tile_starts(width, min(tile, width), stride)
    tw = min(tile, width)
    panels = panel_blocks_for_reads((0, 0, 4, width), starts, tw, max_read)
    assert panels[0][1] == 0 and sum(p[3] for p in panels) == width
    assert all(a[1] + a[3] == b[1] for a, b in zip(panels, panels[1:]))
    assert all(p[1] % 256 == 0 for p in panels)
    for _, c0, _, w in panels:
        touching = [c for c in starts if c < c0 + w and c + tw > c0]
        read = touching[-1] + tw - touching[0]
        assert read <= max(max_read, tw) or w <= 256  # one block is the narrowest panel
    for (_, c0, _, w), _next in zip(panels, panels[1:]):  # one more block would have read too much
        wider = [c for c in starts if c < c0 + w + 256 and c + tw > c0]
        assert wider[-1] + tw - wider[0] > max_read


@pytest.mark.parametrize("mode", ["mutual_information", "variance"])  # both extended moment layouts
def test_panels_are_bit_identical_to_one_panel_and_to_block_runs(tmp_path, data, mode):
    """MC Dropout (seeded per global tile) on overlapping 64-px tiles: every panel width gives the single-panel
    pixels bit for bit, and so does a block= run cut into panels."""
    loaded = load_cpu_model(data["mc"])
    options = dict(n_samples=3, seed=4, mode=mode)
    whole, summary, _ = _run(tmp_path / "one", data["raster"], loaded, panel_width=10**6, **options)
    assert summary.n_tiles == 8 * 9  # ceil((260-64)/32)+1 rows × ceil((300-64)/32)+1 columns, once each
    for width in (64, 33, 256):
        panels, summary, _ = _run(tmp_path / f"w{width}", data["raster"], loaded, panel_width=width, **options)
        assert summary.n_tiles > 8 * 9  # tiles straddling a panel boundary run in both panels
        for a, b in zip(whole, panels):
            np.testing.assert_array_equal(a, b)
    r, c, h, w = block = (37, 21, 150, 201)
    part, _, out = _run(tmp_path / "block", data["raster"], loaded, block=block, panel_width=50, **options)
    for a, b in zip(whole, part):
        np.testing.assert_array_equal(a[:, r : r + h, c : c + w], b)
    with rasterio.open(data["raster"]) as src, rasterio.open(out.classes) as dst:
        assert dst.transform == src.window_transform(Window(c, r, w, h)) and dst.crs == src.crs
    assert np.isnan(whole[1]).any() and (whole[0] == 255).any()  # NoData in, NoData out, across panels


# ------------------------------------------------------------------------------------------- overviews, COG
def test_outputs_have_overviews_and_cog_is_valid(tmp_path, data):
    loaded = load_cpu_model(data["pointwise"])
    options = dict(stochastic=False, seed=0, panel_width=128)
    plain, _, out = _run(tmp_path / "plain", data["raster"], loaded, **options)
    cog, _, cog_out = _run(tmp_path / "cog", data["raster"], loaded, cog=True, **options)
    for a, b in zip(plain, cog):
        np.testing.assert_array_equal(a, b)  # the same pixels either way
    for path in (out.classes, out.uncertainty, out.probabilities, cog_out.classes, cog_out.uncertainty):
        with rasterio.open(path) as ds:
            assert ds.overviews(1) == [2]  # 300 px → one 150 px overview (≤ 256)
            full = ds.read(1).astype(np.float64)
            overview = ds.read(1, out_shape=(ds.height // 2, ds.width // 2)).astype(np.float64)
            if ds.dtypes[0] == "uint8":
                assert set(np.unique(overview)) <= set(np.unique(full))  # nearest: only real classes
            else:  # average of the 2 × 2 valid pixels (NoData ignored)
                blocks = full[: ds.height // 2 * 2, : ds.width // 2 * 2].reshape(ds.height // 2, 2, ds.width // 2, 2)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    expected = np.nanmean(blocks, axis=(1, 3))
                both = np.isfinite(expected) & np.isfinite(overview)
                np.testing.assert_allclose(overview[both], expected[both], rtol=1e-4, atol=1e-6)
    for path in (cog_out.classes, cog_out.uncertainty, cog_out.probabilities):
        info = gdal.Info(path, format="json")
        assert info["metadata"]["IMAGE_STRUCTURE"]["LAYOUT"] == "COG"
    for path in (out.classes, out.uncertainty):
        assert gdal.Info(path, format="json")["metadata"]["IMAGE_STRUCTURE"].get("LAYOUT") != "COG"
    assert not list((tmp_path / "cog").glob(".*partial*"))  # no temporary file left behind


# ------------------------------------------------------------------------------------------- EXTENT and MASK
def _tiles_touching(raster_shape, block, tile=64, stride=40):


    r, c, h, w = block
    rows = [s for s in tile_starts(raster_shape[0], tile, stride) if s < r + h and s + tile > r]
    cols = [s for s in tile_starts(raster_shape[1], tile, stride) if s < c + w and s + tile > c]
    return rows, cols


def _mask_geometry_in_raster_crs(raster):
    with rasterio.open(raster) as src:
        return transform_geom("EPSG:4326", src.crs, POLYGON_4326)


def test_engine_mask_runs_only_tiles_touching_the_polygon(tmp_path, data):
    loaded = load_cpu_model(data["pointwise"])
    full, _, _ = _run(tmp_path / "full", data["raster"], loaded, stochastic=False, seed=0)
    polygon = _mask_geometry_in_raster_crs(data["raster"])
    masked, summary, out = _run(tmp_path / "mask", data["raster"], loaded, stochastic=False, seed=0,
                                mask=[polygon], panel_width=100)
    with rasterio.open(data["raster"]) as src, rasterio.open(out.classes) as dst:
        c0, r0 = (round(v) for v in ~src.transform * (dst.transform.c, dst.transform.f))
        assert dst.transform == src.window_transform(Window(c0, r0, dst.width, dst.height))  # on the input's grid
        inside = rasterize([(polygon, 1)], out_shape=dst.shape, transform=dst.transform).astype(bool)
        valid = np.all(src.read_masks([1, 2, 3], window=Window(c0, r0, dst.width, dst.height)) > 0, axis=0)
        left, bottom, right, top = dst.bounds
        px = src.transform.a
    h, w = inside.shape
    # The block is the polygon's bounding box, snapped outward to whole pixels.
    from seg_uncertainty.engine.aoi import geometry_bounds

    x0, y0, x1, y1 = geometry_bounds([polygon])
    assert left <= x0 < left + px and right - px < x1 <= right and bottom <= y0 < bottom + px and top - px < y1 <= top
    keep = inside & valid
    np.testing.assert_array_equal(masked[0][0] == 255, ~keep)  # NoData outside the polygon
    np.testing.assert_array_equal(np.isnan(masked[1][0]), ~keep)
    for a, b in zip(full, masked):
        np.testing.assert_array_equal(b[:, keep], a[:, r0 : r0 + h, c0 : c0 + w][:, keep])  # inside: the full run
    # Only tiles touching a valid pixel inside the polygon ran (per panel: a tile straddling panels runs in each).
    with rasterio.open(data["raster"]) as src:
        shape = (src.height, src.width)
        whole_inside = np.zeros(shape, dtype=bool)
        whole_inside[r0 : r0 + h, c0 : c0 + w] = keep
    ran = 0
    for panel in panel_blocks((r0, c0, h, w), 100):
        rows, cols = _tiles_touching(shape, panel)
        ran += sum(whole_inside[r : r + 64, c : c + 64].any() for r in rows for c in cols)
    assert summary.n_tiles - summary.n_skipped == ran < summary.n_tiles


def _write_polygon_gpkg(path):
    driver = ogr.GetDriverByName("GPKG")
    ds = driver.CreateDataSource(str(path))
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(4326)
    srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    layer = ds.CreateLayer("aoi", srs, ogr.wkbPolygon)
    feature = ogr.Feature(layer.GetLayerDefn())
    feature.SetGeometry(ogr.CreateGeometryFromJson(json.dumps(POLYGON_4326)))
    layer.CreateFeature(feature)
    ds = None
    return path


def test_extent_through_processing_run_snaps_outward_and_equals_the_full_run(qgis_app, tmp_path, data):
    base = {"INPUT": str(data["raster"]), "MODEL": str(data["pointwise"]), "SEED": 0,
            "OUTPUT_PROBABILITIES": None}
    full = run_algorithm("uncertainty:tta", dict(base, OUTPUT=str(tmp_path / "full.tif")))
    with rasterio.open(data["raster"]) as src:
        t = src.transform
        # Corners at fractional pixels: columns 30.3 .. 170.6, rows 40.8 .. 200.2 → pixels 30..171, 40..201.
        xmin, xmax = t.c + 30.3 * t.a, t.c + 170.6 * t.a
        ymax, ymin = t.f + 40.8 * t.e, t.f + 200.2 * t.e
        crs = src.crs.to_string()
    result = run_algorithm("uncertainty:tta", dict(
        base, EXTENT=f"{xmin},{xmax},{ymin},{ymax} [{crs}]", OUTPUT=str(tmp_path / "ext.tif"),
        OUTPUT_UNCERTAINTY=str(tmp_path / "ext_u.tif")))
    r, c, h, w = 40, 30, 161, 141
    rows, cols = _tiles_touching((260, 300), (r, c, h, w))
    assert result["N_TILES"] == len(rows) * len(cols) < full["N_TILES"]  # only tiles touching the extent
    with rasterio.open(data["raster"]) as src, rasterio.open(result["OUTPUT"]) as dst:
        assert (dst.height, dst.width) == (h, w)
        assert dst.transform == src.window_transform(Window(c, r, w, h)) and dst.crs == src.crs
    for key in ("OUTPUT", "OUTPUT_UNCERTAINTY"):
        np.testing.assert_array_equal(_read(result[key]), _read(full[key])[:, r : r + h, c : c + w])


@pytest.fixture(scope="module")
def qgis_process(tmp_path_factory):
    return qgis_process_runner(tmp_path_factory.mktemp("qgis_process_profile"))


def test_extent_in_another_crs_and_mask_through_qgis_process(qgis_app, qgis_process, tmp_path, data):
    """EXTENT in EPSG:4326 and a MASK GeoPackage in EPSG:4326 from the command line, against numpy."""
    full = run_algorithm("uncertainty:mcdropout", {
        "INPUT": str(data["raster"]), "MODEL": str(data["mc"]), "N_SAMPLES": 2, "SEED": 8,
        "OUTPUT": str(tmp_path / "full.tif")})
    full_c, full_u = _read(full["OUTPUT"])[0], _read(full["OUTPUT_UNCERTAINTY"])[0]
    lon0, lat0, lon1, lat1 = -78.15, 24.30, -77.50, 24.75
    gpkg = _write_polygon_gpkg(tmp_path / "aoi.gpkg")
    code, out, err = qgis_process(
        "uncertainty:mcdropout", INPUT=data["raster"], MODEL=data["mc"], N_SAMPLES=2, SEED=8,
        EXTENT=f"{lon0},{lon1},{lat0},{lat1} [EPSG:4326]", MASK=gpkg, OUTPUT=tmp_path / "cli.tif")
    assert code == 0, err
    results = json.loads(out[out.index("{"):])["results"]
    with rasterio.open(data["raster"]) as src, rasterio.open(results["OUTPUT"]) as dst:
        col, row = ~src.transform * (dst.transform.c, dst.transform.f)
        assert abs(col - round(col)) < 1e-6 and abs(row - round(row)) < 1e-6  # aligned with the input's pixels
        r0, c0 = round(row), round(col)
        assert dst.transform == src.window_transform(Window(c0, r0, dst.width, dst.height))
        # Snapped outward: the reprojected extent (densified) lies inside, within one pixel of each side.
        x0, y0, x1, y1 = transform_bounds("EPSG:4326", src.crs, lon0, lat0, lon1, lat1, densify_pts=21)
        left, bottom, right, top = dst.bounds
        px = src.transform.a
        assert left <= x0 + 1e-3 and right >= x1 - 1e-3 and bottom <= y0 + 1e-3 and top >= y1 - 1e-3
        assert x0 - left < px + 1e-3 and right - x1 < px + 1e-3 and y0 - bottom < px + 1e-3 and top - y1 < px + 1e-3
        polygon = transform_geom("EPSG:4326", src.crs, POLYGON_4326)
        inside = rasterize([(polygon, 1)], out_shape=dst.shape, transform=dst.transform).astype(bool)
        classes = dst.read(1)
    h, w = classes.shape
    keep = inside & (full_c[r0 : r0 + h, c0 : c0 + w] != 255)
    assert keep.sum() > 1000 and (~inside).sum() > 1000
    np.testing.assert_array_equal(classes == 255, ~keep)  # NoData outside the polygon (and where the input is)
    np.testing.assert_array_equal(classes[keep], full_c[r0 : r0 + h, c0 : c0 + w][keep])
    unc = _read(results["OUTPUT_UNCERTAINTY"])[0]
    np.testing.assert_array_equal(np.isnan(unc), ~keep)
    # Another process: torch may pick another thread count there, hence another summation order (QGIS 3.40/3.44:
    # 1.3e-6 at 0.95, relative 2e-6); classes are compared exactly above.
    np.testing.assert_allclose(unc[keep], full_u[r0 : r0 + h, c0 : c0 + w][keep], rtol=1e-5, atol=1e-6)


def test_mask_through_processing_run_equals_engine_numpy_reference(qgis_app, tmp_path, data):
    from qgis.core import QgsFeature, QgsGeometry, QgsVectorLayer

    layer = QgsVectorLayer("Polygon?crs=EPSG:4326", "aoi", "memory")
    feature = QgsFeature()
    feature.setGeometry(QgsGeometry.fromWkt(ogr.CreateGeometryFromJson(json.dumps(POLYGON_4326)).ExportToWkt()))
    layer.dataProvider().addFeatures([feature])
    base = {"INPUT": str(data["raster"]), "MODEL": str(data["pointwise"]), "SEED": 0, "TTA_MODE": "flip"}
    full = run_algorithm("uncertainty:tta", dict(base, OUTPUT=str(tmp_path / "full.tif")))
    masked = run_algorithm("uncertainty:tta", dict(base, MASK=layer, OUTPUT=str(tmp_path / "m.tif"),
                                                     PANEL_MEMORY=16))
    with rasterio.open(data["raster"]) as src, rasterio.open(masked["OUTPUT"]) as dst:
        c0, r0 = (round(v) for v in ~src.transform * (dst.transform.c, dst.transform.f))
        polygon = transform_geom("EPSG:4326", src.crs, POLYGON_4326)
        inside = rasterize([(polygon, 1)], out_shape=dst.shape, transform=dst.transform).astype(bool)
        classes = dst.read(1)
    h, w = classes.shape
    full_c, full_u = _read(full["OUTPUT"])[0], _read(full["OUTPUT_UNCERTAINTY"])[0]
    keep = inside & (full_c[r0 : r0 + h, c0 : c0 + w] != 255)
    np.testing.assert_array_equal(classes == 255, ~keep)
    np.testing.assert_array_equal(classes[keep], full_c[r0 : r0 + h, c0 : c0 + w][keep])
    np.testing.assert_array_equal(_read(masked["OUTPUT_UNCERTAINTY"])[0][keep], full_u[r0 : r0 + h, c0 : c0 + w][keep])


# ------------------------------------------------------------------------------------------------ precision
def test_bfloat16_on_cpu_stays_close_to_float32(tmp_path, data):
    """bfloat16 autocast (CPUs with bfloat16 instructions) against float32, an SMP FPN (random weights), MC
    Dropout T = 3: classes agree on ≥ 98 % of valid pixels, mean probabilities differ by ≤ 0.01 on average and
    ≤ 0.2 at worst (bfloat16 keeps 8 bits of mantissa: ~0.4 % relative error per operation, through ~20 layers;
    measured: 99.1 % agreement, worst difference 0.12, at pixels where two classes are nearly tied)."""
    from seg_uncertainty.engine.precision import cpu_supports_bfloat16

    if not cpu_supports_bfloat16():
        with pytest.raises(InvalidOptionError, match="bfloat16"):
            _run(tmp_path / "bf", data["raster"], load_cpu_model(data["mc"]), precision="bfloat16")
        return
    card = save_smp(tmp_path, "FPN", classes=3, dropout=0.2, tile=(64, 64), stride=(48, 48), name="fpn")
    loaded = load_cpu_model(card)
    options = dict(n_samples=3, seed=2, panel_width=10**6)
    f32, _, _ = _run(tmp_path / "f32", data["raster"], loaded, **options)
    bf16, _, _ = _run(tmp_path / "bf16", data["raster"], loaded, precision="bfloat16", **options)
    valid = f32[0][0] != 255
    np.testing.assert_array_equal(bf16[0][0] != 255, valid)
    agreement = float((f32[0][0] == bf16[0][0])[valid].mean())
    diff = np.abs(f32[2][:, valid] - bf16[2][:, valid])
    max_diff, mean_diff = float(diff.max()), float(diff.mean())
    print(f"bfloat16 vs float32: agreement {agreement:.4f}, max |dp| {max_diff:.4f}, mean |dp| {mean_diff:.5f}")
    assert agreement >= 0.98 and max_diff <= 0.2 and mean_diff <= 0.01, (agreement, max_diff, mean_diff)
    assert max_diff > 0  # bfloat16 really ran
    assert bf16[2].dtype == np.float32


def test_precision_choices_refused_with_a_clear_message(tmp_path, data):
    loaded = load_cpu_model(data["pointwise"])
    with pytest.raises(InvalidOptionError, match="float16 is offered on CUDA GPUs only"):
        _run(tmp_path / "f16", data["raster"], loaded, stochastic=False, precision="float16")
    with pytest.raises(InvalidOptionError, match="PRECISION"):
        _run(tmp_path / "bad", data["raster"], loaded, stochastic=False, precision="float8")
    assert not list(tmp_path.rglob("*.tif"))  # refused before any file
    assert torch.get_num_threads() >= 1
