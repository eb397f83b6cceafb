"""uncertainty:create_model_card through processing.run: the written card reproduces a hand-written one."""


import numpy as np
import pytest
import yaml

from seg_uncertainty.engine.model_loading import load_model

from conftest import run_algorithm
from test_model_sources import MEAN, STD, _export_onnx, _run, _Softmaxed, make_raster, make_smp_model


@pytest.fixture(scope="module")
def raster(tmp_path_factory):
    return make_raster(tmp_path_factory.mktemp("raster"))


@pytest.fixture(scope="module")
def smp_model(tmp_path_factory):
    return make_smp_model(tmp_path_factory.mktemp("smp"))


def _process(parameters):
    return run_algorithm("uncertainty:create_model_card", parameters)


def test_written_card_reproduces_the_hand_written_card_bit_for_bit(qgis_app, tmp_path, raster, smp_model):
    folder, model, hand_written = smp_model
    result = _process({
        "WEIGHTS": str(folder / "fpn.pth"), "ARCHITECTURE": "FPN", "ENCODER": "resnet18",
        "MODEL_ARGUMENTS": "{decoder_pyramid_channels: 32, decoder_segmentation_channels: 32}", "DROPOUT": 0.3,
        "BANDS": "1,2,3", "SCALING": "mean/std per band (raw units)",
        "MEAN": ",".join(repr(255 * m) for m in MEAN), "STD": ",".join(repr(255 * s) for s in STD),
        "CLASS_NAMES": "water,field,town", "TILE_SIZE": 64, "STRIDE": 48,
        "OUTPUT": str(folder / "written.yaml"),
    })
    assert result == {"OUTPUT": str(folder / "written.yaml"), "N_DROPOUT_LAYERS": 1, "OUTPUT_CHANNELS": 3,
                      "N_PARAMETERS": sum(p.numel() for p in model.parameters())}
    written = yaml.safe_load((folder / "written.yaml").read_text())
    assert written["weights"] == "fpn.pth"  # relative to the card, as a person would write it
    options = dict(stochastic=True, n_samples=3, mode="mutual_information", tta="flip")
    got = _run(load_model(folder / "written.yaml"), raster, tmp_path, "written", **options)
    want = _run(load_model(hand_written), raster, tmp_path, "hand", **options)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)


def test_card_for_an_onnx_program_and_no_card_left_when_it_fails(qgis_app, tmp_path, smp_model):
    from qgis.core import QgsProcessingException

    folder, model, _ = smp_model
    onnx_path = _export_onnx(_Softmaxed(model), tmp_path / "plain.onnx")
    result = _process({"WEIGHTS": str(onnx_path), "BANDS": "1,2,3", "TILE_SIZE": 64,
                       "OUTPUT": str(tmp_path / "onnx.yaml")})
    assert (result["OUTPUT_CHANNELS"], result["N_DROPOUT_LAYERS"], result["N_PARAMETERS"]) == (3, 0, -1)
    assert yaml.safe_load((tmp_path / "onnx.yaml").read_text())["num_classes"] == 3
    # Wrong encoder for the weights: the loader's shape check fails and nothing is written.
    with pytest.raises(QgsProcessingException, match="do not fit smp.FPN"):
        _process({"WEIGHTS": str(folder / "fpn.pth"), "ARCHITECTURE": "FPN", "ENCODER": "resnet34",
                  "BANDS": "1,2,3", "TILE_SIZE": 64, "OUTPUT": str(tmp_path / "bad.yaml")})
    assert sorted(p.name for p in tmp_path.glob("*.yaml")) == ["onnx.yaml"]
