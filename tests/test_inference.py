"""The streaming engine on real GeoTIFFs: tiled vs whole-image, NoData, grids, seeds, cancel (no QGIS)."""

import warnings

import numpy as np
import pytest
import rasterio
import torch
from rasterio.windows import Window

from seg_uncertainty.engine.errors import InferenceCancelled, InvalidOptionError
from seg_uncertainty.engine.inference import OutputPaths, predict_uncertainty
from seg_uncertainty.engine.statistics import class_probabilities_np, entropy_np

from conftest import crop_raster, load_cpu_model, scene_crop, shared_raster
from models import PointwiseNet, save_smp, save_torchscript, write_card


@pytest.fixture(scope="module")
def pointwise_card(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pointwise")
    weights = save_torchscript(folder, PointwiseNet(3, 4, hidden=8, seed=7))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
    return write_card(folder, weights, classes=4, tile=(64, 64), stride=(40, 40))


def _whole_image_reference(raster):
    """The pointwise model on the whole raster at once; valid = every band the model reads is valid there."""
    with rasterio.open(raster) as src:
        x = src.read([1, 2, 3]).astype(np.float32) / 255.0
        valid = np.all(src.read_masks([1, 2, 3]) > 0, axis=0)
    net = PointwiseNet(3, 4, hidden=8, seed=7).eval()
    with torch.no_grad():
        logits = net(torch.from_numpy(x)[None]).numpy()[0]
    return class_probabilities_np(logits), valid


def test_tiled_run_equals_whole_image_pass_with_nodata_and_grid(tmp_path, pointwise_card):
    raster = shared_raster("RGB.byte.tif")
    outputs = OutputPaths(str(tmp_path / "c.tif"), str(tmp_path / "u.tif"), str(tmp_path / "p.tif"))
    summary = predict_uncertainty(raster, load_cpu_model(pointwise_card), outputs, stochastic=False, seed=1)
    probs, valid = _whole_image_reference(raster)
    with rasterio.open(raster) as src, rasterio.open(outputs.classes) as c, rasterio.open(outputs.uncertainty) as u, \
            rasterio.open(outputs.probabilities) as p:
        for out in (c, u, p):  # the input's grid, exactly
            assert (out.crs, out.transform, out.width, out.height) == (src.crs, src.transform, src.width, src.height)
        classes, unc, mean_p = c.read(1), u.read(1), p.read()
        assert c.nodata == 255
    assert summary.n_tiles == 18 * 20  # ceil((718-64)/40)+1 rows × ceil((791-64)/40)+1 columns
    assert summary.n_skipped > 0  # the NoData corners hold whole tiles
    np.testing.assert_array_equal(classes == 255, ~valid)  # NoData in, NoData out
    np.testing.assert_array_equal(np.isnan(unc), ~valid)
    np.testing.assert_array_equal(classes[valid], probs.argmax(0)[valid])
    np.testing.assert_allclose(mean_p[:, valid], probs[:, valid], atol=1e-5)
    np.testing.assert_allclose(unc[valid], entropy_np(probs, axis=0)[valid], atol=1e-5)
    assert summary.uncertainty_max == pytest.approx(float(np.nanmax(unc)))


@pytest.mark.parametrize("size", [(1, 1), (1, 37), (20, 30)])  # single pixel, one row, smaller than a tile
def test_rasters_smaller_than_a_tile(tmp_path, pointwise_card, size):
    raster = crop_raster(shared_raster("RGB.byte.tif"), tmp_path / "small.tif", Window(380, 300, size[1], size[0]))
    outputs = OutputPaths(str(tmp_path / "c.tif"), str(tmp_path / "u.tif"))
    predict_uncertainty(raster, load_cpu_model(pointwise_card), outputs, stochastic=False, seed=1)
    probs, valid = _whole_image_reference(raster)
    with rasterio.open(outputs.uncertainty) as u:
        assert (u.height, u.width) == size
        np.testing.assert_allclose(u.read(1)[valid], entropy_np(probs, axis=0)[valid], atol=1e-5)


@pytest.fixture(scope="module")
def mc_setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mc")
    raster = scene_crop(folder)
    card = save_smp(folder, "Unet", classes=3, dropout=0.3, tile=(64, 64), stride=(32, 32))
    return raster, load_cpu_model(card)


def _run_mc(folder, raster, loaded, **options):
    folder.mkdir(parents=True, exist_ok=True)
    outputs = OutputPaths(str(folder / "c.tif"), str(folder / "u.tif"), str(folder / "p.tif"))
    predict_uncertainty(raster, loaded, outputs, n_samples=4, mode="mutual_information", **options)
    with rasterio.open(outputs.classes) as c, rasterio.open(outputs.uncertainty) as u, \
            rasterio.open(outputs.probabilities) as p:
        return c.read(1), u.read(1), p.read()


def test_same_seed_same_output_whatever_the_batching(tmp_path, mc_setup):
    raster, loaded = mc_setup
    a = _run_mc(tmp_path / "a", raster, loaded, seed=11)
    b = _run_mc(tmp_path / "b", raster, loaded, seed=11)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)  # bit for bit
    c = _run_mc(tmp_path / "c", raster, loaded, seed=11, batch_size=3, sample_chunk=3)
    np.testing.assert_array_equal(a[0], c[0])
    np.testing.assert_allclose(a[1], c[1], atol=1e-5)
    np.testing.assert_allclose(a[2], c[2], atol=1e-5)
    d = _run_mc(tmp_path / "d", raster, loaded, seed=12)
    assert np.nanmax(np.abs(a[1] - d[1])) > 1e-3  # another seed samples other masks
    assert np.nanmax(a[1]) > 0


def test_cached_prefix_gives_the_plain_result(tmp_path, mc_setup):
    raster, loaded = mc_setup
    cached = _run_mc(tmp_path / "cached", raster, loaded, seed=5, prefix_cache=True)
    plain = _run_mc(tmp_path / "plain", raster, loaded, seed=5, prefix_cache=False)
    np.testing.assert_allclose(cached[2], plain[2], atol=1e-5)
    np.testing.assert_allclose(cached[1], plain[1], atol=1e-5)


def test_traced_forward_is_reused_by_later_runs_of_the_same_loaded_model(tmp_path, mc_setup):
    """The fx trace is made once per loaded model and tile size; a later run reuses it and gives exactly what a
    freshly loaded model (tracing anew) gives."""
    raster, shared = mc_setup
    loaded = load_cpu_model(shared.card.path)
    first_log, second_log = [], []
    first = _run_mc(tmp_path / "first", raster, loaded, seed=3, log=first_log.append)
    second = _run_mc(tmp_path / "second", raster, loaded, seed=3, log=second_log.append)
    fresh = _run_mc(tmp_path / "fresh", raster, load_cpu_model(shared.card.path), seed=3)
    assert list(loaded.mc_forwards) == [((64, 64), "cpu")]
    assert any("prefix caching on" in line and "reused" not in line for line in first_log), first_log
    assert any("prefix caching on" in line and "reused" in line for line in second_log), second_log
    for a, b, c in zip(first, second, fresh):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
    other = _run_mc(tmp_path / "other", raster, loaded, seed=3, tile=(96, 96), stride=(48, 48))
    assert sorted(loaded.mc_forwards) == [((64, 64), "cpu"), ((96, 96), "cpu")]  # another tile, another trace
    assert np.nanmax(other[1]) > 0


def test_cancel_leaves_no_file(tmp_path, mc_setup):
    raster, loaded = mc_setup
    calls = []

    def cancel_after_a_few():
        calls.append(1)
        return len(calls) > 3

    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(InferenceCancelled):
        predict_uncertainty(raster, loaded, OutputPaths(str(out / "c.tif"), str(out / "u.tif")), n_samples=3,
                            seed=1, is_cancelled=cancel_after_a_few)
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("options", [{"n_samples": 0}, {"stride": (65, 65)}, {"stride": (0, 0)},
                                     {"tta": "d4", "tile": (64, 32)}])
def test_invalid_options_are_refused_before_any_file(tmp_path, mc_setup, options):
    raster, loaded = mc_setup
    with pytest.raises(InvalidOptionError):
        predict_uncertainty(raster, loaded, OutputPaths(str(tmp_path / "c.tif")), **options)
    assert list(tmp_path.iterdir()) == []


def test_nodata_fill_is_what_the_model_sees_at_nodata_pixels(tmp_path):
    """input.nodata_fill: NoData pixels reach the model as that raw value, scaled; they stay NoData in outputs."""
    from seg_uncertainty.engine.raster_io import BandScaling, RasterSource

    raster = shared_raster("RGB.byte.tif")
    with RasterSource(raster, [1, 2, 3], BandScaling(scale=255.0, nodata_fill=51)) as source:
        x, valid = source.read(0, 0, 40, 60)
    assert not valid.all()
    np.testing.assert_allclose(x[:, ~valid], 0.2, atol=1e-7)  # 51 / 255
    with RasterSource(raster, [1, 2, 3], BandScaling(mean=[10, 20, 30], std=[2, 4, 5])) as source:
        x, valid = source.read(0, 0, 40, 60)
    np.testing.assert_array_equal(x[:, ~valid], 0.0)  # without a fill: 0 in model units


def test_alpha_band_is_the_nodata_mask(tmp_path, pointwise_card):
    """RGBA scene: the card reads bands 1-3, the alpha band masks; alpha 0 → NoData in every output."""
    raster = shared_raster("RGBA.byte.tif")
    outputs = OutputPaths(str(tmp_path / "c.tif"), str(tmp_path / "u.tif"))
    predict_uncertainty(raster, load_cpu_model(pointwise_card), outputs, stochastic=False, seed=1)
    with rasterio.open(raster) as src:
        alpha = src.read(4)
        x = src.read([1, 2, 3]).astype(np.float32) / 255.0
    net = PointwiseNet(3, 4, hidden=8, seed=7).eval()
    with torch.no_grad():
        probs = class_probabilities_np(net(torch.from_numpy(x)[None]).numpy()[0])
    with rasterio.open(outputs.classes) as c, rasterio.open(outputs.uncertainty) as u:
        classes, unc = c.read(1), u.read(1)
    valid = alpha > 0
    assert 0 < valid.mean() < 1
    np.testing.assert_array_equal(classes == 255, ~valid)
    np.testing.assert_array_equal(np.isnan(unc), ~valid)
    np.testing.assert_allclose(unc[valid], entropy_np(probs, axis=0)[valid], atol=1e-5)


@pytest.mark.parametrize("block", [(30, 40, 50, 70), (0, 0, 130, 150), (97, 1, 33, 149), (64, 64, 1, 1)])
def test_a_block_computed_alone_equals_that_part_of_the_whole_run(tmp_path, mc_setup, block):
    """Any rectangle, computed on its own from the global tile grid, gives the whole run's pixels bit for bit."""
    raster, loaded = mc_setup
    whole = _run_mc(tmp_path / "whole", raster, loaded, seed=3)
    part_dir = tmp_path / "part"
    part_dir.mkdir()
    outputs = OutputPaths(str(part_dir / "c.tif"), str(part_dir / "u.tif"), str(part_dir / "p.tif"))
    predict_uncertainty(raster, loaded, outputs, n_samples=4, mode="mutual_information", seed=3, block=block)
    r, c, h, w = block
    with rasterio.open(raster) as src, rasterio.open(outputs.classes) as part:
        assert part.shape == (h, w)
        assert part.transform == src.window_transform(Window(c, r, w, h)) and part.crs == src.crs
        np.testing.assert_array_equal(part.read(1), whole[0][r : r + h, c : c + w])
    np.testing.assert_array_equal(_read_band(outputs.uncertainty), whole[1][r : r + h, c : c + w])
    with rasterio.open(outputs.probabilities) as p:
        np.testing.assert_array_equal(p.read(), whole[2][:, r : r + h, c : c + w])


def _read_band(path):
    with rasterio.open(path) as ds:
        return ds.read(1)
