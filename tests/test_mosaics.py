"""Mosaics: a VRT over several GeoTIFFs with gaps between them runs like the same pixels in one GeoTIFF."""

import warnings

import numpy as np
import rasterio
from osgeo import gdal
from rasterio.windows import Window

from seg_uncertainty.engine.inference import OutputPaths, predict_uncertainty
from seg_uncertainty.engine.model_loading import load_model

from conftest import crop_raster, shared_raster
from test_inference import _whole_image_reference, pointwise_card  # noqa: F401 - a fixture

# Pieces of RGB.byte.tif (791 × 718) as (col, row, width, height): gaps of 20-30 px between them and the
# whole bottom-right quarter missing, so the VRT holds pixels no source covers.
PIECES = [(0, 0, 300, 300), (320, 0, 471, 300), (0, 330, 300, 388), (330, 330, 200, 150)]


def _mosaic(folder):
    source = shared_raster("RGB.byte.tif")
    covered = np.zeros((718, 791), dtype=bool)
    paths = []
    for i, (col, row, width, height) in enumerate(PIECES):
        paths.append(str(crop_raster(source, folder / f"piece{i}.tif", Window(col, row, width, height))))
        covered[row : row + height, col : col + width] = True
    vrt = folder / "mosaic.vrt"
    gdal.BuildVRT(str(vrt), paths).FlushCache()  # source NoData (0) becomes the VRT's NoData, gaps included
    return source, vrt, covered


def test_vrt_mosaic_with_gaps_equals_its_pixels_in_one_geotiff(tmp_path, pointwise_card):  # noqa: F811
    source, vrt, covered = _mosaic(tmp_path)
    flat = tmp_path / "flat.tif"
    gdal.Translate(str(flat), str(vrt), format="GTiff").FlushCache()  # the same pixels, NoData and grid
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        loaded = load_model(pointwise_card, "cpu")
    results = {}
    for name, raster in (("vrt", vrt), ("flat", flat)):
        out = OutputPaths(str(tmp_path / f"{name}_c.tif"), str(tmp_path / f"{name}_u.tif"),
                          str(tmp_path / f"{name}_p.tif"))
        predict_uncertainty(str(raster), loaded, out, stochastic=False, seed=0)
        with rasterio.open(out.classes) as c, rasterio.open(out.uncertainty) as u, \
                rasterio.open(out.probabilities) as p, rasterio.open(source) as src:
            assert (c.crs, c.transform, c.width, c.height) == (src.crs, src.transform, src.width, src.height)
            results[name] = (c.read(1), u.read(1), p.read())
    for a, b in zip(results["vrt"], results["flat"]):
        np.testing.assert_array_equal(a, b)  # bit-identical to the same pixels in one file
    probs, valid = _whole_image_reference(source)  # the per-pixel model on the original scene
    valid &= covered
    classes, unc, mean_p = results["vrt"]
    assert (~covered).sum() > 100_000  # the gaps are real
    np.testing.assert_array_equal(classes == 255, ~valid)  # gaps and source NoData are NoData
    np.testing.assert_array_equal(np.isnan(unc), ~valid)
    np.testing.assert_array_equal(classes[valid], probs.argmax(0)[valid])
    np.testing.assert_allclose(mean_p[:, valid], probs[:, valid], atol=1e-5)
