"""Streaming evaluation metrics against independent references (sklearn, plain numpy), on real GeoTIFFs.

Exact figures must agree to 1e-6; histogram figures (AUROC, AURC) to 0.002; quantiles to one bin width.
"""

import base64
import json
import math
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio import features
from rasterio.transform import from_origin
from sklearn.metrics import (
    accuracy_score,
    brier_score_loss,
    confusion_matrix,
    f1_score,
    jaccard_score,
    log_loss,
    precision_score,
    recall_score,
    roc_auc_score,
)

from seg_uncertainty.engine.errors import (
    InferenceCancelled,
    InvalidOptionError,
    OutputWriteError,
    RasterInputError,
)
from seg_uncertainty.engine.evaluation import evaluate_rasters
from seg_uncertainty.engine import evaluation
from seg_uncertainty.engine.metrics import NLL_EPS, CalibrationAccumulator
from seg_uncertainty.engine.report import FIGURE_IDS, TABLE_IDS, to_plain, write_report

RGB_BYTE = Path(__file__).resolve().parents[2] / "shared" / "data" / "RGB.byte.tif"
TRANSFORM = from_origin(500000.0, 4200000.0, 10.0, 10.0)
CRS = "EPSG:32618"
EXACT = 1e-6
HISTOGRAM = 0.002
THRESHOLDS = np.arange(1, 10) / 10.0


# ---------------------------------------------------------------------- fixtures and helpers
def _softmax(logits):
    e = np.exp(logits - logits.max(axis=0, keepdims=True))
    return e / e.sum(axis=0, keepdims=True)


def _entropy(prob):
    return -np.sum(prob * np.log(np.clip(prob, 1e-30, None)), axis=0)


def _write(path, data, nodata=None, transform=TRANSFORM, crs=CRS, block=64):
    data = np.asarray(data)
    if data.ndim == 2:
        data = data[None]
    profile = dict(driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0],
                   dtype=data.dtype.name, crs=crs, transform=transform, nodata=nodata)
    if block:
        profile.update(tiled=True, blockxsize=block, blockysize=block)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return str(path)


def _sample_reference(prob, rng, temperature=1.0):
    """Draw y ~ softmax(log p / T): T = 1 is a calibrated model, T < 1 an under-confident one."""
    q = _softmax(np.log(np.clip(prob, 1e-12, None)) / temperature)
    cum = np.cumsum(q, axis=0)
    draw = rng.random(prob.shape[1:])
    return np.minimum((cum < draw[None]).sum(axis=0), prob.shape[0] - 1).astype(np.uint8)


def _synthetic(tmp_path, n_classes, height=150, width=210, seed=0, nodata_block=True, ignore=True,
               uncertainty=True, temperature=0.7):
    rng = np.random.default_rng(seed)
    prob = _softmax(rng.normal(scale=2.0, size=(n_classes, height, width))).astype(np.float32)
    reference = _sample_reference(prob.astype(np.float64), rng, temperature)
    if nodata_block:
        prob[:, 10:30, 40:90] = np.nan
    if ignore:
        reference[rng.random((height, width)) < 0.05] = 255
    paths = {"prob": _write(tmp_path / f"prob{n_classes}.tif", prob, nodata=float("nan")),
             "ref": _write(tmp_path / f"ref{n_classes}.tif", reference, block=None)}
    unc = None
    if uncertainty:
        unc = _entropy(np.nan_to_num(prob.astype(np.float64))).astype(np.float32)
        unc[100:105, :] = np.nan  # uncertainty NoData leaves those pixels out too
        paths["unc"] = _write(tmp_path / f"unc{n_classes}.tif", unc, nodata=float("nan"))
    return paths, prob, reference, unc


def _expected(prob, reference, uncertainty=None, ignore_value=255, n_bins=15):
    """Every figure computed directly from the pixel arrays with sklearn and numpy."""
    c = prob.shape[0]
    keep = np.isfinite(prob).all(axis=0) & (reference != ignore_value)
    if uncertainty is not None:
        keep &= np.isfinite(uncertainty)
    p = prob[:, keep].T.astype(np.float64)  # (N, C)
    y = reference[keep].astype(np.int64)
    conf = p.max(axis=1)
    pred = p.argmax(axis=1)
    wrong = pred != y
    score = 1.0 - conf if uncertainty is None else uncertainty[keep].astype(np.float64)
    labels = list(range(c))
    out = {"n_pixels": int(keep.sum()), "accuracy": accuracy_score(y, pred)}
    # ECE / MCE, Guo et al.: [m/M, (m+1)/M), conf = 1 in the last bin.
    edges = np.arange(n_bins + 1) / n_bins
    bins = np.digitize(conf, edges[1:-1])
    gaps, weights = [], []
    for m in range(n_bins):
        in_bin = bins == m
        if in_bin.any():
            gaps.append(abs((~wrong[in_bin]).mean() - conf[in_bin].mean()))
            weights.append(in_bin.mean())
    out["ece"] = float(np.dot(gaps, weights))
    out["mce"] = float(max(gaps))
    onehot = np.eye(c)[y]
    out["brier"] = float(np.mean(np.sum((p - onehot) ** 2, axis=1)))
    if c == 2:
        out["brier_binary"] = brier_score_loss(y, p[:, 1])
    out["nll"] = log_loss(y, p, labels=labels)
    out["auroc"] = roc_auc_score(wrong, score)
    order = np.argsort(-conf, kind="stable")
    out["aurc"] = float(np.mean(np.cumsum(wrong[order]) / np.arange(1, y.size + 1)))
    out["confusion_matrix"] = confusion_matrix(y, pred, labels=labels)
    out["dice"] = f1_score(y, pred, labels=labels, average=None)
    out["iou"] = jaccard_score(y, pred, labels=labels, average=None)
    out["precision"] = precision_score(y, pred, labels=labels, average=None)
    out["recall"] = recall_score(y, pred, labels=labels, average=None)
    present = np.bincount(y, minlength=c) > 0
    out["mean_dice"] = float(out["dice"][present].mean())
    if c == 2:
        sweep = {"dice": [], "precision": [], "recall": []}
        for t in THRESHOLDS:
            hard = (p[:, 1] > t).astype(int)
            sweep["dice"].append(f1_score(y, hard))
            sweep["precision"].append(precision_score(y, hard))
            sweep["recall"].append(recall_score(y, hard))
        out["sweep"] = {k: np.array(v) for k, v in sweep.items()}
        out["best_threshold"] = float(THRESHOLDS[int(np.argmax(sweep["dice"]))])
    groups = {"all": np.ones_like(wrong), "correct": ~wrong, "wrong": wrong, "foreground": pred != 0,
              "background": pred == 0}
    out["stats"] = {g: score[m] for g, m in groups.items()}
    return out


def _check(res, exp):
    for key in ("accuracy", "ece", "mce", "brier", "nll", "mean_dice"):
        assert res[key] == pytest.approx(exp[key], abs=EXACT), key
    assert res["n_pixels"] == exp["n_pixels"]
    if "brier_binary" in exp:
        assert res["brier_binary"] == pytest.approx(exp["brier_binary"], abs=EXACT)
        assert res["brier_binary"] == pytest.approx(res["brier"] / 2, abs=1e-6)  # float32 rows sum to 1 ± 1e-7
    else:
        assert res["brier_binary"] is None
    assert res["auroc"] == pytest.approx(exp["auroc"], abs=HISTOGRAM)
    assert res["aurc"] == pytest.approx(exp["aurc"], abs=HISTOGRAM)
    np.testing.assert_array_equal(res["confusion_matrix"], exp["confusion_matrix"])
    for key in ("dice", "iou", "precision", "recall"):
        np.testing.assert_allclose(res["per_class"][key], exp[key], atol=EXACT, err_msg=key)
    if "sweep" in exp:
        for key, values in exp["sweep"].items():
            np.testing.assert_allclose(res["threshold_sweep"][key], values, atol=EXACT, err_msg=key)
        assert res["best_threshold"] == exp["best_threshold"]
    else:
        assert res["threshold_sweep"] is None and res["best_threshold"] is None
    width = res["uncertainty_bin_width"]
    for group, values in exp["stats"].items():
        stats = res["uncertainty_stats"][group]
        assert stats["count"] == values.size, group
        assert stats["mean"] == pytest.approx(values.mean(), abs=1e-9), group
        assert stats["min"] == pytest.approx(values.min(), abs=1e-12)
        assert stats["max"] == pytest.approx(values.max(), abs=1e-12)
        # Histogram quantiles are the empirical ones (smallest value with F >= q) within one bin width.
        for key, q in (("p5", 0.05), ("p25", 0.25), ("median", 0.5), ("p75", 0.75), ("p95", 0.95)):
            exact = np.quantile(values, q, method="inverted_cdf")
            assert stats[key] == pytest.approx(exact, abs=width * 1.0001), (group, key)


# ---------------------------------------------------------------------- rasters against references
def test_multiclass_with_uncertainty_nodata_and_ignore(tmp_path):
    paths, prob, reference, unc = _synthetic(tmp_path, 4)
    res = evaluate_rasters(paths["prob"], paths["ref"], uncertainty_path=paths["unc"], max_strip_values=20000)
    exp = _expected(prob, reference, unc)
    _check(res, exp)
    assert 0.5 < res["auroc"] < 1.0  # entropy does detect errors of a sampled reference
    assert res["uncertainty_source"] == "raster"
    assert res["uncertainty_range"] == pytest.approx((0.0, math.log(4)))
    assert res["n_invalid"] == 20 * 50 + 5 * 210  # NaN probabilities + NaN uncertainty rows
    assert res["n_ignored"] == int(((reference == 255) & np.isfinite(prob).all(0) & np.isfinite(unc)).sum())
    assert res["n_pixels"] + res["n_ignored"] + res["n_invalid"] == prob.shape[1] * prob.shape[2]
    assert sum(res["reliability"]["count"]) == res["n_pixels"]


def test_binary_without_uncertainty_scores_one_minus_confidence(tmp_path):
    paths, prob, reference, _ = _synthetic(tmp_path, 2, uncertainty=False, seed=3)
    res = evaluate_rasters(paths["prob"], paths["ref"])
    _check(res, _expected(prob, reference))
    assert res["uncertainty_source"] == "1 - confidence"
    # t = 0.5 on p_1 is the argmax map, so its Dice is the per-class Dice of class 1.
    assert res["threshold_sweep"]["dice"][4] == pytest.approx(res["per_class"]["dice"][1], abs=1e-12)
    assert res["brier"] <= 2.0 and res["nll"] > 0


def test_single_band_binary_equals_two_bands(tmp_path):
    paths, prob, _, _ = _synthetic(tmp_path, 2, uncertainty=False, seed=4)
    one_band = _write(tmp_path / "p1.tif", prob[1:2], nodata=float("nan"))
    two = evaluate_rasters(paths["prob"], paths["ref"])
    one = evaluate_rasters(one_band, paths["ref"])
    assert one["n_classes"] == 2
    for key in ("accuracy", "ece", "brier", "brier_binary", "nll", "auroc", "aurc", "best_threshold"):
        assert one[key] == pytest.approx(two[key], abs=1e-6), key


def test_probabilities_from_rgb_byte(tmp_path):
    if not RGB_BYTE.exists():
        pytest.skip(f"sample raster {RGB_BYTE} is missing")
    with rasterio.open(RGB_BYTE) as src:
        pixels = src.read().astype(np.float64)
        nodata = src.dataset_mask() == 0
        transform, crs = src.transform, src.crs
    # Three classes whose logits are the scaled band values; NoData stays NaN.
    prob = _softmax((pixels - 128.0) / 20.0).astype(np.float32)
    prob[:, nodata] = np.nan
    rng = np.random.default_rng(7)
    reference = np.argmax(pixels + rng.normal(scale=25.0, size=pixels.shape), axis=0).astype(np.uint8)
    reference[nodata] = 255
    unc = _entropy(np.nan_to_num(prob.astype(np.float64))).astype(np.float32)
    prob_path = _write(tmp_path / "rgb_prob.tif", prob, nodata=float("nan"), transform=transform, crs=crs,
                       block=256)
    ref_path = _write(tmp_path / "rgb_ref.tif", reference, transform=transform, crs=crs, block=256)
    unc_path = _write(tmp_path / "rgb_unc.tif", unc, transform=transform, crs=crs, block=256)
    res = evaluate_rasters(prob_path, ref_path, uncertainty_path=unc_path)
    _check(res, _expected(prob, reference, unc))
    assert res["n_invalid"] == int(nodata.sum())
    assert res["auroc"] > 0.6
    preview = res["preview"]
    assert max(preview["uncertainty"].shape) <= 256
    assert preview["factor"] == math.ceil(max(prob.shape[1:]) / 256)


def test_nll_clips_zero_probabilities_like_sklearn(tmp_path):
    prob = np.zeros((2, 4, 4), np.float32)
    prob[1] = 1.0
    prob[0, 0, 0], prob[1, 0, 0] = 1.0, 0.0
    reference = np.ones((4, 4), np.uint8)
    res = evaluate_rasters(_write(tmp_path / "p.tif", prob, block=None), _write(tmp_path / "r.tif", reference))
    expected = log_loss(reference.ravel(), prob.reshape(2, -1).T.astype(np.float64), labels=[0, 1])
    assert res["nll"] == pytest.approx(expected, abs=EXACT)
    assert res["nll"] == pytest.approx(-math.log(NLL_EPS) / 16, abs=EXACT)


# ---------------------------------------------------------------------- streaming invariance
def test_results_do_not_depend_on_strip_height(tmp_path):
    paths, *_ = _synthetic(tmp_path, 3, seed=5)
    many = evaluate_rasters(paths["prob"], paths["ref"], uncertainty_path=paths["unc"], max_strip_values=1)
    one = evaluate_rasters(paths["prob"], paths["ref"], uncertainty_path=paths["unc"], max_strip_values=1 << 30)
    for key in ("n_pixels", "n_ignored", "n_invalid", "confusion_matrix"):
        np.testing.assert_array_equal(many[key], one[key])
    for key in ("ece", "mce", "brier", "nll", "auroc", "aurc", "eaurc", "accuracy"):
        assert many[key] == pytest.approx(one[key], abs=1e-12), key
    np.testing.assert_array_equal(many["preview"]["wrong"], one["preview"]["wrong"])


def test_strips_are_whole_block_rows(tmp_path):
    paths, *_ = _synthetic(tmp_path, 3, uncertainty=False)
    with rasterio.open(paths["prob"]) as src:
        strips = list(evaluation._strips(src, 3 * 210 * 100))
        block = src.block_shapes[0][0]
    assert [w.row_off for w, _ in strips] == [0, 64, 128]
    assert all(w.row_off % block == 0 and w.width == 210 for w, _ in strips)
    assert strips[-1][1] == 150


def test_accumulator_blocks_and_merge_match_one_block():
    rng = np.random.default_rng(11)
    prob = _softmax(rng.normal(size=(3, 40, 50)) * 2)
    reference = _sample_reference(prob, rng)
    whole = CalibrationAccumulator(3)
    whole.update(prob, reference)
    top, bottom = CalibrationAccumulator(3), CalibrationAccumulator(3)
    top.update(prob[:, :17], reference[:17])
    bottom.update(prob[:, 17:], reference[17:])
    merged = top.merge(bottom).finalize()
    ref = whole.finalize()
    for key in ("ece", "brier", "nll", "auroc", "aurc", "accuracy", "mean_dice"):
        assert merged[key] == pytest.approx(ref[key], abs=1e-12), key
    np.testing.assert_array_equal(merged["confusion_matrix"], ref["confusion_matrix"])


def test_accumulator_worked_example_and_ties():
    acc = CalibrationAccumulator(2, n_bins=5)
    p1 = np.array([[0.1, 0.8, 0.4, 0.7]])
    acc.update(np.stack([1 - p1, p1]), np.array([[0, 1, 1, 1]]))
    res = acc.finalize()
    assert res["accuracy"] == 0.75
    assert res["ece"] == pytest.approx(0.15, abs=1e-12)  # ½·|0.5 − 0.65| + ½·|1 − 0.85|
    assert res["brier"] == pytest.approx(0.25, abs=1e-12)
    assert res["brier_binary"] == pytest.approx(0.125, abs=1e-12)
    assert res["nll"] == pytest.approx(-np.log([0.9, 0.8, 0.4, 0.7]).mean(), abs=1e-12)
    # AURC by hand: confidence order 0.9, 0.8, 0.7, 0.6 (wrong) -> risks 0, 0, 0, 1/4.
    assert res["aurc"] == pytest.approx(0.0625, abs=1e-9)
    assert res["aurc_optimal"] == pytest.approx(0.0625, abs=1e-9)
    # Exact ties in the uncertainty count half, as in sklearn.
    acc = CalibrationAccumulator(3)
    rng = np.random.default_rng(2)
    prob = _softmax(rng.normal(size=(3, 30, 30)) * 3)
    reference = _sample_reference(prob, rng)
    unc = np.round(_entropy(prob), 1)  # 12 distinct values
    acc.update(prob, reference, unc)
    wrong = prob.argmax(0) != reference
    assert acc.finalize()["auroc"] == pytest.approx(roc_auc_score(wrong.ravel(), unc.ravel()), abs=1e-9)


# ---------------------------------------------------------------------- polygons
def _rectangle(col0, row0, col1, row1):
    """Polygon on pixel edges covering columns [col0, col1) and rows [row0, row1)."""
    x0, y0 = TRANSFORM * (col0, row0)
    x1, y1 = TRANSFORM * (col1, row1)
    return {"type": "Polygon", "coordinates": [[(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)]]}


def test_polygon_reference_equals_raster_reference(tmp_path):
    paths, prob, _, _ = _synthetic(tmp_path, 3, ignore=False, uncertainty=False)
    # Later shapes win where they overlap, as in rasterio.features.rasterize; uncovered pixels are ignored.
    boxes = [((0, 0, 120, 70), 0), ((100, 50, 210, 150), 1), ((30, 60, 80, 140), 2), ((150, 5, 190, 40), 2)]
    shapes = [(_rectangle(*box), cls) for box, cls in boxes]
    reference = np.full(prob.shape[1:], 255, np.uint8)
    for (c0, r0, c1, r1), cls in boxes:
        reference[r0:r1, c0:c1] = cls
    burnt = features.rasterize(shapes, out_shape=reference.shape, transform=TRANSFORM, fill=255,
                               all_touched=False, dtype="uint8")
    np.testing.assert_array_equal(burnt, reference)  # the rectangles are unambiguous
    ref_path = _write(tmp_path / "boxes.tif", reference)
    from_raster = evaluate_rasters(paths["prob"], ref_path, max_strip_values=30000)
    from_shapes = evaluate_rasters(paths["prob"], reference_shapes=shapes, max_strip_values=30000)
    assert json.dumps(to_plain({k: v for k, v in from_shapes.items() if k != "inputs"}), sort_keys=True) == \
        json.dumps(to_plain({k: v for k, v in from_raster.items() if k != "inputs"}), sort_keys=True)
    _check(from_shapes, _expected(prob, reference))
    assert from_shapes["inputs"]["reference"] == "4 shapes"


def test_polygon_class_out_of_range_raises(tmp_path):
    paths, *_ = _synthetic(tmp_path, 3, uncertainty=False)
    with pytest.raises(RasterInputError, match="class id 5"):
        evaluate_rasters(paths["prob"], reference_shapes=[(_rectangle(0, 0, 5, 5), 5)])


# ---------------------------------------------------------------------- invalid input
@pytest.mark.parametrize(
    "corrupt, match",
    [
        (lambda p: p.__setitem__((0, 70, 3), 1.5), "outside \\[0, 1\\]"),  # one probability above 1
        (lambda p: p.__setitem__((slice(None), slice(0, 4), slice(0, 5)), 0.2), "20 of"),  # 4x5 rows sum to 0.6
    ],
)
def test_invalid_probabilities_raise(tmp_path, corrupt, match):
    paths, prob, reference, _ = _synthetic(tmp_path, 3, uncertainty=False, nodata_block=False)
    corrupt(prob)
    bad = _write(tmp_path / "bad.tif", prob)
    with pytest.raises(RasterInputError, match=match) as info:
        evaluate_rasters(bad, paths["ref"])
    assert "rows" in str(info.value)  # the message names the strip


def test_reference_class_out_of_range_raises(tmp_path):
    paths, prob, reference, _ = _synthetic(tmp_path, 3, uncertainty=False, nodata_block=False)
    reference[5, 5] = 7
    with pytest.raises(RasterInputError, match=r"class ids \[7\]"):
        evaluate_rasters(paths["prob"], _write(tmp_path / "r7.tif", reference))


def test_integer_probabilities_raise(tmp_path):
    paths, *_ = _synthetic(tmp_path, 3, uncertainty=False)
    with pytest.raises(RasterInputError, match="float"):
        evaluate_rasters(paths["ref"], paths["ref"])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"transform": from_origin(500010.0, 4200000.0, 10.0, 10.0)},  # shifted one pixel
        {"crs": "EPSG:32617"},  # other CRS
        {"shape": (150, 200)},  # other size
    ],
)
def test_reference_on_another_grid_raises(tmp_path, kwargs):
    paths, _, reference, _ = _synthetic(tmp_path, 3, uncertainty=False)
    shape = kwargs.pop("shape", reference.shape)
    other = _write(tmp_path / "other.tif", np.zeros(shape, np.uint8), **kwargs)
    with pytest.raises(RasterInputError) as info:
        evaluate_rasters(paths["prob"], other)
    assert paths["prob"] in str(info.value) and other in str(info.value)
    with pytest.raises(RasterInputError, match="uncertainty raster"):
        evaluate_rasters(paths["prob"], paths["ref"], uncertainty_path=other)


def test_options_and_cancellation(tmp_path):
    paths, *_ = _synthetic(tmp_path, 3, uncertainty=False)
    with pytest.raises(InvalidOptionError, match="exactly one"):
        evaluate_rasters(paths["prob"])
    with pytest.raises(InvalidOptionError, match="exactly one"):
        evaluate_rasters(paths["prob"], paths["ref"], reference_shapes=[])
    with pytest.raises(RasterInputError, match="cannot be opened"):
        evaluate_rasters(str(tmp_path / "missing.tif"), paths["ref"])
    calls = []
    evaluate_rasters(paths["prob"], paths["ref"], progress=lambda f, m: calls.append(f), max_strip_values=1)
    assert calls == sorted(calls) and calls[-1] == 1.0 and len(calls) == 3
    with pytest.raises(InferenceCancelled):
        evaluate_rasters(paths["prob"], paths["ref"], is_cancelled=lambda: True)
    with pytest.raises(RasterInputError, match="No pixel"):
        evaluate_rasters(paths["prob"], reference_shapes=[])


# ---------------------------------------------------------------------- report
class _Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids, self.images = set(), {}

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.add(attrs["id"])
        if tag == "img":
            self.images[attrs["id"]] = attrs["src"]


@pytest.mark.parametrize("n_classes", [2, 3])
def test_report_html_and_json(tmp_path, n_classes):
    paths, *_ = _synthetic(tmp_path, n_classes, seed=n_classes, height=60, width=80)
    res = evaluate_rasters(paths["prob"], paths["ref"], uncertainty_path=paths["unc"])
    html_path, json_path = tmp_path / "report.html", tmp_path / "report.json"
    write_report(res, str(html_path), str(json_path))
    text = html_path.read_text(encoding="utf-8")
    assert "http://" not in text and "https://" not in text
    parser = _Collector()
    parser.feed(text)
    parser.close()
    expected_figures = set(FIGURE_IDS.values()) - ({"fig-threshold"} if n_classes > 2 else set())
    expected_figures |= {"fig-class-thresholds"} if n_classes > 2 else set()  # one-vs-rest sweep, multi-class only
    assert expected_figures <= parser.ids
    assert ("fig-threshold" in parser.ids) == (n_classes == 2)
    expected_tables = set(TABLE_IDS.values()) - ({"tbl-threshold"} if n_classes > 2 else set())
    assert expected_tables <= parser.ids
    assert len(parser.images) == len(expected_figures)
    for src in parser.images.values():
        prefix = "data:image/png;base64,"
        assert src.startswith(prefix)
        assert base64.b64decode(src[len(prefix):], validate=True).startswith(b"\x89PNG\r\n\x1a\n")
    loaded = json.loads(json_path.read_text(encoding="utf-8"))
    for key, value in res.items():
        if key != "preview":
            assert loaded[key] == to_plain(value), key
    assert loaded["preview"] == {"factor": 1, "shape": [60, 80]}
    assert (loaded["best_threshold"] is None) == (n_classes > 2)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_report_into_missing_folder_writes_nothing(tmp_path):
    acc = CalibrationAccumulator(3)
    rng = np.random.default_rng(0)
    prob = _softmax(rng.normal(size=(3, 8, 8)))
    acc.update(prob, prob.argmax(0))
    res = acc.finalize()  # no preview: the report goes without that figure
    json_path = tmp_path / "ok.json"
    with pytest.raises(OutputWriteError, match="does not exist"):
        write_report(res, str(tmp_path / "missing" / "r.html"), str(json_path))
    assert not json_path.exists()
    write_report(res, str(tmp_path / "r.html"), str(json_path))
    assert "fig-preview" not in (tmp_path / "r.html").read_text(encoding="utf-8")
