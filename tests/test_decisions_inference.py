"""Decisions in the engine's inference: calibrated samples, sample bands, rejection of uncertain pixels."""


import numpy as np
import pytest
import rasterio
import torch

from seg_uncertainty.engine.dropout import make_generators, prepare_mc_dropout, set_dropout_active, use_generators
from seg_uncertainty.engine.inference import OutputPaths, SampleBands, predict_uncertainty
from seg_uncertainty.engine.prefix_cache import PlainForward
from seg_uncertainty.engine.samplers import UncertaintySampler
from seg_uncertainty.engine.statistics import class_probabilities_np, entropy_np, uncertainty_from_moments
from seg_uncertainty.engine.tta import tta_views

from conftest import load_cpu_model, scene_crop
from models import PointwiseNet, save_smp, save_torchscript, write_card


def test_sampler_divides_every_samples_logits_and_keeps_the_chosen_samples(one_torch_thread):
    """Raw samples one pass at a time with z / T: p̄, entropy, MI and the kept sample channels all follow."""
    model = PointwiseNet(3, 4, hidden=16, dropout=0.4, seed=3)
    prepare_mc_dropout(model)
    set_dropout_active(model, True)
    x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    views = tta_views("flip", (8, 8))
    t_value, n_samples = 1.7, 3
    kept = (0, 4, 11)  # view 0 pass 0, view 1 pass 1, view 3 pass 2
    sampler = UncertaintySampler(PlainForward(model), 4, views, n_samples, 42, "cpu", 2, temperature=t_value,
                                 kept_samples=kept, entropies=True)
    with torch.inference_mode():
        out = sampler.moments(x, [(0, 0)]).numpy()[0]
        raw = np.zeros((len(views) * n_samples, 4, 8, 8))
        for v, view in enumerate(views):
            for t in range(n_samples):
                with use_generators(model, make_generators([(0, 0, v, t)], 42, "cpu")):
                    logits = model(view.forward(x)).numpy()
                p = class_probabilities_np(logits[0] / t_value)
                raw[v * n_samples + t] = view.inverse(torch.from_numpy(p)[None, None]).numpy()[0, 0]
    mean = raw.mean(0)
    np.testing.assert_allclose(out[:4], mean, atol=1e-6)
    h = entropy_np(mean)
    mi = np.maximum(h - np.mean([entropy_np(s) for s in raw], axis=0), 0)
    np.testing.assert_allclose(uncertainty_from_moments(out[:9], 4, "mutual_information")[2], mi, atol=2e-5)
    assert out.shape[0] == 9 + 3 * 4
    for slot, s in enumerate(kept):
        np.testing.assert_allclose(out[9 + 4 * slot : 9 + 4 * (slot + 1)], raw[s], atol=1e-6)


def test_one_pass_and_mode_layouts_divide_by_the_temperature_and_keep_samples(one_torch_thread):
    """V = T = 1 (the shortcut without per-sample machinery) divides the logits and returns the kept sample; with
    several samples the kept channels follow the mode's own moment layout (p̄, h̄ for mutual information)."""
    model = PointwiseNet(3, 4, hidden=16, dropout=0.4, seed=3)
    prepare_mc_dropout(model)
    set_dropout_active(model, True)
    x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    t_value = 0.6
    one = UncertaintySampler(PlainForward(model), 4, tta_views("none", (8, 8)), 1, 42, "cpu", temperature=t_value,
                             kept_samples=(0,), squares=False, entropies=False)
    views = tta_views("flip", (8, 8))
    many = UncertaintySampler(PlainForward(model), 4, views, 2, 42, "cpu", 2, temperature=t_value,
                              kept_samples=(1, 6), kept_class=2, squares=False, entropies=True)
    with torch.inference_mode():
        out_one = one.moments(x, [(0, 0)]).numpy()[0]
        out_many = many.moments(x, [(0, 0)]).numpy()[0]
        with use_generators(model, make_generators([(0, 0, 0, 0)], 42, "cpu")):
            p = class_probabilities_np(model(x).numpy()[0] / t_value)
        raw = np.zeros((len(views) * 2, 4, 8, 8))
        for v, view in enumerate(views):
            for t in range(2):
                with use_generators(model, make_generators([(0, 0, v, t)], 42, "cpu")):
                    z = model(view.forward(x)).numpy()
                raw[v * 2 + t] = view.inverse(torch.from_numpy(class_probabilities_np(z[0] / t_value))[None])[0]
    assert out_one.shape[0] == one.n_channels == 4 + 4
    np.testing.assert_allclose(out_one[:4], p, atol=1e-6)
    np.testing.assert_allclose(out_one[4:], p, atol=1e-6)
    assert out_many.shape[0] == many.n_moment_channels + many.n_sample_channels == 5 + 2
    np.testing.assert_allclose(out_many[:4], raw.mean(0), atol=1e-6)
    np.testing.assert_allclose(out_many[4], np.mean([entropy_np(s) for s in raw], axis=0), atol=2e-5)
    np.testing.assert_allclose(out_many[5:], raw[[1, 6], 2], atol=1e-6)


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    folder = tmp_path_factory.mktemp("decisions_inference")
    scene_crop(folder)
    card = save_smp(folder, "FPN", classes=3, dropout=0.25, tile=(64, 64), stride=(48, 48))
    return {"folder": folder, "raster": folder / "crop.tif", "card": card}


def _read(path):
    with rasterio.open(path) as ds:
        return ds.read(), ds.tags(), ds.descriptions


def test_sample_bands_are_the_samples_of_the_statistics(scene, tmp_path, one_torch_thread):
    loaded = load_cpu_model(scene["card"])
    run = lambda name, spec: predict_uncertainty(  # noqa: E731
        scene["raster"], loaded,
        OutputPaths(str(tmp_path / f"{name}.tif"), None, str(tmp_path / f"{name}_p.tif"),
                    str(tmp_path / f"{name}_s.tif")),
        n_samples=5, seed=9, samples=spec)
    per_class = []
    for c in range(3):
        summary = run(f"p{c}", SampleBands(5, "probability", c))
        bands, tags, descriptions = _read(tmp_path / f"p{c}_s.tif")
        mean_p, _, _ = _read(tmp_path / f"p{c}_p.tif")
        # K = T: the mean of the bands is p̄ of that class.
        np.testing.assert_allclose(bands.mean(0), mean_p[c], atol=1e-6, equal_nan=True)
        assert summary.sample_indices == (0, 1, 2, 3, 4) and tags["SAMPLE_INDICES"] == "0,1,2,3,4"
        assert descriptions[0] == "sample 0 p(c" + str(c) + ")"
        per_class.append(bands)
    stacked = np.stack(per_class, axis=1)  # (K, C, h, w)
    run("cls", SampleBands(5, "class"))
    classes, _, _ = _read(tmp_path / "cls_s.tif")
    valid = np.isfinite(stacked).all(axis=(0, 1))
    np.testing.assert_array_equal(classes[:, valid], np.argmax(stacked, axis=1)[:, valid])
    assert np.all(classes[:, ~valid] == 255)
    assert (classes[0] != classes[4])[valid].any()  # the passes really differ
    # K = 3 of the same run (same seed): samples 0, 2, 4, the same bands.
    run("three", SampleBands(3, "class"))
    three, tags, _ = _read(tmp_path / "three_s.tif")
    assert tags["SAMPLE_INDICES"] == "0,2,4"
    np.testing.assert_array_equal(three, classes[[0, 2, 4]])


def test_calibrated_card_changes_probabilities_not_classes(scene, tmp_path, one_torch_thread):
    from seg_uncertainty.engine.card_calibration import write_calibrated_card
    from seg_uncertainty.engine.model_card import load_model_card

    folder = tmp_path / "ts"
    folder.mkdir()
    weights = save_torchscript(folder, PointwiseNet(3, 4, hidden=8, seed=7))
    card = write_card(folder, weights, classes=4, tile=(64, 64), stride=(40, 40))
    calibrated = write_calibrated_card(card, 2.5).path
    assert load_model_card(calibrated).temperature == 2.5
    outs = {}
    for name, path in (("plain", card), ("calibrated", calibrated)):
        outs[name] = OutputPaths(str(tmp_path / f"{name}.tif"), str(tmp_path / f"{name}_u.tif"),
                                 str(tmp_path / f"{name}_p.tif"))
        predict_uncertainty(scene["raster"], load_cpu_model(path), outs[name], stochastic=False, seed=1)
    with rasterio.open(scene["raster"]) as src:
        x = src.read([1, 2, 3]).astype(np.float32) / 255.0
    with torch.no_grad():
        logits = PointwiseNet(3, 4, hidden=8, seed=7).eval()(torch.from_numpy(x)[None]).numpy()[0]
    want = class_probabilities_np(logits / 2.5)
    got, _, _ = _read(outs["calibrated"].probabilities)
    valid = np.isfinite(got).all(0)
    np.testing.assert_allclose(got[:, valid], want[:, valid], atol=2e-6)
    unc, _, _ = _read(outs["calibrated"].uncertainty)
    np.testing.assert_allclose(unc[0][valid], entropy_np(want)[valid], atol=2e-5)
    np.testing.assert_array_equal(_read(outs["plain"].classes)[0], _read(outs["calibrated"].classes)[0])


def test_reject_above_marks_uncertain_pixels_with_their_own_value(scene, tmp_path, one_torch_thread):
    loaded = load_cpu_model(scene["card"])
    plain = OutputPaths(str(tmp_path / "plain.tif"), str(tmp_path / "plain_u.tif"))
    predict_uncertainty(scene["raster"], loaded, plain, n_samples=4, seed=2)
    classes, _, _ = _read(plain.classes)
    unc, _, _ = _read(plain.uncertainty)
    threshold = float(np.nanmedian(unc))
    rejected = OutputPaths(str(tmp_path / "rej.tif"))
    summary = predict_uncertainty(scene["raster"], loaded, rejected, n_samples=4, seed=2, reject_above=threshold)
    got, tags, _ = _read(rejected.classes)
    want = np.where(unc[0] > threshold, 3, classes[0])
    want[classes[0] == 255] = 255
    np.testing.assert_array_equal(got[0], want)
    assert summary.rejected_pixels == int(np.sum(unc[0] > threshold)) > 0
    assert tags["CLASS_NAMES"].split(",")[-1] == "uncertain" and tags["UNCERTAIN_VALUE"] == "3"
    assert float(tags["REJECT_ABOVE"]) == threshold
