"""Tiling, merging, uncertainty maths and TTA inverses, checked against independent numpy computations."""

import numpy as np
import pytest
import torch

from seg_uncertainty.engine.dropout import make_generators, prepare_mc_dropout, set_dropout_active, use_generators
from seg_uncertainty.engine.merging import StripMerger
from seg_uncertainty.engine.options import UncertaintyMode
from seg_uncertainty.engine.prefix_cache import PlainForward
from seg_uncertainty.engine.samplers import UncertaintySampler
from seg_uncertainty.engine.statistics import class_probabilities_np, entropy_np, uncertainty_from_moments
from seg_uncertainty.engine.tiling import gaussian_window, tile_starts
from seg_uncertainty.engine.tta import tta_views

from models import PointwiseNet, ShiftNet


@pytest.mark.parametrize(
    "size, tile, stride, expected",
    [
        (10, 4, 2, [0, 2, 4, 6]),  # exact fit
        (11, 4, 3, [0, 3, 6, 7]),  # last window shifted back to end at the border
        (4, 4, 2, [0]),  # one tile
        (3, 4, 2, [0]),  # smaller than a tile: one padded tile
        (9, 4, 4, [0, 4, 5]),  # no overlap except the last window
    ],
)
def test_tile_starts(size, tile, stride, expected):
    assert tile_starts(size, tile, stride) == expected


def test_gaussian_window_sigma_and_floor():
    w = gaussian_window((64, 32))
    assert w.max() == pytest.approx(1.0)
    assert w.min() == pytest.approx(1e-3)
    # σ = 0.125 × 64 = 8 rows: one σ from the centre the weight is exp(-1/2) of the centre row's.
    centre = (64 - 1) / 2
    row = int(centre + 0.5) + 8
    expected = np.exp(-((row - centre) ** 2) / (2 * 8.0**2)) / np.exp(-((31 - centre) ** 2) / (2 * 8.0**2))
    assert w[row, 15] / w[31, 15] == pytest.approx(expected, rel=1e-5)


def test_strip_merger_matches_direct_weighted_mean():
    rng = np.random.default_rng(0)
    height, width, tile = 7, 9, (4, 4)
    rows, cols = tile_starts(height, 4, 3), tile_starts(width, 4, 3)
    window = rng.uniform(0.1, 1, tile).astype(np.float32)
    values = {(r, c): rng.normal(size=(2,) + tile).astype(np.float32) for r in rows for c in cols}
    num = np.zeros((2, height, width))
    den = np.zeros((height, width))
    for (r, c), v in values.items():
        num[:, r : r + 4, c : c + 4] += v * window
        den[r : r + 4, c : c + 4] += window
    merger = StripMerger(width, 2, 4)
    got = []
    for i, r in enumerate(rows):
        for c in cols:
            merger.add(r, c, values[(r, c)], window)
        means, weight = merger.take_rows(rows[i + 1] if i + 1 < len(rows) else height)
        got.append(means)
    np.testing.assert_allclose(np.concatenate(got, axis=1), num / den, rtol=1e-5, atol=1e-6)


def _numpy_uncertainty(samples):
    """samples: (T, C, H, W) probabilities -> entropy, MI, variance of the predicted class (float64)."""
    mean = samples.mean(0)
    h = entropy_np(mean, axis=0)
    mi = np.maximum(h - np.mean([entropy_np(s, axis=0) for s in samples], axis=0), 0)
    cls = mean.argmax(0)
    pc = np.take_along_axis(samples, cls[None, None].repeat(samples.shape[0], 0), axis=1)[:, 0]
    return cls, h, mi, pc.var(0)


def _numpy_margin_confidence(mean):
    """1 - (largest - second largest) and 1 - largest of p̄, by a full sort (not a partition)."""
    ordered = np.sort(mean, axis=0)[::-1]
    return 1.0 - (ordered[0] - ordered[1]), 1.0 - ordered[0]


@pytest.mark.parametrize("classes", [4, 1])  # softmax model and a one-channel sigmoid model
@pytest.mark.parametrize("n_samples", [1, 7])
def test_sampler_matches_numpy_over_raw_samples(classes, n_samples):
    model = PointwiseNet(3, classes, hidden=16, dropout=0.4, seed=3)
    assert prepare_mc_dropout(model) == 1
    set_dropout_active(model, True)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    keys = [(0, 0), (0, 1)]
    n_out = 2 if classes == 1 else classes
    sampler = UncertaintySampler(PlainForward(model), n_out, tta_views("none", (8, 8)), n_samples, 42, "cpu", 3)
    with torch.inference_mode():
        moments = sampler.moments(x, keys).numpy()
        # The raw samples, one full pass each, with the generator of (seed, tile, view 0, sample t).
        raw = np.zeros((2, n_samples, n_out, 8, 8))
        for b, key in enumerate(keys):
            for t in range(n_samples):
                with use_generators(model, make_generators([key + (0, t)], 42, "cpu")):
                    raw[b, t] = class_probabilities_np(model(x[b : b + 1]).numpy()[0])
    for b in range(2):
        cls, h, mi, var = _numpy_uncertainty(raw[b])
        margin, confidence = _numpy_margin_confidence(raw[b].mean(0))
        for mode, want in ((UncertaintyMode.ENTROPY, h), (UncertaintyMode.MUTUAL_INFORMATION, mi),
                           (UncertaintyMode.VARIANCE, var), (UncertaintyMode.MARGIN, margin),
                           (UncertaintyMode.CONFIDENCE, confidence)):
            got_cls, mean_p, got = uncertainty_from_moments(moments[b], n_out, mode)
            np.testing.assert_allclose(got, want, atol=2e-5)
            np.testing.assert_array_equal(got_cls, cls)
            np.testing.assert_allclose(mean_p, raw[b].mean(0), atol=1e-6)
        assert np.all(mi <= h + 1e-6) and np.all(h <= np.log(n_out) + 1e-6)
        assert np.all((margin >= 0) & (margin <= 1)) and np.all(confidence <= 1 - 1 / n_out + 1e-12)
        if n_samples == 1:
            _, _, mi_got = uncertainty_from_moments(moments[b], n_out, UncertaintyMode.MUTUAL_INFORMATION, 1)
            assert np.all(mi_got == 0)
        else:
            assert mi.max() > 1e-3  # dropout really sampled something


@pytest.mark.parametrize("mode, shape", [("d4", (6, 6)), ("flip", (6, 6)), ("flip", (4, 7))])
def test_each_view_inverse_puts_pixels_back(mode, shape):
    h, w = shape
    position = torch.arange(h * w, dtype=torch.float32).reshape(1, 1, h, w)
    views = tta_views(mode, shape)
    assert len(views) == (8 if mode == "d4" else 4)
    images = set()
    for view in views:
        moved = view.forward(position)
        images.add(tuple(moved.flatten().tolist()))
        assert torch.equal(view.inverse(moved), position), view.name
    assert len(images) == len(views)  # all views are different transforms


def test_d4_rejects_non_square_tiles():
    with pytest.raises(ValueError, match="square"):
        tta_views("d4", (4, 7))


def test_tta_samples_are_the_back_mapped_views():
    """TTA moments equal an independent numpy computation over the V views of an asymmetric model."""
    model = ShiftNet(3, 3)
    prepare_mc_dropout(model)
    x = torch.randn(1, 3, 6, 6, generator=torch.Generator().manual_seed(2))
    views = tta_views("d4", (6, 6))
    sampler = UncertaintySampler(PlainForward(model), 3, views, 1, 0, "cpu")
    with torch.inference_mode():
        moments = sampler.moments(x, [(0, 0)]).numpy()[0]
        raw = np.stack([class_probabilities_np(v.inverse(model(v.forward(x))).numpy()[0]) for v in views])
    cls, h, mi, var = _numpy_uncertainty(raw)
    np.testing.assert_allclose(uncertainty_from_moments(moments, 3, "entropy")[2], h, atol=2e-5)
    np.testing.assert_allclose(uncertainty_from_moments(moments, 3, "mutual_information")[2], mi, atol=2e-5)
    np.testing.assert_allclose(uncertainty_from_moments(moments, 3, "variance")[2], var, atol=2e-6)
    assert mi.max() > 1e-3


def test_mc_times_tta_uses_every_view_sample_pair():
    """MC × TTA: V views × T dropout samples = 12 samples; entropy, MI and variance over all of them."""
    model = ShiftNet(3, 3)
    model.drop = torch.nn.Dropout(0.3)
    model.forward = lambda x: model.conv(model.drop(x))
    prepare_mc_dropout(model)
    set_dropout_active(model, True)
    x = torch.randn(1, 3, 5, 7, generator=torch.Generator().manual_seed(4))
    views = tta_views("flip", (5, 7))  # a non-square tile is fine for flips
    sampler = UncertaintySampler(PlainForward(model), 3, views, 3, 9, "cpu", 2)
    assert sampler.samples_per_pixel == 12
    with torch.inference_mode():
        moments = sampler.moments(x, [(2, 3)]).numpy()[0]
        raw = []
        for v, view in enumerate(views):
            for t in range(3):
                with use_generators(model, make_generators([(2, 3, v, t)], 9, "cpu")):
                    raw.append(class_probabilities_np(view.inverse(model(view.forward(x))).numpy()[0]))
    cls, h, mi, var = _numpy_uncertainty(np.stack(raw))
    np.testing.assert_allclose(uncertainty_from_moments(moments, 3, "entropy", 12)[2], h, atol=2e-5)
    np.testing.assert_allclose(uncertainty_from_moments(moments, 3, "mutual_information", 12)[2], mi, atol=2e-5)
    np.testing.assert_allclose(uncertainty_from_moments(moments, 3, "variance", 12)[2], var, atol=2e-6)
    # Views one at a time (the CPU default) give the same moments: masks are keyed by (tile, view, sample).
    one_view = UncertaintySampler(PlainForward(model), 3, views, 3, 9, "cpu", 2, view_chunk=1)
    with torch.inference_mode():
        np.testing.assert_allclose(one_view.moments(x, [(2, 3)]).numpy()[0], moments, atol=1e-6)
    # Leaving out either factor changes the result: the samples really are V × T.
    views_only = np.stack(raw[::3])
    assert np.abs(_numpy_uncertainty(views_only)[2] - mi).max() > 1e-4


@pytest.mark.parametrize("mode", ["margin", "confidence"])
def test_margin_and_confidence_at_their_range_ends(mode):
    """Certain pixel -> 0; a two-way tie -> margin 1; uniform over C = 4 -> confidence 1 - 1/4."""
    p = np.array([[1.0, 0.5, 0.25, 0.7], [0.0, 0.5, 0.25, 0.2], [0.0, 0.0, 0.25, 0.1], [0.0, 0.0, 0.25, 0.0]])
    moments = np.concatenate([p, p ** 2, np.zeros((1, 4))])[:, None, :].astype(np.float32)
    got = uncertainty_from_moments(moments, 4, mode)[2][0]
    want = {"margin": [0.0, 1.0, 1.0, 0.5], "confidence": [0.0, 0.5, 0.75, 0.3]}[mode]
    np.testing.assert_allclose(got, want, atol=1e-6)
