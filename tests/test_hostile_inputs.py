"""Hostile inputs and faults through the algorithms: what a user sees for every bad raster, card, option and
output path, and that odd but valid rasters work on their exact grid.

Every failure must be one ``QgsProcessingException`` whose message names the problem and the fix, and must leave
no file in the output folder (no output, no hidden ``.NAME.partial-XXXX.tif``). A representative subset also
goes through ``qgis_process`` (non-zero exit, message in the output, no file). A full disk is simulated in a
subprocess with ``RLIMIT_FSIZE`` (SIGXFSZ ignored, so writes fail with EFBIG). The tests run as root here, where
``chmod 555`` does not stop writes: a read-only folder is then a folder under ``/proc`` (see
``read_only_folder``). Rasters are a few hundred pixels and models 1×1 convolutions, so the file runs in
well under a minute on two cores.
"""

import json
import os
import pickle
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import yaml
from rasterio.control import GroundControlPoint
from rasterio.crs import CRS
from torch import nn

from conftest import PLUGIN_DIR, ROOT, qgis_process_runner
from models import PointwiseNet, save_torchscript, write_card

T_UTM = rasterio.Affine(30.0, 0.0, 358485.0, 0.0, -30.0, 4265115.0)
TILE, STRIDE = (16, 16), (8, 8)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --- the test world: rasters, cards, helpers --------------------------------------------------------------


def _write(path, array, **profile):
    """A GeoTIFF from (bands, h, w); profile keys set to None are left out (no CRS, no transform)."""
    base = {"driver": "GTiff", "count": array.shape[0], "height": array.shape[1], "width": array.shape[2],
            "dtype": array.dtype.name, "crs": "EPSG:32618", "transform": T_UTM}
    base.update(profile)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(path, "w", **{k: v for k, v in base.items() if v is not None}) as dst:
            dst.write(array)
    return path


class _Malicious:
    """Unpickling this creates the file ``marker`` (what a hostile checkpoint could do instead)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


class _PoisonNet(nn.Module):
    """A 1×1 convolution that raises when it sees an input above 0.9 (a "poisoned" pixel: 255 / 255)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)

    def forward(self, x):
        if bool((x > 0.9).any()):
            raise RuntimeError("poisoned pixel in this tile")
        return self.conv(x)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile")
    rng = np.random.default_rng(0)
    u8 = rng.integers(0, 256, (3, 20, 24), dtype=np.uint8)
    w = {"folder": folder, "u8": u8}
    w["ok"] = _write(folder / "ok.tif", u8)
    data = w["ok"].read_bytes()
    (folder / "empty.tif").write_bytes(b"")
    (folder / "truncated.tif").write_bytes(data[: len(data) // 2])
    (folder / "corrupt.tif").write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    w["two_bands"] = _write(folder / "two_bands.tif", u8[:2])
    w["five_bands"] = _write(folder / "five_bands.tif", np.concatenate([u8, rng.integers(0, 256, (2, 20, 24),
                                                                                        dtype=np.uint8)]))
    w["all_nodata"] = _write(folder / "all_nodata.tif", np.zeros_like(u8), nodata=0)
    nonfinite = u8.astype(np.float32)
    nonfinite[0, 1, 1], nonfinite[1, 5, 7], nonfinite[2, 19, 23] = np.nan, np.inf, -np.inf
    w["nonfinite"] = _write(folder / "nonfinite.tif", nonfinite)
    w["nonfinite_mask"] = ~np.isfinite(nonfinite).all(axis=0)
    w["rotated"] = _write(folder / "rotated.tif", u8, transform=rasterio.Affine(20.0, 5.0, 1000.0, 3.0, -25.0, 9000.0))
    w["no_georef"] = _write(folder / "no_georef.tif", u8, crs=None, transform=None)
    gcps = _write(folder / "gcps.tif", u8, crs=None, transform=None)
    with rasterio.open(gcps, "r+") as ds:
        ds.gcps = ([GroundControlPoint(0, 0, 500.0, 900.0), GroundControlPoint(20, 0, 500.0, 300.0),
                    GroundControlPoint(0, 24, 1220.0, 900.0)], CRS.from_epsg(32618))
    w["gcps"] = gcps
    w["geographic"] = _write(folder / "geographic.tif", u8, crs="EPSG:4326",
                             transform=rasterio.Affine(0.0003, 0.0, 10.0, 0.0, -0.0003, 50.0))
    w["one_pixel"] = _write(folder / "one_pixel.tif", u8[:, 3:4, 5:6])
    w["one_row"] = _write(folder / "one_row.tif", u8[:, 7:8, :])
    w["small"] = _write(folder / "small.tif", u8[:, :7, :9])  # smaller than a 16×16 tile
    # The same pixels as uint16 (×257) and as float32 (2v + 10): with consistent card scaling, equal model input.
    w["as_uint16"] = _write(folder / "as_uint16.tif", u8.astype(np.uint16) * 257)
    w["as_float32"] = _write(folder / "as_float32.tif", u8.astype(np.float32) * 2 + 10)

    net = PointwiseNet(3, 4, hidden=8, seed=7)
    weights = save_torchscript(folder, net)
    w["net"] = net.eval()
    w["card"] = write_card(folder, weights, classes=4, tile=TILE, stride=STRIDE, name="pointwise.yaml")
    w["card_uint16"] = write_card(folder, weights, classes=4, tile=TILE, stride=STRIDE, scale=65535.0,
                                  name="pointwise_uint16.yaml")
    doc = yaml.safe_load(w["card"].read_text())
    del doc["input"]["scale"]
    w["card_meanstd"] = _card(folder, doc, "meanstd.yaml", input={"bands": [1, 2, 3], "mean": [100.0] * 3,
                                                                   "std": [50.0] * 3})
    w["card_meanstd_float"] = _card(folder, doc, "meanstd_float.yaml",
                                    input={"bands": [1, 2, 3], "mean": [210.0] * 3, "std": [100.0] * 3})
    _bad_cards(folder, w, doc)

    poison = torch.jit.script(_PoisonNet().eval())
    torch.jit.save(poison, str(folder / "poison.pt"))
    w["poison_card"] = write_card(folder, folder / "poison.pt", classes=3, tile=TILE, stride=(16, 16),
                                  name="poison.yaml")
    clean = rng.integers(0, 100, (3, 40, 40), dtype=np.uint8)
    clean[1, 20, 20] = 255  # the poisoned pixel: first met by tile row 1, column 1 (starts 16, 16)
    w["poisoned"] = _write(folder / "poisoned.tif", clean)
    return w


def _card(folder, doc, name, **changes):
    doc = dict(doc, **changes)
    path = folder / name
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _bad_cards(folder, w, doc):
    """Cards that must be refused, beside w["card"] (a valid TorchScript card) and a tiny SMP Unet."""
    import segmentation_models_pytorch as smp

    w["card_unknown_key"] = _card(folder, doc, "unknown_key.yaml", modle={"_target_": "smp.Unet"})
    w["card_wrong_type"] = _card(folder, doc, "wrong_type.yaml", input={"bands": "1,2,3", "scale": 255})
    w["card_missing_weights"] = _card(folder, doc, "missing_weights.yaml", weights="gone.pt")
    section = {"_target_": "segmentation_models_pytorch.Unet", "encoder_name": "tu-resnet10t", "encoder_depth": 3,
               "encoder_weights": None, "in_channels": 3, "decoder_channels": [32, 16, 8], "classes": 4}
    torch.manual_seed(0)
    unet = smp.Unet(**{k: v for k, v in section.items() if k != "_target_"}).eval()
    torch.save(unet.state_dict(), folder / "unet4.pth")
    smp_doc = {"model": section, "weights": "unet4.pth", "input": {"bands": [1, 2, 3], "scale": 255},
               "tiling": {"model_input_shape": [64, 64], "step_shape": [32, 32]}}
    w["card_smp"] = _card(folder, smp_doc, "unet4.yaml")
    w["card_five_classes"] = _card(folder, smp_doc, "unet5.yaml", model=dict(section, classes=5))
    w["card_os_system"] = _card(folder, smp_doc, "os_system.yaml", model=dict(section, _target_="os.system"))
    w["marker"] = folder / "pwned"
    payload = {"state_dict": unet.state_dict(), "evil": _Malicious(w["marker"])}
    with open(folder / "evil_pickle.pth", "wb") as f:
        pickle.dump(payload, f)
    torch.save(payload, folder / "evil_torch.pth")
    w["card_evil_pickle"] = _card(folder, smp_doc, "evil_pickle.yaml", weights="evil_pickle.pth")
    w["card_evil_torch"] = _card(folder, smp_doc, "evil_torch.yaml", weights="evil_torch.pth")
    assert not w["marker"].exists()


def _run(algorithm, parameters, feedback=None):
    import processing

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return processing.run(algorithm, parameters, feedback=feedback)


def _leftovers(folder):
    """Files a failed run must not leave: outputs, styles, side-cars, hidden partial files."""
    return sorted(p.name for p in Path(folder).iterdir())


def _fails(algorithm, parameters, folder, *fragments):
    """Run; expect one QgsProcessingException containing every fragment and nothing left in ``folder``."""
    from qgis.core import QgsProcessingException

    with pytest.raises(QgsProcessingException) as info:
        _run(algorithm, parameters)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    assert _leftovers(folder) == []
    return message


def _read(path, band=None):
    with rasterio.open(path) as ds:
        return ds.read(band) if band else ds.read()


def _reference(net, x):
    """Mean class probabilities of the pointwise net on a whole (bands, h, w) model input."""
    from seg_uncertainty.engine.statistics import class_probabilities_np

    with torch.no_grad():
        logits = net(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None]).numpy()[0]
    return class_probabilities_np(logits)


def _tta(world, raster, out, card=None, **extra):
    """uncertainty:tta (flip views) with class map, uncertainty and probabilities in ``out``."""
    parameters = {"INPUT": str(raster), "MODEL": str(card or world["card"]), "TTA_MODE": "flip",
                  "OUTPUT": str(out / "c.tif"), "OUTPUT_UNCERTAINTY": str(out / "u.tif"),
                  "OUTPUT_PROBABILITIES": str(out / "p.tif")}
    parameters.update(extra)
    return parameters


def _explains_parameters():
    """True once the algorithms override checkParameterValues with engine_bridge.explain_invalid_parameters."""
    from seg_uncertainty.algorithms.segmentation_base import SegmentationUncertaintyAlgorithm

    return "checkParameterValues" in vars(SegmentationUncertaintyAlgorithm)


_QGIS_WORDING = pytest.mark.xfail(
    condition="not _explains_parameters()", strict=True,
    reason="QGIS's own checkParameterValues says 'not found' / 'Incorrect parameter value' until "
           "SegmentationUncertaintyAlgorithm.checkParameterValues uses engine_bridge.explain_invalid_parameters",
)


# --- unreadable rasters ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["missing.tif", "empty.tif", "corrupt.tif"])
def test_unreadable_raster_names_the_file(qgis_app, world, tmp_path, name):
    raster = world["folder"] / name
    _fails("uncertainty:tta", _tta(world, raster, tmp_path), tmp_path, str(raster))


@pytest.mark.parametrize("name, problem", [
    ("missing.tif", "does not exist. Choose an existing raster file"),
    ("empty.tif", "is empty (0 bytes). Choose the complete raster file"),
    ("corrupt.tif", "cannot be opened by GDAL"),
])
@_QGIS_WORDING
def test_unreadable_raster_message_says_what_is_wrong(qgis_app, world, tmp_path, name, problem):
    _fails("uncertainty:tta", _tta(world, world["folder"] / name, tmp_path), tmp_path, problem)


def test_explain_invalid_parameters_words_what_qgis_refuses(qgis_app, world):
    """The helper the algorithms' checkParameterValues should call (see _QGIS_WORDING) on its own."""
    from qgis.core import QgsApplication, QgsProcessingContext

    from seg_uncertainty.algorithms.engine_bridge import explain_invalid_parameters

    alg = QgsApplication.processingRegistry().createAlgorithmById("uncertainty:mcdropout")
    context = QgsProcessingContext()
    base = {"MODEL": str(world["card"]), "OUTPUT": "x.tif"}
    cases = [
        ({"INPUT": str(world["folder"] / "missing.tif")}, "missing.tif does not exist"),
        ({"INPUT": str(world["folder"] / "empty.tif")}, "empty.tif is empty (0 bytes)"),
        ({"INPUT": str(world["folder"] / "corrupt.tif")}, "corrupt.tif cannot be opened by GDAL"),
        ({"INPUT": str(world["ok"]), "N_SAMPLES": 0}, "N_SAMPLES: expected a whole number from 1 to 1000; got 0"),
        ({"INPUT": str(world["ok"]), "N_SAMPLES": 10**6}, "from 1 to 1000; got 1000000"),
        ({"INPUT": str(world["ok"]), "STRIDE": -1}, "STRIDE: expected a whole number of at least 0; got -1"),
        ({"INPUT": str(world["ok"]), "MODEL": str(world["folder"] / "unet4.pth")},
         "MODEL: expected Model card (*.yaml *.yml)"),
    ]
    for parameters, fragment in cases:
        parameters = dict(base, **parameters)
        ok, qgis_message = alg.checkParameterValues(parameters, context)
        assert not ok
        assert fragment in explain_invalid_parameters(alg, parameters, context, qgis_message)
    parameters = dict(base, INPUT=str(world["ok"]))
    assert alg.checkParameterValues(parameters, context)[0]
    assert explain_invalid_parameters(alg, parameters, context, "kept") == "kept"


def test_truncated_raster_fails_while_reading(qgis_app, world, tmp_path):
    raster = world["folder"] / "truncated.tif"  # the first half of a real GeoTIFF: opens, then reads fail
    _fails("uncertainty:tta", _tta(world, raster, tmp_path), tmp_path, f"Reading INPUT raster {raster} failed",
           "truncated or corrupt; re-export it")


# --- bands ----------------------------------------------------------------------------------------------


def test_fewer_bands_than_the_card_reads(qgis_app, world, tmp_path):
    _fails("uncertainty:tta", _tta(world, world["two_bands"], tmp_path), tmp_path,
           "reads bands [1, 2, 3]", "has 2 band(s)", "edit input: bands: in the card")


def test_more_bands_than_needed_reads_the_cards_bands(qgis_app, world, tmp_path):
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    five = _run("uncertainty:tta", _tta(world, world["five_bands"], tmp_path / "a"))
    three = _run("uncertainty:tta", _tta(world, world["ok"], tmp_path / "b"))
    for key in ("OUTPUT", "OUTPUT_UNCERTAINTY", "OUTPUT_PROBABILITIES"):
        np.testing.assert_array_equal(_read(five[key]), _read(three[key]))


# --- odd but valid rasters ------------------------------------------------------------------------------


@pytest.mark.parametrize("name, window, n_tiles", [
    ("one_pixel", (slice(3, 4), slice(5, 6)), 1),
    ("one_row", (slice(7, 8), slice(None)), 2),  # 24 px wide, 16-px tiles, stride 8: columns 0 and 8
    ("small", (slice(0, 7), slice(0, 9)), 1),  # 7 × 9, smaller than a tile: padded, cropped back
])
def test_tiny_rasters_equal_a_whole_image_pass(qgis_app, world, tmp_path, name, window, n_tiles):
    result = _run("uncertainty:tta", _tta(world, world[name], tmp_path))
    x = world["u8"][(slice(None),) + window].astype(np.float32) / np.float32(255)
    expected = _reference(world["net"], x)
    probabilities = _read(result["OUTPUT_PROBABILITIES"])
    assert probabilities.shape == expected.shape
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)
    np.testing.assert_array_equal(_read(result["OUTPUT"], 1), expected.argmax(0))
    assert result["N_TILES"] == n_tiles


def test_all_nodata_raster_gives_nodata_everywhere_and_nan_statistics(qgis_app, world, tmp_path):
    """Decision: it works; every output pixel is NoData; UNCERTAINTY_MIN/MEAN/MAX are NaN (qgis_process prints
    null in --json); N_TILES counts the grid (all of them skipped); the uncertainty style falls back to 0..1."""
    result = _run("uncertainty:tta", _tta(world, world["all_nodata"], tmp_path))
    assert np.all(_read(result["OUTPUT"], 1) == 255)
    assert np.all(np.isnan(_read(result["OUTPUT_UNCERTAINTY"])))
    assert np.all(np.isnan(_read(result["OUTPUT_PROBABILITIES"])))
    for key in ("UNCERTAINTY_MIN", "UNCERTAINTY_MEAN", "UNCERTAINTY_MAX"):
        assert np.isnan(result[key])
    assert result["N_TILES"] == 4  # 20 × 24, 16-px tiles, stride 8: rows start at 0, 4; columns at 0, 8
    assert (tmp_path / "u.qml").exists()


def test_nan_and_infinite_pixels_are_nodata_and_the_rest_is_valid(qgis_app, world, tmp_path):
    result = _run("uncertainty:tta", _tta(world, world["nonfinite"], tmp_path))
    bad = world["nonfinite_mask"]
    assert bad.sum() == 3
    classes, unc = _read(result["OUTPUT"], 1), _read(result["OUTPUT_UNCERTAINTY"], 1)
    np.testing.assert_array_equal(classes == 255, bad)
    np.testing.assert_array_equal(np.isnan(unc), bad)
    expected = _reference(world["net"], world["u8"].astype(np.float32) / np.float32(255))
    np.testing.assert_allclose(_read(result["OUTPUT_PROBABILITIES"])[:, ~bad], expected[:, ~bad], atol=1e-5)
    assert np.isfinite(result["UNCERTAINTY_MAX"])


@pytest.mark.parametrize("name", ["rotated", "no_georef", "gcps", "geographic"])
def test_grid_is_copied_exactly(qgis_app, world, tmp_path, name):
    result = _run("uncertainty:tta", _tta(world, world[name], tmp_path))

    def grid(path):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            with rasterio.open(path) as ds:
                gcps, gcp_crs = ds.gcps
                return (ds.transform, ds.crs, ds.shape,
                        [(g.row, g.col, g.x, g.y, g.z) for g in gcps], gcp_crs)

    source = grid(world[name])
    for key in ("OUTPUT", "OUTPUT_UNCERTAINTY", "OUTPUT_PROBABILITIES"):
        assert grid(result[key]) == source
    if name == "gcps":
        assert len(source[3]) == 3 and source[4] == CRS.from_epsg(32618)
    expected = _reference(world["net"], world["u8"].astype(np.float32) / np.float32(255))
    np.testing.assert_allclose(_read(result["OUTPUT_PROBABILITIES"]), expected, atol=1e-5)


@pytest.mark.parametrize("raster, card", [("as_uint16", "card_uint16"), ("as_float32", "card_meanstd_float")])
def test_other_data_types_with_consistent_card_scaling(qgis_app, world, tmp_path, raster, card):
    """uint16 v·257 / 65535 and float32 ((2v + 10) − 210) / 100 are the model inputs of uint8 v / 255 and
    (v − 100) / 50, rounded once each: the outputs are bit for bit those of the uint8 raster."""
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    reference_card = "card" if raster == "as_uint16" else "card_meanstd"
    other = _run("uncertainty:tta", _tta(world, world[raster], tmp_path / "a", card=world[card], SEED=3))
    base = _run("uncertainty:tta", _tta(world, world["ok"], tmp_path / "b", card=world[reference_card], SEED=3))
    for key in ("OUTPUT", "OUTPUT_UNCERTAINTY", "OUTPUT_PROBABILITIES"):
        np.testing.assert_array_equal(_read(other[key]), _read(base[key]))


# --- model cards ----------------------------------------------------------------------------------------

CARD_CASES = [
    # (card key, the file the message names, fragments it must contain)
    ("card_unknown_key", "unknown_key.yaml", ["`'modle'`", "unknown key(s)", "Fix: remove or rename the key"]),
    ("card_wrong_type", "wrong_type.yaml", ["`input.bands`", "expected a non-empty list", "'1,2,3'",
                                            "Fix: list the bands"]),
    ("card_missing_weights", "missing_weights.yaml", ["gone.pt, which does not exist",
                                                      "Fix: put the weights file there"]),
    ("card_five_classes", "unet4.pth", ["(4, 8, 3, 3) in the file, (5, 8, 3, 3) in the model", "class count",
                                        "Fix: make model: in the card match"]),
    ("card_os_system", "os_system.yaml", ["'os.system', which is not an allowed SMP architecture",
                                          "other classes are never imported"]),
    ("card_evil_pickle", "evil_pickle.pth", ["refused for safety", "Fix: save only the weights"]),
    ("card_evil_torch", "evil_torch.pth", ["refused for safety", "Fix: save only the weights"]),
]


@pytest.mark.parametrize("card, names, fragments", CARD_CASES, ids=[c[0] for c in CARD_CASES])
def test_bad_model_cards(qgis_app, world, tmp_path, monkeypatch, card, names, fragments):
    monkeypatch.setattr(os, "system", lambda *a: pytest.fail("os.system was called"))
    _fails("uncertainty:mcdropout", _tta(world, world["ok"], tmp_path, card=world[card], N_SAMPLES=2), tmp_path,
           str(world["folder"] / names), *fragments)
    assert not world["marker"].exists()  # the pickle's payload never ran


def test_missing_card(qgis_app, world, tmp_path):
    missing = world["folder"] / "no_card.yaml"
    _fails("uncertainty:tta", _tta(world, world["ok"], tmp_path, card=missing), tmp_path,
           f"{missing} does not exist", "Choose an existing .yaml model card")


def test_weights_file_given_as_the_card(qgis_app, world, tmp_path):
    """QGIS refuses the file by its extension (the parameter's filter is *.yaml *.yml) before the engine sees it."""
    _fails("uncertainty:tta", _tta(world, world["ok"], tmp_path, card=world["folder"] / "unet4.pth"), tmp_path,
           "MODEL")


@_QGIS_WORDING
def test_weights_file_given_as_the_card_message_says_which_files(qgis_app, world, tmp_path):
    _fails("uncertainty:tta", _tta(world, world["ok"], tmp_path, card=world["folder"] / "unet4.pth"), tmp_path,
           "MODEL: expected Model card (*.yaml *.yml)", "unet4.pth", "Fix: choose a file of that type")


def test_valid_smp_card_runs(qgis_app, world, tmp_path):
    """The base of the refused SMP cards is itself fine (so each refusal is due to its one change)."""
    result = _run("uncertainty:mcdropout", _tta(world, world["ok"], tmp_path, card=world["card_smp"], N_SAMPLES=2))
    assert _read(result["OUTPUT"]).shape == (1, 20, 24)


# --- options --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_samples", [0, 10**6])
def test_n_samples_out_of_range_is_refused_by_qgis(qgis_app, world, tmp_path, n_samples):
    """QGIS checks the parameter's range (1..1000) itself, before the algorithm runs."""
    _fails("uncertainty:mcdropout", _tta(world, world["ok"], tmp_path, N_SAMPLES=n_samples), tmp_path, "N_SAMPLES")


@pytest.mark.parametrize("n_samples", [0, 10**6])
@_QGIS_WORDING
def test_n_samples_out_of_range_message_gives_the_range(qgis_app, world, tmp_path, n_samples):
    _fails("uncertainty:mcdropout", _tta(world, world["ok"], tmp_path, N_SAMPLES=n_samples), tmp_path,
           f"N_SAMPLES: expected a whole number from 1 to 1000; got {n_samples}")


def test_stride_larger_than_tile(qgis_app, world, tmp_path):
    _fails("uncertainty:mcdropout", _tta(world, world["ok"], tmp_path, N_SAMPLES=2, TILE_SIZE=8, STRIDE=16),
           tmp_path, "STRIDE (16, 16) is larger than TILE_SIZE (8, 8)", "Use a stride at most the tile size")


# --- output paths ---------------------------------------------------------------------------------------


def read_only_folder(tmp_path):
    """A folder this process cannot create files in: chmod 555, or, as root (where chmod does not stop
    writes), /proc/self, which no one can create files in."""
    folder = tmp_path / "read_only"
    folder.mkdir()
    folder.chmod(0o555)
    if os.access(folder, os.W_OK):
        folder.chmod(0o755)
        folder.rmdir()
        return Path("/proc/self")
    return folder


def test_output_in_a_missing_folder(qgis_app, world, tmp_path):
    out = tmp_path / "nowhere" / "c.tif"
    _fails("uncertainty:tta", _tta(world, world["ok"], tmp_path, OUTPUT=str(out)), tmp_path,
           f"Output folder {out.parent} does not exist", "Create the folder or choose another path")


def test_output_in_a_read_only_folder(qgis_app, world, tmp_path):
    folder = read_only_folder(tmp_path)
    try:
        _fails("uncertainty:tta", _tta(world, world["ok"], folder),
               folder if folder.is_relative_to(tmp_path) else tmp_path,
               f"Output folder {folder} is not writable", "Choose a folder you can write to")
    finally:
        if folder.is_relative_to(tmp_path):
            folder.chmod(0o755)


def test_output_under_a_file_used_as_a_folder(qgis_app, world, tmp_path):
    from qgis.core import QgsProcessingException

    (tmp_path / "afile").write_text("not a folder")
    with pytest.raises(QgsProcessingException) as info:
        _run("uncertainty:tta", _tta(world, world["ok"], tmp_path / "afile"))
    assert f"Output folder {tmp_path / 'afile'} is a file, not a folder. Create the folder" in str(info.value)
    assert _leftovers(tmp_path) == ["afile"]


@pytest.mark.skipif(os.geteuid() != 0, reason="as another user /proc is simply not writable (tested above)")
def test_output_where_the_folder_claims_to_be_writable_but_creation_fails(qgis_app, world, tmp_path):
    """As root, os.access says /proc is writable, yet GDAL cannot create a file there: the create failure path."""
    from qgis.core import QgsProcessingException

    with pytest.raises(QgsProcessingException, match=r"Cannot create output /proc/c.tif \(.*\)\. Check the folder"):
        _run("uncertainty:tta", _tta(world, world["ok"], Path("/proc")))


def test_output_that_is_the_input_is_refused_and_the_input_kept(qgis_app, world, tmp_path):
    raster = tmp_path / "in.tif"
    raster.write_bytes(world["ok"].read_bytes())
    before = raster.read_bytes()
    from qgis.core import QgsProcessingException

    with pytest.raises(QgsProcessingException, match="is the INPUT raster itself. Choose another file name"):
        _run("uncertainty:tta", _tta(world, raster, tmp_path, OUTPUT=str(raster)))
    assert raster.read_bytes() == before
    assert _leftovers(tmp_path) == ["in.tif"]


def test_two_outputs_with_one_file_name_are_refused(qgis_app, world, tmp_path):
    _fails("uncertainty:tta", _tta(world, world["ok"], tmp_path, OUTPUT_UNCERTAINTY=str(tmp_path / "c.tif")),
           tmp_path, f"Output {tmp_path / 'c.tif'} is already being written", "Give each output its own file name")


# --- full disk: RLIMIT_FSIZE in a subprocess --------------------------------------------------------------

_FULL_DISK_SCRIPT = textwrap.dedent("""
    import json, os, resource, signal, sys, warnings
    sys.path[:0] = [{tests!r}, {plugins!r}, "/usr/share/qgis/python/plugins"]
    from qgis.core import QgsApplication, QgsProcessingException
    QgsApplication.setPrefixPath("/usr", True)
    app = QgsApplication([], False)
    app.initQgis()
    import processing
    from processing.core.Processing import Processing
    Processing.initialize()
    import seg_uncertainty
    plugin = seg_uncertainty.classFactory(None)
    plugin.initProcessing()
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit then fail with EFBIG
    hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
    results = []
    for limit, parameters in json.loads(sys.argv[1]):
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                processing.run("uncertainty:tta", parameters)
            results.append("finished")
        except QgsProcessingException as e:
            results.append(str(e))
        resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
    print("RESULTS" + json.dumps(results))
""")


def test_full_disk_fails_cleanly_naming_the_file(qgis_app, world, tmp_path):
    """Small limits on file size: the first output cannot be finished, or the class map is committed and the
    uncertainty map then fails. Either way one clear error naming the file, and no file left at all."""
    raster = _write(tmp_path / "big.tif", np.random.default_rng(5).integers(0, 256, (3, 300, 300), dtype=np.uint8))
    card = write_card(tmp_path, save_torchscript(tmp_path, PointwiseNet(3, 4, seed=7)), classes=4, tile=(64, 64),
                      stride=(64, 64), name="card.yaml")
    runs = []
    for limit in (2_000, 60_000):
        out = tmp_path / f"out_{limit}"
        out.mkdir()
        runs.append((limit, {"INPUT": str(raster), "MODEL": str(card), "TTA_MODE": "flip",
                             "OUTPUT": str(out / "c.tif"), "OUTPUT_PROBABILITIES": str(out / "p.tif")}))
    script = tmp_path / "full_disk.py"
    script.write_text(_FULL_DISK_SCRIPT.format(tests=str(ROOT / "tests"), plugins=str(PLUGIN_DIR)))
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", PYTHONDONTWRITEBYTECODE="1", OMP_NUM_THREADS="1",
               QGIS_CUSTOM_CONFIG_PATH=str(tmp_path / "profile"))
    done = subprocess.run([sys.executable, str(script), json.dumps(runs)], capture_output=True, text=True,
                          timeout=300, env=env)
    assert "RESULTS" in done.stdout, done.stderr[-3000:]
    results = json.loads(done.stdout.split("RESULTS", 1)[1])
    for (limit, parameters), message in zip(runs, results):
        assert "Finishing " in message and "could not be written completely" in message, message
        assert "disk is probably full or a file size limit was reached" in message
        assert "Free some space or choose another folder" in message
        out = Path(parameters["OUTPUT"]).parent
        assert str(out) in message  # names the file
        assert _leftovers(out) == [], limit
    # 60 kB holds the class map (a few kB) but not the float32 uncertainty: the class map was rolled back.
    assert "c_uncertainty.tif" in results[1] or "p.tif" in results[1]


# --- faults inside the model ----------------------------------------------------------------------------


def test_model_raising_mid_run_names_the_tile_and_leaves_nothing(qgis_app, world, tmp_path):
    message = _fails("uncertainty:tta", _tta(world, world["poisoned"], tmp_path, card=world["poison_card"]),
                     tmp_path, "The model failed on tile row 1, column 1 (pixels from row 16, column 16)",
                     "poisoned pixel in this tile")
    assert message.count("The model failed") == 1


class _RaisesOnThirdCall(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = PointwiseNet(3, 4, seed=7)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        if self.calls == 3:
            raise ValueError("third forward")
        return self.net(x)


def test_engine_model_raising_on_its_third_forward(world, tmp_path):
    from seg_uncertainty.engine.errors import TileInferenceError
    from seg_uncertainty.engine.inference import OutputPaths, predict_uncertainty
    from seg_uncertainty.engine.model_card import load_model_card
    from seg_uncertainty.engine.model_loading import LoadedModel

    card = load_model_card(world["card"])
    module = _RaisesOnThirdCall().eval()
    loaded = LoadedModel(model=module, card=card, n_classes=4, binary=False, n_dropout_layers=0,
                         weights_sha256="0" * 64, device="cpu")
    outputs = OutputPaths(str(tmp_path / "c.tif"), str(tmp_path / "u.tif"), str(tmp_path / "p.tif"))
    with pytest.raises(TileInferenceError) as info:
        # 20 × 24 raster, 16-px tiles, stride 8: columns start at 0 and 8; the 3rd tile is row 1, column 0
        predict_uncertainty(world["ok"], loaded, outputs, stochastic=False, seed=1)
    assert "tile row 1, column 0 (pixels from row 4, column 0): ValueError: third forward" in str(info.value)
    assert module.calls == 3
    assert _leftovers(tmp_path) == []


def test_class_count_above_the_class_map_range_is_refused(world, tmp_path):
    """The class map is uint8 with 255 as NoData: a model with 256+ classes would write class 255 as NoData and
    wrap 256 → 0. It must be refused (card validation or the engine) with an error naming the limit."""
    from seg_uncertainty.engine.errors import UncertaintyError
    from seg_uncertainty.engine.inference import OutputPaths, predict_uncertainty
    from seg_uncertainty.engine.model_loading import load_model

    class Wide(nn.Module):
        def forward(self, x):
            return torch.cat([x[:, :1]] * 300, dim=1) * torch.arange(300.0).view(1, 300, 1, 1)

    torch.jit.save(torch.jit.trace(Wide().eval(), torch.zeros(1, 3, 16, 16)), str(tmp_path / "wide.pt"))
    doc = {"weights": "wide.pt", "num_classes": 300, "input": {"bands": [1, 2, 3], "scale": 255},
           "tiling": {"model_input_shape": [16, 16]}}
    card = tmp_path / "wide.yaml"
    card.write_text(yaml.safe_dump(doc))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(UncertaintyError, match="255"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            predict_uncertainty(world["ok"], load_model(card), OutputPaths(str(out / "c.tif")), stochastic=False)
    assert _leftovers(out) == []


# --- the same through qgis_process ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def qgis_process(tmp_path_factory):
    """One OpenMP thread per qgis_process too (see conftest.one_torch_thread)."""
    return qgis_process_runner(tmp_path_factory.mktemp("qgis_process_profile"), OMP_NUM_THREADS="1")


def _qgis_process_cases(world, folder):
    ro = read_only_folder(folder)
    base = {"INPUT": world["ok"], "MODEL": world["card"], "TTA_MODE": "flip"}
    return [
        # (name, parameters, fragments of the message)
        ("missing raster", dict(base, INPUT=world["folder"] / "missing.tif"), ["missing.tif"]),
        ("corrupt raster", dict(base, INPUT=world["folder"] / "corrupt.tif"), ["corrupt.tif"]),
        ("wrong band count", dict(base, INPUT=world["two_bands"]), ["has 2 band(s)"]),
        ("bad card", dict(base, MODEL=world["card_unknown_key"]), ["unknown key(s)", "Fix:"]),
        ("malicious pickle", dict(base, MODEL=world["card_evil_pickle"]), ["refused for safety"]),
        ("stride > tile", dict(base, TILE_SIZE=8, STRIDE=16), ["STRIDE (16, 16) is larger than TILE_SIZE (8, 8)"]),
        ("read-only folder", dict(base, OUTPUT=ro / "c.tif"), [f"Output folder {ro} is not writable"]),
    ], ro


def test_qgis_process_reports_bad_inputs(qgis_process, world, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    cases, ro = _qgis_process_cases(world, tmp_path)
    for name, parameters, _ in cases:
        out = tmp_path / name.replace(" ", "_")
        out.mkdir()
        parameters.setdefault("OUTPUT", out / "c.tif")
    try:
        with ThreadPoolExecutor(2) as pool:  # each case is its own qgis_process (2 to 4 s of start-up)
            runs = list(pool.map(lambda case: qgis_process("uncertainty:tta", **case[1]), cases))
        for (name, parameters, fragments), (code, stdout, stderr) in zip(cases, runs):
            assert code != 0, name
            for fragment in fragments:
                assert fragment in stdout + stderr, (name, stdout + stderr)
            assert _leftovers(Path(parameters["OUTPUT"]).parent) == [] or name == "read-only folder", name
        assert not world["marker"].exists()
    finally:
        if ro.is_relative_to(tmp_path):
            assert list(ro.iterdir()) == []
            ro.chmod(0o755)


# --- the writer on its own ------------------------------------------------------------------------------


@pytest.fixture
def writer_source(world):
    from seg_uncertainty.engine.raster_io import BandScaling, RasterSource

    with RasterSource(world["ok"], [1, 2, 3], BandScaling(255.0)) as source:
        yield source


def test_writer_turns_gdal_write_errors_into_output_write_error(writer_source, tmp_path):
    """rasterio raises CPLE_* errors that are neither OSError nor RasterioError: they must still be reported
    as OutputWriteError naming the file, and abort() must leave nothing."""
    from rasterio._err import CPLE_AppDefinedError

    from seg_uncertainty.engine.errors import OutputWriteError
    from seg_uncertainty.engine.raster_io import GeoTiffWriter

    writer = GeoTiffWriter(tmp_path / "c.tif", writer_source, 1, "uint8", 255)
    real = writer.dataset

    class Failing:
        closed = False

        def write(self, *args, **kwargs):
            raise CPLE_AppDefinedError(3, 1, "_tiffWriteProc:No space left on device")

        def close(self):
            real.close()

    writer.dataset = Failing()
    with pytest.raises(OutputWriteError, match=rf"Writing {tmp_path / 'c.tif'} failed .*No space left"):
        writer.write(np.zeros((1, 20, 24), np.uint8), 0)
    writer.abort()
    assert _leftovers(tmp_path) == []


def test_writer_detects_a_truncated_file_that_closed_without_error(writer_source, tmp_path):
    """GDAL writes most blocks at close and rasterio does not raise when that fails (full disk): finish()
    checks every block is in the file. Here the file is cut after a clean close, as a full disk leaves it."""
    from seg_uncertainty.engine.errors import OutputWriteError
    from seg_uncertainty.engine.raster_io import GeoTiffWriter

    writer = GeoTiffWriter(tmp_path / "p.tif", writer_source, 2, "float32", float("nan"))
    writer.write(np.random.default_rng(0).random((2, 20, 24), dtype=np.float32), 0)
    writer.dataset.close()
    data = writer.temp_path.read_bytes()
    writer.temp_path.write_bytes(data[: len(data) - 200])
    with pytest.raises(OutputWriteError, match=r"Finishing .*p.tif failed: the file could not be written completely"):
        writer.commit()
    assert _leftovers(tmp_path) == []


def test_abort_after_commit_removes_the_committed_output(writer_source, tmp_path):
    """When a later output of the run fails, the engine aborts every writer: a committed one goes too."""
    from seg_uncertainty.engine.raster_io import GeoTiffWriter

    first = GeoTiffWriter(tmp_path / "c.tif", writer_source, 1, "uint8", 255)
    first.write(np.ones((1, 20, 24), np.uint8), 0)
    first.commit()
    assert _leftovers(tmp_path) == ["c.tif"]
    first.abort()
    assert _leftovers(tmp_path) == []
    again = GeoTiffWriter(tmp_path / "c.tif", writer_source, 1, "uint8", 255)  # the name is free again
    again.abort()
