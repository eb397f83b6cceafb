"""From uncertainty to decisions, engine side: temperature fit, abstention threshold, review hotspots.

Each figure is checked against an independent computation: a brute-force NLL grid search (scipy's logsumexp),
a numpy recount of kept pixels and errors, numpy block means and scipy-free region bookkeeping.
"""

import math

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from scipy.special import logsumexp

from seg_uncertainty.engine.abstention import RiskCoverage
from seg_uncertainty.engine.errors import InvalidOptionError
from seg_uncertainty.engine.hotspots import find_hotspots
from seg_uncertainty.engine.temperature import (
    apply_temperature,
    checkerboard,
    fit_temperature,
    log_probabilities,
)


def _brute_force_temperature(z, y):
    """argmin_T of the mean NLL of softmax(z / T), by a coarse grid then a 1e-5 grid around its best point."""

    def nll(t):
        s = z / t
        return float(np.mean(logsumexp(s, axis=1) - s[np.arange(len(y)), y]))

    coarse = np.arange(0.05, 10.0, 0.01)
    best = coarse[int(np.argmin([nll(t) for t in coarse]))]
    fine = np.arange(best - 0.02, best + 0.02, 1e-5)
    values = [nll(t) for t in fine]
    return fine[int(np.argmin(values))], min(values)


def _labels_from(logits, temperature, rng):
    """Reference classes drawn from softmax(logits / temperature): the model is over-confident by that factor."""
    p = np.exp(logits / temperature - logsumexp(logits / temperature, axis=1, keepdims=True))
    u = rng.random(len(p))[:, None]
    return (u > np.cumsum(p, axis=1)).sum(axis=1)


@pytest.mark.parametrize("true_t, classes", [(2.0, 3), (0.6, 4), (1.3, 2)])
def test_temperature_matches_a_brute_force_nll_grid_search(true_t, classes):
    rng = np.random.default_rng(int(true_t * 10) + classes)
    z = rng.normal(0, 3, size=(6000, classes))
    y = _labels_from(z, true_t, rng)
    cuts = np.sort(rng.choice(np.arange(1, len(y)), size=7, replace=False))  # uneven streamed blocks
    fit = fit_temperature(lambda: zip(np.split(z, cuts), np.split(y, cuts)))
    t_ref, nll_ref = _brute_force_temperature(z, y)
    assert fit.temperature == pytest.approx(t_ref, abs=1e-3)
    assert fit.nll == pytest.approx(nll_ref, abs=1e-9)  # the NLL is flat at the optimum: equal to ~1e-9
    assert fit.nll <= fit.nll_at_one + 1e-12 and fit.n_pixels == 6000 and not fit.at_bound
    assert fit.passes <= 20
    assert abs(fit.temperature - true_t) < 0.25  # and the data really were over/under-confident by true_t


def test_temperature_closed_form_and_degenerate_cases():
    # Logits (2, 0), three labelled 0 and one 1: σ(2β) = 3/4 at the optimum, T = 2 / log 3.
    z = np.array([[2.0, 0.0]] * 4)
    fit = fit_temperature(lambda: [(z, np.array([0, 0, 0, 1]))])
    assert fit.temperature == pytest.approx(2 / math.log(3), rel=1e-9)
    # Right half the time at any confidence: T runs to the top of the range, and says so.
    assert fit_temperature(lambda: [(z[:2], np.array([0, 1]))]).at_bound
    with pytest.raises(InvalidOptionError, match="no reference pixel"):
        fit_temperature(lambda: [])


def test_temperature_on_probabilities_is_a_power_and_keeps_the_argmax():
    rng = np.random.default_rng(3)
    p = rng.dirichlet(np.ones(4) * 0.7, size=(50,)).T  # (C, N)
    np.testing.assert_allclose(apply_temperature(p, 1.0), p / p.sum(0), atol=1e-12)
    calibrated = apply_temperature(p, 2.5)
    power = p ** (1 / 2.5)
    np.testing.assert_allclose(calibrated, power / power.sum(0), atol=1e-12)
    np.testing.assert_array_equal(calibrated.argmax(0), p.argmax(0))
    assert np.all(np.isfinite(log_probabilities(np.zeros((2, 3)))))


def test_checkerboard_windows_tile_the_whole_pattern():
    whole = checkerboard(0, 0, 100, 130, block=16)
    assert whole[0, 0] and not whole[0, 16] and not whole[16, 0] and whole[16, 16]
    assert abs(whole.mean() - 0.5) < 0.05
    parts = np.vstack([np.hstack([checkerboard(r, c, 25, 65, block=16) for c in (0, 65)]) for r in range(0, 100, 25)])
    np.testing.assert_array_equal(parts, whole)


def _exact_optimum(u, wrong, target):
    """Largest τ among the data values with error rate ≤ target among u ≤ τ (sort-based, exact)."""
    order = np.argsort(u, kind="stable")
    su, sw = u[order], wrong[order]
    kept = np.arange(1, len(u) + 1)
    errors = np.cumsum(sw)
    last = np.r_[su[1:] != su[:-1], True]  # only the last of equal values is a valid cut
    ok = last & (errors <= target * kept)
    return su[np.flatnonzero(ok)[-1]] if ok.any() else math.nan


@pytest.mark.parametrize("target", [0.0, 0.02, 0.1, 0.5])
def test_reject_threshold_coverage_and_error_equal_a_numpy_recount(target):
    rng = np.random.default_rng(11)
    u = rng.random(200_000) * math.log(3)
    wrong = rng.random(u.size) < (u / math.log(3)) ** 3  # errors grow with the uncertainty
    u[:50] = np.nan  # NoData is left out
    halves = RiskCoverage(0.0, math.log(3)), RiskCoverage(0.0, math.log(3))
    halves[0].update(u[:70_000], wrong[:70_000])
    halves[1].update(u[70_000:], wrong[70_000:])
    got = halves[0].merge(halves[1]).finalize(target)
    valid = np.isfinite(u)
    uv, wv = u[valid], wrong[valid]
    kept = uv <= got["threshold"]
    assert got["n"] == valid.sum() and got["kept"] == kept.sum()
    assert got["coverage"] == kept.sum() / valid.sum()
    assert got["error_rate"] == wv[kept].mean() <= target
    assert got["error_rate_all"] == wv.mean()
    exact = _exact_optimum(uv, wv, target)
    assert got["threshold"] <= exact <= got["threshold"] + math.log(3) / 16384 * 2  # within a bin of the optimum


def test_reject_threshold_when_no_threshold_meets_the_target():
    rc = RiskCoverage(0.0, 1.0, n_bins=10)
    rc.update(np.array([0.05, 0.5, 0.9]), np.array([True, False, False]))
    got = rc.finalize(0.1)
    assert math.isnan(got["threshold"]) and got["coverage"] == 0.0 and got["kept"] == 0
    assert rc.finalize(0.34)["threshold"] == 0.9  # 1 error in 3 ≤ 0.34
    with pytest.raises(InvalidOptionError, match="TARGET_ERROR"):
        rc.finalize(1.5)


def _write(path, array, dtype, nodata=None, tags=None, transform=from_origin(500000, 4200000, 30, 30)):
    profile = dict(driver="GTiff", width=array.shape[1], height=array.shape[0], count=1, dtype=dtype,
                   crs="EPSG:32618", transform=transform, nodata=nodata)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(array.astype(dtype), 1)
        if tags:
            dst.update_tags(**tags)
    return path


def _numpy_blocks(u, cls, size, threshold):
    """Per cell (row block, col block): mean, max, fraction above, count, majority, by padding with NaN."""
    h, w = u.shape
    ph, pw = -h % size, -w % size
    up = np.pad(u, ((0, ph), (0, pw)), constant_values=np.nan)
    cp = np.pad(cls, ((0, ph), (0, pw)), constant_values=255)
    blocks = up.reshape(up.shape[0] // size, size, up.shape[1] // size, size).swapaxes(1, 2)
    cblocks = cp.reshape(cp.shape[0] // size, size, cp.shape[1] // size, size).swapaxes(1, 2)
    out = {}
    for i in range(blocks.shape[0]):
        for j in range(blocks.shape[1]):
            b, c = blocks[i, j], cblocks[i, j]
            ok = np.isfinite(b)
            if not ok.any():
                continue
            votes = np.bincount(c[ok & (c != 255)].astype(int), minlength=1)
            out[(i * size, j * size)] = (np.nanmean(b), np.nanmax(b), np.mean(b[ok] > threshold), ok.sum(),
                                         int(votes.argmax()) if votes.sum() else -1)
    return out


def test_hotspot_grid_equals_numpy_block_statistics(tmp_path):
    rng = np.random.default_rng(5)
    u = rng.gamma(2.0, 0.2, size=(61, 90)).astype(np.float32)
    u[:5, :20] = np.nan  # NoData corner: a whole cell (0, 0) missing, others partly
    u[40:, 84:] = np.nan
    cls = rng.integers(0, 3, size=u.shape).astype(np.uint8)
    cls[np.isnan(u)] = 255
    cls[10:20, 28:42] = 2  # a cell with a clear majority
    unc_path = _write(tmp_path / "u.tif", u, "float32", nodata=float("nan"))
    cls_path = _write(tmp_path / "c.tif", cls, "uint8", nodata=255, tags={"CLASS_NAMES": "water,field,forest"})
    result = find_hotspots(unc_path, classes_path=cls_path, cell_size=14, threshold=0.5)
    want = _numpy_blocks(u.astype(np.float64), cls, 14, 0.5)
    assert result.n_units == len(want) == len(result.hotspots)
    means = [h.mean for h in result.hotspots]
    assert means == sorted(means, reverse=True) and [h.rank for h in result.hotspots] == list(range(1, len(want) + 1))
    for h in result.hotspots:
        mean, peak, frac, n, majority = want[(h.row, h.col)]
        assert (h.mean, h.max, h.frac_above, h.n_pixels, h.majority_class) == (
            pytest.approx(mean, rel=1e-12), pytest.approx(peak), pytest.approx(frac), n, majority)
        assert h.area == n * 900.0
        assert h.class_name == ["water", "field", "forest"][majority]
    cell = next(h for h in result.hotspots if (h.row, h.col) == (14, 28))
    assert cell.majority_class == 2
    # The polygon of a cell is its pixel footprint: cell (14, 28) spans x 500840..501260, y 4199160..4199580.
    assert cell.wkt == ("POLYGON ((500840.0 4199580.0, 501260.0 4199580.0, 501260.0 4199160.0, "
                        "500840.0 4199160.0, 500840.0 4199580.0))")
    top = find_hotspots(unc_path, cell_size=14, top_n=3)
    assert [h.mean for h in top.hotspots] == pytest.approx(means[:3]) and top.n_units == len(want)
    assert all(math.isnan(h.frac_above) and h.majority_class == -1 for h in top.hotspots)


def test_hotspot_regions_on_known_shapes(tmp_path):
    u = np.zeros((20, 30), np.float32)
    u[2:5, 3:9] = 0.8  # 18 px rectangle
    u[10:18, 20] = 0.9  # vertical bar, 8 px, and its foot: an L of 8 + 4 = 12 px
    u[17, 21:25] = 0.6
    u[12, 12] = 1.0  # one pixel: highest mean, smallest mass
    u[13, 13] = 0.95  # touches (12, 12) only by a corner: a region of its own (4-connectivity)
    cls = np.ones_like(u, dtype=np.uint8)
    cls[2:5, 3:5] = 0  # rectangle: 6 px of class 0, 12 px of class 1
    path = _write(tmp_path / "u.tif", u, "float32")
    cpath = _write(tmp_path / "c.tif", cls, "uint8")
    result = find_hotspots(path, classes_path=cpath, method="regions", threshold=0.5)
    got = [(h.n_pixels, round(h.mean, 6), h.max, h.majority_class, round(h.unc_sum, 5)) for h in result.hotspots]
    l_mean = (8 * 0.9 + 4 * 0.6) / 12
    assert got == [
        (18, 0.8, pytest.approx(0.8), 1, pytest.approx(14.4, abs=1e-4)),
        (12, round(l_mean, 6), pytest.approx(0.9), 1, pytest.approx(9.6, abs=1e-4)),
        (1, 1.0, 1.0, 1, 1.0),
        (1, 0.95, pytest.approx(0.95), 1, pytest.approx(0.95)),
    ]
    with pytest.raises(InvalidOptionError, match="THRESHOLD"):
        find_hotspots(path, method="regions")


def _numpy_ece(p, y, n_bins=15):
    """ECE with top-label confidence and equal-width bins (conf = 1 in the last bin), by numpy loops."""
    conf, pred = p.max(0), p.argmax(0)
    index = np.minimum((conf * n_bins).astype(int), n_bins - 1)
    ece = 0.0
    for m in range(n_bins):
        sel = index == m
        if sel.any():
            ece += sel.mean() * abs((pred[sel] == y[sel]).mean() - conf[sel].mean())
    return ece


def test_fit_and_compare_on_a_checkerboard_against_numpy_and_sklearn():
    from sklearn.metrics import log_loss

    from seg_uncertainty.engine.calibration_study import fit_and_compare

    rng = np.random.default_rng(8)
    h, w, c = 96, 128, 3
    z = rng.normal(0, 2.5, size=(h * w, c))
    y = _labels_from(z, 2.2, rng).reshape(h, w)  # the model is over-confident: true T about 2.2
    p = np.exp(z - logsumexp(z, axis=1, keepdims=True)).T.reshape(c, h, w).astype(np.float32)
    y[:10, :10] = -1  # unlabelled corner

    def blocks():  # strips of 20 rows, as the evaluator reads them
        for r in range(0, h, 20):
            yield p[:, r:r + 20], y[r:r + 20], r, 0

    got = fit_and_compare(blocks, c, checker=16)
    fit_mask = checkerboard(0, 0, h, w, block=16) & (y >= 0)
    held = ~checkerboard(0, 0, h, w, block=16) & (y >= 0)
    zf = np.log(np.maximum(p[:, fit_mask].T.astype(np.float64), 1e-12))
    t_ref, _ = _brute_force_temperature(zf, y[fit_mask])
    assert got["temperature"] == pytest.approx(t_ref, abs=1e-3) and 1.8 < got["temperature"] < 2.6
    assert got["held_out_pixels"] == held.sum() and got["fit_pixels"] == fit_mask.sum()
    ph, yh = p[:, held].astype(np.float64), y[held]
    pc = ph ** (1 / got["temperature"])
    pc /= pc.sum(0)
    for key, q in (("before", ph), ("after", pc)):
        assert got[key]["nll"] == pytest.approx(log_loss(yh, q.T, labels=[0, 1, 2]), rel=1e-6)
        assert got[key]["brier"] == pytest.approx(np.mean(((q - np.eye(c)[yh].T) ** 2).sum(0)), rel=1e-6)
        assert got[key]["ece"] == pytest.approx(_numpy_ece(q, yh), abs=1e-6)
    assert got["after"]["ece"] < got["before"]["ece"] / 2 and got["after"]["nll"] < got["before"]["nll"]
    assert got["after"]["accuracy"] == got["before"]["accuracy"]  # the class map never changes


def test_calibrated_card_is_written_next_to_the_original_and_parsed(tmp_path):
    from seg_uncertainty.engine.card_calibration import write_calibrated_card
    from seg_uncertainty.engine.errors import ModelCardError
    from seg_uncertainty.engine.model_card import load_model_card

    (tmp_path / "w.pth").write_bytes(b"")
    card = tmp_path / "card.yaml"
    card.write_text("model: {_target_: smp.Unet, encoder_name: resnet18, classes: 3}\n"
                    "weights: w.pth\ninput: {bands: [1, 2, 3], scale: 255}\n")
    original = card.read_text()
    assert load_model_card(card).temperature == 1.0
    written = write_calibrated_card(card, 1.8125)
    assert written.path == tmp_path / "card_calibrated.yaml" and card.read_text() == original
    again = load_model_card(tmp_path / "card_calibrated.yaml")
    assert again.temperature == 1.8125 and again.weights_path == tmp_path / "w.pth"
    elsewhere = tmp_path / "sub"
    elsewhere.mkdir()
    assert load_model_card(write_calibrated_card(card, 0.5, elsewhere / "c.yaml").path).weights_path == \
        tmp_path / "w.pth"
    with pytest.raises(ModelCardError, match="calibration.temperature"):
        (tmp_path / "bad.yaml").write_text(original + "calibration: {temperature: -1}\n")
        load_model_card(tmp_path / "bad.yaml")
    with pytest.raises(ModelCardError, match="temperature"):
        write_calibrated_card(card, 1e6)
    assert sorted(f.name for f in tmp_path.iterdir() if f.suffix == ".part") == []


def test_class_threshold_sweep_equals_sklearn_one_vs_rest():
    from sklearn.metrics import f1_score, precision_score, recall_score

    from seg_uncertainty.engine.class_thresholds import ClassThresholdSweep

    rng = np.random.default_rng(21)
    p = rng.dirichlet(np.ones(4), size=5000).T
    y = np.where(rng.random(5000) < 0.7, p.argmax(0), rng.integers(0, 4, 5000))
    y[y == 3] = 2  # class 3 absent from the reference: recall and Dice NaN/0 there, precision 0
    sweep = ClassThresholdSweep(4, thresholds=(0.1, 0.25, 0.5, 0.8))
    sweep.update(p[:, :2000], y[:2000])
    other = ClassThresholdSweep(4, thresholds=(0.1, 0.25, 0.5, 0.8))
    other.update(p[:, 2000:], y[2000:])
    got = sweep.merge(other).finalize()
    for c in range(3):
        for j, t in enumerate(got["thresholds"]):
            truth, called = y == c, p[c] > t
            assert got["dice"][c, j] == pytest.approx(f1_score(truth, called))
            if called.any():  # precision is NaN (ours) where nothing is called; sklearn 1.2 has no NaN option
                assert got["precision"][c, j] == pytest.approx(precision_score(truth, called))
            else:
                assert np.isnan(got["precision"][c, j])
            assert got["recall"][c, j] == pytest.approx(recall_score(truth, called))
    assert np.all(np.isnan(got["recall"][3])) and np.all(got["dice"][3][got["fp"][3] > 0] == 0)
