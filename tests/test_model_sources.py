"""MODEL as users have it: trainer config + Lightning checkpoint, Deepness ONNX, torch.export .pt2, our card.

Every artefact is written by the real tool (the trainer 1.4.0 itself via scripts/make_trainer_checkpoint.py,
``torch.onnx.export``, ``torch.export``); each runs through the engine and is compared with the same weights
run through our own hand-written SMP card.
"""

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import torch.nn.functional as F
import yaml
from rasterio.transform import from_origin

from seg_uncertainty.engine.loader.lightning_checkpoint import hyper_parameters_as_data, read_checkpoint
from seg_uncertainty.engine.errors import InvalidOptionError, ModelCardError, ModelLoadError
from seg_uncertainty.engine.inference import OutputPaths, predict_uncertainty
from seg_uncertainty.engine.model_loading import load_model
from seg_uncertainty.engine.model_sources import check_mc_capable, choose_option, open_model

TRAINER_DATA = Path(__file__).resolve().parent / "data" / "trainer"
SMP_KWARGS = {"encoder_name": "resnet18", "encoder_weights": None, "in_channels": 3, "classes": 3,
              "decoder_dropout": 0.3, "decoder_pyramid_channels": 32, "decoder_segmentation_channels": 32}
MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]


@pytest.fixture(scope="module")
def raster(tmp_path_factory):
    return make_raster(tmp_path_factory.mktemp("raster"))


@pytest.fixture(scope="module")
def smp_model(tmp_path_factory):
    return make_smp_model(tmp_path_factory.mktemp("smp"))


def make_raster(folder):
    """A 3-band uint8 GeoTIFF, 90 × 100 px, NoData 0 in one corner block."""
    path = folder / "scene.tif"
    rng = np.random.default_rng(7)
    data = rng.integers(1, 256, size=(3, 90, 100), dtype=np.uint8)
    data[:, :10, :12] = 0
    with rasterio.open(path, "w", driver="GTiff", width=100, height=90, count=3, dtype="uint8", nodata=0,
                       crs="EPSG:32618", transform=from_origin(500000, 4000000, 30, 30)) as dst:
        dst.write(data)
    return path


def make_smp_model(folder):
    """(folder, FPN with dropout and random weights, our card for it with ImageNet normalisation on 0-255)."""
    import segmentation_models_pytorch as smp

    torch.manual_seed(3)
    model = smp.FPN(**SMP_KWARGS).eval()
    torch.save(model.state_dict(), folder / "fpn.pth")
    card = {"model": {"_target_": "segmentation_models_pytorch.FPN", **SMP_KWARGS}, "weights": "fpn.pth",
            "input": {"bands": [1, 2, 3], "mean": [255 * m for m in MEAN], "std": [255 * s for s in STD]},
            "classes": ["water", "field", "town"],
            "tiling": {"model_input_shape": [64, 64], "step_shape": [48, 48]}}
    (folder / "fpn.yaml").write_text(yaml.safe_dump(card, sort_keys=False))
    return folder, model, folder / "fpn.yaml"


def _run(loaded, raster, folder, name, **options):
    out = OutputPaths(str(folder / f"{name}.tif"), str(folder / f"{name}_unc.tif"), str(folder / f"{name}_p.tif"))
    options.setdefault("seed", 5)
    predict_uncertainty(str(raster), loaded, out, **options)
    with rasterio.open(out.probabilities) as p, rasterio.open(out.uncertainty) as u, rasterio.open(out.classes) as c:
        return p.read(), u.read(1), c.read(1)


def _assert_same_outputs(a, b, atol=1e-4):
    pa, ua, ca = a
    pb, ub, cb = b
    np.testing.assert_array_equal(np.isnan(pa), np.isnan(pb))
    np.testing.assert_allclose(np.nan_to_num(pa), np.nan_to_num(pb), atol=atol, rtol=0)
    np.testing.assert_allclose(np.nan_to_num(ua), np.nan_to_num(ub), atol=atol, rtol=0)
    top2 = np.sort(np.nan_to_num(pa), axis=0)[-2:]
    clear = (top2[1] - top2[0]) > 2 * atol  # argmax is only defined to the tolerance
    np.testing.assert_array_equal(ca[clear], cb[clear])
    assert np.isnan(pa).any() and clear.sum() > 1000  # NoData kept; the comparison covers most pixels


# --- ONNX ------------------------------------------------------------------------------------------------


class _Softmaxed(torch.nn.Module):
    """What a Deepness creator exports: the network followed by softmax (outputs are probabilities)."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return torch.softmax(self.net(x), dim=1)


class _AlwaysDropout(torch.nn.Module):
    """The README's export recipe for MC Dropout in ONNX: dropout that stays on in an eval-mode export."""

    def __init__(self, p):
        super().__init__()
        self.p = p

    def forward(self, x):
        return F.dropout(x, self.p, training=True)


def _export_onnx(module, path, metadata=None):
    import onnx

    module = module.eval()
    torch.onnx.export(module, (torch.zeros(1, 3, 64, 64),), str(path), dynamo=False, input_names=["input"],
                      output_names=["output"], opset_version=17, dynamic_axes={"input": {0: "batch"},
                                                                                "output": {0: "batch"}})
    if metadata:
        graph = onnx.load(str(path))
        for key, value in metadata.items():
            entry = graph.metadata_props.add()
            entry.key, entry.value = key, value if isinstance(value, str) else json.dumps(value)
        onnx.save(graph, str(path))
    return path


DEEPNESS_METADATA = {"model_type": "Segmentor", "class_names": {"0": "water", "1": "field", "2": "town"},
                     "resolution": 3000, "tiles_size": 64, "tiles_overlap": 25, "standardization_mean": MEAN,
                     "standardization_std": STD, "seg_thresh": 0.5}


@pytest.fixture(scope="module")
def deepness_onnx(smp_model):
    folder, model, _ = smp_model
    return _export_onnx(_Softmaxed(model), folder / "deepness.onnx", DEEPNESS_METADATA)


def test_deepness_onnx_runs_without_a_card_and_equals_our_card(tmp_path, raster, smp_model, deepness_onnx):
    _, _, card = smp_model
    opened = open_model(deepness_onnx)
    c = opened.card
    assert (c.class_names, c.tile_shape, c.step_shape) == (("water", "field", "town"), (64, 64), (48, 48))
    np.testing.assert_allclose(c.mean, [255 * m for m in MEAN])
    np.testing.assert_allclose(c.std, [255 * s for s in STD])
    assert opened.defaults["stride"].source == "Deepness metadata tiles_overlap"
    assert any("resolution" in w and "seg_thresh" in w for w in opened.loaded.warnings)  # listed, not an error
    ours = load_model(card)
    for tta in ("none", "flip"):
        got = _run(opened.loaded, raster, tmp_path, f"onnx_{tta}", stochastic=False, tta=tta, mode="entropy")
        want = _run(ours, raster, tmp_path, f"card_{tta}", stochastic=False, tta=tta, mode="entropy")
        _assert_same_outputs(got, want)


def test_deepness_sigmoid_onnx_equals_our_binary_card(tmp_path, raster):
    """One sigmoid channel: probabilities p go back to logits log p − log(1 − p) and give the same p."""
    import segmentation_models_pytorch as smp

    kwargs = dict(SMP_KWARGS, classes=1)
    torch.manual_seed(9)
    model = smp.FPN(**kwargs).eval()
    torch.save(model.state_dict(), tmp_path / "binary.pth")

    class Sigmoided(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            return torch.sigmoid(self.net(x))

    path = _export_onnx(Sigmoided(model), tmp_path / "binary.onnx",
                        dict(DEEPNESS_METADATA, class_names={"0": "building"}))
    opened = open_model(path)
    assert (opened.card.out_channels, opened.card.class_names) == (1, ("background", "building"))
    card = {"model": {"_target_": "segmentation_models_pytorch.FPN", **kwargs}, "weights": "binary.pth",
            "input": {"bands": [1, 2, 3], "mean": [255 * m for m in MEAN], "std": [255 * s for s in STD]},
            "tiling": {"model_input_shape": [64, 64], "step_shape": [48, 48]}}
    (tmp_path / "binary.yaml").write_text(yaml.safe_dump(card))
    options = dict(stochastic=False, tta="flip", mode="variance")
    _assert_same_outputs(_run(opened.loaded, raster, tmp_path, "onnx", **options),
                         _run(load_model(tmp_path / "binary.yaml"), raster, tmp_path, "card", **options))


def test_deterministic_onnx_refuses_mc_dropout_naming_tta(deepness_onnx):
    opened = open_model(deepness_onnx)
    with pytest.raises(InvalidOptionError, match="uncertainty:tta.*re-export"):
        check_mc_capable(opened.loaded)


def test_onnx_with_stochastic_dropout_samples_reproducibly(tmp_path, raster, smp_model):
    import segmentation_models_pytorch as smp

    _, model, _ = smp_model
    stochastic = smp.FPN(**SMP_KWARGS).eval()
    stochastic.load_state_dict(model.state_dict())
    stochastic.decoder.dropout = _AlwaysDropout(0.3)  # the README's recipe
    path = _export_onnx(_Softmaxed(stochastic), tmp_path / "mc.onnx", DEEPNESS_METADATA)
    opened = open_model(path)
    check_mc_capable(opened.loaded)  # no refusal
    assert opened.loaded.n_dropout_layers == 1
    a = _run(opened.loaded, raster, tmp_path, "a", stochastic=True, n_samples=3, mode="mutual_information", seed=1)
    b = _run(opened.loaded, raster, tmp_path, "b", stochastic=True, n_samples=3, mode="mutual_information", seed=1)
    c = _run(opened.loaded, raster, tmp_path, "c", stochastic=True, n_samples=3, mode="mutual_information", seed=2)
    np.testing.assert_array_equal(np.nan_to_num(a[1]), np.nan_to_num(b[1]))
    assert np.nanmax(a[1]) > 1e-3  # samples disagree: mutual information > 0
    assert np.nanmax(np.abs(a[1] - c[1])) > 1e-4  # another seed, other masks


def test_our_card_pointing_at_onnx(tmp_path, raster, smp_model, deepness_onnx):
    _, _, card = smp_model
    doc = yaml.safe_load(card.read_text())
    doc.pop("model")
    doc["weights"], doc["num_classes"] = str(deepness_onnx), 3
    onnx_card = tmp_path / "onnx_card.yaml"
    onnx_card.write_text(yaml.safe_dump(doc))
    opened = open_model(onnx_card)
    assert opened.kind == "model card"
    got = _run(opened.loaded, raster, tmp_path, "onnx_card", stochastic=False, tta="d4", mode="variance")
    want = _run(load_model(card), raster, tmp_path, "card", stochastic=False, tta="d4", mode="variance")
    _assert_same_outputs(got, want)


# --- torch.export ----------------------------------------------------------------------------------------


def test_pt2_program_equals_our_card_with_mc_dropout(tmp_path, raster, smp_model):
    _, model, card = smp_model
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(model.eval(), (torch.zeros(2, 3, 64, 64),), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(tmp_path / "fpn.pt2"))
    doc = yaml.safe_load(card.read_text())
    doc.pop("model")
    doc["weights"], doc["num_classes"] = str(tmp_path / "fpn.pt2"), 3
    (tmp_path / "pt2.yaml").write_text(yaml.safe_dump(doc))
    opened = open_model(tmp_path / "pt2.yaml")
    assert opened.loaded.n_dropout_layers == 1
    for options in (dict(stochastic=True, n_samples=4, mode="mutual_information"),
                    dict(stochastic=False, tta="d4", mode="entropy")):
        got = _run(opened.loaded, raster, tmp_path, "pt2", **options)
        want = _run(load_model(card), raster, tmp_path, "card", **options)
        _assert_same_outputs(got, want)


# --- pytorch-segmentation-models-trainer ------------------------------------------------------------------


class _Malicious:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _trainer_copy(folder, with_checkpoint=True, **changes):
    """The trainer's config (and checkpoint of the same stem) copied to ``folder``, with top-level changes."""
    doc = yaml.safe_load((TRAINER_DATA / "trainer_fpn.yaml").read_text())
    doc.update(changes)
    path = Path(folder) / "trainer_fpn.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    if with_checkpoint:
        shutil.copy(TRAINER_DATA / "trainer_fpn.ckpt", Path(folder) / "trainer_fpn.ckpt")
    return path


def test_trainer_checkpoint_is_refused_by_weights_only_and_read_as_data():
    with pytest.raises(pickle.UnpicklingError):  # the state of things the reader exists for
        torch.load(TRAINER_DATA / "trainer_fpn.ckpt", weights_only=True)
    checkpoint = read_checkpoint(TRAINER_DATA / "trainer_fpn.ckpt")
    config = hyper_parameters_as_data(checkpoint["hyper_parameters"])["cfg"]
    written = yaml.safe_load((TRAINER_DATA / "trainer_fpn.yaml").read_text())
    assert written.pop("defaults") == ["_self_"]  # Hydra consumes the defaults list when composing
    assert config == written
    assert all(k.startswith("model.") for k in checkpoint["state_dict"])
    import sys

    assert "omegaconf" not in sys.modules  # read as data: the real classes were never imported


def test_trainer_config_with_checkpoint_equals_our_card(tmp_path, raster):
    opened = open_model(TRAINER_DATA / "trainer_fpn.yaml")
    assert opened.kind == "pytorch-segmentation-models-trainer config"
    assert {k: d.value for k, d in opened.defaults.items() if k != "normalisation"} == {
        "n_samples": 6, "uncertainty_mode": "mutual_information", "tile": (64, 64), "stride": (48, 48)}
    assert opened.defaults["n_samples"].source == "trainer config key inference_processor.n_samples"
    assert "same stem as the config (trainer_fpn.ckpt)" in " ".join(opened.describe())
    assert {"pl_model", "loss", "optimizer", "hyperparameters", "pl_trainer", "device", "seed", "image_path",
            "output_path", "inference_processor.export_uncertainty_map",
            "inference_processor.output_uncertainty_dir"} <= set(opened.unused)
    assert opened.loaded.n_dropout_layers == 1

    # The same weights through a hand-written card: state_dict without Lightning's "model." prefix.
    state = {k[len("model."):]: v for k, v in read_checkpoint(TRAINER_DATA / "trainer_fpn.ckpt")["state_dict"].items()}
    torch.save(state, tmp_path / "weights.pth")
    config = yaml.safe_load((TRAINER_DATA / "trainer_fpn.yaml").read_text())
    card = {"model": config["model"], "weights": "weights.pth",
            "input": {"bands": [1, 2, 3], "mean": [255 * m for m in MEAN], "std": [255 * s for s in STD]},
            "tiling": {"model_input_shape": [64, 64], "step_shape": [48, 48]}}
    (tmp_path / "card.yaml").write_text(yaml.safe_dump(card))
    ours = load_model(tmp_path / "card.yaml")
    options = dict(stochastic=True, n_samples=6, mode="mutual_information")
    _assert_same_outputs(_run(opened.loaded, raster, tmp_path, "trainer", **options),
                         _run(ours, raster, tmp_path, "card", **options))


def test_trainer_checkpoint_with_code_is_refused_before_it_runs(tmp_path):
    marker = tmp_path / "pwned"
    state = read_checkpoint(TRAINER_DATA / "trainer_fpn.ckpt")["state_dict"]
    torch.save({"state_dict": state, "hyper_parameters": {"cfg": _Malicious(marker)}}, tmp_path / "evil.ckpt")
    config = _trainer_copy(tmp_path, with_checkpoint=False)
    assert not marker.exists()
    with pytest.raises(ModelLoadError, match=r"refused for safety .*refers to (builtins|_?io)\.open"):
        open_model(config, weights=tmp_path / "evil.ckpt")
    assert not marker.exists()


def test_trainer_config_without_checkpoint_names_the_key_and_takes_weights(tmp_path):
    config = _trainer_copy(tmp_path, with_checkpoint=False)
    with pytest.raises(ModelCardError, match=r"`model_path`: no checkpoint.*Fix: choose the checkpoint in the "
                                             r"WEIGHTS parameter"):
        open_model(config)
    opened = open_model(config, weights=TRAINER_DATA / "trainer_fpn.ckpt")
    assert "from WEIGHTS parameter" in " ".join(opened.describe())


def test_trainer_config_placeholders_are_errors_only_where_needed(tmp_path):
    (tmp_path / "elsewhere").mkdir()
    shutil.copy(TRAINER_DATA / "trainer_fpn.ckpt", tmp_path / "elsewhere" / "best.ckpt")
    # checkpoint_path interpolated from another key: resolved; output paths stay ??? and are not needed.
    opened = open_model(_trainer_copy(tmp_path, with_checkpoint=False, run_dir="elsewhere",
                                      checkpoint_path="${run_dir}/best.ckpt"))
    assert opened.card.weights_path == (tmp_path / "elsewhere" / "best.ckpt").resolve()
    with pytest.raises(ModelCardError, match=r"`normalize_mean`: the interpolation '\$\{oc.env:MEAN\}' refers to "
                                             r"a resolver"):
        open_model(_trainer_copy(tmp_path, normalize_mean="${oc.env:MEAN}"))
    with pytest.raises(ModelCardError, match=r"`normalize_std`: is \?\?\?"):
        open_model(_trainer_copy(tmp_path, normalize_std="???"))


def test_run_options_come_from_the_file_only_when_left_at_default():
    opened = open_model(TRAINER_DATA / "trainer_fpn.yaml")
    assert choose_option("N_SAMPLES", 10, True, opened, "n_samples") == (
        6, "N_SAMPLES = 6 (from trainer config key inference_processor.n_samples)")
    assert choose_option("N_SAMPLES", 20, False, opened, "n_samples") == (20, "N_SAMPLES = 20 (parameter)")
    assert choose_option("TTA_MODE", "none", True, opened, "tta_mode") == ("none", "TTA_MODE = none (plugin default)")


# --- through the toolbox -----------------------------------------------------------------------------------


def _processing(algorithm, parameters):
    import warnings

    import processing
    from qgis.core import QgsProcessingFeedback

    class Recorder(QgsProcessingFeedback):
        def __init__(self):
            super().__init__()
            self.lines = []

        def pushInfo(self, info):  # noqa: N802 - QGIS's name
            self.lines.append(info)
            super().pushInfo(info)

    feedback = Recorder()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        result = processing.run(algorithm, parameters, feedback=feedback)
    return result, feedback.lines


def test_mcdropout_takes_trainer_defaults_and_logs_where_they_came_from(qgis_app, tmp_path, raster):
    result, log = _processing("uncertainty:mcdropout", {
        "INPUT": str(raster), "MODEL": str(TRAINER_DATA / "trainer_fpn.yaml"), "SEED": 4,
        "OUTPUT": str(tmp_path / "classes.tif"), "OUTPUT_PROBABILITIES": str(tmp_path / "p.tif")})
    text = "\n".join(log)
    for line in ("N_SAMPLES = 6 (from trainer config key inference_processor.n_samples)",
                 "UNCERTAINTY_MODE = mutual_information (from trainer config key inference_processor.uncertainty_mode)",
                 "TTA_MODE = none (plugin default)",
                 "TILE_SIZE = 64×64 (from trainer config key inference_processor.model_input_shape)",
                 "STRIDE = 48×48 (from trainer config key inference_processor.step_shape)",
                 "Normalisation: (x - [123.675",
                 "Keys not used by this plugin: pl_model, loss, optimizer, hyperparameters, pl_trainer, device"):
        assert line in text
    want = _run(open_model(TRAINER_DATA / "trainer_fpn.yaml").loaded, raster, tmp_path, "engine", seed=4,
                stochastic=True, n_samples=6, mode="mutual_information")
    with rasterio.open(result["OUTPUT_UNCERTAINTY"]) as u, rasterio.open(result["OUTPUT_PROBABILITIES"]) as p:
        np.testing.assert_array_equal(u.read(1), want[1])
        np.testing.assert_array_equal(p.read(), want[0])
        assert u.tags()["MC_SAMPLES"] == "6" and u.tags()["UNCERTAINTY_MODE"] == "mutual_information"


def test_deepness_onnx_in_the_toolbox(qgis_app, tmp_path, raster, deepness_onnx):
    from qgis.core import QgsProcessingException

    with pytest.raises(QgsProcessingException, match="run uncertainty:tta with this model, or re-export"):
        _processing("uncertainty:mcdropout", {"INPUT": str(raster), "MODEL": str(deepness_onnx),
                                              "OUTPUT": str(tmp_path / "mc.tif")})
    assert not (tmp_path / "mc.tif").exists()
    result, log = _processing("uncertainty:tta", {"INPUT": str(raster), "MODEL": str(deepness_onnx),
                                                  "TTA_MODE": "flip", "OUTPUT": str(tmp_path / "tta.tif")})
    assert "TILE_SIZE = 64×64 (from Deepness metadata tiles_size)" in log
    assert "STRIDE = 48×48 (from Deepness metadata tiles_overlap)" in log
    with rasterio.open(result["OUTPUT"]) as ds:
        assert ds.nodata == 255 and set(np.unique(ds.read(1))) <= {0, 1, 2, 255}


def test_qgis_process_runs_a_trainer_config_with_its_checkpoint_as_weights(tmp_path, raster):
    """The standalone qgis_process: the MODEL filter accepts the trainer's YAML, WEIGHTS gives the checkpoint."""
    from conftest import qgis_process_runner

    run = qgis_process_runner(tmp_path / "profile")
    config = _trainer_copy(tmp_path, with_checkpoint=False)  # model_path stays ???: WEIGHTS is needed
    code, out, err = run("uncertainty:tta", INPUT=raster, MODEL=config, WEIGHTS=TRAINER_DATA / "trainer_fpn.ckpt",
                         TTA_MODE="flip", SEED=1, OUTPUT=tmp_path / "classes.tif",
                         OUTPUT_PROBABILITIES=tmp_path / "p.tif")
    assert code == 0, err
    assert json.loads(out)["results"]["N_TILES"] == 4  # 64-px tiles at stride 48 from the config: 2 × 2
    want = _run(open_model(TRAINER_DATA / "trainer_fpn.yaml").loaded, raster, tmp_path, "engine", seed=1,
                stochastic=False, tta="flip", mode="mutual_information")
    with rasterio.open(tmp_path / "p.tif") as p:
        np.testing.assert_allclose(np.nan_to_num(p.read()), np.nan_to_num(want[0]), atol=1e-6, rtol=0)
