"""The report's decision sections: calibration before/after, abstention threshold, per-class threshold
sensitivity, and individual samples on a window.

Each section renders only when the results carry its part (``calibration``, ``abstention``, ``class_sweep``,
``sample_window``; see :func:`engine.evaluation.evaluate_rasters`). Plots use the report's PNG helpers, so the page
stays self-contained. Figure ids: ``fig-calibration``, ``fig-abstention``, ``fig-class-thresholds``,
``fig-samples``; table ids: ``tbl-calibration``, ``tbl-abstention``.
"""

import numpy as np
from matplotlib.figure import Figure
from rasterio.windows import Window

from .errors import RasterInputError
from .raster_io import open_raster, read_masked

__all__ = ["render_decisions_html", "sample_window", "DECISION_FIGURE_IDS", "SAMPLE_WINDOW"]

DECISION_FIGURE_IDS = {
    "calibration": "fig-calibration",
    "abstention": "fig-abstention",
    "class_thresholds": "fig-class-thresholds",
    "samples": "fig-samples",
}
SAMPLE_WINDOW = 128  # pixels a side of the sample figure's window


def sample_window(samples_path, results, size=SAMPLE_WINDOW):
    """Read a ``size`` × ``size`` window of the sample bands around the most uncertain preview cell.

    Returns {row, col, bands (K, h, w), content, indices, nodata}; raises RasterInputError when the raster is not
    on the probability grid or cannot be read.
    """
    inputs = results["inputs"]
    with open_raster(samples_path, "SAMPLES raster") as src:
        if (src.width, src.height) != (inputs["width"], inputs["height"]):
            raise RasterInputError(
                f"SAMPLES {samples_path}: {src.width}×{src.height} px, the probability raster is "
                f"{inputs['width']}×{inputs['height']}. Use OUTPUT_SAMPLES of the same mcdropout run."
            )
        preview = results.get("preview") or {}
        score = np.asarray(preview.get("uncertainty", np.zeros((1, 1))), dtype=float)
        factor = int(preview.get("factor", 1))
        r, c = (np.unravel_index(np.nanargmax(score), score.shape) if np.isfinite(score).any() else (0, 0))
        h, w = min(size, src.height), min(size, src.width)
        row = int(min(max(r * factor + factor // 2 - h // 2, 0), src.height - h))
        col = int(min(max(c * factor + factor // 2 - w // 2, 0), src.width - w))
        bands, _ = read_masked(src, Window(col, row, w, h))
        tags, nodata = src.tags(), src.nodata
    indices = [int(v) for v in tags.get("SAMPLE_INDICES", "").split(",") if v.strip()]
    return {"row": row, "col": col, "bands": bands, "content": tags.get("SAMPLE_CONTENT", "class"),
            "indices": indices or list(range(bands.shape[0])), "nodata": nodata}


def render_decisions_html(results):
    """HTML of the decision sections present in ``results`` ("" when none)."""
    from .report import _figure, _fmt, _table  # the report's helpers; imported here, report imports us lazily

    parts = []
    calibration = results.get("calibration")
    if calibration:
        at_bound = calibration["temperature_at_bound"]
        bound = "; T at the edge of its range: not pinned down by the data" if at_bound else ""
        parts.append("<h2>Calibration (temperature scaling)</h2>")
        parts.append(
            f"<p>T = {_fmt(calibration['temperature'])} fitted by minimum NLL on {calibration['fit_pixels']} "
            f"pixels (checkerboard of {calibration['checker_block']}-px blocks, {calibration['fit_passes']} passes"
            f"{bound}). Figures below on the {calibration['held_out_pixels']} held-out pixels of the other blocks. "
            "T &gt; 1 softens over-confident probabilities, T &lt; 1 sharpens under-confident ones; the arg-max of "
            "p̄ does not change.</p>")
        if calibration.get("before"):
            keys = (("ece", "ECE"), ("mce", "MCE"), ("nll", "NLL"), ("brier", "Brier (multi-class)"),
                    ("accuracy", "Accuracy"))
            parts.append(_table("tbl-calibration", ["Held-out figure", "Before", "After"],
                                [[label, calibration["before"][k], calibration["after"][k]] for k, label in keys]))
            parts.append(_figure(DECISION_FIGURE_IDS["calibration"], _plot_calibration(calibration),
                                 "Reliability on held-out pixels before (left) and after (right) temperature "
                                 "scaling."))
    abstention = results.get("abstention")
    if abstention:
        parts.append("<h2>Abstention threshold</h2>")
        rows = [["Target error rate ε", abstention["target_error"]],
                ["REJECT_THRESHOLD (largest with kept error ≤ ε)", abstention["threshold"]],
                ["Coverage (share kept)", abstention["coverage"]],
                ["Error rate among kept pixels", abstention["error_rate"]],
                ["Error rate without abstention", abstention["error_rate_all"]],
                ["Kept / evaluated pixels", f"{abstention['kept']} / {abstention['n']}"],
                ["Score", abstention.get("score")]]
        parts.append(_table("tbl-abstention", ["", "Value"], rows))
        parts.append(_figure(DECISION_FIGURE_IDS["abstention"], _plot_abstention(abstention),
                             "Error rate among kept pixels (uncertainty ≤ threshold) against coverage; the chosen "
                             "threshold marked."))
    sweep = results.get("class_sweep")
    if sweep is not None and results.get("n_classes", 0) > 2:
        parts.append("<h2>Threshold sensitivity per class (one-vs-rest)</h2>")
        parts.append(_figure(DECISION_FIGURE_IDS["class_thresholds"], _plot_class_sweep(results),
                             "For each class c: Dice, precision and recall of the mask p̄_c &gt; t against the "
                             "reference mask y = c."))
    window = results.get("sample_window")
    if window:
        parts.append("<h2>Individual samples</h2>")
        parts.append(_figure(DECISION_FIGURE_IDS["samples"], _plot_samples(window, results),
                             f"{len(window['indices'])} of the samples that entered the statistics, on the "
                             f"{window['bands'].shape[2]}×{window['bands'].shape[1]} px window at row "
                             f"{window['row']}, column {window['col']} (around the most uncertain area)."))
    return "\n".join(parts)


def _plot_calibration(calibration):
    from .report import _floats, _fmt, _png

    fig = Figure(figsize=(9, 4.5))
    axes = fig.subplots(1, 2, sharey=True)
    for ax, key in zip(axes, ("before", "after")):
        rel = calibration[key]["reliability"]
        edges = np.asarray(rel["bin_edges"], dtype=float)
        acc, conf = _floats(rel["accuracy"]), _floats(rel["confidence"])
        ax.bar(edges[:-1], np.nan_to_num(acc), width=np.diff(edges), align="edge", edgecolor="k", label="accuracy")
        ax.plot(np.nan_to_num(conf), np.nan_to_num(acc), "o", color="tab:red", ms=3, label="mean confidence")
        ax.plot([0, 1], [0, 1], "k--", lw=1)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence max_c p_c")
        title = "before" if key == "before" else f"after (T = {calibration['temperature']:.3g})"
        ax.set_title(f"{title}: ECE {_fmt(calibration[key]['ece'])}")
    axes[0].set_ylabel("accuracy")
    axes[0].legend(loc="upper left")
    return _png(fig)


def _plot_abstention(abstention):
    from .report import _floats, _png

    curve = abstention["curve"]
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    ax.plot(_floats(curve["coverage"]), _floats(curve["risk"]), color="tab:blue", label="kept error rate")
    ax.axhline(abstention["target_error"], color="tab:red", ls=":", lw=1, label="target ε")
    if abstention["threshold"] == abstention["threshold"]:
        ax.plot([abstention["coverage"]], [abstention["error_rate"]], "o", color="tab:red",
                label=f"threshold {abstention['threshold']:.4g}")
    ax.set_xlim(0, 1)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("coverage (share of pixels kept)")
    ax.set_ylabel("error rate among kept pixels")
    ax.legend()
    return _png(fig)


def _plot_class_sweep(results):
    from .report import _floats, _png

    sweep = results["class_sweep"]
    names = results.get("class_names") or [f"class_{c}" for c in range(results["n_classes"])]
    n = len(names)
    cols = min(n, 4)
    rows = -(-n // cols)
    fig = Figure(figsize=(3.2 * cols, 2.8 * rows))
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    t = _floats(sweep["thresholds"])
    for c, ax in enumerate(axes):
        if c >= n:
            ax.set_axis_off()
            continue
        for key in ("dice", "precision", "recall"):
            ax.plot(t, _floats(np.asarray(sweep[key])[c]), label=key)
        ax.set_title(names[c])
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("t on p̄_c")
    axes[0].legend(fontsize=8)
    return _png(fig)


def _plot_samples(window, results):
    from matplotlib.colors import ListedColormap

    from .report import _png

    bands = np.asarray(window["bands"])
    k = bands.shape[0]
    cols = min(k, 4)
    rows = -(-k // cols)
    fig = Figure(figsize=(2.6 * cols, 2.6 * rows + 0.4))
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    names = results.get("class_names") or []
    for i, ax in enumerate(axes):
        ax.set_axis_off()
        if i >= k:
            continue
        if window["content"] == "class":
            data = np.ma.masked_equal(bands[i], 255)
            cmap = ListedColormap(["#1f78b4", "#33a02c", "#b15928", "#d9d9d9", "#e31a1c", "#ff7f00", "#6a3d9a",
                                   "#a6cee3"][: max(len(names), 2)])
            ax.imshow(data, cmap=cmap, vmin=0, vmax=max(len(names), 2) - 1, interpolation="nearest")
        else:
            ax.imshow(np.ma.masked_invalid(bands[i]), cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(f"sample {window['indices'][i]}", fontsize=9)
    return _png(fig)
