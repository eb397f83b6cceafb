"""Properties of tiling, merging and the streaming engine, over random sizes, tiles and strides (hypothesis).

No QGIS. The answers are known in advance: every pixel is covered, no window leaves the raster, merging a
constant gives the constant, and a per-pixel model gives the same numbers tiled as on the whole image.
"""

import copy
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from seg_uncertainty.engine.inference import OutputPaths, predict_uncertainty
from seg_uncertainty.engine.merging import StripMerger
from seg_uncertainty.engine.model_loading import load_model
from seg_uncertainty.engine.statistics import class_probabilities_np, entropy_np
from seg_uncertainty.engine.tiling import TileGrid, gaussian_window, tile_starts

from models import PointwiseNet, mutate_document, save_torchscript, write_card

_FAST = settings(max_examples=150, deadline=None)
_SLOW = settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@st.composite
def _axis(draw, max_size=300, max_tile=64):
    """(size, tile, stride) with 1 <= stride <= tile."""
    size = draw(st.integers(1, max_size))
    tile = draw(st.integers(1, max_tile))
    stride = draw(st.integers(1, tile))
    return size, tile, stride


@_FAST
@given(_axis())
def test_tile_starts_cover_every_pixel_and_stay_inside(axis):
    size, tile, stride = axis
    starts = tile_starts(size, tile, stride)
    assert starts[0] == 0
    assert starts == sorted(set(starts))  # strictly increasing: no window twice
    read = min(tile, size)
    if size <= tile:
        assert starts == [0]  # the only case a window is larger than the raster (padded, cropped back)
    else:
        assert all(0 <= s and s + tile <= size for s in starts)  # never past the raster
        assert starts[-1] == size - tile  # the last window ends at the border
        assert all(b - a <= stride for a, b in zip(starts, starts[1:]))  # no gap wider than the stride
    covered = np.zeros(size, dtype=int)
    for s in starts:
        covered[s : s + read] += 1
    assert covered.min() >= 1


@_FAST
@given(_axis(), _axis())
def test_every_pixel_gets_positive_weight_from_the_grid(rows, cols):
    (height, tile_h, stride_h), (width, tile_w, stride_w) = rows, cols
    grid = TileGrid(height, width, (tile_h, tile_w), (stride_h, stride_w))
    read_h, read_w = grid.read_shape
    window = gaussian_window((tile_h, tile_w))[:read_h, :read_w]
    assert window.min() > 0
    weight = np.zeros((height, width), dtype=np.float64)
    for r in grid.row_starts:
        for c in grid.col_starts:
            assert r + read_h <= height and c + read_w <= width
            weight[r : r + read_h, c : c + read_w] += window
    assert weight.min() > 0
    assert grid.n_tiles == len(grid.row_starts) * len(grid.col_starts)


def _merge_constant(height, width, tile, stride, constants):
    """Feed the constant prediction to a StripMerger tile by tile in strip order, as the engine does; yield
    (means, weight, overlaps) per finished strip, overlaps = windows covering the busiest pixel."""
    grid = TileGrid(height, width, tile, stride)
    read_h, read_w = grid.read_shape
    window = gaussian_window(tile)[:read_h, :read_w]
    values = np.asarray(constants, dtype=np.float32)[:, None, None] * np.ones((1, read_h, read_w), np.float32)
    merger = StripMerger(width, len(constants), read_h)
    starts = grid.row_starts
    overlaps = -(-read_h // stride[0]) * -(-read_w // stride[1])
    for i, row in enumerate(starts):
        for col in grid.col_starts:
            merger.add(row, col, values, window)
        stop = starts[i + 1] if i + 1 < len(starts) else height
        means, weight = merger.take_rows(stop)
        assert means.shape == (len(constants), stop - row, width)
        yield means, weight, overlaps


@_FAST
@given(_axis(), _axis(), st.lists(st.floats(0.0, 1.0, width=32), min_size=1, max_size=5))
def test_strip_merger_returns_a_constant_prediction(rows, cols, constants):
    """Every row comes out once, with positive weight, equal to the constant: within 1e-6 up to 16 overlapping
    windows per pixel (strides of at least a quarter tile), and within n·2^-24 beyond (the test below shows the
    float64 sums keep even 1024 windows within 1e-6)."""
    (height, tile_h, stride_h), (width, tile_w, stride_w) = rows, cols
    expected = np.asarray(constants, dtype=np.float32)[:, None, None]
    taken = 0
    for means, weight, overlaps in _merge_constant(height, width, (tile_h, tile_w), (stride_h, stride_w), constants):
        assert weight.min() > 0
        atol = 1e-6 if overlaps <= 16 else overlaps * 2.0**-24
        np.testing.assert_allclose(means, np.broadcast_to(expected, means.shape), rtol=0, atol=atol)
        taken += means.shape[1]
    assert taken == height


def test_strip_merger_constant_within_1e6_at_stride_1():
    for means, _, _ in _merge_constant(200, 200, (32, 32), (1, 1), [0.7]):
        np.testing.assert_allclose(means, np.float32(0.7), rtol=0, atol=1e-6)


# --- the engine on random GeoTIFFs ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def pointwise(tmp_path_factory):
    folder = tmp_path_factory.mktemp("prop_model")
    net = PointwiseNet(3, 3, hidden=6, seed=11).eval()
    card = write_card(folder, save_torchscript(folder, net), classes=3, tile=(16, 16), stride=(8, 8))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return net, load_model(card, "cpu")


@st.composite
def _run_case(draw):
    height, width = draw(st.integers(1, 48)), draw(st.integers(1, 48))
    tile = (draw(st.integers(2, 24)), draw(st.integers(2, 24)))
    stride = (draw(st.integers(1, tile[0])), draw(st.integers(1, tile[1])))
    # a random north-up, rotated or sheared geotransform
    transform = rasterio.Affine(draw(st.sampled_from([0.5, 10.0, 30.0])), draw(st.sampled_from([0.0, 2.5])), 1000.0,
                                draw(st.sampled_from([0.0, -1.5])), -draw(st.sampled_from([0.5, 10.0])), 5000.0)
    return height, width, tile, stride, transform, draw(st.integers(0, 2**16))


@_SLOW
@given(_run_case())
def test_tiled_engine_equals_the_whole_image_pass_on_the_input_grid(pointwise, case):
    net, loaded = pointwise
    height, width, tile, stride, transform, seed = case
    pixels = np.random.default_rng(seed).integers(0, 256, (3, height, width), dtype=np.uint8)
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        with rasterio.open(folder / "in.tif", "w", driver="GTiff", width=width, height=height, count=3,
                           dtype="uint8", crs="EPSG:32633", transform=transform) as dst:
            dst.write(pixels)
        outputs = OutputPaths(str(folder / "c.tif"), str(folder / "u.tif"), str(folder / "p.tif"))
        summary = predict_uncertainty(folder / "in.tif", loaded, outputs, stochastic=False, tile=tile,
                                      stride=stride, seed=1)
        with torch.no_grad():
            logits = net(torch.from_numpy(pixels.astype(np.float32) / np.float32(255))[None]).numpy()[0]
        expected = class_probabilities_np(logits)
        for path in (outputs.classes, outputs.uncertainty, outputs.probabilities):
            with rasterio.open(path) as out:
                assert (out.height, out.width, out.transform, out.crs) == (height, width, transform,
                                                                           rasterio.crs.CRS.from_epsg(32633))
        with rasterio.open(outputs.probabilities) as p, rasterio.open(outputs.uncertainty) as u:
            np.testing.assert_allclose(p.read(), expected, atol=1e-5)
            np.testing.assert_allclose(u.read(1), entropy_np(expected, axis=0), atol=1e-5)
        assert summary.n_tiles == TileGrid(height, width, tile, stride).n_tiles
        assert sorted(p.name for p in folder.iterdir()) == ["c.tif", "in.tif", "p.tif", "u.tif"]


# --- model card fuzzing through load_model --------------------------------------------------------------

# Leaves small enough that any model a mutated card describes stays tiny (a tile side or class count in the
# millions would make the loader build a huge model or run a huge zero tile: see _check_output).
_LEAVES = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 70), st.floats(-2.0, 300.0), st.just(float("nan")),
    st.text(max_size=8),
    st.sampled_from(["model.pth", "scripted.pt", "smp.Unet", "smp.FPN", "os.system", "tu-resnet10t", "resnet18",
                     "#1f78b4", "..", "/", "sigmoid"]),
)
_KEYS = st.sampled_from(["model", "weights", "input", "classes", "num_classes", "tiling", "bands", "scale", "mean",
                         "std", "_target_", "in_channels", "encoder_depth", "decoder_channels", "decoder_dropout",
                         "psp_dropout", "activation", "aux_params", "upsampling", "model_input_shape",
                         "step_shape", "name", "color"]) | st.text(max_size=5)
_VALUES = st.recursive(_LEAVES, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(_KEYS, kids, max_size=4),
                       max_leaves=12)


def _smp_doc():
    return {"model": {"_target_": "segmentation_models_pytorch.Unet", "encoder_name": "tu-resnet10t",
                      "encoder_depth": 3, "encoder_weights": None, "in_channels": 3, "decoder_channels": [32, 16, 8],
                      "classes": 4, "decoder_dropout": 0.1},
            "weights": "model.pth", "input": {"bands": [1, 2, 3], "scale": 255},
            "tiling": {"model_input_shape": [64, 64], "step_shape": [32, 32]}}


def _torchscript_doc():
    return {"weights": "scripted.pt", "num_classes": 3, "input": {"bands": [1, 2, 3], "mean": [1, 2, 3],
                                                                   "std": [4, 5, 6]},
            "tiling": {"model_input_shape": 16}}


# Plausible values for model: keys (and tile sizes), so that many mutated cards pass validation and reach SMP, the
# weights and the forward check; random leaves alone mostly stop at the card validator.
_MODEL_CHANGES = st.one_of(
    st.tuples(st.just("encoder_depth"), st.integers(1, 6)),
    st.tuples(st.just("decoder_channels"), st.lists(st.integers(1, 40), min_size=1, max_size=5)),
    st.tuples(st.just("classes"), st.integers(1, 6)),
    st.tuples(st.just("encoder_name"), st.sampled_from(["tu-resnet10t", "resnet18", "no-such-encoder"])),
    st.tuples(st.just("activation"), st.sampled_from([None, "sigmoid", "softmax2d", "bogus"])),
    st.tuples(st.just("aux_params"), st.sampled_from([None, {"classes": 2}, {"classes": "x"}])),
    st.tuples(st.just("decoder_attention_type"), st.sampled_from([None, "scse", "bogus"])),
    st.tuples(st.just("decoder_use_norm"), st.sampled_from([True, False, "batchnorm", "layernorm", 3])),
    st.tuples(st.just("upsampling"), st.integers(1, 8)),
    st.tuples(st.just("decoder_dropout"), st.floats(0.0, 0.9)),
    st.tuples(st.just("_target_"), st.sampled_from(["smp.FPN", "smp.UnetPlusPlus", "smp.Linknet", "smp.PSPNet",
                                                    "smp.DeepLabV3Plus", "smp.MAnet", "smp.PAN"])),
    st.tuples(st.just("decoder_interpolation"), st.sampled_from(["nearest", "bilinear", "bogus"])),
)


@st.composite
def _mutated(draw):
    doc = draw(st.sampled_from([_smp_doc, _torchscript_doc]))()
    if "model" in doc:
        for key, value in draw(st.lists(_MODEL_CHANGES, max_size=3)):
            # A copy: sampled_from hands out the same dict object every time, and mutate_document edits in place;
            # an edit kept from one example would change what the next draws (hypothesis: FlakyStrategyDefinition).
            doc["model"][key] = copy.deepcopy(value)
        doc["tiling"]["model_input_shape"] = draw(st.sampled_from([64, 64, 32, 48, 60]))
    return mutate_document(draw, doc, draw(st.sampled_from([0, 0, 1, 2])), _KEYS, _VALUES)


@pytest.fixture(scope="module")
def card_folder(tmp_path_factory):
    import segmentation_models_pytorch as smp

    folder = tmp_path_factory.mktemp("card_fuzz")
    kwargs = {k: v for k, v in _smp_doc()["model"].items() if k not in ("_target_", "decoder_dropout")}
    torch.manual_seed(0)
    torch.save(smp.Unet(**kwargs).state_dict(), folder / "model.pth")
    save_torchscript(folder, PointwiseNet(3, 3, seed=1), example_shape=(1, 3, 16, 16))
    return folder


def _load_or_documented_error(folder, document, note=event):
    import yaml

    from seg_uncertainty.engine.errors import UncertaintyError
    from seg_uncertainty.engine.model_loading import LoadedModel

    path = folder / "card.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loaded = load_model(path, "cpu")
    except UncertaintyError as e:
        assert str(e)
        note(type(e).__name__)  # hypothesis.event: shown by --hypothesis-show-statistics
        return None
    assert isinstance(loaded, LoadedModel)
    note("loaded")
    return loaded


def test_fuzz_base_cards_load(card_folder):
    def ignore(_):
        pass

    assert _load_or_documented_error(card_folder, _smp_doc(), ignore).n_dropout_layers == 1
    assert _load_or_documented_error(card_folder, _torchscript_doc(), ignore).n_classes == 3


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_mutated())
def test_fuzz_mutated_cards_through_load_model_raise_only_documented_errors(card_folder, document):
    """load_model (card validation, SMP construction, weights, the zero-tile check, MC Dropout set-up) on
    random mutations of a valid SMP card and a valid TorchScript card: a LoadedModel or an UncertaintyError."""
    _load_or_documented_error(card_folder, document)
